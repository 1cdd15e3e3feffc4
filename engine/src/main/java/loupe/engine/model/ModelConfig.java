package loupe.engine.model;

import loupe.LoupeException;

/**
 * Everything that distinguishes one decoder-only transformer family from another. One
 * {@link Transformer} runs every config: adding a family means describing it here (see
 * {@link HfConfig}), not copying the forward pass.
 *
 * @param family       a label ("gpt2", "llama", "mistral", "qwen2", ...), for messages only
 * @param dModel       residual width
 * @param nLayers      number of blocks
 * @param nHeads       query heads
 * @param nKvHeads     key/value heads (grouped-query attention when less than nHeads; divides nHeads)
 * @param dHead        head width
 * @param dMlp         MLP hidden width; 0 for an attention-only model (no MLP, no second norm)
 * @param vocab        vocabulary size
 * @param nCtx         longest sequence the model accepts
 * @param norm         LayerNorm or RMSNorm
 * @param normEps      the norm's epsilon
 * @param positions    learned absolute position embeddings, rotary, or none
 * @param rotaryDim    channels of each head that rotary rotates (<= dHead; partial rotary when less)
 * @param ropeTheta    rotary base
 * @param ropeInterleaved true: rotate adjacent pairs (2i, 2i+1) as llama2.c/GPT-J; false: halves as HF Llama/NeoX
 * @param ropeScaling  Llama 3 style frequency scaling, or null
 * @param act          the MLP activation
 * @param gatedMlp     true: post = act(W_gate x) * (W_in x) (SwiGLU); false: post = act(W_in x)
 * @param qkvBias      q/k/v projections have biases
 * @param outBias      the attention output projection has a bias
 * @param mlpBias      the MLP projections have biases
 * @param tiedEmbeddings the unembedding is the token embedding (transposed)
 * @param unembedBias  the unembedding has a bias
 * @param slidingWindow 0, or how many key slots (itself included) each query sees (Mistral's sliding window)
 */
public record ModelConfig(String family, int dModel, int nLayers, int nHeads, int nKvHeads, int dHead, int dMlp,
                          int vocab, int nCtx, Norm norm, float normEps, Positions positions, int rotaryDim,
                          double ropeTheta, boolean ropeInterleaved, RopeScaling ropeScaling, Activation act,
                          boolean gatedMlp, boolean qkvBias, boolean outBias, boolean mlpBias,
                          boolean tiedEmbeddings, boolean unembedBias, int slidingWindow) {

    /** Without a sliding window (every earlier position is attended to). */
    public ModelConfig(String family, int dModel, int nLayers, int nHeads, int nKvHeads, int dHead, int dMlp,
                       int vocab, int nCtx, Norm norm, float normEps, Positions positions, int rotaryDim,
                       double ropeTheta, boolean ropeInterleaved, RopeScaling ropeScaling, Activation act,
                       boolean gatedMlp, boolean qkvBias, boolean outBias, boolean mlpBias,
                       boolean tiedEmbeddings, boolean unembedBias) {
        this(family, dModel, nLayers, nHeads, nKvHeads, dHead, dMlp, vocab, nCtx, norm, normEps, positions, rotaryDim,
                ropeTheta, ropeInterleaved, ropeScaling, act, gatedMlp, qkvBias, outBias, mlpBias, tiedEmbeddings, unembedBias, 0);
    }

    /** LayerNorm, RMSNorm, or no normalization at all (toy models: the norm is the identity and has no hooks). */
    public enum Norm { LAYER_NORM, RMS_NORM, NONE }

    public enum Positions { LEARNED, ROTARY, NONE }

    public enum Activation { GELU_TANH, GELU, SILU, RELU }

    /** Llama 3 rope scaling (config.json {@code rope_scaling} with {@code rope_type: "llama3"}). */
    public record RopeScaling(double factor, double lowFreqFactor, double highFreqFactor, int originalMaxPositions) {}

    public ModelConfig {
        if (dModel <= 0 || nLayers <= 0 || nHeads <= 0 || nKvHeads <= 0 || dHead <= 0 || dMlp < 0 || vocab <= 0 || nCtx <= 0)
            throw new LoupeException("model config: every size must be positive (d_model " + dModel + ", n_layers " + nLayers
                    + ", n_heads " + nHeads + ", n_kv_heads " + nKvHeads + ", d_head " + dHead + ", d_mlp " + dMlp
                    + ", vocab " + vocab + ", n_ctx " + nCtx + ")");
        if (nHeads % nKvHeads != 0)
            throw new LoupeException("model config: n_heads " + nHeads + " is not divisible by n_kv_heads " + nKvHeads);
        if (positions == Positions.ROTARY && (rotaryDim <= 0 || rotaryDim > dHead || rotaryDim % 2 != 0))
            throw new LoupeException("model config: rotary dimension " + rotaryDim + " must be even and in (0, d_head=" + dHead + "]");
        if (slidingWindow < 0)
            throw new LoupeException("model config: sliding window " + slidingWindow + " is negative (0 means none)");
    }

    /** A GPT-2 config (LayerNorm, learned positions, tanh GELU, biases everywhere, tied unembedding). */
    public static ModelConfig gpt2(int dModel, int nLayers, int nHeads, int nCtx, int vocab) {
        return new ModelConfig("gpt2", dModel, nLayers, nHeads, nHeads, dModel / nHeads, 4 * dModel, vocab, nCtx,
                Norm.LAYER_NORM, 1e-5f, Positions.LEARNED, 0, 0, false, null, Activation.GELU_TANH, false,
                true, true, true, true, false);
    }

    /** A Llama config (RMSNorm, rotary halves, SwiGLU, no biases). */
    public static ModelConfig llama(int dModel, int nLayers, int nHeads, int nKvHeads, int dMlp, int nCtx, int vocab,
                                    boolean tied) {
        int dHead = dModel / nHeads;
        return new ModelConfig("llama", dModel, nLayers, nHeads, nKvHeads, dHead, dMlp, vocab, nCtx,
                Norm.RMS_NORM, 1e-5f, Positions.ROTARY, dHead, 10000, false, null, Activation.SILU, true,
                false, false, false, tied, false);
    }

    /** An attention-only model: blocks have no MLP and no second norm. */
    public boolean attnOnly() {
        return dMlp == 0;
    }

    /**
     * A TransformerLens-style attention-only toy model: {@code nLayers} blocks of attention, no norms,
     * learned positions, no biases, untied unembedding.
     */
    public static ModelConfig attnOnly(int dModel, int nLayers, int nHeads, int dHead, int nCtx, int vocab) {
        return new ModelConfig("gpt2", dModel, nLayers, nHeads, nHeads, dHead, 0, vocab, nCtx, Norm.NONE, 1e-5f,
                Positions.LEARNED, 0, 0, false, null, Activation.GELU_TANH, false, false, false, false, false, false);
    }

    /** Query heads that share one key/value head. */
    public int groupSize() {
        return nHeads / nKvHeads;
    }

    /** A copy with another rotary pairing (used by loaders of llama2.c files). */
    public ModelConfig withRopeInterleaved(boolean interleaved) {
        return new ModelConfig(family, dModel, nLayers, nHeads, nKvHeads, dHead, dMlp, vocab, nCtx, norm, normEps,
                positions, rotaryDim, ropeTheta, interleaved, ropeScaling, act, gatedMlp, qkvBias, outBias, mlpBias,
                tiedEmbeddings, unembedBias, slidingWindow);
    }

    /**
     * A copy whose attention sees only the last {@code window} key slots of each query, itself included
     * (Mistral's {@code sliding_window}); 0: no window.
     */
    public ModelConfig withSlidingWindow(int window) {
        return new ModelConfig(family, dModel, nLayers, nHeads, nKvHeads, dHead, dMlp, vocab, nCtx, norm, normEps,
                positions, rotaryDim, ropeTheta, ropeInterleaved, ropeScaling, act, gatedMlp, qkvBias, outBias, mlpBias,
                tiedEmbeddings, unembedBias, window);
    }

    /**
     * Rotary inverse frequencies {@code [rotaryDim/2]}: {@code theta^(-2i/rotaryDim)}, then Llama 3
     * scaling when configured (long wavelengths divided by the factor, a smooth blend in between).
     */
    public float[] ropeInvFreq() {
        int half = rotaryDim / 2;
        float[] f = new float[half];
        for (int i = 0; i < half; i++) {
            double inv = 1.0 / Math.pow(ropeTheta, (2.0 * i) / rotaryDim);
            if (ropeScaling != null) {
                RopeScaling s = ropeScaling;
                double lowWavelen = s.originalMaxPositions() / s.lowFreqFactor();
                double highWavelen = s.originalMaxPositions() / s.highFreqFactor();
                double wavelen = 2 * Math.PI / inv;
                if (wavelen > lowWavelen) inv = inv / s.factor();
                else if (wavelen >= highWavelen) {
                    double smooth = (s.originalMaxPositions() / wavelen - s.lowFreqFactor()) / (s.highFreqFactor() - s.lowFreqFactor());
                    inv = (1 - smooth) * inv / s.factor() + smooth * inv;
                }
            }
            f[i] = (float) inv;
        }
        return f;
    }
}
