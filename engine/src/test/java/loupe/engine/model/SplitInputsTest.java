package loupe.engine.model;

import loupe.LoupeException;
import loupe.engine.Batch;
import loupe.engine.Compare;
import loupe.engine.Scope;
import loupe.engine.Tensor;
import loupe.engine.hooks.HookFn;
import loupe.engine.hooks.Hooks;
import loupe.kernels.cpu.CpuBackend;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

import java.util.HashMap;
import java.util.Map;
import java.util.Set;
import java.util.TreeSet;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The on-demand split inputs (hook_attn_in, hook_q_input, hook_k_input, hook_v_input, hook_mlp_in) with
 * TransformerLens's semantics: per-head copies of the residual stream that, when edited, feed only their
 * own head's projection (through ln1 of that head's own input), on GPT-2 and on a GQA Llama.
 */
class SplitInputsTest {
    static CpuBackend cpu;
    static Transformer gpt2, llama;
    static final int[][] BASE = {{3, 14, 15, 9, 2, 6}, {5, 3, 5, 8, 9, 7}};
    static final int[][] SOURCE = {{2, 7, 1, 8, 2, 8}, {1, 4, 1, 4, 2, 1}};

    @BeforeAll
    static void init() {
        cpu = new CpuBackend(2);
        gpt2 = RandomWeights.create(ModelConfig.gpt2(32, 2, 4, 16, 50), 11, cpu);
        llama = RandomWeights.create(ModelConfig.llama(32, 2, 4, 2, 48, 16, 50, false), 12, cpu);
    }

    @AfterAll
    static void done() {
        gpt2.weights().close();
        llama.weights().close();
        cpu.close();
    }

    /** Runs {@code hooks} plus a cache of {@code cached}; returns the cached activations and "logits" as floats. */
    static Map<String, float[]> run(Transformer t, int[][] tokens, Hooks hooks, java.util.function.Predicate<String> cached) {
        try (Scope s = new Scope(cpu)) {
            Map<String, Tensor> cache = new HashMap<>();
            Hooks h = new Hooks().addAll(hooks).cache(cached, s, cache);
            Transformer.Forward f = t.forward(s, Batch.of(tokens), h);
            Map<String, float[]> out = new HashMap<>();
            cache.forEach((k, v) -> out.put(k, v.toFloatArray()));
            out.put("logits", f.logits.toFloatArray());
            return out;
        }
    }

    /** Any of the globs. */
    static Hooks.Selector any(String... patterns) {
        return n -> java.util.Arrays.stream(patterns).anyMatch(p -> Hooks.glob(p).test(n));
    }

    /** An editing hook that overwrites head {@code head} of a {@code [batch, pos, n, d]} activation with {@code rows [batch, pos, d]}. */
    static HookFn setHead(int head, float[] rows) {
        return (x, ctx) -> {
            float[] v = x.toFloatArray();
            int n = x.dim(2), d = x.dim(3), bt = x.dim(0) * x.dim(1);
            for (int r = 0; r < bt; r++) System.arraycopy(rows, r * d, v, (r * n + head) * d, d);
            x.upload(v);
            return null;
        };
    }

    /** Head {@code head} of {@code [bt, n, d]} as {@code [bt, d]}. */
    static float[] head(float[] x, int bt, int n, int d, int head) {
        float[] out = new float[bt * d];
        for (int r = 0; r < bt; r++) System.arraycopy(x, (r * n + head) * d, out, r * d, d);
        return out;
    }

    @Test
    void starAndPredicatesLeaveSplitInputsOutAndGlobsThatNameThemSelectThem() {
        assertTrue(gpt2.hookNames().stream().noneMatch(n -> n.contains("_in")), "hookNames holds no split input");
        assertEquals(Set.of("blocks.0.hook_attn_in", "blocks.0.hook_q_input", "blocks.0.hook_k_input", "blocks.0.hook_v_input",
                "blocks.0.hook_mlp_in", "blocks.1.hook_attn_in", "blocks.1.hook_q_input", "blocks.1.hook_k_input",
                "blocks.1.hook_v_input", "blocks.1.hook_mlp_in"), Set.copyOf(gpt2.onDemandHookNames()));
        // GQA: one input per head cannot feed k and v of shared kv heads, so no hook_attn_in.
        assertTrue(llama.onDemandHookNames().stream().noneMatch(n -> n.endsWith("hook_attn_in")));
        assertEquals(8, llama.onDemandHookNames().size());

        // ("logits" is a hook point and also the key run() stores the logits under)
        Set<String> all = new TreeSet<>(run(gpt2, BASE, Hooks.none(), Hooks.glob("*")).keySet());
        assertEquals(new TreeSet<>(gpt2.hookNames()), all);
        Set<String> pred = new TreeSet<>(run(gpt2, BASE, Hooks.none(), n -> true).keySet());
        assertEquals(new TreeSet<>(gpt2.hookNames()), pred);
        Set<String> inputs = new TreeSet<>(run(gpt2, BASE, Hooks.none(), Hooks.glob("blocks.*.hook_*_in*")).keySet());
        inputs.remove("logits");
        assertEquals(new TreeSet<>(gpt2.onDemandHookNames()), inputs);

        assertThrows(LoupeException.class, () -> run(gpt2, BASE, new Hooks().add("blocks.0.hook_q_inputs", (x, c) -> null), n -> false));
    }

    @Test
    void cachedSplitInputsAreTheResidualPerHeadAndChangeNoNumber() {
        for (Transformer t : new Transformer[]{gpt2, llama}) {
            ModelConfig c = t.config();
            int C = c.dModel(), bt = BASE.length * BASE[0].length;
            float[] plain = run(t, BASE, Hooks.none(), n -> false).get("logits");
            Map<String, float[]> got = run(t, BASE, Hooks.none(), any("blocks.*.hook_*_in*", "blocks.*.hook_resid_*"));
            assertArrayEquals(plain, got.get("logits"), "caching split inputs changes no logit");
            for (int l = 0; l < c.nLayers(); l++) {
                float[] resid = got.get("blocks." + l + ".hook_resid_pre");
                for (String in : new String[]{"q_input", "k_input", "v_input"}) {
                    float[] x = got.get("blocks." + l + ".hook_" + in);
                    int n = in.startsWith("q") ? c.nHeads() : c.nKvHeads();
                    assertEquals((long) bt * n * C, x.length, in + " is [batch, pos, n, d_model]");
                    for (int h = 0; h < n; h++) assertArrayEquals(resid, head(x, bt, n, C, h), in + " head " + h + " is resid_pre");
                }
                assertArrayEquals(got.get("blocks." + l + ".hook_resid_mid"), got.get("blocks." + l + ".hook_mlp_in"));
            }
        }
    }

    @Test
    void anEditedQueryInputFeedsThatHeadsQueryOnly() {
        for (Transformer t : new Transformer[]{gpt2, llama}) {
            ModelConfig c = t.config();
            int D = c.dHead(), H = c.nHeads(), bt = BASE.length * BASE[0].length, L = 1, h = 2;
            String at = "blocks." + L + ".";
            Hooks.Selector qkv = any(at + "attn.hook_?", at + "hook_resid_pre");
            Map<String, float[]> base = run(t, BASE, Hooks.none(), qkv);
            Map<String, float[]> src = run(t, SOURCE, Hooks.none(), qkv);
            Map<String, float[]> edited = run(t, BASE, new Hooks().add(at + "hook_q_input", setHead(h, src.get(at + "hook_resid_pre"))), qkv);
            float[] q = edited.get(at + "attn.hook_q");
            Compare.assertClose("edited head's q", head(q, bt, H, D, h), head(src.get(at + "attn.hook_q"), bt, H, D, h), 1e-5);
            for (int o = 0; o < H; o++)
                if (o != h) Compare.assertClose("head " + o + " q", head(q, bt, H, D, o), head(base.get(at + "attn.hook_q"), bt, H, D, o), 1e-5);
            assertArrayEquals(base.get(at + "attn.hook_k"), edited.get(at + "attn.hook_k"), "k untouched");
            assertArrayEquals(base.get(at + "attn.hook_v"), edited.get(at + "attn.hook_v"), "v untouched");
        }
    }

    @Test
    void anEditedKeyOrValueInputFeedsThatKvHeadOnly() {
        ModelConfig c = llama.config();
        int D = c.dHead(), HKV = c.nKvHeads(), bt = BASE.length * BASE[0].length, j = 1;
        String at = "blocks.0.";
        Hooks.Selector kv = any(at + "attn.hook_?", at + "hook_resid_pre");
        Map<String, float[]> base = run(llama, BASE, Hooks.none(), kv);
        Map<String, float[]> src = run(llama, SOURCE, Hooks.none(), kv);
        for (String which : new String[]{"k", "v"}) {
            Map<String, float[]> edited = run(llama, BASE,
                    new Hooks().add(at + "hook_" + which + "_input", setHead(j, src.get(at + "hook_resid_pre"))), kv);
            float[] x = edited.get(at + "attn.hook_" + which);
            Compare.assertClose(which + " of the edited kv head", head(x, bt, HKV, D, j), head(src.get(at + "attn.hook_" + which), bt, HKV, D, j), 1e-5);
            Compare.assertClose(which + " of the other kv head", head(x, bt, HKV, D, 0), head(base.get(at + "attn.hook_" + which), bt, HKV, D, 0), 1e-5);
            assertArrayEquals(base.get(at + "attn.hook_q"), edited.get(at + "attn.hook_q"), "q untouched by " + which + "_input");
        }
    }

    @Test
    void anEditedAttentionInputFeedsQueryKeyAndValueOfThatHead() {
        ModelConfig c = gpt2.config();
        int D = c.dHead(), H = c.nHeads(), bt = BASE.length * BASE[0].length, h = 1;
        String at = "blocks.1.";
        Hooks.Selector qkv = any(at + "attn.hook_?", at + "hook_resid_pre");
        Map<String, float[]> src = run(gpt2, SOURCE, Hooks.none(), qkv);
        Map<String, float[]> edited = run(gpt2, BASE, new Hooks().add(at + "hook_attn_in", setHead(h, src.get(at + "hook_resid_pre"))), qkv);
        for (String which : new String[]{"q", "k", "v"})
            Compare.assertClose(which, head(edited.get(at + "attn.hook_" + which), bt, H, D, h),
                    head(src.get(at + "attn.hook_" + which), bt, H, D, h), 1e-5);
    }

    @Test
    void anEditedMlpInputFeedsTheMlpButNotTheResidualStream() {
        for (Transformer t : new Transformer[]{gpt2, llama}) {
            String at = "blocks.0.";
            Hooks.Selector want = any(at + "hook_resid_mid", at + "hook_mlp_out", at + "hook_resid_post");
            Map<String, float[]> base = run(t, BASE, Hooks.none(), want);
            Map<String, float[]> src = run(t, SOURCE, Hooks.none(), want);
            float[] srcMid = src.get(at + "hook_resid_mid");
            Map<String, float[]> edited = run(t, BASE, new Hooks().add(at + "hook_mlp_in", (x, ctx) -> {
                x.upload(srcMid);
                return null;
            }), want);
            assertArrayEquals(base.get(at + "hook_resid_mid"), edited.get(at + "hook_resid_mid"), "resid_mid untouched");
            Compare.assertClose("mlp_out", edited.get(at + "hook_mlp_out"), src.get(at + "hook_mlp_out"), 1e-6);
            float[] mid = base.get(at + "hook_resid_mid"), out = edited.get(at + "hook_mlp_out"), sum = new float[mid.length];
            for (int i = 0; i < sum.length; i++) sum[i] = mid[i] + out[i];
            assertArrayEquals(sum, edited.get(at + "hook_resid_post"), "resid_post = resid_mid + the MLP of the edited input");
        }
    }

    @Test
    void anUneditedSplitPassLeavesTheLogitsWhereTheyWere() {
        // An editing hook that changes nothing forces the per-head path: same numbers up to rounding.
        for (Transformer t : new Transformer[]{gpt2, llama}) {
            float[] plain = run(t, BASE, Hooks.none(), n -> false).get("logits");
            Hooks identity = new Hooks().add(Hooks.glob("blocks.*.hook_*_in*"), (x, ctx) -> null);
            Compare.assertClose("logits", run(t, BASE, identity, n -> false).get("logits"), plain, 1e-5);
        }
    }

    @Test
    void theBackwardPassRefusesSplitInputsClearly() {
        try (Scope s = new Scope(cpu)) {
            Batch b = Batch.of(BASE);
            Transformer.Forward f = gpt2.forward(s, b, new Hooks().add("blocks.1.hook_q_input", (x, ctx) -> null),
                    new Transformer.Options(true, null));
            LoupeException e = assertThrows(LoupeException.class, () -> Backward.run(s, gpt2, f, Backward.Options.fromLogits(s.zeros(f.logits.shape()))));
            assertTrue(e.getMessage().contains("split input") && e.getMessage().contains("block 1"), e.getMessage());
            Transformer.Forward g = gpt2.forward(s, b, Hooks.none(), new Transformer.Options(true, null));
            LoupeException e2 = assertThrows(LoupeException.class, () -> Backward.run(s, gpt2, g, Backward.Options.fromLogits(s.zeros(g.logits.shape()))
                    .withHooks(new Hooks().add("blocks.0.hook_v_input", (x, ctx) -> null))));
            assertTrue(e2.getMessage().contains("split input"), e2.getMessage());
        }
    }
}
