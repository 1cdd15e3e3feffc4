package loupe.engine.model;

import loupe.LoupeException;
import loupe.engine.io.Json;

import java.util.List;
import java.util.Map;

/**
 * Reads a HuggingFace {@code config.json} (as a parsed map) into a {@link ModelConfig}. Each supported
 * family is a few lines of description here; the forward pass is shared.
 */
public final class HfConfig {
    /** The {@code model_type}s loupe runs. */
    public static final List<String> MODEL_TYPES = List.of("gpt2", "llama", "mistral", "qwen2");
    /** The {@code architectures} entries loupe runs. */
    public static final List<String> ARCHITECTURES = List.of("GPT2LMHeadModel", "GPT2Model", "LlamaForCausalLM",
            "MistralForCausalLM", "Qwen2ForCausalLM");

    private HfConfig() {}

    /** The config; {@code what} names the source (a path) in messages. */
    public static ModelConfig parse(Map<String, Object> c, String what) {
        Object arch = c.get("architectures");
        if (arch instanceof List<?> l && !l.isEmpty()) {
            for (Object a : l)
                if (!ARCHITECTURES.contains(String.valueOf(a)))
                    throw new LoupeException(what + ": unsupported architecture \"" + a + "\"; supported: " + String.join(", ", ARCHITECTURES));
        }
        Object mt = c.get("model_type");
        if (mt == null) throw new LoupeException(what + ": missing key \"model_type\" (supported: " + String.join(", ", MODEL_TYPES) + ")");
        String type = String.valueOf(mt);
        return switch (type) {
            case "gpt2" -> gpt2(c, what);
            case "llama", "mistral", "qwen2" -> llama(c, type, what);
            default -> throw new LoupeException(what + ": unsupported model_type \"" + type + "\"; supported: " + String.join(", ", MODEL_TYPES));
        };
    }

    private static ModelConfig gpt2(Map<String, Object> c, String what) {
        int d = Json.getInt(c, "n_embd", what), heads = Json.getInt(c, "n_head", what);
        if (d % heads != 0) throw new LoupeException(what + ": n_embd " + d + " is not divisible by n_head " + heads);
        Object inner = c.get("n_inner");
        int dMlp = inner instanceof Number n ? n.intValue() : 4 * d;
        String act = String.valueOf(c.getOrDefault("activation_function", "gelu_new"));
        ModelConfig.Activation a = switch (act) {
            case "gelu_new", "gelu_pytorch_tanh", "gelu_fast" -> ModelConfig.Activation.GELU_TANH;
            case "gelu" -> ModelConfig.Activation.GELU;
            case "relu" -> ModelConfig.Activation.RELU;
            case "silu", "swish" -> ModelConfig.Activation.SILU;
            default -> throw new LoupeException(what + ": unsupported activation_function \"" + act + "\" (gelu_new, gelu, relu, silu)");
        };
        boolean tied = !Boolean.FALSE.equals(c.get("tie_word_embeddings"));
        return new ModelConfig("gpt2", d, Json.getInt(c, "n_layer", what), heads, heads, d / heads, dMlp,
                Json.getInt(c, "vocab_size", what), Json.getInt(c, "n_positions", what), ModelConfig.Norm.LAYER_NORM,
                (float) Json.getDouble(c, "layer_norm_epsilon", 1e-5), ModelConfig.Positions.LEARNED, 0, 0, false, null,
                a, false, true, true, true, tied, false);
    }

    private static ModelConfig llama(Map<String, Object> c, String type, String what) {
        int d = Json.getInt(c, "hidden_size", what), heads = Json.getInt(c, "num_attention_heads", what);
        int kv = c.get("num_key_value_heads") instanceof Number n ? n.intValue() : heads;
        int dHead = c.get("head_dim") instanceof Number n ? n.intValue() : d / heads;
        double partial = Json.getDouble(c, "partial_rotary_factor", 1.0);
        int rotary = (int) (dHead * partial);
        String act = String.valueOf(c.getOrDefault("hidden_act", "silu"));
        ModelConfig.Activation a = switch (act) {
            case "silu", "swish" -> ModelConfig.Activation.SILU;
            case "gelu" -> ModelConfig.Activation.GELU;
            case "gelu_pytorch_tanh", "gelu_new" -> ModelConfig.Activation.GELU_TANH;
            case "relu" -> ModelConfig.Activation.RELU;
            default -> throw new LoupeException(what + ": unsupported hidden_act \"" + act + "\" (silu, gelu, gelu_pytorch_tanh, relu)");
        };
        boolean qkvBias = type.equals("qwen2") || Boolean.TRUE.equals(c.get("attention_bias"));
        boolean outBias = Boolean.TRUE.equals(c.get("attention_bias"));
        boolean mlpBias = Boolean.TRUE.equals(c.get("mlp_bias"));
        boolean tied = Boolean.TRUE.equals(c.get("tie_word_embeddings"));
        boolean interleaved = Boolean.TRUE.equals(c.get("rope_interleaved"));
        return new ModelConfig(type, d, Json.getInt(c, "num_hidden_layers", what), heads, kv, dHead,
                Json.getInt(c, "intermediate_size", what), Json.getInt(c, "vocab_size", what),
                Json.getInt(c, "max_position_embeddings", what), ModelConfig.Norm.RMS_NORM,
                (float) Json.getDouble(c, "rms_norm_eps", 1e-6), ModelConfig.Positions.ROTARY, rotary,
                Json.getDouble(c, "rope_theta", 10000), interleaved, ropeScaling(c, what), a, true,
                qkvBias, outBias, mlpBias, tied, false, slidingWindow(c, type, what));
    }

    /**
     * Mistral's {@code sliding_window} (null: none). Qwen2 has one too, used only with
     * {@code use_sliding_window} and then only from layer {@code max_window_layers} on: not supported.
     */
    private static int slidingWindow(Map<String, Object> c, String type, String what) {
        if (!(c.get("sliding_window") instanceof Number n)) return 0;
        if (c.containsKey("use_sliding_window")) {
            if (!Boolean.TRUE.equals(c.get("use_sliding_window"))) return 0;
            throw new LoupeException(what + ": use_sliding_window (a window on some layers only) is not supported");
        }
        if (n.intValue() <= 0) throw new LoupeException(what + ": sliding_window " + n + " must be positive");
        return n.intValue();
    }

    @SuppressWarnings("unchecked")
    private static ModelConfig.RopeScaling ropeScaling(Map<String, Object> c, String what) {
        Object rs = c.get("rope_scaling");
        if (rs == null) return null;
        if (!(rs instanceof Map)) throw new LoupeException(what + ": rope_scaling should be an object");
        Map<String, Object> m = (Map<String, Object>) rs;
        String type = String.valueOf(m.getOrDefault("rope_type", m.get("type")));
        if (type.equals("default")) return null;
        if (!type.equals("llama3"))
            throw new LoupeException(what + ": unsupported rope_scaling type \"" + type + "\"; supported: llama3 (or none)");
        return new ModelConfig.RopeScaling(Json.getDouble(m, "factor", 8), Json.getDouble(m, "low_freq_factor", 1),
                Json.getDouble(m, "high_freq_factor", 4), Json.getInt(m, "original_max_position_embeddings", what));
    }
}
