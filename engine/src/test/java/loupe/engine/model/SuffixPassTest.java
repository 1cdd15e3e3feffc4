package loupe.engine.model;

import loupe.LoupeException;
import loupe.engine.Batch;
import loupe.engine.Scope;
import loupe.engine.Tensor;
import loupe.engine.hooks.HookPoint;
import loupe.engine.hooks.Hooks;
import loupe.kernels.cpu.CpuBackend;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Suffix passes ({@link Transformer.Suffix}): computing only each sequence's last positions, with the
 * earlier ones' q/k/v taken from a reference run, gives the rows a whole pass gives (bit for bit where
 * {@link Transformer#suffixExact} says the backend's GEMMs allow it); hooks see the documented layouts.
 * Models are wide enough (d_model 256) for OpenBLAS to take its large-matrix kernels at these heights.
 */
class SuffixPassTest {
    static CpuBackend cpu;
    static Transformer gpt2, llama;
    static final int T = 12, P = 2, COPIES = 2;
    static final int[] FROM = {0, 5, 11, 3};   // B = COPIES * P sequences: 12 + 7 + 1 + 9 = 29 rows

    @BeforeAll
    static void init() {
        cpu = new CpuBackend(2);
        gpt2 = RandomWeights.create(ModelConfig.gpt2(256, 3, 4, 32, 64), 21, cpu);
        llama = RandomWeights.create(ModelConfig.llama(256, 3, 4, 2, 512, 32, 64, false), 22, cpu);
    }

    @AfterAll
    static void done() {
        gpt2.weights().close();
        llama.weights().close();
        cpu.close();
    }

    static int[][] tokens(int vocab, long seed) {
        java.util.Random r = new java.util.Random(seed);
        int[][] t = new int[P][T];
        for (int[] row : t) for (int i = 0; i < T; i++) row[i] = r.nextInt(vocab);
        return t;
    }

    static Batch copies(int[][] t) {
        int[][] all = new int[COPIES * P][];
        for (int b = 0; b < all.length; b++) all[b] = t[b % P];
        return Batch.of(all);
    }

    static Tensor[] layers(Map<String, Tensor> got, HookPoint p, int n) {
        Tensor[] t = new Tensor[n];
        for (int l = 0; l < n; l++) t[l] = got.get(p.name(l));
        return t;
    }

    static final int[] JOIN = {0, 0, 1, 2};   // sequences 2 and 3 join at blocks 1 and 2

    /**
     * Unedited, every computed row is the reference run's: sequence b's positions from FROM[b] at blocks
     * from JOIN[b] on, whole sequences in the attention core, and the last logits.
     */
    @Test
    void computedRowsEqualTheReferenceRun() {
        for (Transformer t : List.of(gpt2, llama)) {
            int L = t.config().nLayers(), C = t.config().dModel(), H = t.config().nHeads(), D = t.config().dHead(), V = t.config().vocab();
            int[][] tok = tokens(V, 5);
            try (Scope s = new Scope(cpu)) {
                Map<String, Tensor> ref = new HashMap<>();
                t.forward(s, Batch.of(tok), new Hooks().cache(n -> n.matches("blocks\\.\\d+\\.(attn\\.hook_[qkvz]|hook_resid_(pre|post))"), s, ref));
                float[] refLogits = t.forward(s, Batch.of(tok), Hooks.none(), Transformer.Options.DEFAULT.withLastLogitsOnly()).logits.toFloatArray();
                Transformer.Suffix sfx = new Transformer.Suffix(FROM, JOIN, layers(ref, HookPoint.RESID_PRE, L),
                        layers(ref, HookPoint.Q, L), layers(ref, HookPoint.K, L), layers(ref, HookPoint.V, L));
                int rows = sfx.rows(T);
                assertEquals(29, rows);
                assertArrayEquals(new int[]{19, 20, 29}, sfx.heights(T, 0, L), "block heights: sequences joined by blocks 0, 1, 2");
                boolean exact = true;
                for (int h : sfx.heights(T, 0, L)) exact &= t.suffixExact(h, T);
                System.out.println("SuffixPassTest " + t.config().family() + ": suffixExact at heights 19, 20, 29 = " + exact);

                Map<String, Tensor> part = new HashMap<>();
                int[][] shapes = new int[2][];
                Hooks h = new Hooks().cache(n -> n.endsWith("hook_resid_post") || n.endsWith("hook_z"), s, part)
                        .add(HookPoint.RESID_MID.name(1), (x, ctx) -> { shapes[0] = x.shape(); return null; })
                        .add(HookPoint.PATTERN.name(1), (x, ctx) -> { shapes[1] = x.shape(); return null; });
                Transformer.Options o = Transformer.Options.DEFAULT.withLastLogitsOnly().withSuffix(sfx);
                Transformer.Forward f = t.forward(s, copies(tok), h, o);

                String what = t.config().family() + (exact ? " (exact)" : " (tolerance)");
                int[] rowStart = sfx.rowStart(T);
                assertArrayEquals(new int[]{1, rowStart[3], C}, shapes[0], "block 1's row-wise hooks see the rows of the 3 sequences joined");
                assertArrayEquals(new int[]{3, H, T, T}, shapes[1], "block 1's attention hooks see those 3 whole sequences");
                for (int l = 0; l < L; l++) {
                    int active = sfx.active(l);
                    float[] refPost = ref.get(HookPoint.RESID_POST.name(l)).toFloatArray(), refZ = ref.get(HookPoint.Z.name(l)).toFloatArray();
                    float[] post = part.get(HookPoint.RESID_POST.name(l)).toFloatArray(), z = part.get(HookPoint.Z.name(l)).toFloatArray();
                    assertEquals(rowStart[active] * C, post.length, "block " + l + " computes the rows of the sequences joined");
                    assertEquals(active * T * H * D, z.length);
                    for (int b = 0; b < active; b++) {
                        int p = b % P;
                        close(Arrays.copyOfRange(refPost, (p * T + FROM[b]) * C, (p + 1) * T * C),
                                Arrays.copyOfRange(post, rowStart[b] * C, rowStart[b + 1] * C), exact, what + " resid_post " + l + " sequence " + b);
                        close(Arrays.copyOfRange(refZ, p * T * H * D, (p + 1) * T * H * D),
                                Arrays.copyOfRange(z, b * T * H * D, (b + 1) * T * H * D), exact, what + " z " + l + " sequence " + b);
                    }
                }
                float[] logits = f.logits.toFloatArray();
                assertEquals(COPIES * P * V, logits.length);
                for (int b = 0; b < COPIES * P; b++)
                    close(Arrays.copyOfRange(refLogits, (b % P) * V, (b % P + 1) * V), Arrays.copyOfRange(logits, b * V, (b + 1) * V),
                            exact, what + " last logits of sequence " + b);
            }
        }
    }

    /** The whole pass gives GPT-2-sized GEMM heights the same row bits on this machine's OpenBLAS; a failure here means it stopped. */
    @Test
    void openBlasGivesWideModelsExactSuffixes() {
        assertTrue(gpt2.suffixExact(32, 16) && llama.suffixExact(32, 16),
                "the CPU backend's GEMM rounds rows differently at 32 and 16 rows for d_model 256: suffix passes would fall back");
        assertEquals(false, gpt2.suffixExact(8, 16), "fewer rows than a sequence are never promised");
    }

    /**
     * With lastLogitsOnly, the last block goes on after attention with each sequence's last position only
     * (residFinal [1, B, d_model]) when the GEMMs allow it, giving the logits of the whole block bit for
     * bit; a hook reading the rows after attention keeps the whole block.
     */
    @Test
    void theLastBlockGoesOnWithTheLastPositionsOnly() {
        for (Transformer t : List.of(gpt2, llama)) {
            int L = t.config().nLayers(), C = t.config().dModel(), V = t.config().vocab(), B = 32;
            int[][] tok = new int[B][];
            int[][] base = tokens(V, 8);
            for (int b = 0; b < B; b++) tok[b] = base[b % P];
            Weights.Layer lw = t.weights().layers[L - 1];
            boolean allowed = true;
            for (Tensor w : t.config().gatedMlp() ? List.of(lw.wO, lw.wIn, lw.wOut, lw.wGate) : List.of(lw.wO, lw.wIn, lw.wOut))
                allowed &= cpu.sameRowBits(true, B, T, w.dim(0), w.dim(1), w.buffer(), w.offset(), w.dim(1));
            assertTrue(allowed, "OpenBLAS rounds a row the same at 32 and 12 rows for d_model 256");
            try (Scope s = new Scope(cpu)) {
                Transformer.Forward last = t.forward(s, Batch.of(tok), Hooks.none(), Transformer.Options.DEFAULT.withLastLogitsOnly());
                // The same unembedding path (one row per sequence), the last block whole: a hook reads its mlp_out.
                Map<String, Tensor> kept = new HashMap<>();
                Transformer.Forward whole = t.forward(s, Batch.of(tok), new Hooks().cache(HookPoint.MLP_OUT.name(L - 1)::equals, s, kept),
                        Transformer.Options.DEFAULT.withLastLogitsOnly());
                assertArrayEquals(new int[]{1, B, C}, last.residFinal.shape(), t.config().family() + ": the last block ran the last positions only");
                assertArrayEquals(new int[]{B, T, C}, whole.residFinal.shape(), "a hook on mlp_out keeps every position");
                assertArrayEquals(whole.logits.toFloatArray(), last.logits.toFloatArray(), t.config().family() + ": bit for bit");
                assertEquals(B * V, last.logits.numel());
            }
        }
    }

    static void close(float[] want, float[] have, boolean exact, String what) {
        assertEquals(want.length, have.length, what);
        for (int i = 0; i < want.length; i++) {
            double tol = exact ? 0 : 1e-5 * Math.max(1, Math.abs(want[i]));
            if (!(Math.abs(want[i] - have[i]) <= tol))
                throw new AssertionError(what + ": element " + i + " is " + have[i] + ", the whole pass gives " + want[i]);
        }
    }

    @Test
    void badSuffixesAreRefused() {
        int L = gpt2.config().nLayers();
        int[][] tok = tokens(gpt2.config().vocab(), 6);
        try (Scope s = new Scope(cpu)) {
            Map<String, Tensor> ref = new HashMap<>();
            gpt2.forward(s, Batch.of(tok), new Hooks().cache(n -> n.matches("blocks\\.\\d+\\.(attn\\.hook_[qkv]|hook_resid_pre)"), s, ref));
            Tensor[] pre = layers(ref, HookPoint.RESID_PRE, L), q = layers(ref, HookPoint.Q, L), k = layers(ref, HookPoint.K, L),
                    v = layers(ref, HookPoint.V, L);
            Transformer.Options o = Transformer.Options.DEFAULT.withLastLogitsOnly();
            Batch b = copies(tok);
            String[] messages = {
                    run(() -> gpt2.forward(s, b, Hooks.none(), o.withSuffix(new Transformer.Suffix(new int[]{0, 1, 12, 0}, null, pre, q, k, v)))),
                    run(() -> gpt2.forward(s, b, Hooks.none(), o.withSuffix(new Transformer.Suffix(new int[]{0, 1}, null, pre, q, k, v)))),
                    run(() -> gpt2.forward(s, b, Hooks.none(), Transformer.Options.DEFAULT.withSuffix(new Transformer.Suffix(FROM, null, pre, q, k, v)))),
                    run(() -> gpt2.forward(s, b, Hooks.none(), o.withSuffix(new Transformer.Suffix(FROM, null, pre, q, null, v)))),
                    run(() -> gpt2.forward(s, Batch.of(new int[][]{tok[0], tok[1], tok[0]}), Hooks.none(),
                            o.withSuffix(new Transformer.Suffix(new int[]{0, 1, 2}, null, pre, q, k, v)))),
                    run(() -> gpt2.forward(s, b, Hooks.none(), o.withSuffix(new Transformer.Suffix(FROM, new int[]{0, 2, 1, 2}, pre, q, k, v)))),
                    run(() -> gpt2.forward(s, b, Hooks.none(), new Transformer.Options(false, null, 0, s.zeros(4, T, 256), Integer.MAX_VALUE, true)
                            .withSuffix(new Transformer.Suffix(FROM, null, pre, q, k, v)))),
            };
            assertTrue(messages[0].contains("position 12"), messages[0]);
            assertTrue(messages[1].contains("2 first positions for a batch of 4"), messages[1]);
            assertTrue(messages[2].contains("lastLogitsOnly"), messages[2]);
            assertTrue(messages[3].contains("reference k"), messages[3]);
            assertTrue(messages[4].contains("not copies"), messages[4]);
            assertTrue(messages[5].contains("in order"), messages[5]);
            assertTrue(messages[6].contains("start residual"), messages[6]);
        }
    }

    static String run(Runnable r) {
        return assertThrows(LoupeException.class, r::run).getMessage();
    }
}
