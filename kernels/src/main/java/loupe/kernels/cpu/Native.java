package loupe.kernels.cpu;

import loupe.LoupeException;

import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.Linker;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.MethodHandle;

/** libc's allocator through FFM: aligned, untracked by the GC, freed explicitly. */
final class Native {
    private static final Linker LINKER = Linker.nativeLinker();
    private static final MethodHandle ALIGNED_ALLOC = LINKER.downcallHandle(
            LINKER.defaultLookup().find("aligned_alloc").orElseThrow(),
            FunctionDescriptor.of(ValueLayout.ADDRESS, ValueLayout.JAVA_LONG, ValueLayout.JAVA_LONG));
    private static final MethodHandle FREE = LINKER.downcallHandle(
            LINKER.defaultLookup().find("free").orElseThrow(),
            FunctionDescriptor.ofVoid(ValueLayout.ADDRESS), Linker.Option.critical(false));

    private Native() {}

    /** Large blocks start at staggered offsets within a page; their malloc'd base, by start address. */
    private static final java.util.concurrent.ConcurrentHashMap<Long, MemorySegment> BASES = new java.util.concurrent.ConcurrentHashMap<>();
    private static final java.util.concurrent.atomic.AtomicInteger NEXT = new java.util.concurrent.atomic.AtomicInteger();
    private static final long STAGGER_MIN = 64 << 10;

    /**
     * {@code bytes} bytes aligned to 64, content undefined. Blocks of 64 KB and more start at one of 64
     * offsets (multiples of 64 bytes) within a 4 KB page: page-aligned buffers all share their low 12
     * address bits, and a kernel streaming through several of them at once then stalls on 4K aliasing.
     */
    static MemorySegment allocateUninitialized(long bytes) {
        boolean stagger = bytes >= STAGGER_MIN;
        long rounded = Math.max(64, (bytes + 63) & ~63L) + (stagger ? 4096 : 0);
        MemorySegment p;
        try {
            p = (MemorySegment) ALIGNED_ALLOC.invokeExact(stagger ? 4096L : 64L, rounded);
        } catch (Throwable t) {
            throw new LoupeException("aligned_alloc failed", t);
        }
        if (p.equals(MemorySegment.NULL))
            throw new LoupeException("out of host memory: could not allocate " + bytes + " bytes");
        if (!stagger) return p.reinterpret(bytes);
        long offset = (long) ((NEXT.getAndIncrement() * 37) & 63) * 64;   // 37 is odd: the 64 offsets in turn
        MemorySegment start = MemorySegment.ofAddress(p.address() + offset).reinterpret(bytes);
        BASES.put(start.address(), p);
        return start;
    }

    static void free(MemorySegment s) {
        MemorySegment base = BASES.remove(s.address());
        MemorySegment block = base != null ? base : s;
        try {
            FREE.invokeExact(block);
        } catch (Throwable t) {
            throw new LoupeException("free failed", t);
        }
    }
}
