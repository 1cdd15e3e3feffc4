package loupe.engine.model;

import loupe.engine.Tensor;
import loupe.engine.io.DType;
import loupe.engine.io.SafeTensorsWriter;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * Writes a model as a HuggingFace directory ({@code config.json} + {@code model.safetensors}, f32) in the
 * layout {@link WeightLoader} reads back: GPT-2 with Conv1D {@code [in, out]} matrices and fused q|k|v,
 * Llama with {@code [out, in]} projections and rotate-half q/k rows. For {@code loupe init}, training
 * checkpoints and tests.
 */
public final class HfExport {
    private HfExport() {}

    /** The config.json content for {@code cfg}. */
    public static Map<String, Object> config(ModelConfig cfg) {
        Map<String, Object> c = new LinkedHashMap<>();
        if (cfg.family().equals("gpt2")) {
            c.put("architectures", java.util.List.of("GPT2LMHeadModel"));
            c.put("model_type", "gpt2");
            c.put("n_embd", cfg.dModel());
            c.put("n_layer", cfg.nLayers());
            c.put("n_head", cfg.nHeads());
            c.put("n_positions", cfg.nCtx());
            c.put("n_ctx", cfg.nCtx());
            c.put("n_inner", cfg.dMlp());
            c.put("vocab_size", cfg.vocab());
            c.put("layer_norm_epsilon", (double) cfg.normEps());
            c.put("activation_function", switch (cfg.act()) {
                case GELU_TANH -> "gelu_new";
                case GELU -> "gelu";
                case RELU -> "relu";
                case SILU -> "silu";
            });
            c.put("tie_word_embeddings", cfg.tiedEmbeddings());
        } else {
            c.put("architectures", java.util.List.of("LlamaForCausalLM"));
            c.put("model_type", "llama");
            c.put("hidden_size", cfg.dModel());
            c.put("intermediate_size", cfg.dMlp());
            c.put("num_hidden_layers", cfg.nLayers());
            c.put("num_attention_heads", cfg.nHeads());
            c.put("num_key_value_heads", cfg.nKvHeads());
            c.put("head_dim", cfg.dHead());
            c.put("vocab_size", cfg.vocab());
            c.put("max_position_embeddings", cfg.nCtx());
            c.put("rms_norm_eps", (double) cfg.normEps());
            c.put("rope_theta", cfg.ropeTheta());
            c.put("partial_rotary_factor", cfg.rotaryDim() / (double) cfg.dHead());
            c.put("hidden_act", "silu");
            c.put("tie_word_embeddings", cfg.tiedEmbeddings());
            c.put("attention_bias", cfg.qkvBias());
            c.put("mlp_bias", cfg.mlpBias());
            if (cfg.slidingWindow() > 0) {
                c.put("architectures", java.util.List.of("MistralForCausalLM"));
                c.put("model_type", "mistral");
                c.put("sliding_window", cfg.slidingWindow());
            }
        }
        c.put("torch_dtype", "float32");
        return c;
    }

    /** Writes {@code dir/config.json} and {@code dir/model.safetensors}. */
    public static void write(Transformer t, java.nio.file.Path dir) {
        ModelConfig cfg = t.config();
        try (Arena arena = Arena.ofConfined()) {
            java.nio.file.Files.createDirectories(dir);
            java.nio.file.Files.writeString(dir.resolve("config.json"), loupe.engine.io.Json.write(config(cfg)));
            SafeTensorsWriter w = new SafeTensorsWriter();
            for (Map.Entry<String, float[][]> e : tensors(t).entrySet()) {
                float[] data = e.getValue()[0];
                long[] shape = new long[e.getValue()[1].length];
                for (int i = 0; i < shape.length; i++) shape[i] = (long) e.getValue()[1][i];
                MemorySegment m = arena.allocateFrom(ValueLayout.JAVA_FLOAT, data);
                w.put(e.getKey(), DType.F32, shape, m);
            }
            w.metadata("format", "pt");
            w.write(dir.resolve("model.safetensors"));
        } catch (java.io.IOException e) {
            throw new loupe.LoupeException("cannot write model to " + dir + ": " + e.getMessage(), e);
        }
    }

    /** HF name → {data, shape (as floats)}, in HF layout. */
    static Map<String, float[][]> tensors(Transformer t) {
        ModelConfig cfg = t.config();
        Weights w = t.weights();
        Map<String, float[][]> m = new LinkedHashMap<>();
        int C = cfg.dModel();
        if (cfg.family().equals("gpt2")) {
            put(m, "transformer.wte.weight", w.embed);
            put(m, "transformer.wpe.weight", w.posEmbed);
            for (int l = 0; l < cfg.nLayers(); l++) {
                Weights.Layer lw = w.layers[l];
                String h = "transformer.h." + l + ".";
                put(m, h + "ln_1.weight", lw.ln1W);
                put(m, h + "ln_1.bias", lw.ln1B);
                float[] q = transpose(lw.wQ), k = transpose(lw.wK), v = transpose(lw.wV);   // each [C, C] in,out
                float[] qkv = new float[C * 3 * C];
                for (int i = 0; i < C; i++) {
                    System.arraycopy(q, i * C, qkv, i * 3 * C, C);
                    System.arraycopy(k, i * C, qkv, i * 3 * C + C, C);
                    System.arraycopy(v, i * C, qkv, i * 3 * C + 2 * C, C);
                }
                m.put(h + "attn.c_attn.weight", new float[][]{qkv, {C, 3 * C}});
                float[] b = new float[3 * C];
                System.arraycopy(lw.bQ.toFloatArray(), 0, b, 0, C);
                System.arraycopy(lw.bK.toFloatArray(), 0, b, C, C);
                System.arraycopy(lw.bV.toFloatArray(), 0, b, 2 * C, C);
                m.put(h + "attn.c_attn.bias", new float[][]{b, {3 * C}});
                m.put(h + "attn.c_proj.weight", new float[][]{transpose(lw.wO), {lw.wO.dim(1), lw.wO.dim(0)}});
                put(m, h + "attn.c_proj.bias", lw.bO);
                put(m, h + "ln_2.weight", lw.ln2W);
                put(m, h + "ln_2.bias", lw.ln2B);
                m.put(h + "mlp.c_fc.weight", new float[][]{transpose(lw.wIn), {lw.wIn.dim(1), lw.wIn.dim(0)}});
                put(m, h + "mlp.c_fc.bias", lw.bIn);
                m.put(h + "mlp.c_proj.weight", new float[][]{transpose(lw.wOut), {lw.wOut.dim(1), lw.wOut.dim(0)}});
                put(m, h + "mlp.c_proj.bias", lw.bOut);
            }
            put(m, "transformer.ln_f.weight", w.lnFinalW);
            put(m, "transformer.ln_f.bias", w.lnFinalB);
            if (w.unembed != w.embed) put(m, "lm_head.weight", w.unembed);
        } else {
            put(m, "model.embed_tokens.weight", w.embed);
            for (int l = 0; l < cfg.nLayers(); l++) {
                Weights.Layer lw = w.layers[l];
                String h = "model.layers." + l + ".";
                put(m, h + "input_layernorm.weight", lw.ln1W);
                putRotary(m, h + "self_attn.q_proj.weight", lw.wQ, cfg, cfg.nHeads());
                putRotary(m, h + "self_attn.k_proj.weight", lw.wK, cfg, cfg.nKvHeads());
                put(m, h + "self_attn.v_proj.weight", lw.wV);
                if (lw.bQ != null) {
                    putRotary(m, h + "self_attn.q_proj.bias", lw.bQ, cfg, cfg.nHeads());
                    putRotary(m, h + "self_attn.k_proj.bias", lw.bK, cfg, cfg.nKvHeads());
                    put(m, h + "self_attn.v_proj.bias", lw.bV);
                }
                put(m, h + "self_attn.o_proj.weight", lw.wO);
                put(m, h + "self_attn.o_proj.bias", lw.bO);
                put(m, h + "post_attention_layernorm.weight", lw.ln2W);
                put(m, h + "mlp.gate_proj.weight", lw.wGate);
                put(m, h + "mlp.up_proj.weight", lw.wIn);
                put(m, h + "mlp.down_proj.weight", lw.wOut);
                put(m, h + "mlp.gate_proj.bias", lw.bGate);
                put(m, h + "mlp.up_proj.bias", lw.bIn);
                put(m, h + "mlp.down_proj.bias", lw.bOut);
            }
            put(m, "model.norm.weight", w.lnFinalW);
            if (w.unembed != w.embed) put(m, "lm_head.weight", w.unembed);
        }
        return m;
    }

    private static void put(Map<String, float[][]> m, String name, Tensor t) {
        if (t == null) return;
        float[] shape = new float[t.rank()];
        for (int i = 0; i < shape.length; i++) shape[i] = t.dim(i);
        m.put(name, new float[][]{t.toFloatArray(), shape});
    }

    /**
     * q/k rows (or biases) in HF's rotate-half order: a model that rotates adjacent pairs (llama2.c) has
     * its rows permuted as HF's conversion script does, so the written model computes the same thing.
     */
    private static void putRotary(Map<String, float[][]> m, String name, Tensor t, ModelConfig cfg, int heads) {
        if (!cfg.ropeInterleaved()) {
            put(m, name, t);
            return;
        }
        if (cfg.rotaryDim() != cfg.dHead())
            throw new loupe.LoupeException("cannot export adjacent-pair partial rotary to the HF layout");
        int D = cfg.dHead(), cols = t.rank() == 2 ? t.dim(1) : 1;
        float[] src = t.toFloatArray(), dst = new float[src.length];
        for (int h = 0; h < heads; h++)
            for (int i = 0; i < D / 2; i++)
                for (int p = 0; p < 2; p++)
                    System.arraycopy(src, (h * D + 2 * i + p) * cols, dst, (h * D + p * (D / 2) + i) * cols, cols);
        float[] shape = t.rank() == 2 ? new float[]{t.dim(0), t.dim(1)} : new float[]{t.dim(0)};
        m.put(name, new float[][]{dst, shape});
    }

    private static float[] transpose(Tensor t) {
        int r = t.dim(0), c = t.dim(1);
        float[] a = t.toFloatArray(), b = new float[a.length];
        for (int i = 0; i < r; i++)
            for (int j = 0; j < c; j++) b[j * r + i] = a[i * c + j];
        return b;
    }
}
