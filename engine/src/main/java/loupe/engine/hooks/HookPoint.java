package loupe.engine.hooks;

import loupe.engine.model.ModelConfig;

/**
 * The hook points of a transformer, named as TransformerLens names them. Per-layer points are
 * addressed as {@code blocks.{l}.<suffix>}; the others by their suffix alone.
 */
public enum HookPoint {
    EMBED("hook_embed", false, "[batch, pos, d_model]"),
    POS_EMBED("hook_pos_embed", false, "[batch, pos, d_model]"),
    RESID_PRE("hook_resid_pre", true, "[batch, pos, d_model]"),
    ATTN_IN("hook_attn_in", true, "[batch, pos, n_heads, d_model]", true),
    Q_INPUT("hook_q_input", true, "[batch, pos, n_heads, d_model]", true),
    K_INPUT("hook_k_input", true, "[batch, pos, n_kv_heads, d_model]", true),
    V_INPUT("hook_v_input", true, "[batch, pos, n_kv_heads, d_model]", true),
    LN1_SCALE("ln1.hook_scale", true, "[batch, pos, 1]"),
    LN1_NORMALIZED("ln1.hook_normalized", true, "[batch, pos, d_model]"),
    Q("attn.hook_q", true, "[batch, pos, n_heads, d_head]"),
    K("attn.hook_k", true, "[batch, pos, n_kv_heads, d_head]"),
    V("attn.hook_v", true, "[batch, pos, n_kv_heads, d_head]"),
    ROT_Q("attn.hook_rot_q", true, "[batch, pos, n_heads, d_head]"),
    ROT_K("attn.hook_rot_k", true, "[batch, pos, n_kv_heads, d_head]"),
    ATTN_SCORES("attn.hook_attn_scores", true, "[batch, n_heads, query_pos, key_pos]"),
    PATTERN("attn.hook_pattern", true, "[batch, n_heads, query_pos, key_pos]"),
    Z("attn.hook_z", true, "[batch, pos, n_heads, d_head]"),
    RESULT("attn.hook_result", true, "[batch, pos, n_heads, d_model]"),
    ATTN_OUT("hook_attn_out", true, "[batch, pos, d_model]"),
    RESID_MID("hook_resid_mid", true, "[batch, pos, d_model]"),
    MLP_IN("hook_mlp_in", true, "[batch, pos, d_model]", true),
    LN2_SCALE("ln2.hook_scale", true, "[batch, pos, 1]"),
    LN2_NORMALIZED("ln2.hook_normalized", true, "[batch, pos, d_model]"),
    MLP_PRE("mlp.hook_pre", true, "[batch, pos, d_mlp]"),
    MLP_PRE_LINEAR("mlp.hook_pre_linear", true, "[batch, pos, d_mlp]"),
    MLP_POST("mlp.hook_post", true, "[batch, pos, d_mlp]"),
    MLP_OUT("hook_mlp_out", true, "[batch, pos, d_model]"),
    RESID_POST("hook_resid_post", true, "[batch, pos, d_model]"),
    LN_FINAL_SCALE("ln_final.hook_scale", false, "[batch, pos, 1]"),
    LN_FINAL_NORMALIZED("ln_final.hook_normalized", false, "[batch, pos, d_model]"),
    LOGITS("logits", false, "[batch, pos, d_vocab]");

    /** The name after {@code blocks.{l}.} (or the whole name for model-level points). */
    public final String suffix;
    /** True for points that exist once per block. */
    public final boolean perLayer;
    /** The TransformerLens shape, for documentation and messages. */
    public final String shape;
    /**
     * Computed only when a hook asks for it by name (see {@link Hooks#glob}): the split inputs, which
     * TransformerLens fires only with {@code use_split_qkv_input}, {@code use_attn_in} or
     * {@code use_hook_mlp_in}. Each is a copy of the residual stream (per head for the attention
     * inputs, {@code n_heads} times resid_pre's size), so caching everything ({@code *}) leaves them out.
     * When a hook edits one, the block reads the edited copy: head h's query comes from
     * {@code ln1(hook_q_input[:, :, h])}, the MLP from {@code ln2(hook_mlp_in)}, while the residual
     * stream itself stays unedited. The ln1/ln2 hooks fire once, on the unsplit input.
     */
    public final boolean onDemand;

    HookPoint(String suffix, boolean perLayer, String shape) {
        this(suffix, perLayer, shape, false);
    }

    HookPoint(String suffix, boolean perLayer, String shape, boolean onDemand) {
        this.suffix = suffix;
        this.perLayer = perLayer;
        this.shape = shape;
        this.onDemand = onDemand;
    }

    /** Whether {@code name} is an on-demand point's name ({@link #onDemand}). */
    public static boolean isOnDemand(String name) {
        for (HookPoint p : values())
            if (p.onDemand && name.endsWith("." + p.suffix)) return true;
        return false;
    }

    /** The full hook name at {@code layer} (ignored for model-level points). */
    public String name(int layer) {
        return perLayer ? "blocks." + layer + "." + suffix : suffix;
    }

    /** Whether a model with {@code c} has this point. */
    public boolean existsIn(ModelConfig c) {
        return switch (this) {
            case POS_EMBED -> c.positions() == ModelConfig.Positions.LEARNED;
            case ROT_Q, ROT_K -> c.positions() == ModelConfig.Positions.ROTARY;
            case MLP_PRE_LINEAR -> c.gatedMlp() && !c.attnOnly();
            case LN1_SCALE, LN1_NORMALIZED, LN_FINAL_SCALE, LN_FINAL_NORMALIZED -> c.norm() != ModelConfig.Norm.NONE;
            case LN2_SCALE, LN2_NORMALIZED -> c.norm() != ModelConfig.Norm.NONE && !c.attnOnly();
            case MLP_PRE, MLP_POST, MLP_OUT, RESID_MID, MLP_IN -> !c.attnOnly();
            // One input per head feeds q, k and v alike: only when every head has its own k and v.
            case ATTN_IN -> c.nKvHeads() == c.nHeads();
            default -> true;
        };
    }
}
