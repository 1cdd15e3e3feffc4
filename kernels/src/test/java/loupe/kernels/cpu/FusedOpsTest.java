package loupe.kernels.cpu;

import loupe.kernels.FusedOpsEquivalence;
import org.junit.jupiter.api.Test;

/**
 * The CPU backend's fused ops against its own unfused sequences, bit for bit: addBiasGelu = addBias +
 * gelu, addNorm = add + layerNorm / rmsNorm. Odd shapes put the vector tails at other columns than
 * the flat unfused loops do; the large shapes take the multi-threaded path.
 */
class FusedOpsTest {
    /** rows x cols: single element, tails shorter than a vector, odd row lengths, and above the fork threshold. */
    static final int[][] SHAPES = {{1, 1}, {3, 7}, {5, 33}, {17, 301}, {129, 769}, {37, 3073}};

    @Test
    void addBiasGeluIsAddBiasThenGelu() {
        try (CpuBackend be = new CpuBackend(2); FusedOpsEquivalence check = new FusedOpsEquivalence(be, 42)) {
            for (int[] s : SHAPES) check.addBiasGelu(s[0], s[1]);
        }
    }

    @Test
    void addNormIsAddThenNorm() {
        try (CpuBackend be = new CpuBackend(2); FusedOpsEquivalence check = new FusedOpsEquivalence(be, 43)) {
            for (int[] s : SHAPES) check.addNorm(s[0], s[1]);
        }
    }

    @Test
    void singleThreadedToo() {
        try (CpuBackend be = new CpuBackend(1); FusedOpsEquivalence check = new FusedOpsEquivalence(be, 44)) {
            check.addBiasGelu(129, 769);
            check.addNorm(129, 769);
        }
    }
}
