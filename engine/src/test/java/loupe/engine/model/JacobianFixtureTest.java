package loupe.engine.model;

import loupe.engine.Batch;
import loupe.engine.Fixtures;
import loupe.engine.Model;
import loupe.engine.Scope;
import loupe.engine.Tensor;
import loupe.engine.TestBackends;
import loupe.engine.hooks.Hooks;
import loupe.engine.io.SafeTensors;
import loupe.kernels.Backend;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

import java.lang.foreign.Arena;
import java.nio.file.Path;
import java.util.stream.Stream;

import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Residual Jacobians by batched backward passes against PyTorch's float64 autograd
 * ({@code jacobian.safetensors}): {@code d blocks.{L-1}.hook_resid_post[0, T-1] / d blocks.1.hook_resid_pre[0, p]},
 * on every backend of {@link TestBackends}.
 */
class JacobianFixtureTest {
    static Stream<Arguments> cases() {
        // gpt2-tiny-b: about two minutes per case on the emulated device, so there only with -Dloupe.emulated=all
        return TestBackends.cases(new Object[]{"gpt2-tiny-a", 5}, new Object[]{"gpt2-tiny-a", 10},
                TestBackends.heavy("gpt2-tiny-b", 20), TestBackends.heavy("gpt2-tiny-b", 39));
    }

    /** max|J - ref| / max|ref|. */
    static double relErr(float[] j, double[] ref) {
        double maxRef = 0, maxDiff = 0;
        for (int i = 0; i < ref.length; i++) {
            maxRef = Math.max(maxRef, Math.abs(ref[i]));
            maxDiff = Math.max(maxDiff, Math.abs(j[i] - ref[i]));
        }
        return maxDiff / maxRef;
    }

    @ParameterizedTest(name = "{0}: {1} p{2}")
    @MethodSource("cases")
    void matchesAutogradFloat64(TestBackends.Target device, String fixture, int p) {
        Path dir = Fixtures.dir().resolve(fixture);
        try (Backend be = device.open(); Arena arena = Arena.ofConfined(); Model m = Model.load(dir, be); Scope s = new Scope(be)) {
            SafeTensors ref = SafeTensors.open(dir.resolve("expected.safetensors"), arena);
            SafeTensors jac = SafeTensors.open(dir.resolve("jacobian.safetensors"), arena);
            Batch batch = Batch.of(Fixtures.rows(ref.get("tokens")));
            int L = m.config().nLayers(), T = batch.length(), C = m.config().dModel();
            double[] want = jac.get("jacobian64.l1.p" + p).toDoubleArray();
            // All rows in one pass, and a few rows per pass (the chunked path).
            for (int rows : new int[]{C, 24}) {
                Tensor J = Jacobian.residual(s, m.transformer(), batch, 1, p, L - 1, T - 1, rows);
                double e = relErr(J.toFloatArray(), want);
                System.out.printf("%s %s jacobian l1 p%d (%d rows per pass): max rel err %.3g%n", device, fixture, p, rows, e);
                assertTrue(e <= 1e-4, fixture + " p" + p + ": " + e);
            }
        }
    }

    /**
     * The broadcast backward (one forward, B gradient rows) equals a backward against a forward of B
     * copies of the input, row by row.
     */
    @ParameterizedTest(name = "{0}")
    @MethodSource("loupe.engine.TestBackends#allHeavy")   // a 64-row batch: ~20 s on the emulated device
    void broadcastEqualsCopies(TestBackends.Target device) {
        Path dir = Fixtures.dir().resolve("gpt2-tiny-a");
        try (Backend be = device.open(); Arena arena = Arena.ofConfined(); Model m = Model.load(dir, be); Scope s = new Scope(be)) {
            SafeTensors ref = SafeTensors.open(dir.resolve("expected.safetensors"), arena);
            int[] tokens = Fixtures.rows(ref.get("tokens"))[0];
            Transformer t = m.transformer();
            int C = m.config().dModel(), T = tokens.length, L = m.config().nLayers(), p = 5;
            Tensor J = Jacobian.residual(s, t, Batch.of(tokens), 0, p, L - 1, T - 1);
            int[][] copies = new int[C][];
            for (int i = 0; i < C; i++) copies[i] = tokens;
            Transformer.Forward f = t.forward(s, Batch.of(copies), Hooks.none(), new Transformer.Options(true, null));
            float[] oneHot = new float[C * T * C];
            for (int i = 0; i < C; i++) oneHot[i * T * C + (T - 1) * C + i] = 1f;
            Backward.Result r = Backward.run(s, t, f, Backward.Options.fromResidPost(L - 1, s.fromArray(oneHot, C, T, C)).withParameters(false));
            float[] d = r.dResidPre.toFloatArray(), j = J.toFloatArray();
            double maxRef = 0, maxDiff = 0;
            for (int i = 0; i < C; i++)
                for (int k = 0; k < C; k++) {
                    float want = d[i * T * C + p * C + k];
                    maxRef = Math.max(maxRef, Math.abs(want));
                    maxDiff = Math.max(maxDiff, Math.abs(want - j[i * C + k]));
                }
            assertTrue(maxRef > 1e-3 && maxDiff <= 1e-6 * maxRef, "broadcast vs copies: " + maxDiff + " of " + maxRef);
        }
    }
}
