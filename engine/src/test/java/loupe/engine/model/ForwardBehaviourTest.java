package loupe.engine.model;

import loupe.LoupeException;
import loupe.engine.Batch;
import loupe.engine.Scope;
import loupe.engine.Tensor;
import loupe.engine.hooks.Hooks;
import loupe.kernels.cpu.CpuBackend;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

import java.util.LinkedHashMap;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** Padding, interventions, start/stop and input validation on small random GPT-2 and Llama models. */
class ForwardBehaviourTest {
    static CpuBackend cpu;
    static Transformer gpt2, llama;

    @BeforeAll
    static void init() {
        cpu = new CpuBackend(2);
        gpt2 = RandomWeights.create(ModelConfig.gpt2(32, 2, 4, 16, 50), 1, cpu);
        ModelConfig l = ModelConfig.llama(32, 2, 4, 2, 48, 16, 50, false);
        llama = RandomWeights.create(l, 2, cpu);
    }

    @AfterAll
    static void done() {
        gpt2.weights().close();
        llama.weights().close();
        cpu.close();
    }

    static float[] logitsOf(Transformer t, Batch b) {
        try (Scope s = new Scope(cpu)) {
            return t.forward(s, b, Hooks.none()).logits.toFloatArray();
        }
    }

    static void assertRowsEqual(float[] a, int aRow, float[] b, int bRow, int v, double tol) {
        for (int i = 0; i < v; i++)
            assertEquals(a[aRow * v + i], b[bRow * v + i], tol, "logit " + i + " of row " + aRow + "/" + bRow);
    }

    /** Options.logitColumns computes the logits of the given ids only (close to the full unembedding), the rest 0. */
    @Test
    void logitColumnsComputeThoseColumnsOnly() {
        for (Transformer t : new Transformer[]{gpt2, llama}) {
            int V = t.config().vocab();
            int[] ids = {7, 3, V - 1};
            Batch b = Batch.of(new int[][]{{3, 14, 15, 9, 2}, {2, 7, 1, 8, 2}});
            for (boolean last : new boolean[]{false, true}) {
                try (Scope s = new Scope(cpu)) {
                    Transformer.Options o = last ? Transformer.Options.DEFAULT.withLastLogitsOnly() : Transformer.Options.DEFAULT;
                    float[] full = t.forward(s, b, Hooks.none(), o).logits.toFloatArray();
                    float[] some = t.forward(s, b, Hooks.none(), o.withLogitColumns(ids)).logits.toFloatArray();
                    assertEquals(full.length, some.length);
                    double scale = 0;
                    for (float v : full) scale = Math.max(scale, Math.abs(v));
                    for (int i = 0; i < full.length; i++) {
                        int col = i % V;
                        boolean wanted = col == 7 || col == 3 || col == V - 1;
                        if (wanted) assertEquals(full[i], some[i], 1e-6 * scale, "column " + col);
                        else assertEquals(0f, some[i], "column " + col + " is not computed");
                    }
                }
            }
            try (Scope s = new Scope(cpu)) {
                LoupeException e = assertThrows(LoupeException.class,
                        () -> t.forward(s, b, Hooks.none(), Transformer.Options.DEFAULT.withLogitColumns(new int[]{V})));
                assertTrue(e.getMessage().contains("vocabulary id " + V), e.getMessage());
            }
        }
    }

    /**
     * A cache owned by the forward's own scope keeps the activations themselves (no copy): none of them
     * may be overwritten by a later block. Compared with copies into another scope, for every hook, with
     * some hooks only read and one point edited (which must keep its copy semantics).
     */
    @Test
    void keptActivationsAreNeverOverwritten() {
        for (Transformer t : new Transformer[]{gpt2, llama}) {
            Batch b = Batch.of(new int[][]{{3, 14, 15, 9, 2, 6, 5}, {2, 7, 1, 8, 2, 8, 1}});
            for (java.util.function.Predicate<String> which : java.util.List.<java.util.function.Predicate<String>>of(
                    n -> true, n -> n.contains("resid"), n -> n.endsWith("hook_pattern") || n.endsWith("hook_resid_post"))) {
                try (Scope own = new Scope(cpu); Scope other = new Scope(cpu)) {
                    Map<String, Tensor> kept = new LinkedHashMap<>(), copied = new LinkedHashMap<>();
                    java.util.Set<String> keptNames = new java.util.HashSet<>();
                    Hooks h = new Hooks()
                            .add("blocks.1.hook_mlp_out", (x, ctx) -> {
                                assertTrue(!ctx.kept(), "an edited point is not kept");
                                x.fill(0.25f);
                                return null;
                            })
                            // blocks.1.hook_resid_pre is blocks.0.hook_resid_post's tensor: editing it must not
                            // change what the caches hold for the latter (they ran before the edit).
                            .add("blocks.1.hook_resid_pre", (x, ctx) -> {
                                x.fill(-0.5f);
                                return null;
                            })
                            .add(which, loupe.engine.hooks.HookFn.reader((x, ctx) -> {
                                if (ctx.kept()) keptNames.add(ctx.name());
                            }))
                            .cache(which, own, kept)
                            .cache(which, other, copied);
                    t.forward(own, b, h);
                    assertEquals(copied.keySet(), kept.keySet());
                    for (String n : copied.keySet())
                        org.junit.jupiter.api.Assertions.assertArrayEquals(copied.get(n).toFloatArray(), kept.get(n).toFloatArray(), n);
                    if (which.test("blocks.0.hook_resid_mid")) assertTrue(keptNames.contains("blocks.0.hook_resid_mid"));
                    assertTrue(!keptNames.contains("blocks.0.hook_resid_post"), "edited again as blocks.1.hook_resid_pre");
                    assertTrue(!keptNames.contains("blocks.1.hook_mlp_out"));
                }
            }
        }
    }

    @Test
    void paddedSequencesMatchTheSequenceAlone() {
        for (Transformer t : new Transformer[]{gpt2, llama}) {
            int v = t.config().vocab();
            int[] seq = {3, 14, 15, 9, 2};
            int[] other = {7, 1, 8, 2, 8, 1, 8, 2};
            float[] alone = logitsOf(t, Batch.of(seq));
            float[] left = logitsOf(t, Batch.leftPadded(0, seq, other));
            float[] right = logitsOf(t, Batch.rightPadded(0, seq, other));
            int T = other.length;
            for (int p = 0; p < seq.length; p++) {
                assertRowsEqual(alone, p, left, T - seq.length + p, v, 1e-5);   // batch row 0, shifted right
                assertRowsEqual(alone, p, right, p, v, 1e-5);
            }
            float[] otherAlone = logitsOf(t, Batch.of(other));
            for (int p = 0; p < T; p++) assertRowsEqual(otherAlone, p, left, T + p, v, 1e-5);
        }
    }

    @Test
    void interventionEditsFlowDownstreamAndCacheSeesThem() {
        try (Scope s = new Scope(cpu)) {
            Batch b = Batch.of(new int[]{1, 2, 3, 4});
            Map<String, Tensor> cache = new LinkedHashMap<>();
            Hooks h = new Hooks()
                    .add("blocks.0.hook_mlp_out", (x, ctx) -> { x.fill(0f); return null; })
                    .cache(n -> n.startsWith("blocks.0."), s, cache);
            gpt2.forward(s, b, h);
            for (float f : cache.get("blocks.0.hook_mlp_out").toFloatArray()) assertEquals(0f, f);
            float[] mid = cache.get("blocks.0.hook_resid_mid").toFloatArray(), post = cache.get("blocks.0.hook_resid_post").toFloatArray();
            for (int i = 0; i < mid.length; i++) assertEquals(mid[i], post[i], 0f);
        }
    }

    @Test
    void startingFromACachedResidualReproducesTheLogits() {
        for (Transformer t : new Transformer[]{gpt2, llama}) {
            try (Scope s = new Scope(cpu)) {
                Batch b = Batch.of(new int[]{5, 6, 7, 8, 9});
                Map<String, Tensor> cache = new LinkedHashMap<>();
                var full = t.forward(s, b, new Hooks().cache(n -> n.equals("blocks.1.hook_resid_pre"), s, cache));
                var part = t.forward(s, b, Hooks.none(), Transformer.Options.range(1, cache.get("blocks.1.hook_resid_pre"), Integer.MAX_VALUE, false));
                float[] a = full.logits.toFloatArray(), c = part.logits.toFloatArray();
                for (int i = 0; i < a.length; i++) assertEquals(a[i], c[i], 0f);
            }
        }
    }

    @Test
    void badInputRaisesLoupeException() {
        try (Scope s = new Scope(cpu)) {
            LoupeException e = assertThrows(LoupeException.class, () -> gpt2.forward(s, Batch.of(new int[]{1, 50}), Hooks.none()));
            assertTrue(e.getMessage().contains("token id 50"), e.getMessage());
            e = assertThrows(LoupeException.class, () -> gpt2.forward(s, Batch.of(new int[]{-1}), Hooks.none()));
            assertTrue(e.getMessage().contains("out of range"), e.getMessage());
            e = assertThrows(LoupeException.class, () -> gpt2.forward(s, Batch.of(new int[17]), Hooks.none()));
            assertTrue(e.getMessage().contains("longer than the model's context of 16"), e.getMessage());
            e = assertThrows(LoupeException.class, () -> gpt2.forward(s, Batch.of(new int[]{1}),
                    new Hooks().add("blocks.0.hook_resid_pst", (x, c) -> null)));
            assertTrue(e.getMessage().contains("unknown hook name 'blocks.0.hook_resid_pst'") && e.getMessage().contains("blocks.0.hook_resid_post"), e.getMessage());
            e = assertThrows(LoupeException.class, () -> gpt2.forward(s, Batch.of(new int[]{1, 2}),
                    new Hooks().add("blocks.1.attn.hook_z", (x, c) -> c.scope().zeros(1, 2, 4))));
            assertTrue(e.getMessage().contains("blocks.1.attn.hook_z") && e.getMessage().contains("[1, 2, 4, 8]"), e.getMessage());
            assertThrows(LoupeException.class, () -> Batch.of(new int[]{1, 2}, new int[]{1}));
        }
    }

    @Test
    void batchedGenerationOfUnequalPromptsMatchesEachAlone() {
        for (Transformer t : new Transformer[]{gpt2, llama}) {
            int[] a = {3, 14, 15}, b = {9, 2, 6, 5, 35, 8, 9};
            var both = loupe.engine.generate.Generator.generate(t, new int[][]{a, b}, 6, loupe.engine.generate.Sampling.greedy(),
                    java.util.OptionalInt.empty(), Hooks.none(), 0);
            for (int i = 0; i < 2; i++) {
                var alone = loupe.engine.generate.Generator.generate(t, new int[][]{i == 0 ? a : b}, 6,
                        loupe.engine.generate.Sampling.greedy(), java.util.OptionalInt.empty(), Hooks.none(), 0);
                org.junit.jupiter.api.Assertions.assertArrayEquals(alone.ids()[0], both.ids()[i], t.config().family() + " sequence " + i);
            }
        }
    }

    @Test
    void repeatedForwardsAreBitIdentical() {
        // The JIT must not change results: the same forward, cold and hot, gives the same bits.
        Batch b = Batch.of(new int[]{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11});
        for (Transformer t : new Transformer[]{gpt2, llama}) {
            float[] first = logitsOf(t, b);
            for (int i = 0; i < 300; i++)
                org.junit.jupiter.api.Assertions.assertArrayEquals(first, logitsOf(t, b), 0f, t.config().family() + " run " + i);
        }
    }

    @Test
    void hookNamesFollowTransformerLens() {
        assertTrue(gpt2.hookNames().contains("blocks.1.attn.hook_result"));
        assertTrue(gpt2.hookNames().contains("hook_pos_embed"));
        assertTrue(!gpt2.hookNames().contains("blocks.0.attn.hook_rot_q"));
        assertTrue(llama.hookNames().contains("blocks.0.attn.hook_rot_k"));
        assertTrue(llama.hookNames().contains("blocks.0.mlp.hook_pre_linear"));
        try (Scope s = new Scope(cpu)) {
            Map<String, Tensor> cache = new LinkedHashMap<>();
            llama.forward(s, Batch.of(new int[]{1, 2, 3}), new Hooks().cache(n -> true, s, cache));
            assertEquals(java.util.List.of(1, 3, 2, 8), java.util.Arrays.stream(cache.get("blocks.0.attn.hook_k").shape()).boxed().toList());
            assertEquals(java.util.List.of(1, 4, 3, 3), java.util.Arrays.stream(cache.get("blocks.0.attn.hook_pattern").shape()).boxed().toList());
            assertEquals(llama.hookNames().size(), cache.size());
        }
    }
}
