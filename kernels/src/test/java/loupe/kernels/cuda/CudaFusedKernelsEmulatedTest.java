package loupe.kernels.cuda;

import loupe.kernels.FusedOpsEquivalence;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/**
 * The fused CUDA kernels against the separate ones, bit for bit, under the CPU execution harness:
 * add_bias_gelu_forward = add_bias + gelu_forward, add_layernorm_forward / add_rmsnorm_forward = add +
 * layernorm_forward / rmsnorm_forward. (Against the CPU backend, within tolerance, in
 * {@link CudaKernelsEmulatedTest}.) Sizes: odd, not multiples of the block, above the 8-block
 * grid-stride cap of the emulator, and rows longer than one block.
 */
class CudaFusedKernelsEmulatedTest {
    static final int[][] SHAPES = {{1, 1}, {3, 33}, {7, 300}, {2, 1500}, {130, 5}, {5, 2049}};
    private static CudaBackend dev;

    @BeforeAll
    static void open() {
        EmulatorLibrary.assumeAvailable();
        dev = Device.emulated();
    }

    @AfterAll
    static void close() {
        if (dev != null) dev.close();
    }

    @Test
    void addBiasGeluKernelIsAddBiasThenGelu() {
        try (FusedOpsEquivalence check = new FusedOpsEquivalence(dev, 42)) {
            for (int[] s : SHAPES) check.addBiasGelu(s[0], s[1]);
        }
    }

    @Test
    void addNormKernelsAreAddThenNorm() {
        try (FusedOpsEquivalence check = new FusedOpsEquivalence(dev, 43)) {
            for (int[] s : SHAPES) check.addNorm(s[0], s[1]);
        }
    }
}
