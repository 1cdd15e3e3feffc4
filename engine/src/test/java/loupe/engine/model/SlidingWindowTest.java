package loupe.engine.model;

import loupe.LoupeException;
import loupe.engine.Batch;
import loupe.engine.Compare;
import loupe.engine.Model;
import loupe.engine.Scope;
import loupe.engine.hooks.Hooks;
import loupe.engine.io.Json;
import loupe.kernels.cpu.CpuBackend;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Path;
import java.util.Arrays;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Mistral's sliding-window attention: each query sees its last {@code window} positions. Checked by
 * what it must mean: with one block and rotary positions (which only see relative offsets), the
 * logits at position t equal those of the model run on the last {@code window} tokens alone.
 */
class SlidingWindowTest {
    static CpuBackend cpu;
    static final int[] TOKENS = {3, 14, 15, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3};

    @BeforeAll
    static void init() {
        cpu = new CpuBackend(2);
    }

    @AfterAll
    static void done() {
        cpu.close();
    }

    static ModelConfig oneBlock(int window) {
        return ModelConfig.llama(32, 1, 4, 2, 48, 16, 50, false).withSlidingWindow(window);
    }

    static float[] logits(Transformer t, int[] tokens) {
        try (Scope s = new Scope(cpu)) {
            return t.forward(s, Batch.of(tokens), Hooks.none()).logits.toFloatArray();
        }
    }

    @Test
    void eachPositionSeesItsLastWindowTokensOnly() {
        int w = 4, V = 50;
        try (Model windowed = Model.of(RandomWeights.create(oneBlock(w), 3, cpu));
             Model full = Model.of(RandomWeights.create(oneBlock(0), 3, cpu))) {
            float[] all = logits(windowed.transformer(), TOKENS), plain = logits(full.transformer(), TOKENS);
            for (int t = 0; t < TOKENS.length; t++) {
                float[] alone = logits(windowed.transformer(), Arrays.copyOfRange(TOKENS, Math.max(0, t - w + 1), t + 1));
                float[] last = Arrays.copyOfRange(alone, alone.length - V, alone.length);
                Compare.assertClose("position " + t, Arrays.copyOfRange(all, t * V, (t + 1) * V), last, 1e-5);
                float[] noWindow = Arrays.copyOfRange(plain, t * V, (t + 1) * V);
                // Up to the window, the window changes nothing (the same mask, the same bits); past it, it does.
                if (t < w) assertArrayEquals(noWindow, Arrays.copyOfRange(all, t * V, (t + 1) * V), "position " + t);
                else assertTrue(Compare.maxRelErr("position " + t, noWindow, Arrays.copyOfRange(all, t * V, (t + 1) * V)) > 1e-3, "position " + t);
            }
        }
    }

    @Test
    void generationWithTheKvCacheKeepsTheWindow() {
        try (Model m = Model.of(RandomWeights.create(ModelConfig.llama(32, 2, 4, 2, 48, 32, 50, false).withSlidingWindow(5), 4, cpu));
             Scope s = new Scope(cpu)) {
            Transformer t = m.transformer();
            int V = 50;
            float[] whole = t.forward(s, Batch.of(TOKENS), Hooks.none()).logits.toFloatArray();
            KVCache cache = new KVCache(s, t.config(), 1, TOKENS.length);
            int prefill = 3;
            float[] first = t.forward(s, Batch.of(Arrays.copyOf(TOKENS, prefill)), Hooks.none(), new Transformer.Options(false, cache)).logits.toFloatArray();
            Compare.assertClose("prefill", Arrays.copyOf(whole, prefill * V), first, 1e-5);
            for (int p = prefill; p < TOKENS.length; p++) {
                float[] step = t.forward(s, Batch.of(new int[]{TOKENS[p]}), Hooks.none(), new Transformer.Options(false, cache)).logits.toFloatArray();
                Compare.assertClose("step " + p, Arrays.copyOfRange(whole, p * V, (p + 1) * V), step, 1e-5);
            }
        }
    }

    @Test
    @SuppressWarnings("unchecked")
    void configsAndExports(@TempDir Path tmp) {
        Map<String, Object> mistral = (Map<String, Object>) Json.parse("""
                {"model_type": "mistral", "hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2,
                 "num_hidden_layers": 1, "intermediate_size": 48, "vocab_size": 50, "max_position_embeddings": 64,
                 "sliding_window": 7}""", "test");
        assertEquals(7, HfConfig.parse(mistral, "mistral").slidingWindow());
        Map<String, Object> noWindow = new java.util.HashMap<>(mistral);
        noWindow.put("sliding_window", null);
        assertEquals(0, HfConfig.parse(noWindow, "mistral").slidingWindow());
        Map<String, Object> qwen = new java.util.HashMap<>(mistral);
        qwen.put("model_type", "qwen2");
        qwen.put("use_sliding_window", false);
        assertEquals(0, HfConfig.parse(qwen, "qwen2").slidingWindow());
        qwen.put("use_sliding_window", true);
        LoupeException e = assertThrows(LoupeException.class, () -> HfConfig.parse(qwen, "qwen2"));
        assertTrue(e.getMessage().contains("use_sliding_window"), e.getMessage());
        assertThrows(LoupeException.class, () -> oneBlock(-1));

        // HfExport writes a Mistral config that loads back with its window and its numbers.
        try (Model m = Model.of(RandomWeights.create(oneBlock(4), 5, cpu))) {
            HfExport.write(m.transformer(), tmp);
            try (Model back = Model.load(tmp, cpu)) {
                assertEquals(4, back.config().slidingWindow());
                assertArrayEquals(logits(m.transformer(), TOKENS), logits(back.transformer(), TOKENS));
            }
        }
    }
}
