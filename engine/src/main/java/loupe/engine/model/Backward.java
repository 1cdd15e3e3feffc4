package loupe.engine.model;

import loupe.LoupeException;
import loupe.engine.Scope;
import loupe.engine.Tensor;
import loupe.engine.hooks.HookPoint;
import loupe.engine.hooks.Hooks;
import loupe.engine.model.Transformer.LayerActs;
import loupe.kernels.Backend;
import loupe.kernels.Buffer;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

/**
 * The backward pass of {@link Transformer#forward}, written out op by op in reverse as llm.c's
 * {@code gpt2_backward} is: each forward op has its backward op from the {@link Backend} next to the
 * comment that names it, so the whole pass reads top to bottom in {@code run()}, {@code block()} and
 * {@code attention()}. Nothing runs per element in Java, and nothing comes to the host.
 *
 * <p>It computes, from kept activations ({@code Transformer.Options(keepActivations=true, ...)}):
 * <ul>
 *   <li>parameter gradients ({@link Gradients}, accumulated; optional);</li>
 *   <li>the gradient at every hook point it passes, through <b>backward hooks</b>: a {@link Hooks}
 *       given in {@link Options#withHooks} whose callbacks receive {@code d loss / d activation} at a hook
 *       name (TransformerLens's names and shapes) and may read it (a gradient cache:
 *       {@code new Hooks().cache(glob, scope, map)}, TransformerLens's {@code incl_bwd=True}) or edit
 *       it in place (or return a replacement): the edited gradient is what flows on, upstream only.
 *       A gradient reaching a point through a residual connection is split first, so an edit at
 *       {@code hook_mlp_out} does not change what the skip path carries to {@code hook_resid_mid}.
 *       The {@code *.hook_scale} points do not fire (the norm backward is one fused op);
 *       {@code attn.hook_result} fires, and costs a {@code [batch, pos, n_heads, d_model]} buffer, only
 *       when a hook is attached there.</li>
 *   <li>the gradient at {@code blocks.{stop}.hook_resid_pre} ({@link Result#dResidPre}).</li>
 * </ul>
 *
 * <p>It starts from a loss ({@link Options#fromLoss}), from a gradient of the logits
 * ({@link Options#fromLogits}) or from a gradient at any block's {@code hook_resid_post}
 * ({@link Options#fromResidPost}), and stops at any block's {@code hook_resid_pre}
 * ({@link Options#stopAt}; at block 0 it goes on into the embeddings). The forward need only have run
 * the blocks in between ({@code Transformer.Options.range}).
 *
 * <p><b>Batches of gradient rows.</b> The starting gradient may have batch B while the forward had
 * batch 1: every gradient row is then taken against that one forward (its activations are broadcast
 * over the rows, one layer at a time), which is how a Jacobian is computed: B one-hot output gradients
 * in one batched backward (see {@link Jacobian}). With a forward of batch B the rows pair up one to one.
 */
public final class Backward {
    private static final int NP = HookPoint.values().length;

    /**
     * Where the backward starts (exactly one of a loss, a logits gradient, a resid_post gradient), where
     * it stops, and what it computes. Immutable; the {@code with...} methods return copies.
     *
     * @param targets    start from the mean cross-entropy of the forward's logits against these targets
     * @param dLogits    start from this gradient of the logits {@code [B, pos, d_vocab]}
     * @param fromLayer  start at {@code blocks.{fromLayer}.hook_resid_post} with gradient {@code dResidPost}
     * @param dResidPost {@code [B, pos, d_model]}
     * @param stopLayer  stop after {@code blocks.{stopLayer}.hook_resid_pre}; 0 goes on through the embeddings
     * @param parameters compute parameter gradients (off: activation gradients only, which is cheaper)
     * @param into       accumulate parameter gradients into these (null: new zero gradients in the scope)
     * @param hooks      backward hooks, by hook name
     */
    public record Options(Loss.Targets targets, Tensor dLogits, int fromLayer, Tensor dResidPost, int stopLayer,
                          boolean parameters, Gradients into, Hooks hooks) {

        /** Backward of the mean next-token loss against {@code targets} (see {@link Loss}). */
        public static Options fromLoss(Loss.Targets targets) {
            return new Options(targets, null, -1, null, 0, true, null, Hooks.none());
        }

        /** Backward from a gradient of the logits {@code [B, pos, d_vocab]} (B = the forward's batch, or any B when it was 1). */
        public static Options fromLogits(Tensor dLogits) {
            return new Options(null, dLogits, -1, null, 0, true, null, Hooks.none());
        }

        /** Backward from a gradient at {@code blocks.{layer}.hook_resid_post} {@code [B, pos, d_model]}. */
        public static Options fromResidPost(int layer, Tensor dResidPost) {
            return new Options(null, null, layer, dResidPost, 0, true, null, Hooks.none());
        }

        /** Stop at {@code blocks.{layer}.hook_resid_pre} (its gradient is {@link Result#dResidPre}). */
        public Options stopAt(int layer) {
            return new Options(targets, dLogits, fromLayer, dResidPost, layer, parameters, into, hooks);
        }

        /** Compute parameter gradients or not. */
        public Options withParameters(boolean on) {
            return new Options(targets, dLogits, fromLayer, dResidPost, stopLayer, on, into, hooks);
        }

        /** Accumulate parameter gradients into {@code g} (implies parameters). */
        public Options into(Gradients g) {
            return new Options(targets, dLogits, fromLayer, dResidPost, stopLayer, true, g, hooks);
        }

        /** Backward hooks: callbacks receive the gradient at their hook names. */
        public Options withHooks(Hooks h) {
            return new Options(targets, dLogits, fromLayer, dResidPost, stopLayer, parameters, into, h);
        }
    }

    /** What a backward pass leaves behind; every tensor is owned by the scope given to {@link #run}. */
    public static final class Result {
        /** Parameter gradients, or null when not asked for. */
        public Gradients params;
        /** d / d {@code blocks.{stopLayer}.hook_resid_pre}, {@code [B, pos, d_model]} (after its hooks). */
        public Tensor dResidPre;
        public int stopLayer;
        /** The logits gradient the pass started from (null when it started at a resid_post). */
        public Tensor dLogits;
        /** The loss, when the pass started from one. */
        public Loss.Value loss;
    }

    /**
     * Runs the backward pass of forward pass {@code f} of {@code model}. Scratch gradients and results are
     * allocated in {@code scope}; the per-layer scratch is reused from layer to layer.
     */
    public static Result run(Scope scope, Transformer model, Transformer.Forward f, Options opts) {
        return new Backward(scope, model, f, opts).run();
    }

    // ------------------------------------------------------------------ state of one pass

    private final Scope scope;
    private final Transformer model;
    private final ModelConfig cfg;
    private final Weights w;
    private final Backend be;
    private final Transformer.Forward f;
    private final Options opts;
    private final Hooks.Bound hk;
    private final Gradients g;
    /** Gradient rows, and the forward's batch (B, or 1 when its activations are broadcast over the rows). */
    private final int B, T, BT;
    private final boolean broadcast;
    private final int C, H, HKV, D, G, M;

    // Scratch gradients, one set reused by every layer. Backend backward ops accumulate (+=), so
    // each is either overwritten first (gemm with beta 0, copies) or zeroed before use.
    private Tensor dResidMid, dLnOut, dNorm, tmp, dHidden, dHiddenPre, dHiddenLin, actTmp;
    private Tensor dQ, dK, dV, dRotQ, dRotK, dZ, dPattern, dScores, dResult;
    /** Token and position ids {@code [B, pos]}, and one layer's activations widened to B rows (broadcast only). */
    private Tensor tokens, positions;
    private LayerActs wide;

    private Backward(Scope scope, Transformer model, Transformer.Forward f, Options opts) {
        this.scope = scope;
        this.model = model;
        this.cfg = model.config();
        this.w = model.weights();
        this.be = model.backend();
        this.f = f;
        this.opts = opts;
        C = cfg.dModel();
        H = cfg.nHeads();
        HKV = cfg.nKvHeads();
        D = cfg.dHead();
        G = cfg.groupSize();
        M = cfg.dMlp();
        T = f.pos;
        B = validate();
        BT = B * T;
        broadcast = B != f.batch;
        hk = bindHooks(opts.hooks() == null ? Hooks.none() : opts.hooks());
        g = !opts.parameters() ? null : opts.into() != null ? opts.into() : Gradients.zerosLike(w, scope);
    }

    private Result run() {
        Result r = new Result();
        r.params = g;
        r.stopLayer = opts.stopLayer();
        allocateScratch();
        tokens = widen(f.tokens, null);
        positions = widen(f.positions, null);

        // d resid_post of the top block, then d resid_pre of each block going down; two buffers swap roles.
        Tensor dResid = scope.zeros(B, T, C), dOther = scope.zeros(B, T, C);
        int top;
        if (opts.fromLayer() < 0) {
            top = cfg.nLayers() - 1;
            Tensor dLogits;
            if (opts.targets() != null) {
                r.loss = Loss.of(scope, f.logits, opts.targets());
                dLogits = Loss.gradient(scope, f.logits, opts.targets());
            } else {
                // The caller's tensor is never edited: a hook that may edit it gets a copy.
                dLogits = hk.active(slot(HookPoint.LOGITS, -1)) ? scope.copyOf(opts.dLogits()) : opts.dLogits();
            }
            fire(HookPoint.LOGITS, -1, dLogits);
            r.dLogits = dLogits;
            unembedding(dLogits, dResid);
        } else {
            top = opts.fromLayer();
            dResid.copyFrom(opts.dResidPost());
        }

        for (int l = top; l >= opts.stopLayer(); l--) {
            block(l, dResid, dOther);
            Tensor t = dResid;
            dResid = dOther;
            dOther = t;
        }
        if (opts.stopLayer() == 0) embeddings(dResid);
        r.dResidPre = dResid;
        return r;
    }

    // ------------------------------------------------------------------ the pass, top to bottom

    /**
     * Final norm and unembedding: {@code logits = ln_final(resid) · W_Uᵀ + b_U}. Writes
     * {@code d resid_post} of the last block into {@code dResid} (zero on entry).
     */
    private void unembedding(Tensor dLogits, Tensor dResid) {
        Tensor lnOut = widen(f.lnFinalOut, null), lnNorm = f.lnFinalOut == f.lnFinalNorm ? lnOut : widen(f.lnFinalNorm, null);
        Tensor lnScale = widen(f.lnFinalScale, null);
        Tensor dLnFinal = scope.zeros(B, T, C);
        linearBackward(dLnFinal, false, dLogits, lnOut, w.unembed, g == null ? null : g.unembed, g == null ? null : g.unembedB);
        normBackward(dResid, dLnFinal, lnNorm, lnScale, w.lnFinalW, g == null ? null : g.lnFinalW, g == null ? null : g.lnFinalB,
                HookPoint.LN_FINAL_NORMALIZED, -1);
    }

    /**
     * One block in reverse: {@code dResid} holds d resid_post on entry (and is then reused as d mlp_out);
     * d resid_pre is written into {@code dResidPre}.
     */
    private void block(int l, Tensor dResid, Tensor dResidPre) {
        LayerActs a = activations(l);
        Weights.Layer lw = w.layers[l];
        Weights.Layer lg = g == null ? new Weights.Layer() : g.layers[l];   // all-null gradients: skipped
        fire(HookPoint.RESID_POST, l, dResid);

        // ---- MLP. resid_post = resid_mid + mlp_out: the skip path carries d resid_post to resid_mid
        // as it is (a copy, so that an edit of d mlp_out by a hook stays on the MLP branch).
        dResidMid.copyFrom(dResid);
        if (!cfg.attnOnly()) mlpBackward(l, a, lw, lg, dResid);

        // ---- attention. resid_mid = resid_pre + attn_out: split as above.
        dResidPre.copyFrom(dResidMid);
        Tensor dAttnOut = dResidMid;
        fire(HookPoint.ATTN_OUT, l, dAttnOut);
        attentionBackward(l, a, lw, lg, dAttnOut, dResidPre);
    }

    /**
     * The MLP in reverse: {@code dMlpOut} holds d mlp_out (= d resid_post); the gradient through the
     * MLP and ln2 is added into {@code dResidMid}, whose hook then fires.
     */
    private void mlpBackward(int l, LayerActs a, Weights.Layer lw, Weights.Layer lg, Tensor dMlpOut) {
        fire(HookPoint.MLP_OUT, l, dMlpOut);
        // mlp_out = post · W_outᵀ + b_out
        linearBackward(dHidden, false, dMlpOut, a.post, lw.wOut, lg.wOut, lg.bOut);
        fire(HookPoint.MLP_POST, l, dHidden);
        long n = (long) BT * M;
        if (cfg.gatedMlp()) {
            // post = act(pre) * pre_linear. act(pre) is not kept by the forward: recompute it.
            activation(actTmp, a.pre, n);
            be.mul(dHiddenLin.buffer(), dHiddenLin.offset(), dHidden.buffer(), dHidden.offset(), actTmp.buffer(), actTmp.offset(), n);
            be.mul(actTmp.buffer(), actTmp.offset(), dHidden.buffer(), dHidden.offset(), a.preLinear.buffer(), a.preLinear.offset(), n);
            dHiddenPre.fill(0f);
            activationBackward(dHiddenPre, a.pre, actTmp, n);
            fire(HookPoint.MLP_PRE_LINEAR, l, dHiddenLin);
            fire(HookPoint.MLP_PRE, l, dHiddenPre);
            // pre = ln2_out · W_gateᵀ + b_gate, pre_linear = ln2_out · W_inᵀ + b_in
            linearBackward(dLnOut, false, dHiddenPre, a.ln2Out, lw.wGate, lg.wGate, lg.bGate);
            linearBackward(dLnOut, true, dHiddenLin, a.ln2Out, lw.wIn, lg.wIn, lg.bIn);
        } else {
            // post = act(pre), pre = ln2_out · W_inᵀ + b_in
            dHiddenPre.fill(0f);
            activationBackward(dHiddenPre, a.pre, dHidden, n);
            fire(HookPoint.MLP_PRE, l, dHiddenPre);
            linearBackward(dLnOut, false, dHiddenPre, a.ln2Out, lw.wIn, lg.wIn, lg.bIn);
        }
        // ln2_out = norm(resid_mid): its gradient joins the skip path's in d resid_mid.
        normBackward(dResidMid, dLnOut, a.ln2Norm, a.ln2Scale, lw.ln2W, lg.ln2W, lg.ln2B, HookPoint.LN2_NORMALIZED, l);
        fire(HookPoint.RESID_MID, l, dResidMid);
    }

    /** Attention in reverse, from d attn_out; the gradient into resid_pre is added into {@code dResidPre}. */
    private void attentionBackward(int l, LayerActs a, Weights.Layer lw, Weights.Layer lg, Tensor dAttnOut, Tensor dResidPre) {
        if (lg.bO != null) be.biasBackward(lg.bO.buffer(), lg.bO.offset(), dAttnOut.buffer(), dAttnOut.offset(), BT, C);
        if (hk.active(slot(HookPoint.RESULT, l))) {
            // attn_out = Σ_h result[:, h] + b_O: every head's result receives d attn_out.
            for (int h = 0; h < H; h++)
                be.copyStrided(dResult.buffer(), dResult.offset() + (long) h * C, new long[]{0, 0, (long) H * C, 1},
                        dAttnOut.buffer(), dAttnOut.offset(), new long[]{0, 0, C, 1}, new int[]{1, 1, BT, C}, false);
            fire(HookPoint.RESULT, l, dResult);
            // result[:, h] = z[:, h] · W_O[:, h]ᵀ, batched over heads: dz[:, h] = dresult[:, h] · W_O[:, h],
            // dW_O[:, h] += dresult[:, h]ᵀ · z[:, h].
            be.gemm(false, false, BT, D, C, 1f, dResult.buffer(), dResult.offset(), H * C, C,
                    lw.wO.buffer(), lw.wO.offset(), H * D, D, 0f, dZ.buffer(), dZ.offset(), H * D, D, H);
            if (lg.wO != null)
                be.gemm(true, false, C, D, BT, 1f, dResult.buffer(), dResult.offset(), H * C, C,
                        a.z.buffer(), a.z.offset(), H * D, D, 1f, lg.wO.buffer(), lg.wO.offset(), H * D, D, H);
        } else {
            // attn_out = z · W_Oᵀ + b_O (bias done above)
            linearBackward(dZ, false, dAttnOut, a.z, lw.wO, lg.wO, null);
        }
        fire(HookPoint.Z, l, dZ);
        attention(a, l);
        if (cfg.positions() == ModelConfig.Positions.ROTARY) {
            fire(HookPoint.ROT_K, l, dRotK);
            fire(HookPoint.ROT_Q, l, dRotQ);
            // rot = R(pos)·x, a rotation: its backward is the inverse rotation.
            be.rope(dQ.buffer(), dQ.offset(), dRotQ.buffer(), dRotQ.offset(), positions.buffer(), positions.offset(),
                    w.ropeInvFreq.buffer(), w.ropeInvFreq.offset(), BT, H, D, cfg.rotaryDim(), cfg.ropeInterleaved(), true);
            be.rope(dK.buffer(), dK.offset(), dRotK.buffer(), dRotK.offset(), positions.buffer(), positions.offset(),
                    w.ropeInvFreq.buffer(), w.ropeInvFreq.offset(), BT, HKV, D, cfg.rotaryDim(), cfg.ropeInterleaved(), true);
        }
        fire(HookPoint.V, l, dV);
        fire(HookPoint.K, l, dK);
        fire(HookPoint.Q, l, dQ);
        // q|k|v = ln1_out · W_{Q|K|V}ᵀ + b: the three gradients of ln1_out add up.
        linearBackward(dLnOut, false, dQ, a.ln1Out, lw.wQ, lg.wQ, lg.bQ);
        linearBackward(dLnOut, true, dK, a.ln1Out, lw.wK, lg.wK, lg.bK);
        linearBackward(dLnOut, true, dV, a.ln1Out, lw.wV, lg.wV, lg.bV);
        // ln1_out = norm(resid_pre): joins the skip path's gradient in d resid_pre.
        normBackward(dResidPre, dLnOut, a.ln1Norm, a.ln1Scale, lw.ln1W, lg.ln1W, lg.ln1B, HookPoint.LN1_NORMALIZED, l);
        fire(HookPoint.RESID_PRE, l, dResidPre);
    }

    /**
     * Attention in reverse, from {@code dZ}: fills {@code dQ, dK} (or {@code dRotQ, dRotK} when the
     * forward attended with rotated q/k) and {@code dV}, firing hook_pattern and hook_attn_scores.
     * Per sequence b and kv head j the forward computed, for the G query heads h of j,
     * {@code scores[b,h] = q[b,:,h]·k[b,:,j]ᵀ/√d}, {@code pattern = softmax(mask(scores))},
     * {@code z[b,:,h] = pattern[b,h]·v[b,:,j]}; each product's backward is two gemms.
     */
    private void attention(LayerActs a, int l) {
        boolean rotary = cfg.positions() == ModelConfig.Positions.ROTARY;
        Tensor q = rotary ? a.rotQ : a.q, k = rotary ? a.rotK : a.k, v = a.v;
        Tensor dq = rotary ? dRotQ : dQ, dk = rotary ? dRotK : dK;
        float alpha = (float) (1 / Math.sqrt(D));
        long tt = (long) T * T;
        for (int b = 0; b < B; b++) {
            long zb = (long) b * T * H * D, kvb = (long) b * T * HKV * D;
            for (int j = 0; j < HKV; j++) {
                int h0 = j * G;
                // dpattern[b,h] = dz[b,:,h] · v[b,:,j]ᵀ over every key (masked entries included, as autograd
                // gives them; they carry no further gradient since the pattern is 0 there).
                be.gemm(false, true, T, T, D, 1f, dZ.buffer(), dZ.offset() + zb + (long) h0 * D, H * D, D,
                        v.buffer(), v.offset() + kvb + (long) j * D, HKV * D, 0,
                        0f, dPattern.buffer(), dPattern.offset() + ((long) b * H + h0) * tt, T, tt, G);
            }
        }
        fire(HookPoint.PATTERN, l, dPattern);
        // pattern = softmax(scores) over keys; masked entries (pattern 0) get no gradient.
        dScores.fill(0f);
        be.softmaxBackward(dScores.buffer(), dScores.offset(), dPattern.buffer(), dPattern.offset(),
                a.pattern.buffer(), a.pattern.offset(), B * H * T, T);
        fire(HookPoint.ATTN_SCORES, l, dScores);
        for (int b = 0; b < B; b++) {
            long zb = (long) b * T * H * D, kvb = (long) b * T * HKV * D;
            for (int j = 0; j < HKV; j++) {
                int h0 = j * G;
                // dq[b,:,h] = dscores[b,h] · k[b,:,j] / √d, batched over the G query heads of kv head j.
                be.gemm(false, false, T, D, T, alpha, dScores.buffer(), dScores.offset() + ((long) b * H + h0) * tt, T, tt,
                        k.buffer(), k.offset() + kvb + (long) j * D, HKV * D, 0,
                        0f, dq.buffer(), dq.offset() + zb + (long) h0 * D, H * D, D, G);
            }
            // A kv head's gradient sums over its G query heads: one gemm per query head of each group
            // (the first overwrites, the others add), batched over the kv heads, whose outputs are distinct.
            for (int gi = 0; gi < G; gi++) {
                float beta = gi == 0 ? 0f : 1f;
                // dk[b,:,j] += dscores[b,h]ᵀ · q[b,:,h] / √d
                be.gemm(true, false, T, D, T, alpha, dScores.buffer(), dScores.offset() + ((long) b * H + gi) * tt, T, G * tt,
                        q.buffer(), q.offset() + zb + (long) gi * D, H * D, (long) G * D,
                        beta, dk.buffer(), dk.offset() + kvb, HKV * D, D, HKV);
                // dv[b,:,j] += pattern[b,h]ᵀ · dz[b,:,h]
                be.gemm(true, false, T, D, T, 1f, a.pattern.buffer(), a.pattern.offset() + ((long) b * H + gi) * tt, T, G * tt,
                        dZ.buffer(), dZ.offset() + zb + (long) gi * D, H * D, (long) G * D,
                        beta, dV.buffer(), dV.offset() + kvb, HKV * D, D, HKV);
            }
        }
    }

    /**
     * Embeddings: {@code resid_pre[0] = W_E[tokens] + W_pos[positions]}; each table row receives the
     * gradient of every position that read it. {@code d} is d blocks.0.hook_resid_pre (left as it is:
     * hooks that may edit the embedding gradients get copies).
     */
    private void embeddings(Tensor d) {
        if (f.embed == null) return;   // the forward started after the embedding
        if (cfg.positions() == ModelConfig.Positions.LEARNED) {
            Tensor dPos = hk.active(slot(HookPoint.POS_EMBED, -1)) ? scope.copyOf(d) : d;
            fire(HookPoint.POS_EMBED, -1, dPos);
            if (g != null)
                be.scatterAddRows(g.posEmbed.buffer(), g.posEmbed.offset(), positions.buffer(), positions.offset(),
                        dPos.buffer(), dPos.offset(), BT, C);
        }
        Tensor dEmbed = hk.active(slot(HookPoint.EMBED, -1)) ? scope.copyOf(d) : d;
        fire(HookPoint.EMBED, -1, dEmbed);
        if (g != null)
            be.scatterAddRows(g.embed.buffer(), g.embed.offset(), tokens.buffer(), tokens.offset(), dEmbed.buffer(), dEmbed.offset(), BT, C);
    }

    // ------------------------------------------------------------------ op backwards

    /**
     * Backward of {@code out[rows, outF] = x[rows, inF] · Wᵀ + b} (W stored {@code [outF, inF]}):
     * {@code dX = dOut · W} (or {@code +=} with {@code accumulate}), {@code dW += dOutᵀ · x},
     * {@code db += Σ_rows dOut}. Null {@code dW}/{@code db} are skipped.
     */
    private void linearBackward(Tensor dX, boolean accumulate, Tensor dOut, Tensor x, Tensor weight, Tensor dW, Tensor db) {
        int outF = weight.dim(0), inF = weight.dim(1);
        be.gemm(false, false, BT, inF, outF, 1f, dOut.buffer(), dOut.offset(), outF, 0,
                weight.buffer(), weight.offset(), inF, 0, accumulate ? 1f : 0f, dX.buffer(), dX.offset(), inF, 0, 1);
        if (dW != null)
            be.gemm(true, false, outF, inF, BT, 1f, dOut.buffer(), dOut.offset(), outF, 0,
                    x.buffer(), x.offset(), inF, 0, 1f, dW.buffer(), dW.offset(), inF, 0, 1);
        if (db != null) be.biasBackward(db.buffer(), db.offset(), dOut.buffer(), dOut.offset(), BT, outF);
    }

    /**
     * Backward of {@code out = normalized * gain + bias} with {@code normalized = norm(x)}, adding
     * {@code dx} into {@code dX}. One fused op unless a hook watches {@code hook_normalized}: then the
     * gradient at normalized ({@code dOut * gain}) is formed, shown to the hook, and what the hook
     * leaves flows into x.
     */
    private void normBackward(Tensor dX, Tensor dOut, Tensor normalized, Tensor scale, Tensor gain,
                              Tensor dGain, Tensor dBias, HookPoint normPoint, int layer) {
        if (cfg.norm() == ModelConfig.Norm.NONE) {
            // No norm: its output is its input.
            be.axpy(dX.buffer(), dX.offset(), 1f, dOut.buffer(), dOut.offset(), (long) BT * C);
            return;
        }
        boolean layerNorm = cfg.norm() == ModelConfig.Norm.LAYER_NORM;
        Buffer gb = gain == null ? null : gain.buffer();
        long go = gain == null ? 0 : gain.offset();
        int ns = slot(normPoint, layer);
        if (!hk.active(ns)) {
            if (layerNorm)
                be.layerNormBackward(dX.buffer(), dX.offset(), buf(dGain), off(dGain), buf(dBias), off(dBias),
                        dOut.buffer(), dOut.offset(), normalized.buffer(), normalized.offset(), scale.buffer(), scale.offset(),
                        gb, go, BT, C);
            else
                be.rmsNormBackward(dX.buffer(), dX.offset(), buf(dGain), off(dGain), dOut.buffer(), dOut.offset(),
                        normalized.buffer(), normalized.offset(), scale.buffer(), scale.offset(), gb, go, BT, C);
            return;
        }
        // dgain += Σ_rows dOut * normalized, dbias += Σ_rows dOut: column sums (biasBackward).
        if (dGain != null) {
            be.mul(tmp.buffer(), tmp.offset(), dOut.buffer(), dOut.offset(), normalized.buffer(), normalized.offset(), (long) BT * C);
            be.biasBackward(dGain.buffer(), dGain.offset(), tmp.buffer(), tmp.offset(), BT, C);
        }
        if (dBias != null) be.biasBackward(dBias.buffer(), dBias.offset(), dOut.buffer(), dOut.offset(), BT, C);
        be.scaleShiftRows(dNorm.buffer(), dNorm.offset(), dOut.buffer(), dOut.offset(), gb, go, null, 0, BT, C);
        hk.fire(ns, dNorm, normPoint, layer, scope, 0);
        if (layerNorm)
            be.layerNormBackward(dX.buffer(), dX.offset(), null, 0, null, 0, dNorm.buffer(), dNorm.offset(),
                    normalized.buffer(), normalized.offset(), scale.buffer(), scale.offset(), null, 0, BT, C);
        else
            be.rmsNormBackward(dX.buffer(), dX.offset(), null, 0, dNorm.buffer(), dNorm.offset(),
                    normalized.buffer(), normalized.offset(), scale.buffer(), scale.offset(), null, 0, BT, C);
    }

    private void activation(Tensor out, Tensor x, long n) {
        Transformer.activation(be, cfg.act(), out, x, n);
    }

    /** {@code dx += dOut * act'(x)}. */
    private void activationBackward(Tensor dx, Tensor x, Tensor dOut, long n) {
        switch (cfg.act()) {
            case GELU_TANH -> be.geluBackward(dx.buffer(), dx.offset(), x.buffer(), x.offset(), dOut.buffer(), dOut.offset(), n, true);
            case GELU -> be.geluBackward(dx.buffer(), dx.offset(), x.buffer(), x.offset(), dOut.buffer(), dOut.offset(), n, false);
            case SILU -> be.siluBackward(dx.buffer(), dx.offset(), x.buffer(), x.offset(), dOut.buffer(), dOut.offset(), n);
            case RELU -> be.reluBackward(dx.buffer(), dx.offset(), x.buffer(), x.offset(), dOut.buffer(), dOut.offset(), n);
        }
    }

    private static Buffer buf(Tensor t) {
        return t == null ? null : t.buffer();
    }

    private static long off(Tensor t) {
        return t == null ? 0 : t.offset();
    }

    // ------------------------------------------------------------------ activations, scratch, hooks

    /**
     * Layer {@code l}'s activations with B rows: the forward's own, or (broadcast) copies of its single
     * row into buffers reused by every layer.
     */
    private LayerActs activations(int l) {
        LayerActs a = f.layers[l];
        if (!broadcast) return a;
        boolean p = g != null;   // the inputs of the weight gradients are needed only for those
        if (wide == null) wide = new LayerActs();
        wide.ln1Norm = widen(a.ln1Norm, wide.ln1Norm);
        wide.ln1Scale = widen(a.ln1Scale, wide.ln1Scale);
        wide.ln1Out = p ? widen(a.ln1Out, wide.ln1Out) : null;
        if (cfg.positions() == ModelConfig.Positions.ROTARY) {
            wide.rotQ = widen(a.rotQ, wide.rotQ);
            wide.rotK = widen(a.rotK, wide.rotK);
        } else {
            wide.q = widen(a.q, wide.q);
            wide.k = widen(a.k, wide.k);
        }
        wide.v = widen(a.v, wide.v);
        wide.pattern = widen(a.pattern, wide.pattern);
        wide.z = p ? widen(a.z, wide.z) : null;
        wide.ln2Norm = widen(a.ln2Norm, wide.ln2Norm);
        wide.ln2Scale = widen(a.ln2Scale, wide.ln2Scale);
        wide.ln2Out = p ? widen(a.ln2Out, wide.ln2Out) : null;
        wide.pre = widen(a.pre, wide.pre);
        wide.preLinear = a.preLinear == null ? null : widen(a.preLinear, wide.preLinear);
        wide.post = p ? widen(a.post, wide.post) : null;
        return wide;
    }

    /**
     * {@code src} itself when the forward had B rows; otherwise its single row copied into each of the B
     * rows of {@code dst} (allocated when null), a device copy with a zero source stride.
     */
    private Tensor widen(Tensor src, Tensor dst) {
        if (src == null || !broadcast) return src;
        if (dst == null) {
            int[] shape = src.shape();
            shape[0] = B;
            dst = src.dtype() == Tensor.DTypeKind.I32 ? scope.zerosInt(shape) : scope.zeros(shape);
        }
        long n = src.numel();
        be.copyStrided(dst.buffer(), dst.offset(), new long[]{0, 0, n, 1}, src.buffer(), src.offset(), new long[]{0, 0, 0, 1},
                new int[]{1, 1, B, Math.toIntExact(n)}, false);
        return dst;
    }

    private void allocateScratch() {
        dResidMid = scope.zeros(B, T, C);
        dLnOut = scope.zeros(B, T, C);
        dHidden = scope.zeros(B, T, M);
        dHiddenPre = scope.zeros(B, T, M);
        if (cfg.gatedMlp()) {
            dHiddenLin = scope.zeros(B, T, M);
            actTmp = scope.zeros(B, T, M);
        }
        dQ = scope.zeros(B, T, H, D);
        dK = scope.zeros(B, T, HKV, D);
        dV = scope.zeros(B, T, HKV, D);
        if (cfg.positions() == ModelConfig.Positions.ROTARY) {
            dRotQ = scope.zeros(B, T, H, D);
            dRotK = scope.zeros(B, T, HKV, D);
        }
        dZ = scope.zeros(B, T, H, D);
        dPattern = scope.zeros(B, H, T, T);
        dScores = scope.zeros(B, H, T, T);
        boolean anyResult = false;
        for (int l = 0; l < cfg.nLayers(); l++) anyResult |= hk.active(slot(HookPoint.RESULT, l));
        if (anyResult) dResult = scope.zeros(B, T, H, C);
        // The gradient at hook_normalized is formed only where a hook watches it.
        boolean any = hk.active(slot(HookPoint.LN_FINAL_NORMALIZED, -1));
        for (int l = 0; l < cfg.nLayers(); l++)
            any |= hk.active(slot(HookPoint.LN1_NORMALIZED, l)) || hk.active(slot(HookPoint.LN2_NORMALIZED, l));
        if (!any) return;
        dNorm = scope.zeros(B, T, C);
        tmp = scope.zeros(B, T, C);
    }

    private int slot(HookPoint p, int layer) {
        return p.perLayer ? layer * NP + p.ordinal() : cfg.nLayers() * NP + p.ordinal();
    }

    private void fire(HookPoint p, int layer, Tensor grad) {
        int s = slot(p, layer);
        if (hk.active(s)) hk.fire(s, grad, p, layer, scope, 0);
    }

    /** Binds the backward hooks to this model's hook points, except the hook_scale points, which do not fire. */
    private Hooks.Bound bindHooks(Hooks hooks) {
        String[] names = new String[(cfg.nLayers() + 1) * NP];
        List<String> existing = new ArrayList<>();
        for (String name : model.hookNames()) if (!name.endsWith("hook_scale")) existing.add(name);
        for (HookPoint p : HookPoint.values()) {
            if (!p.existsIn(cfg) || p.suffix.endsWith("hook_scale") || p.onDemand) continue;
            if (p.perLayer) for (int l = 0; l < cfg.nLayers(); l++) names[slot(p, l)] = p.name(l);
            else names[slot(p, -1)] = p.name(-1);
        }
        try {
            return hooks.bind(names, existing);
        } catch (LoupeException e) {
            if (e.getMessage() != null && model.onDemandHookNames().stream().anyMatch(n -> e.getMessage().contains("'" + n + "'")))
                throw new LoupeException("backward hooks: " + e.getMessage().split(";")[0]
                        + " is a split input, which the backward pass does not go through; hook "
                        + "hook_resid_pre (or ln1.hook_normalized / hook_resid_mid) instead");
            if (e.getMessage() != null && e.getMessage().contains("hook_scale'"))
                throw new LoupeException("backward hooks: " + e.getMessage().split(";")[0]
                        + " has no gradient in the backward pass (the norm backward is fused); hook "
                        + "ln*.hook_normalized or the residual stream instead");
            throw e;
        }
    }

    /** Checks that the forward kept what this pass needs; returns the number of gradient rows B. */
    private int validate() {
        int L = cfg.nLayers();
        if (f.layers == null) throw new LoupeException("backward: the forward pass holds no activations");
        int starts = (opts.targets() != null ? 1 : 0) + (opts.dLogits() != null ? 1 : 0) + (opts.dResidPost() != null ? 1 : 0);
        if (starts != 1)
            throw new LoupeException("backward: give exactly one starting point (a loss, a logits gradient or a resid_post gradient), got " + starts);
        int rows, top;
        if (opts.dResidPost() != null) {
            top = opts.fromLayer();
            if (top < 0 || top >= L)
                throw new LoupeException("backward: start layer " + top + " is out of range [0, " + L + ")");
            rows = rowsOf(opts.dResidPost(), new int[]{T, C}, "blocks." + top + ".hook_resid_post gradient");
        } else {
            top = L - 1;
            if (f.logits == null)
                throw new LoupeException("backward: the forward stopped before the last block, so it has no logits: "
                        + "start from a resid_post gradient (Options.fromResidPost) or run the forward to the end");
            rows = opts.targets() != null ? f.batch : rowsOf(opts.dLogits(), new int[]{T, cfg.vocab()}, "logits gradient");
            if (f.lnFinalOut == null) throw new LoupeException("backward: the forward kept no final-norm activations");
            if (f.logits.dim(1) != T)
                throw new LoupeException("backward: the forward computed logits for the last position only (lastLogitsOnly): "
                        + "run it with logits for every position");
        }
        if (f.splitInputEdited >= 0)
            throw new LoupeException("backward: a hook edited a split input (hook_q_input, hook_k_input, hook_v_input or "
                    + "hook_attn_in) of block " + f.splitInputEdited + "; the backward pass does not go through per-head "
                    + "inputs: edit hook_q/hook_k/hook_v or the residual stream instead");
        int stop = opts.stopLayer();
        if (stop < 0 || stop > top)
            throw new LoupeException("backward: stop layer " + stop + " must be in [0, " + top + "] (the start layer)");
        for (int l = stop; l <= top; l++) {
            if (f.layers[l] == null)
                throw new LoupeException("backward: the forward did not run block " + l + " (it ran from a later block): "
                        + "stop the backward at or after the forward's start layer");
            if (l > stop && f.layers[l] == f.layers[l - 1])
                throw new LoupeException("backward: the forward reused one buffer for every layer: run it with "
                        + "Transformer.Options(keepActivations=true, ...)");
            if (f.layers[l].scores.dim(3) != T)
                throw new LoupeException("backward: the forward attended to a KV cache; the backward pass needs a forward "
                        + "over the whole sequence without a cache");
        }
        if (opts.into() != null && opts.into().layers.length != L)
            throw new LoupeException("backward: the gradients to accumulate into have " + opts.into().layers.length
                    + " layers, the model has " + L);
        return rows;
    }

    /** The batch of a starting gradient {@code [rows, ...tail]}: the forward's batch, or any when it was 1. */
    private int rowsOf(Tensor t, int[] tail, String what) {
        int[] s = t.shape();
        boolean ok = s.length == tail.length + 1 && Arrays.equals(Arrays.copyOfRange(s, 1, s.length), tail)
                && (s[0] == f.batch || (f.batch == 1 && s[0] > 0));
        if (!ok)
            throw new LoupeException("backward: " + what + " has shape " + Arrays.toString(s) + ", expected [" + f.batch
                    + ", " + tail[0] + ", " + tail[1] + "]" + (f.batch == 1 ? " (any number of rows against a forward of batch 1)" : ""));
        return s[0];
    }
}
