package loupe.interp.jacobian;

import loupe.LoupeException;
import loupe.engine.Batch;
import loupe.engine.Model;
import loupe.engine.Scope;
import loupe.engine.Tensor;
import loupe.engine.TestBackends;
import loupe.engine.hooks.Hooks;
import loupe.engine.io.SafeTensors;
import loupe.interp.TestModels;
import loupe.kernels.Backend;
import loupe.kernels.cpu.CpuBackend;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.CsvSource;
import org.junit.jupiter.params.provider.MethodSource;

import java.lang.foreign.Arena;
import java.nio.file.Path;
import java.util.stream.Stream;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Jacobians between hook points: against PyTorch's float64 autograd on the fixtures
 * ({@code jacobian.safetensors}, on every backend of {@link TestBackends}), and against central finite differences on a random grouped-query
 * Llama for non-residual pairs (attention heads, MLP neurons, the final norm, the logits, the embedding).
 */
class HookJacobianTest {
    static CpuBackend cpu;

    @BeforeAll
    static void init() {
        cpu = new CpuBackend(2);
    }

    @AfterAll
    static void done() {
        cpu.close();
    }

    /** max|a - ref| / max|ref|. */
    static double relErr(float[] a, double[] ref) {
        double m = 0, d = 0;
        for (int i = 0; i < ref.length; i++) {
            m = Math.max(m, Math.abs(ref[i]));
            d = Math.max(d, Math.abs(a[i] - ref[i]));
        }
        return d / m;
    }

    static Stream<Arguments> fixtureCases() {
        // gpt2-tiny-b: minutes per case on the emulated device, so there only with -Dloupe.emulated=all
        return TestBackends.cases(new Object[]{"gpt2-tiny-a", 5}, new Object[]{"gpt2-tiny-a", 10},
                TestBackends.heavy("gpt2-tiny-b", 20), TestBackends.heavy("gpt2-tiny-b", 39));
    }

    @ParameterizedTest(name = "{0}: {1} p{2}")
    @MethodSource("fixtureCases")
    void matchesTheFloat64Fixture(TestBackends.Target device, String fixture, int p) {
        Path dir = TestModels.fixtures().resolve(fixture);
        try (Backend be = device.open(); Arena arena = Arena.ofConfined(); Model m = Model.load(dir, be); Scope s = new Scope(be)) {
            double[] want = SafeTensors.open(dir.resolve("jacobian.safetensors"), arena).get("jacobian64.l1.p" + p).toDoubleArray();
            Batch batch = Batch.of(TestModels.fixtureTokens(fixture));   // J is taken on sequence 0
            int L = m.config().nLayers();
            HookSite out = HookSite.parse("blocks." + (L - 1) + ".hook_resid_post@-1");
            // blocks.1.hook_resid_pre and blocks.0.hook_resid_post are one tensor; all rows in one pass, then 24 per pass.
            for (String in : new String[]{"blocks.1.hook_resid_pre@" + p, "blocks.0.hook_resid_post@" + p})
                for (int rows : new int[]{0, 24}) {
                    HookJacobian.Result r = HookJacobian.compute(s, m.transformer(), batch, HookSite.parse(in), out,
                            HookJacobian.Options.DEFAULT.withRowsPerPass(rows));
                    double e = relErr(r.jacobian().toFloatArray(), want);
                    System.out.printf("%s %s d %s / d %s (rows per pass %s): max rel err %.3g%n", device, fixture, out, in, rows == 0 ? "auto" : rows, e);
                    assertTrue(e <= 1e-4, fixture + " " + in + ": " + e);
                    assertArrayEquals(new int[]{m.config().dModel(), m.config().dModel()}, r.jacobian().shape());
                }
        }
    }

    static Model llama() {
        // GQA (4 query heads on 2 kv heads), rotary, SwiGLU, RMSNorm, untied unembedding.
        return TestModels.randomLlama(cpu, 31, 24, 2, 4, 2, 40, 16, 37);
    }

    static final int[] TOKENS = {3, 17, 5, 29, 11, 2, 23, 8};

    /**
     * {@code d out[pos_out] / d in[pos_in]} by central differences with Richardson extrapolation, all
     * columns in one batched forward: row {@code 4j + k} perturbs channel j by {@code ±h, ±h/2}.
     */
    static float[][] finiteDifferences(Model m, String inName, int pi, int dIn, String outName, int po, int dOut) {
        int T = TOKENS.length, rows = 4 * dIn;
        double h = 0.04;
        double[] steps = {h, -h, h / 2, -h / 2};
        int[][] tok = new int[rows][];
        for (int r = 0; r < rows; r++) tok[r] = TOKENS;
        float[] pert = new float[rows * T * dIn];
        for (int j = 0; j < dIn; j++)
            for (int k = 0; k < 4; k++) pert[((4 * j + k) * T + pi) * dIn + j] = (float) steps[k];
        try (Scope s = new Scope(cpu)) {
            Tensor dx = s.fromArray(pert, rows * T * dIn);
            Tensor[] got = new Tensor[1];
            Hooks hooks = new Hooks()
                    .add(inName, (x, ctx) -> {
                        cpu.add(x.buffer(), x.offset(), x.buffer(), x.offset(), dx.buffer(), dx.offset(), dx.numel());
                        return null;
                    })
                    .add(outName, (x, ctx) -> {
                        got[0] = ctx.scope().copyOf(x);
                        return null;
                    });
            m.transformer().forward(s, Batch.of(tok), hooks);
            float[] y = got[0].toFloatArray();   // [rows, T, dOut]
            float[][] J = new float[dOut][dIn];
            for (int j = 0; j < dIn; j++)
                for (int i = 0; i < dOut; i++) {
                    double[] v = new double[4];
                    for (int k = 0; k < 4; k++) v[k] = y[((4 * j + k) * T + po) * dOut + i];
                    double dh = (v[0] - v[1]) / (2 * h), dh2 = (v[2] - v[3]) / h;
                    J[i][j] = (float) ((4 * dh2 - dh) / 3);   // O(h^4)
                }
            return J;
        }
    }

    @ParameterizedTest
    @CsvSource({
            "blocks.0.attn.hook_z, 2, blocks.1.hook_mlp_out, 7",
            "blocks.0.mlp.hook_post, 3, logits, 7",
            "blocks.1.hook_resid_mid, 7, ln_final.hook_normalized, 7",
            "hook_embed, 1, blocks.1.attn.hook_v, 4",
            "blocks.0.hook_attn_out, 2, blocks.1.attn.hook_rot_q, 2",
            "blocks.0.hook_resid_pre, 2, blocks.1.hook_resid_pre, 5",
            "blocks.1.ln2.hook_normalized, 5, blocks.1.mlp.hook_pre_linear, 5",
            "blocks.0.attn.hook_k, 1, blocks.0.attn.hook_z, 6"})
    void matchesFiniteDifferencesOnLlama(String inName, int pi, String outName, int po) {
        try (Model m = llama(); Scope s = new Scope(cpu)) {
            HookJacobian.Result r = HookJacobian.compute(s, m.transformer(), Batch.of(TOKENS), new HookSite(inName, pi),
                    new HookSite(outName, po));
            int dOut = r.jacobian().dim(0), dIn = r.jacobian().dim(1);
            float[][] fd = finiteDifferences(m, inName, pi, dIn, outName, po, dOut);
            float[] j = r.jacobian().toFloatArray();
            double max = 0, diff = 0;
            for (int i = 0; i < dOut; i++)
                for (int k = 0; k < dIn; k++) {
                    max = Math.max(max, Math.abs(fd[i][k]));
                    diff = Math.max(diff, Math.abs(fd[i][k] - j[i * dIn + k]));
                }
            System.out.printf("d %s@%d / d %s@%d [%d, %d]: max|J| %.3g, max|J - fd| / max|J| = %.3g%n",
                    outName, po, inName, pi, dOut, dIn, max, diff / max);
            assertTrue(max > 1e-3, "a Jacobian worth checking: max|J| = " + max);
            assertTrue(diff <= 1e-3 * max, inName + " -> " + outName + ": " + diff / max);
        }
    }

    /** The input and output values are the forward's own; chunked passes give the same rows as one pass. */
    @Test
    void valuesAndChunking() {
        try (Model m = llama(); Scope s = new Scope(cpu)) {
            Batch b = Batch.of(TOKENS);
            HookSite in = HookSite.parse("blocks.0.mlp.hook_post@-3"), out = HookSite.parse("logits@-1");
            HookJacobian.Result all = HookJacobian.compute(s, m.transformer(), b, in, out);
            HookJacobian.Result chunked = HookJacobian.compute(s, m.transformer(), b, in, out, HookJacobian.Options.DEFAULT.withRowsPerPass(5));
            assertArrayEquals(all.jacobian().toFloatArray(), chunked.jacobian().toFloatArray(), 1e-6f);
            Tensor[] post = new Tensor[1];
            float[] logits = m.transformer().forward(s, b, new Hooks().add("blocks.0.mlp.hook_post", (x, c) -> {
                post[0] = s.copyOf(x);
                return null;
            })).logits.toFloatArray();
            int T = TOKENS.length, V = m.config().vocab(), M = m.config().dMlp();
            float[] p = post[0].toFloatArray();
            assertArrayEquals(java.util.Arrays.copyOfRange(p, (T - 3) * M, (T - 2) * M), all.in().toFloatArray(), 0f);
            assertArrayEquals(java.util.Arrays.copyOfRange(logits, (T - 1) * V, T * V), all.out().toFloatArray(), 1e-5f);
        }
    }

    /**
     * Taken at another input value ({@link HookJacobian.Options#at}), J is the Jacobian there: for the
     * residual at the last position into the final norm, J(x) is the RMSNorm's own Jacobian at x.
     */
    @Test
    void atAGivenValue() {
        try (Model m = llama(); Scope s = new Scope(cpu)) {
            int C = m.config().dModel(), L = m.config().nLayers();
            float[] x = new float[C];
            for (int i = 0; i < C; i++) x[i] = (float) Math.sin(i + 1.0);
            HookJacobian.Result r = HookJacobian.compute(s, m.transformer(), Batch.of(TOKENS),
                    HookSite.parse("blocks." + (L - 1) + ".hook_resid_post@-1"), HookSite.parse("ln_final.hook_normalized@-1"),
                    HookJacobian.Options.DEFAULT.at(x));
            // normalized = x / rms(x): J = (I - x xᵀ / (C·ms)) / rms with ms = mean(x²) + eps.
            double ms = 0;
            for (float v : x) ms += v * v;
            ms = ms / C + 1e-5;
            double rms = Math.sqrt(ms);
            float[] j = r.jacobian().toFloatArray(), out = r.out().toFloatArray();
            for (int a = 0; a < C; a++) {
                assertEquals(x[a] / rms, out[a], 1e-5, "normalized at the given value");
                for (int b = 0; b < C; b++)
                    assertEquals(((a == b ? 1 : 0) - x[a] * x[b] / (C * ms)) / rms, j[a * C + b], 1e-5, "J[" + a + ", " + b + "]");
            }
            assertArrayEquals(x, r.in().toFloatArray(), 0f);
        }
    }

    @Test
    void sameHookIsIdentityOrZero() {
        try (Model m = llama(); Scope s = new Scope(cpu)) {
            int C = m.config().dModel();
            float[] same = HookJacobian.compute(s, m.transformer(), Batch.of(TOKENS), HookSite.parse("blocks.0.hook_resid_post@3"),
                    HookSite.parse("blocks.1.hook_resid_pre@3")).jacobian().toFloatArray();
            float[] other = HookJacobian.compute(s, m.transformer(), Batch.of(TOKENS), HookSite.parse("blocks.0.hook_resid_post@3"),
                    HookSite.parse("blocks.1.hook_resid_pre@4")).jacobian().toFloatArray();
            for (int a = 0; a < C; a++)
                for (int b = 0; b < C; b++) {
                    assertEquals(a == b ? 1f : 0f, same[a * C + b]);
                    assertEquals(0f, other[a * C + b]);
                }
        }
    }

    @Test
    void mistakesAreReported() {
        try (Model m = llama(); Scope s = new Scope(cpu)) {
            Batch b = Batch.of(TOKENS);
            var t = m.transformer();
            LoupeException e = assertThrows(LoupeException.class, () -> HookJacobian.compute(s, t, b,
                    HookSite.parse("blocks.1.hook_resid_pre@0"), HookSite.parse("blocks.0.hook_resid_post@-1")));
            assertTrue(e.getMessage().contains("does not come after"), e.getMessage());
            e = assertThrows(LoupeException.class, () -> HookJacobian.compute(s, t, b,
                    HookSite.parse("blocks.0.attn.hook_pattern@0"), HookSite.parse("logits@-1")));
            assertTrue(e.getMessage().contains("supported inputs") && e.getMessage().contains("blocks.{l}.hook_resid_pre"), e.getMessage());
            e = assertThrows(LoupeException.class, () -> HookJacobian.compute(s, t, b,
                    HookSite.parse("blocks.0.hook_resid_pre@0"), HookSite.parse("blocks.0.hook_resdi_post@-1")));
            assertTrue(e.getMessage().contains("unknown hook name") && e.getMessage().contains("blocks.0.hook_resid_post"), e.getMessage());
            assertThrows(LoupeException.class, () -> HookJacobian.compute(s, t, b,
                    HookSite.parse("blocks.0.hook_resid_pre@8"), HookSite.parse("logits@-1")));
            assertThrows(LoupeException.class, () -> HookSite.parse("blocks.0.hook_resid_pre"));
            assertThrows(LoupeException.class, () -> HookSite.parse("blocks.0.hook_resid_pre@x"));
        }
    }
}
