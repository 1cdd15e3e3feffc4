package loupe.kernels.cpu;

import org.junit.jupiter.api.Test;

import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Set;

import static java.lang.foreign.ValueLayout.JAVA_BYTE;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** The native allocator: 64-byte alignment, large blocks at staggered page offsets, every byte usable, freed cleanly. */
class NativeTest {
    @Test
    void largeBlocksStartAtStaggeredPageOffsets() {
        List<MemorySegment> blocks = new ArrayList<>();
        Set<Long> pageOffsets = new HashSet<>();
        for (int i = 0; i < 16; i++) {
            long bytes = (70L << 10) + i * 4;
            MemorySegment s = Native.allocateUninitialized(bytes);
            assertEquals(bytes, s.byteSize());
            assertEquals(0, s.address() % 64, "64-byte aligned");
            s.fill((byte) i);   // every byte of the block is ours
            assertEquals((byte) i, s.get(JAVA_BYTE, bytes - 1));
            pageOffsets.add(s.address() % 4096);
            blocks.add(s);
        }
        assertTrue(pageOffsets.size() >= 8, "start offsets within a page vary: " + pageOffsets);
        MemorySegment small = Native.allocateUninitialized(100);
        assertEquals(0, small.address() % 64);
        blocks.add(small);
        for (MemorySegment s : blocks) Native.free(s);   // frees each block's own base (a wrong pointer would crash)
    }
}
