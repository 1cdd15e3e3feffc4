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

    @Test
    void computedRowsEqualTheWholePass() {
        for (Transformer t : List.of(gpt2, llama)) {
            int L = t.config().nLayers(), C = t.config().dModel(), V = t.config().vocab();
            int[][] tok = tokens(V, 5);
            Transformer.Suffix probe = new Transformer.Suffix(FROM, null, null, null);
            int rows = probe.rows(T);
            assertEquals(29, rows);
            boolean exact = t.suffixExact(rows, T);
            System.out.println("SuffixPassTest " + t.config().family() + ": suffixExact(" + rows + ", " + T + ") = " + exact);
            for (int start : new int[]{0, 1}) {
                try (Scope s = new Scope(cpu)) {
                    // The reference: the P prompts once, keeping q/k/v and resid_pre.
                    Map<String, Tensor> ref = new HashMap<>();
                    t.forward(s, Batch.of(tok), new Hooks().cache(n -> n.matches("blocks\\.\\d+\\.(attn\\.hook_[qkv]|hook_resid_pre)"), s, ref));
                    // The whole pass over the copies, keeping every resid_post and z.
                    Map<String, Tensor> whole = new HashMap<>();
                    Tensor startResid = s.empty(COPIES * P, T, C);
                    for (int c = 0; c < COPIES; c++) startResid.slice(c * P, (c + 1) * P).copyFrom(ref.get(HookPoint.RESID_PRE.name(start)));
                    Transformer.Options range = Transformer.Options.range(start, startResid, Integer.MAX_VALUE, false).withLastLogitsOnly();
                    Transformer.Forward w = t.forward(s, copies(tok),
                            new Hooks().cache(n -> n.endsWith("hook_resid_post") || n.endsWith("hook_z"), s, whole), range);
                    // The suffix pass.
                    Map<String, Tensor> part = new HashMap<>();
                    int[][] shapes = new int[2][];
                    Hooks h = new Hooks().cache(n -> n.endsWith("hook_resid_post") || n.endsWith("hook_z"), s, part)
                            .add(HookPoint.RESID_MID.name(start), (x, ctx) -> { shapes[0] = x.shape(); return null; })
                            .add(HookPoint.PATTERN.name(start), (x, ctx) -> { shapes[1] = x.shape(); return null; });
                    Transformer.Suffix sfx = new Transformer.Suffix(FROM, layers(ref, HookPoint.Q, L), layers(ref, HookPoint.K, L), layers(ref, HookPoint.V, L));
                    Transformer.Forward f = t.forward(s, copies(tok), h, range.withSuffix(sfx));

                    String what = t.config().family() + " from block " + start + (exact ? " (exact)" : " (tolerance)");
                    assertArrayEquals(new int[]{1, rows, C}, shapes[0], "row-wise hooks see the compact rows");
                    assertArrayEquals(new int[]{COPIES * P, t.config().nHeads(), T, T}, shapes[1], "attention hooks see whole sequences");
                    int[] rowStart = sfx.rowStart(T);
                    for (int l = start; l < L; l++) {
                        float[] all = whole.get(HookPoint.RESID_POST.name(l)).toFloatArray();
                        float[] got = part.get(HookPoint.RESID_POST.name(l)).toFloatArray();
                        assertEquals(rows * C, got.length);
                        for (int b = 0; b < FROM.length; b++) {
                            float[] want = Arrays.copyOfRange(all, (b * T + FROM[b]) * C, (b + 1) * T * C);
                            float[] have = Arrays.copyOfRange(got, rowStart[b] * C, rowStart[b + 1] * C);
                            close(want, have, exact, what + " resid_post " + l + " sequence " + b);
                        }
                        close(whole.get(HookPoint.Z.name(l)).toFloatArray(), part.get(HookPoint.Z.name(l)).toFloatArray(), exact, what + " z " + l);
                    }
                    assertArrayEquals(new int[]{COPIES * P, 1, V}, f.logits.shape());
                    close(w.logits.toFloatArray(), f.logits.toFloatArray(), exact, what + " last logits");
                }
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
            Tensor[] q = layers(ref, HookPoint.Q, L), k = layers(ref, HookPoint.K, L), v = layers(ref, HookPoint.V, L);
            Tensor start = s.zeros(COPIES * P, T, gpt2.config().dModel());
            Transformer.Options o = Transformer.Options.range(0, start, Integer.MAX_VALUE, false).withLastLogitsOnly();
            Batch b = copies(tok);
            String[] messages = {
                    run(() -> gpt2.forward(s, b, Hooks.none(), o.withSuffix(new Transformer.Suffix(new int[]{0, 1, 12, 0}, q, k, v)))),
                    run(() -> gpt2.forward(s, b, Hooks.none(), o.withSuffix(new Transformer.Suffix(new int[]{0, 1}, q, k, v)))),
                    run(() -> gpt2.forward(s, b, Hooks.none(), Transformer.Options.range(0, start, Integer.MAX_VALUE, false)
                            .withSuffix(new Transformer.Suffix(FROM, q, k, v)))),
                    run(() -> gpt2.forward(s, b, Hooks.none(), o.withSuffix(new Transformer.Suffix(FROM, q, null, v)))),
                    run(() -> gpt2.forward(s, Batch.of(new int[][]{tok[0], tok[1], tok[0]}), Hooks.none(),
                            Transformer.Options.range(0, s.zeros(3, T, gpt2.config().dModel()), Integer.MAX_VALUE, false).withLastLogitsOnly()
                                    .withSuffix(new Transformer.Suffix(new int[]{0, 1, 2}, q, k, v)))),
            };
            assertTrue(messages[0].contains("position 12"), messages[0]);
            assertTrue(messages[1].contains("2 first positions for a batch of 4"), messages[1]);
            assertTrue(messages[2].contains("lastLogitsOnly"), messages[2]);
            assertTrue(messages[3].contains("reference k"), messages[3]);
            assertTrue(messages[4].contains("not copies"), messages[4]);
        }
    }

    static String run(Runnable r) {
        return assertThrows(LoupeException.class, r::run).getMessage();
    }
}
