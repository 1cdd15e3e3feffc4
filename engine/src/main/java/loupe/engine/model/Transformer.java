package loupe.engine.model;

import loupe.LoupeException;
import loupe.engine.Batch;
import loupe.engine.Scope;
import loupe.engine.Tensor;
import loupe.engine.hooks.HookPoint;
import loupe.engine.hooks.Hooks;
import loupe.kernels.Backend;
import loupe.kernels.Buffer;

import java.util.ArrayList;
import java.util.Collections;
import java.util.List;

/**
 * A decoder-only transformer (GPT-2, Llama, Mistral, Qwen2, ... as described by {@link ModelConfig})
 * whose forward pass fires every TransformerLens hook point. The whole model reads top to bottom in
 * {@link #forward}; each step is one {@link Backend} op, so nothing runs per element in Java and
 * nothing comes to the host unless a hook or the caller asks.
 *
 * <p>Activations live in a {@link Scope} the caller owns. Without {@code keepActivations} one set of
 * per-layer buffers is reused across layers (memory of one layer); with it every layer keeps its own
 * (what the backward pass needs).
 */
public final class Transformer {
    private final ModelConfig cfg;
    private final Weights w;
    private final Backend be;
    private final String[] slotNames;
    private final List<String> hookNames, onDemandHookNames, knownHookNames;
    private static final int NP = HookPoint.values().length;

    public Transformer(ModelConfig cfg, Weights weights, Backend backend) {
        this.cfg = cfg;
        this.w = weights;
        this.be = backend;
        this.slotNames = new String[(cfg.nLayers() + 1) * NP];
        List<String> names = new ArrayList<>();
        for (HookPoint p : HookPoint.values()) {
            if (!p.existsIn(cfg)) continue;
            if (p.perLayer) {
                for (int l = 0; l < cfg.nLayers(); l++) slotNames[slot(p, l)] = p.name(l);
            } else {
                slotNames[slot(p, -1)] = p.name(-1);
            }
        }
        // Names in forward order: model-level inputs, then block by block, then the final points.
        for (HookPoint p : HookPoint.values())
            if (!p.perLayer && p.existsIn(cfg) && p.ordinal() < HookPoint.RESID_PRE.ordinal()) names.add(p.name(-1));
        List<String> onDemand = new ArrayList<>();
        for (int l = 0; l < cfg.nLayers(); l++)
            for (HookPoint p : HookPoint.values()) if (p.perLayer && p.existsIn(cfg)) (p.onDemand ? onDemand : names).add(p.name(l));
        for (HookPoint p : HookPoint.values())
            if (!p.perLayer && p.existsIn(cfg) && p.ordinal() > HookPoint.RESID_POST.ordinal()) names.add(p.name(-1));
        this.hookNames = Collections.unmodifiableList(names);
        this.onDemandHookNames = List.copyOf(onDemand);
        List<String> known = new ArrayList<>(names);
        known.addAll(onDemand);
        this.knownHookNames = List.copyOf(known);
    }

    private int slot(HookPoint p, int layer) {
        return p.perLayer ? layer * NP + p.ordinal() : cfg.nLayers() * NP + p.ordinal();
    }

    public ModelConfig config() {
        return cfg;
    }

    public Weights weights() {
        return w;
    }

    public Backend backend() {
        return be;
    }

    /**
     * Every hook name a forward pass fires, in the order it fires them (TransformerLens's
     * {@code run_with_cache} set), without the on-demand split inputs ({@link #onDemandHookNames}).
     */
    public List<String> hookNames() {
        return hookNames;
    }

    /**
     * The split inputs ({@code blocks.{l}.hook_q_input, hook_k_input, hook_v_input, hook_attn_in,
     * hook_mlp_in}; see {@link HookPoint#onDemand}): computed only when a hook names them.
     */
    public List<String> onDemandHookNames() {
        return onDemandHookNames;
    }

    /** Whether {@code name} is one of this model's hook points, on-demand ones included. */
    public boolean hasHook(String name) {
        return knownHookNames.contains(name);
    }

    /** {@link #hookNames} and {@link #onDemandHookNames}, for messages listing the nearest names. */
    public List<String> allHookNames() {
        return knownHookNames;
    }

    // ------------------------------------------------------------------ activations

    /** One block's activations, {@code [batch*pos, ...]} flattened; null where not computed. */
    public static final class LayerActs {
        public Tensor residPre, ln1Norm, ln1Scale, ln1Out, q, k, v, rotQ, rotK, scores, pattern, z, result,
                attnOut, residMid, ln2Norm, ln2Scale, ln2Out, pre, preLinear, post, mlpOut, residPost;
    }

    /** What a forward pass leaves behind. */
    public static final class Forward {
        /** {@code [batch, pos, d_vocab]}. */
        public Tensor logits;
        public Tensor embed, posEmbed, tokens, positions, keyValid;
        public LayerActs[] layers;
        public Tensor lnFinalNorm, lnFinalScale, lnFinalOut;
        /**
         * The residual after the last block run (the input of the final norm when all blocks ran); with
         * {@code lastLogitsOnly} it may hold each sequence's last position only ({@code [1, batch, d_model]}).
         */
        public Tensor residFinal;
        public int batch, pos;
        /** The first block whose q, k or v a hook on a split input edited (-1: none); the backward refuses those. */
        public int splitInputEdited = -1;
    }

    /**
     * Options of one forward pass.
     *
     * @param keepActivations every layer keeps its own activations (for the backward pass)
     * @param cache           a KV cache to read and extend, or null
     * @param startLayer      run blocks from this one; {@code startResid} is its {@code hook_resid_pre}
     *                        {@code [batch, pos, d_model]} (the embedding is skipped; nothing before is recomputed)
     * @param startResid      the residual entering {@code startLayer} (used when startLayer > 0), copied
     * @param stopLayer       run blocks before this one only; when less than n_layers the final norm and
     *                        unembedding are skipped and {@code logits} is null
     * @param lastLogitsOnly  only the last position goes through the final norm and the unembedding:
     *                        {@code logits} and the {@code ln_final} hooks have one position. For metrics
     *                        and sampling that read only the next-token prediction; it saves the
     *                        unembedding of every other position (most of a short prompt's FLOPs)
     * @param logitColumns    null, or the only vocabulary ids to unembed: {@code logits} keeps its shape
     *                        {@code [batch, pos, d_vocab]} but holds 0 in every other column. For metrics
     *                        that read a few logits (a logit difference): a sweep then skips the rest of the
     *                        unembedding, which at one position per cell is most of its memory traffic
     * @param suffix          null, or which positions of each sequence to compute at all ({@link Suffix})
     */
    public record Options(boolean keepActivations, KVCache cache, int startLayer, Tensor startResid, int stopLayer,
                          boolean lastLogitsOnly, int[] logitColumns, Suffix suffix) {
        public static final Options DEFAULT = new Options(false, null, 0, null, Integer.MAX_VALUE, false, null, null);

        public Options(boolean keepActivations, KVCache cache, int startLayer, Tensor startResid, int stopLayer,
                       boolean lastLogitsOnly, int[] logitColumns) {
            this(keepActivations, cache, startLayer, startResid, stopLayer, lastLogitsOnly, logitColumns, null);
        }

        public Options(boolean keepActivations, KVCache cache, int startLayer, Tensor startResid, int stopLayer, boolean lastLogitsOnly) {
            this(keepActivations, cache, startLayer, startResid, stopLayer, lastLogitsOnly, null, null);
        }

        public Options(boolean keepActivations, KVCache cache) {
            this(keepActivations, cache, 0, null, Integer.MAX_VALUE, false, null, null);
        }

        /** Runs blocks {@code [startLayer, stopLayer)} from the given residual. */
        public static Options range(int startLayer, Tensor startResid, int stopLayer, boolean keepActivations) {
            return new Options(keepActivations, null, startLayer, startResid, stopLayer, false, null, null);
        }

        /** The same options with logits for the last position only. */
        public Options withLastLogitsOnly() {
            return new Options(keepActivations, cache, startLayer, startResid, stopLayer, true, logitColumns, suffix);
        }

        /** The same options unembedding only vocabulary ids {@code ids} (null: all); see {@link #logitColumns}. */
        public Options withLogitColumns(int[] ids) {
            return new Options(keepActivations, cache, startLayer, startResid, stopLayer, lastLogitsOnly, ids == null ? null : ids.clone(), suffix);
        }

        /** The same options computing only the positions {@code s} names (null: all); see {@link Suffix}. */
        public Options withSuffix(Suffix s) {
            return new Options(keepActivations, cache, startLayer, startResid, stopLayer, lastLogitsOnly, logitColumns, s);
        }
    }

    /**
     * A pass that computes only the last positions of each sequence, each from its own first block:
     * sequence b's positions before {@code from[b]}, and all its blocks before {@code join[b]}, are known
     * to equal those of a reference run over the same tokens, and are not recomputed. A causal model's
     * earlier positions never see later ones, so after an edit at position p of block l (a patching cell),
     * positions before p, and blocks before l, are the reference's. Many such cells share one pass, and
     * each GEMM of a block covers every sequence that has joined by then.
     *
     * <p>The batch is copies of the reference's P sequences (sequence b is reference sequence b % P),
     * ordered by {@code join}. The reference gives, per block l, {@code residPre[l]} {@code [P, pos,
     * d_model]} (where a sequence joining at l starts; its hook_resid_pre), and what later positions need
     * of earlier ones: {@code q[l]} {@code [P, pos, n_heads, d_head]}, {@code k[l]}, {@code v[l]} {@code [P,
     * pos, n_kv_heads, d_head]} (its hook_q/k/v). Options: {@code startLayer} is the first block run
     * (at most every {@code join}), {@code startResid} is not used (null), and {@code lastLogitsOnly} is
     * needed (or a stop layer before the unembedding).
     *
     * <p>Activations of block l cover the sequences that have joined ({@code join[b] <= l}: the first
     * {@link #active} of them), in two layouts. The attention core ({@link #fullRows}: q, k, v, rot_q,
     * rot_k, attn_scores, pattern, z) is whole, {@code [active, pos, ...]}, the reference's rows copied in
     * front of the computed ones; attention then runs exactly as in a whole pass. Everything else is
     * compact: {@code [1, rows, ...]}, sequence after sequence, sequence b's positions {@code from[b] ..
     * pos-1} from row {@code rowStart(pos)[b]}. Hooks see the tensors in these layouts.
     *
     * <p>The computed rows equal those of a whole pass bit for bit when the backend gives a GEMM's rows
     * the same bits whatever the matrix height; {@link Transformer#suffixExact} asks it.
     *
     * @param from first computed position of each sequence, in {@code [0, pos)}
     * @param join first block of each sequence (non-decreasing), or null: all start at {@code startLayer}
     */
    public record Suffix(int[] from, int[] join, Tensor[] residPre, Tensor[] q, Tensor[] k, Tensor[] v) {
        public Suffix {
            from = from.clone();
            join = join == null ? null : join.clone();
        }

        /** Rows computed for sequences of {@code pos} positions: the sum of {@code pos - from[b]}. */
        public int rows(int pos) {
            return rowStart(pos)[from.length];
        }

        /** The compact row where each sequence's first computed position is, and {@code rows} at the end. */
        public int[] rowStart(int pos) {
            int[] start = new int[from.length + 1];
            for (int b = 0; b < from.length; b++) start[b + 1] = Math.addExact(start[b], pos - from[b]);
            return start;
        }

        /** How many sequences (the first ones) block {@code layer} computes: those joined by then. */
        public int active(int layer) {
            if (join == null) return from.length;
            int n = 0;
            while (n < join.length && join[n] <= layer) n++;
            return n;
        }

        /**
         * The distinct compact heights the blocks' GEMMs have for sequences of {@code pos} positions, from
         * block {@code startLayer}: what {@link Transformer#suffixExact} must hold for.
         */
        public int[] heights(int pos, int startLayer, int stopLayer) {
            int[] start = rowStart(pos);
            return java.util.stream.IntStream.range(startLayer, stopLayer).map(l -> start[active(l)]).filter(h -> h > 0).distinct().toArray();
        }

        /** Whether hook point {@code p} is computed whole ({@code [active, pos, ...]}) in a suffix pass. */
        public static boolean fullRows(HookPoint p) {
            return switch (p) {
                case Q, K, V, ROT_Q, ROT_K, ATTN_SCORES, PATTERN, Z -> true;
                default -> false;
            };
        }
    }

    /** Forward pass over {@code batch}: logits {@code [batch, pos, d_vocab]} owned by {@code scope}. */
    public Forward forward(Scope scope, Batch batch, Hooks hooks) {
        return forward(scope, batch, hooks, Options.DEFAULT);
    }

    /**
     * Forward pass. With a {@link KVCache} in {@code opts}, {@code batch} holds the new tokens only and
     * attends to everything the cache holds; the cache grows by {@code batch.length()}.
     */
    public Forward forward(Scope scope, Batch batch, Hooks hooks, Options opts) {
        final int B = batch.size(), T = batch.length();
        final int C = cfg.dModel(), H = cfg.nHeads(), HKV = cfg.nKvHeads(), D = cfg.dHead(), M = cfg.dMlp();
        final int BT = B * T;
        KVCache cache = opts.cache();
        validate(batch, cache);
        Hooks.Bound hk = hooks.bind(slotNames, knownHookNames).keepingActivations();
        int past = cache == null ? 0 : cache.length();
        int tk = past + T;

        Forward f = new Forward();
        f.batch = B;
        f.pos = T;
        f.tokens = scope.fromInts(batch.flatTokens(), B, T);
        int[] start = cache == null ? null : cache.realTokens();
        int[] posIds = batch.positions(start);
        for (int i = 0; i < posIds.length; i++) posIds[i] = Math.min(posIds[i], cfg.nCtx() - 1);
        f.positions = scope.fromInts(posIds, B, T);
        if (cache != null) {
            cache.appendMask(batch);
            f.keyValid = cache.keyValid(scope, tk);
        } else if (batch.padded()) {
            f.keyValid = scope.fromInts(batch.flatMask(), B, T);
        }
        Buffer keyValidBuf = f.keyValid == null ? null : f.keyValid.buffer();
        long keyValidOff = f.keyValid == null ? 0 : f.keyValid.offset();

        int startLayer = opts.startLayer(), stopLayer = Math.min(opts.stopLayer(), cfg.nLayers());
        Suffix sfx = opts.suffix();
        if (startLayer < 0 || startLayer > cfg.nLayers() || (startLayer > 0 && sfx == null && opts.startResid() == null))
            throw new LoupeException("forward: start layer " + startLayer + " needs a resid_pre tensor and must be in [0, " + cfg.nLayers() + "]");
        // Row-wise activations are [RB, RT, ...]: the batch, or in a suffix pass its computed rows as one run
        // (buffers for all of them; each block uses the first rows, those of the sequences joined by then).
        SuffixRows sr = sfx == null ? null : suffixRows(scope, sfx, opts, B, T, startLayer, stopLayer);
        final int RB = sr == null ? B : 1, RT = sr == null ? T : sr.rows;
        Tensor resid = scope.empty(RB, RT, C);
        // (A suffix pass's rows come from the reference's resid_pre as their sequences join, in the loop.)
        if (sr == null && startLayer > 0) {
            if (!java.util.Arrays.equals(opts.startResid().shape(), new int[]{B, T, C}))
                throw new LoupeException("forward: start residual has shape " + java.util.Arrays.toString(opts.startResid().shape())
                        + ", expected [" + B + ", " + T + ", " + C + "]");
            resid.copyFrom(opts.startResid());
        } else if (sr == null) {
            embed(f, resid, hk, scope, past, B, T, BT, C);
        }

        f.layers = new LayerActs[cfg.nLayers()];
        LayerActs shared = null;
        boolean lastRowsOnly = false;   // the last block went on with each sequence's last position only
        for (int l = startLayer; l < stopLayer; l++) {
            // This block's sequences (Bk) and row-wise shape [rb, rt, ...]: all of them, or in a suffix pass
            // those joined by now, whose rows come first; sequences joining here start from the reference.
            final int Bk = sr == null ? B : sfx.active(l), rb = sr == null ? B : 1, rt = sr == null ? T : sr.rowStart[Bk];
            final int R = rb * rt;
            if (sr != null) joinRows(sr, sfx, resid, l, l == startLayer ? 0 : sr.rowStart[sfx.active(l - 1)], rt);
            LayerActs full;
            if (opts.keepActivations() || shared == null) {
                full = allocate(scope, B, T, RB, RT, tk, hk, l);
                if (!opts.keepActivations()) shared = full;
            } else {
                full = shared;
            }
            full.residPre = resid;
            LayerActs a = sr == null ? full : firstRows(full, Bk, rt);
            f.layers[l] = a;
            Weights.Layer lw = w.layers[l];
            fire(hk, HookPoint.RESID_PRE, l, a.residPre, scope, past);

            // ---- attention (split inputs, when hooked, are per-head copies of resid_pre: see HookPoint.onDemand)
            Tensor attnIn = splitInput(hk, HookPoint.ATTN_IN, l, a.residPre, H, null, rb, rt, scope, past);
            Tensor qIn = splitInput(hk, HookPoint.Q_INPUT, l, a.residPre, H, attnIn, rb, rt, scope, past);
            Tensor kIn = splitInput(hk, HookPoint.K_INPUT, l, a.residPre, HKV, attnIn, rb, rt, scope, past);
            Tensor vIn = splitInput(hk, HookPoint.V_INPUT, l, a.residPre, HKV, attnIn, rb, rt, scope, past);
            a.ln1Out = norm(a.ln1Out, a.ln1Norm, a.ln1Scale, a.residPre, lw.ln1W, lw.ln1B, R, hk, HookPoint.LN1_SCALE, HookPoint.LN1_NORMALIZED, l, scope, past);
            if (sr == null) {
                projection(a.q, a.ln1Out, qIn, lw.wQ, lw.bQ, lw, B, T, H, scope);
                projection(a.k, a.ln1Out, kIn, lw.wK, lw.bK, lw, B, T, HKV, scope);
                projection(a.v, a.ln1Out, vIn, lw.wV, lw.bV, lw, B, T, HKV, scope);
            } else {
                suffixProjection(a.q, sr.q, sfx.q()[l], a.ln1Out, qIn, lw.wQ, lw.bQ, lw, sr, Bk * T, rt, H, scope);
                suffixProjection(a.k, sr.k, sfx.k()[l], a.ln1Out, kIn, lw.wK, lw.bK, lw, sr, Bk * T, rt, HKV, scope);
                suffixProjection(a.v, sr.v, sfx.v()[l], a.ln1Out, vIn, lw.wV, lw.bV, lw, sr, Bk * T, rt, HKV, scope);
            }
            if ((qIn != null || kIn != null || vIn != null) && f.splitInputEdited < 0) f.splitInputEdited = l;
            fire(hk, HookPoint.Q, l, a.q, scope, past);
            fire(hk, HookPoint.K, l, a.k, scope, past);
            fire(hk, HookPoint.V, l, a.v, scope, past);
            Tensor qUsed = a.q, kUsed = a.k;
            if (cfg.positions() == ModelConfig.Positions.ROTARY) {
                be.rope(a.rotQ.buffer(), a.rotQ.offset(), a.q.buffer(), a.q.offset(), f.positions.buffer(), 0,
                        w.ropeInvFreq.buffer(), w.ropeInvFreq.offset(), Bk * T, H, D, cfg.rotaryDim(), cfg.ropeInterleaved(), false);
                be.rope(a.rotK.buffer(), a.rotK.offset(), a.k.buffer(), a.k.offset(), f.positions.buffer(), 0,
                        w.ropeInvFreq.buffer(), w.ropeInvFreq.offset(), Bk * T, HKV, D, cfg.rotaryDim(), cfg.ropeInterleaved(), false);
                fire(hk, HookPoint.ROT_Q, l, a.rotQ, scope, past);
                fire(hk, HookPoint.ROT_K, l, a.rotK, scope, past);
                qUsed = a.rotQ;
                kUsed = a.rotK;
            }
            // Keys and values the queries attend to: this pass's, or the cache's (which this pass extends).
            Tensor keys = kUsed, values = a.v;
            int kvRows = T;
            if (cache != null) {
                cache.write(l, kUsed, a.v, B, T, past);
                keys = cache.keys(l);
                values = cache.values(l);
                kvRows = cache.capacity();
            }
            attention(a, qUsed, keys, values, kvRows, Bk, T, tk, past, keyValidBuf, keyValidOff, hk, l, scope);

            // The rows that go on: a suffix pass's computed ones (it attended over whole sequences), or, in the
            // last block of a pass that wants the last position's logits only, each sequence's last position.
            Tensor z = a.z;
            lastRowsOnly = lastRowsSuffice(opts, hk, l, stopLayer, B, T, R);
            if (lastRowsOnly) {
                int[] zRow = new int[B], rRow = new int[B];
                for (int b = 0; b < B; b++) {
                    zRow[b] = b * T + T - 1;
                    rRow[b] = sr == null ? zRow[b] : sr.rowStart[b + 1] - 1;
                }
                z = scope.empty(1, B, H, D);
                Tensor residLast = scope.empty(1, B, C), zi = scope.fromInts(zRow, B), ri = scope.fromInts(rRow, B);
                be.gatherRows(z.buffer(), z.offset(), a.z.buffer(), a.z.offset(), zi.buffer(), zi.offset(), B, H * D);
                be.gatherRows(residLast.buffer(), residLast.offset(), a.residPre.buffer(), a.residPre.offset(), ri.buffer(), ri.offset(), B, C);
                a = lastRows(a, residLast, B);
                f.layers[l] = a;
            } else if (sr != null) {
                z = Tensor.view(be, sr.z.buffer(), sr.z.offset(), Tensor.DTypeKind.F32, 1, rt, H, D);
                be.gatherRows(z.buffer(), z.offset(), a.z.buffer(), a.z.offset(), sr.fresh.buffer(), sr.fresh.offset(), R, H * D);
            }
            // (the last rows as one run [1, B, ...]: one GEMM of B rows, as sameRowBits was asked about)
            final int ob = lastRowsOnly ? 1 : rb, ot = lastRowsOnly ? B : rt, oR = ob * ot;
            // Output projection; per-head results only when someone looks at them.
            if (hk.active(slot(HookPoint.RESULT, l))) {
                a.result = scope.empty(ob, ot, H, C);
                // result[bt, h, :] = z[bt, h, :] · W_O[:, h*D:(h+1)*D]ᵀ, batched over heads.
                be.gemm(false, true, oR, C, D, 1f, z.buffer(), z.offset(), H * D, D,
                        lw.wO.buffer(), lw.wO.offset(), H * D, D, 0f, a.result.buffer(), a.result.offset(), H * C, C, H);
                if (hk.fire(slot(HookPoint.RESULT, l), a.result, HookPoint.RESULT, l, scope, past)) {
                    // A hook may have edited a head's result: attn_out is their sum.
                    sumHeads(a.attnOut, a.result, oR, H, C);
                    if (lw.bO != null) be.addBias(a.attnOut.buffer(), a.attnOut.offset(), lw.bO.buffer(), lw.bO.offset(), oR, C);
                } else {
                    // Only read: the usual projection, so that caching hook_result changes no number.
                    linear(a.attnOut, z, lw.wO, lw.bO, ob, ot);
                }
            } else {
                linear(a.attnOut, z, lw.wO, lw.bO, ob, ot);
            }
            fire(hk, HookPoint.ATTN_OUT, l, a.attnOut, scope, past);
            if (cfg.attnOnly()) {
                // No MLP: the block's output is resid_pre + attn_out.
                be.add(a.residPost.buffer(), a.residPost.offset(), a.residPre.buffer(), a.residPre.offset(), a.attnOut.buffer(), a.attnOut.offset(), (long) oR * C);
            } else {
                // resid_mid = resid_pre + attn_out, and ln2 of it in the same pass unless a hook in between may
                // edit (the fused op gives the same bits, so readers see what they would see anyway).
                boolean fuse = cfg.norm() != ModelConfig.Norm.NONE && !hk.mayEdit(slot(HookPoint.RESID_MID, l))
                        && !hk.active(slot(HookPoint.MLP_IN, l));
                if (fuse) {
                    be.addNorm(a.residMid.buffer(), a.residMid.offset(), a.residPre.buffer(), a.residPre.offset(),
                            a.attnOut.buffer(), a.attnOut.offset(), a.ln2Out.buffer(), a.ln2Out.offset(),
                            a.ln2Norm.buffer(), a.ln2Norm.offset(), a.ln2Scale.buffer(), a.ln2Scale.offset(),
                            buf(lw.ln2W), off(lw.ln2W), buf(lw.ln2B), off(lw.ln2B), oR, C, cfg.normEps(),
                            cfg.norm() == ModelConfig.Norm.RMS_NORM);
                } else {
                    be.add(a.residMid.buffer(), a.residMid.offset(), a.residPre.buffer(), a.residPre.offset(), a.attnOut.buffer(), a.attnOut.offset(), (long) oR * C);
                }
                fire(hk, HookPoint.RESID_MID, l, a.residMid, scope, past);
                mlp(a, lw, ob, ot, M, hk, l, scope, past, fuse);
            }
            // resid_post is the next block's resid_pre: an edit there must not reach a kept resid_post.
            int post = slot(HookPoint.RESID_POST, l);
            if (hk.active(post))
                hk.fire(post, a.residPost, HookPoint.RESID_POST, l, scope, past, l + 1 < stopLayer ? slot(HookPoint.RESID_PRE, l + 1) : -1);
            resid = lastRowsOnly ? a.residPost : full.residPost;   // (all rows' buffer; this block wrote its first rows)
            if (!opts.keepActivations()) {
                // The next block reuses these buffers, except those a hook saw (a reader may keep them).
                handOverHooked(full, hk, l, scope);
                // The next block writes its resid_post over this block's resid_pre (its input is this
                // resid_post), unless a hook saw that tensor as resid_pre here or as the previous resid_post.
                boolean seen = hk.active(slot(HookPoint.RESID_PRE, l)) || (l > startLayer && hk.active(slot(HookPoint.RESID_POST, l - 1)));
                full.residPost = seen ? scope.empty(RB, RT, C) : full.residPre;
            }
        }

        f.residFinal = resid;
        if (stopLayer < cfg.nLayers()) return f;

        // ---- final norm and unembedding (of every position, or of the last one only)
        int TL = T;
        Tensor finalIn = resid;
        if (lastRowsOnly) {
            TL = 1;   // resid holds each sequence's last position already
            finalIn = resid.reshape(B, 1, C);
        } else if (sr != null) {
            TL = 1;   // lastLogitsOnly: the last computed row of each sequence
            finalIn = scope.empty(B, 1, C);
            be.gatherRows(finalIn.buffer(), finalIn.offset(), resid.buffer(), resid.offset(), sr.last.buffer(), sr.last.offset(), B, C);
        } else if (opts.lastLogitsOnly() && T > 1) {
            TL = 1;
            finalIn = scope.empty(B, 1, C);
            be.copyStrided(finalIn.buffer(), finalIn.offset(), new long[]{0, 0, C, 1}, resid.buffer(), resid.offset() + (long) (T - 1) * C,
                    new long[]{0, 0, (long) T * C, 1}, new int[]{1, 1, B, C}, false);
        }
        f.lnFinalNorm = cfg.norm() == ModelConfig.Norm.NONE ? null : scope.empty(B, TL, C);
        f.lnFinalScale = cfg.norm() == ModelConfig.Norm.NONE ? null : scope.empty(B, TL, 1);
        f.lnFinalOut = w.lnFinalW == null && w.lnFinalB == null ? f.lnFinalNorm : scope.empty(B, TL, C);
        f.lnFinalOut = norm(f.lnFinalOut, f.lnFinalNorm, f.lnFinalScale, finalIn, w.lnFinalW, w.lnFinalB, B * TL, hk,
                HookPoint.LN_FINAL_SCALE, HookPoint.LN_FINAL_NORMALIZED, -1, scope, past + T - TL);
        if (opts.logitColumns() == null) {
            f.logits = scope.empty(B, TL, cfg.vocab());
            linear(f.logits, f.lnFinalOut, w.unembed, w.unembedB, B, TL);
        } else {
            f.logits = someLogits(scope, f.lnFinalOut, opts.logitColumns(), B, TL);
        }
        hk.fire(slot(HookPoint.LOGITS, -1), f.logits, HookPoint.LOGITS, -1, scope, past + T - TL);
        return f;
    }

    /**
     * The MLP of one block: resid_post = resid_mid + mlp_out. {@code normDone}: ln2 was computed with
     * resid_mid (fused), only its hooks remain to fire.
     */
    private void mlp(LayerActs a, Weights.Layer lw, int B, int T, int M, Hooks.Bound hk, int l, Scope scope, int past,
                     boolean normDone) {
        int C = cfg.dModel(), BT = B * T;
        if (normDone) {
            fireNorm(a.ln2Out, a.ln2Norm, a.ln2Scale, lw.ln2W, lw.ln2B, BT, hk, HookPoint.LN2_SCALE, HookPoint.LN2_NORMALIZED, l, scope, past);
        } else {
            Tensor mlpIn = a.residMid;
            int inSlot = slot(HookPoint.MLP_IN, l);
            if (hk.active(inSlot)) {
                // A copy, so that an edit reaches the MLP but not the residual stream (hook_mlp_in of TransformerLens).
                Tensor copy = scope.copyOf(a.residMid);
                if (hk.fire(inSlot, copy, HookPoint.MLP_IN, l, scope, past)) mlpIn = copy;
            }
            a.ln2Out = norm(a.ln2Out, a.ln2Norm, a.ln2Scale, mlpIn, lw.ln2W, lw.ln2B, BT, hk, HookPoint.LN2_SCALE, HookPoint.LN2_NORMALIZED, l, scope, past);
        }
        boolean gelu = cfg.act() == ModelConfig.Activation.GELU || cfg.act() == ModelConfig.Activation.GELU_TANH;
        if (cfg.gatedMlp()) {
            linear(a.pre, a.ln2Out, lw.wGate, lw.bGate, B, T);
            fire(hk, HookPoint.MLP_PRE, l, a.pre, scope, past);
            linear(a.preLinear, a.ln2Out, lw.wIn, lw.bIn, B, T);
            fire(hk, HookPoint.MLP_PRE_LINEAR, l, a.preLinear, scope, past);
            activation(a.post, a.pre, (long) BT * M);
            be.mul(a.post.buffer(), a.post.offset(), a.post.buffer(), a.post.offset(), a.preLinear.buffer(), a.preLinear.offset(), (long) BT * M);
        } else if (gelu && lw.bIn != null && !hk.mayEdit(slot(HookPoint.MLP_PRE, l))) {
            // Bias and GELU in one pass (same bits as addBias then gelu); hook_pre readers see the biased value.
            linear(a.pre, a.ln2Out, lw.wIn, null, B, T);
            be.addBiasGelu(a.pre.buffer(), a.pre.offset(), a.post.buffer(), a.post.offset(), lw.bIn.buffer(), lw.bIn.offset(),
                    BT, M, cfg.act() == ModelConfig.Activation.GELU_TANH);
            fire(hk, HookPoint.MLP_PRE, l, a.pre, scope, past);
        } else {
            linear(a.pre, a.ln2Out, lw.wIn, lw.bIn, B, T);
            fire(hk, HookPoint.MLP_PRE, l, a.pre, scope, past);
            activation(a.post, a.pre, (long) BT * M);
        }
        fire(hk, HookPoint.MLP_POST, l, a.post, scope, past);
        linear(a.mlpOut, a.post, lw.wOut, lw.bOut, B, T);
        fire(hk, HookPoint.MLP_OUT, l, a.mlpOut, scope, past);
        be.add(a.residPost.buffer(), a.residPost.offset(), a.residMid.buffer(), a.residMid.offset(), a.mlpOut.buffer(), a.mlpOut.offset(), (long) BT * C);
    }

    /** Token (and learned position) embeddings into {@code resid}, firing hook_embed and hook_pos_embed. */
    private void embed(Forward f, Tensor resid, Hooks.Bound hk, Scope scope, int past, int B, int T, int BT, int C) {
        f.embed = scope.empty(B, T, C);
        be.gatherRows(f.embed.buffer(), 0, w.embed.buffer(), w.embed.offset(), f.tokens.buffer(), 0, BT, C);
        hk.fire(slot(HookPoint.EMBED, -1), f.embed, HookPoint.EMBED, -1, scope, past);
        if (cfg.positions() == ModelConfig.Positions.LEARNED) {
            f.posEmbed = scope.empty(B, T, C);
            be.gatherRows(f.posEmbed.buffer(), 0, w.posEmbed.buffer(), w.posEmbed.offset(), f.positions.buffer(), 0, BT, C);
            hk.fire(slot(HookPoint.POS_EMBED, -1), f.posEmbed, HookPoint.POS_EMBED, -1, scope, past);
            be.add(resid.buffer(), 0, f.embed.buffer(), 0, f.posEmbed.buffer(), 0, (long) BT * C);
        } else {
            resid.copyFrom(f.embed);
        }
    }

    /**
     * With shared per-block buffers: every activation fired at block {@code l} is left to whoever saw it,
     * and the next blocks get a new buffer in its place (so cached activations need no copy).
     */
    private void handOverHooked(LayerActs a, Hooks.Bound hk, int l, Scope s) {
        a.ln1Scale = handOver(hk, HookPoint.LN1_SCALE, l, a.ln1Scale, s);
        a.ln1Norm = handOver(hk, HookPoint.LN1_NORMALIZED, l, a.ln1Norm, s);
        a.q = handOver(hk, HookPoint.Q, l, a.q, s);
        a.k = handOver(hk, HookPoint.K, l, a.k, s);
        a.v = handOver(hk, HookPoint.V, l, a.v, s);
        a.rotQ = handOver(hk, HookPoint.ROT_Q, l, a.rotQ, s);
        a.rotK = handOver(hk, HookPoint.ROT_K, l, a.rotK, s);
        a.scores = handOver(hk, HookPoint.ATTN_SCORES, l, a.scores, s);
        a.pattern = handOver(hk, HookPoint.PATTERN, l, a.pattern, s);
        a.z = handOver(hk, HookPoint.Z, l, a.z, s);
        a.attnOut = handOver(hk, HookPoint.ATTN_OUT, l, a.attnOut, s);
        a.residMid = handOver(hk, HookPoint.RESID_MID, l, a.residMid, s);
        a.ln2Scale = handOver(hk, HookPoint.LN2_SCALE, l, a.ln2Scale, s);
        a.ln2Norm = handOver(hk, HookPoint.LN2_NORMALIZED, l, a.ln2Norm, s);
        a.pre = handOver(hk, HookPoint.MLP_PRE, l, a.pre, s);
        a.preLinear = handOver(hk, HookPoint.MLP_PRE_LINEAR, l, a.preLinear, s);
        a.post = handOver(hk, HookPoint.MLP_POST, l, a.post, s);
        a.mlpOut = handOver(hk, HookPoint.MLP_OUT, l, a.mlpOut, s);
    }

    private Tensor handOver(Hooks.Bound hk, HookPoint p, int l, Tensor t, Scope s) {
        return t != null && p.existsIn(cfg) && hk.active(slot(p, l)) ? s.empty(t.shape()) : t;
    }

    private void fire(Hooks.Bound hk, HookPoint p, int layer, Tensor x, Scope scope, int past) {
        int s = slot(p, layer);
        if (hk.active(s)) hk.fire(s, x, p, layer, scope, past);
    }

    /**
     * Whether a suffix pass computing {@code rows} rows gives them the bits a whole pass over sequences of
     * {@code pos} positions gives them: every weight's GEMM must round a row the same way at both heights
     * (see {@link Backend#sameRowBits}; measured on block 0's weights, the choice depends on shapes only).
     */
    public boolean suffixExact(int rows, int pos) {
        if (rows < pos) return false;   // short GEMMs take other kernels; and little is saved
        Weights.Layer lw = w.layers[0];
        List<Tensor> ws = new ArrayList<>(List.of(lw.wQ, lw.wK, lw.wV));
        ws.addAll(weightsAfterAttention(lw));
        return sameRowBits(ws, rows, pos);
    }

    /** A block's weights after attention: W_O and the MLP's. */
    private List<Tensor> weightsAfterAttention(Weights.Layer lw) {
        List<Tensor> ws = new ArrayList<>(List.of(lw.wO));
        if (!cfg.attnOnly()) {
            ws.add(lw.wIn);
            ws.add(lw.wOut);
            if (cfg.gatedMlp()) ws.add(lw.wGate);
        }
        return ws;
    }

    /** Whether the backend rounds each row of a GEMM against every one of {@code ws} the same at both heights. */
    private boolean sameRowBits(List<Tensor> ws, int rows, int refRows) {
        for (Tensor wt : ws)
            if (!be.sameRowBits(true, rows, refRows, wt.dim(0), wt.dim(1), wt.buffer(), wt.offset(), wt.dim(1))) return false;
        return true;
    }

    /**
     * The index tensors and scratch of a suffix pass: {@code fresh[r]}, the whole-batch row {@code b*T+t} of
     * compact row r; {@code refRow[r]}, the reference's row {@code (b%P)*T+t} of it; {@code expand[b*T+t]},
     * where row (b, t) of q/k/v is in {@code [reference rows; computed rows]}; {@code last[b]}, the compact
     * row of sequence b's last position; {@code rowStart}, as {@link Suffix#rowStart}.
     */
    private record SuffixRows(int rows, int[] rowStart, Tensor fresh, Tensor refRow, Tensor expand, Tensor last,
                              Tensor q, Tensor k, Tensor v, Tensor z) {}

    private SuffixRows suffixRows(Scope scope, Suffix sfx, Options opts, int B, int T, int startLayer, int stopLayer) {
        int[] from = sfx.from(), join = sfx.join();
        if (from.length != B || (join != null && join.length != B))
            throw new LoupeException("suffix pass: " + from.length + " first positions" + (join == null ? "" : " and " + join.length
                    + " first blocks") + " for a batch of " + B + " sequences");
        for (int b = 0; b < B; b++) {
            if (from[b] < 0 || from[b] >= T)
                throw new LoupeException("suffix pass: sequence " + b + " starts at position " + from[b] + ", outside [0, " + T + ")");
            int jb = join == null ? startLayer : join[b];
            if (jb < startLayer || jb >= stopLayer || (b > 0 && join != null && jb < join[b - 1]))
                throw new LoupeException("suffix pass: sequence " + b + " joins at block " + jb + "; first blocks must be in ["
                        + startLayer + ", " + stopLayer + ") and in order (sequences sorted by their first block)");
        }
        if (opts.cache() != null || opts.keepActivations() || opts.startResid() != null)
            throw new LoupeException("suffix pass: not with a KV cache, kept activations (the backward needs whole sequences) "
                    + "or a start residual (sequences start from the reference's resid_pre)");
        if (!opts.lastLogitsOnly() && stopLayer >= cfg.nLayers())
            throw new LoupeException("suffix pass: logits exist for the computed rows only; ask for the last position's (lastLogitsOnly)");
        int C = cfg.dModel(), H = cfg.nHeads(), HKV = cfg.nKvHeads(), D = cfg.dHead();
        int P = -1;
        for (int l = startLayer; l < stopLayer; l++) {
            boolean joins = false;
            for (int b = 0; b < B; b++) joins |= (join == null ? startLayer : join[b]) == l;
            Tensor[] refs = {joins ? at(sfx.residPre(), l) : null, at(sfx.q(), l), at(sfx.k(), l), at(sfx.v(), l)};
            int[][] shapes = {{T, C}, {T, H, D}, {T, HKV, D}, {T, HKV, D}};
            for (int i = joins ? 0 : 1; i < 4; i++) {
                Tensor r = refs[i];
                boolean ok = r != null && r.rank() == shapes[i].length + 1 && (P < 0 || r.dim(0) == P)
                        && java.util.Arrays.equals(java.util.Arrays.copyOfRange(r.shape(), 1, r.rank()), shapes[i]);
                if (!ok)
                    throw new LoupeException("suffix pass: block " + l + "'s reference " + List.of("resid_pre", "q", "k", "v").get(i)
                            + " must be [P, " + java.util.Arrays.toString(shapes[i]).substring(1) + (r == null ? ", got none" : ", got "
                            + java.util.Arrays.toString(r.shape())));
                P = r.dim(0);
            }
        }
        if (P <= 0 || B % P != 0)
            throw new LoupeException("suffix pass: the batch of " + B + " sequences is not copies of the reference's " + P);
        int[] start = sfx.rowStart(T);
        int rows = start[B];
        int[] fresh = new int[rows], refRow = new int[rows], expand = new int[B * T], last = new int[B];
        for (int b = 0; b < B; b++) {
            for (int t = 0; t < T; t++) {
                int r = start[b] + t - from[b];
                if (t < from[b]) {
                    expand[b * T + t] = (b % P) * T + t;
                } else {
                    expand[b * T + t] = P * T + r;
                    fresh[r] = b * T + t;
                    refRow[r] = (b % P) * T + t;
                }
            }
            last[b] = start[b + 1] - 1;
        }
        return new SuffixRows(rows, start, scope.fromInts(fresh, rows), scope.fromInts(refRow, rows), scope.fromInts(expand, B * T),
                scope.fromInts(last, B), scope.empty(P * T + rows, H, D), scope.empty(P * T + rows, HKV, D),
                scope.empty(P * T + rows, HKV, D), scope.empty(1, rows, H, D));
    }

    private static Tensor at(Tensor[] t, int l) {
        return t == null || l >= t.length ? null : t[l];
    }

    /** Rows {@code [r0, r1)} of {@code resid}: the reference's resid_pre of block l at those rows' positions. */
    private void joinRows(SuffixRows sr, Suffix sfx, Tensor resid, int l, int r0, int r1) {
        if (r1 <= r0) return;
        Tensor ref = sfx.residPre()[l];
        int C = cfg.dModel();
        be.gatherRows(resid.buffer(), resid.offset() + (long) r0 * C, ref.buffer(), ref.offset(), sr.refRow.buffer(),
                sr.refRow.offset() + r0, r1 - r0, C);
    }

    /**
     * Whether block {@code l} may go on after attention with each sequence's last position only: it is the
     * last block of a pass that wants the last position's logits, no hook reads the rows after attention,
     * there are other rows to drop, and the backend gives a row the same bits in a GEMM of B rows as in
     * one of T (so the logits are those of the whole block; see {@link Backend#sameRowBits}).
     */
    private boolean lastRowsSuffice(Options opts, Hooks.Bound hk, int l, int stopLayer, int B, int T, int rows) {
        if (!opts.lastLogitsOnly() || opts.keepActivations() || l != cfg.nLayers() - 1 || stopLayer != cfg.nLayers() || rows <= B)
            return false;
        for (HookPoint p : List.of(HookPoint.RESULT, HookPoint.ATTN_OUT, HookPoint.RESID_MID, HookPoint.LN2_SCALE, HookPoint.LN2_NORMALIZED,
                HookPoint.MLP_IN, HookPoint.MLP_PRE, HookPoint.MLP_PRE_LINEAR, HookPoint.MLP_POST, HookPoint.MLP_OUT, HookPoint.RESID_POST))
            if (p.existsIn(cfg) && hk.active(slot(p, l))) return false;
        return sameRowBits(weightsAfterAttention(w.layers[l]), B, T);
    }

    /**
     * {@code a} going on with each sequence's last position only: its row-wise activations as
     * {@code [1, B, ...]} views of the first rows of its buffers (one run), entering with {@code residLast}.
     */
    private static LayerActs lastRows(LayerActs a, Tensor residLast, int B) {
        LayerActs v = views(a, t -> t, t -> rowsView(t, B));
        v.residPre = residLast;
        return v;
    }

    /** A block's activations over the first {@code seqs} sequences ({@code rows} compact rows) of {@code a}'s buffers. */
    private static LayerActs firstRows(LayerActs a, int seqs, int rows) {
        return views(a, t -> t.slice(0, seqs), t -> rowsView(t, rows));
    }

    /** {@code a}'s tensors as views: the attention core's through {@code core}, the row-wise ones through {@code rowWise}. */
    private static LayerActs views(LayerActs a, java.util.function.UnaryOperator<Tensor> core, java.util.function.UnaryOperator<Tensor> rowWise) {
        java.util.function.UnaryOperator<Tensor> c = t -> t == null ? null : core.apply(t), r = t -> t == null ? null : rowWise.apply(t);
        LayerActs v = new LayerActs();
        v.residPre = r.apply(a.residPre);
        v.ln1Norm = r.apply(a.ln1Norm);
        v.ln1Scale = r.apply(a.ln1Scale);
        v.ln1Out = r.apply(a.ln1Out);
        v.q = c.apply(a.q);
        v.k = c.apply(a.k);
        v.v = c.apply(a.v);
        v.rotQ = c.apply(a.rotQ);
        v.rotK = c.apply(a.rotK);
        v.scores = c.apply(a.scores);
        v.pattern = c.apply(a.pattern);
        v.z = c.apply(a.z);
        v.attnOut = r.apply(a.attnOut);
        v.residMid = r.apply(a.residMid);
        v.ln2Norm = r.apply(a.ln2Norm);
        v.ln2Scale = r.apply(a.ln2Scale);
        v.ln2Out = r.apply(a.ln2Out);
        v.pre = r.apply(a.pre);
        v.preLinear = r.apply(a.preLinear);
        v.post = r.apply(a.post);
        v.mlpOut = r.apply(a.mlpOut);
        v.residPost = r.apply(a.residPost);
        return v;
    }

    /** {@code [1, n, ...]} over the first n rows of a row-wise tensor ({@code [B, T, ...]} or {@code [1, rows, ...]}). */
    private static Tensor rowsView(Tensor t, int n) {
        int[] s = t.shape();
        s[0] = 1;
        s[1] = n;
        return Tensor.view(t.backend(), t.buffer(), t.offset(), t.dtype(), s);
    }

    /**
     * q, k or v {@code out [Bk, T, n, d_head]} of a suffix pass: the first {@code rows} computed rows projected
     * into {@code src} {@code [P*T + rows, n, d_head]} after a copy of the reference's, then gathered into place.
     */
    private void suffixProjection(Tensor out, Tensor src, Tensor ref, Tensor ln1Out, Tensor split, Tensor weight, Tensor bias,
                                  Weights.Layer lw, SuffixRows sr, int BT, int rows, int n, Scope scope) {
        int D = cfg.dHead(), PT = ref.dim(0) * ref.dim(1);
        src.slice(0, PT).copyFrom(ref.reshape(PT, n, D));
        projection(src.slice(PT, PT + rows).reshape(1, rows, n, D), ln1Out, split, weight, bias, lw, 1, rows, n, scope);
        be.gatherRows(out.buffer(), out.offset(), src.buffer(), src.offset(), sr.expand.buffer(), sr.expand.offset(), BT, n * D);
    }

    /** One block's buffers: the attention core {@code [B, T, ...]}, row-wise activations {@code [RB, RT, ...]} (see Suffix). */
    private LayerActs allocate(Scope s, int B, int T, int RB, int RT, int tk, Hooks.Bound hk, int l) {
        int C = cfg.dModel(), H = cfg.nHeads(), HKV = cfg.nKvHeads(), D = cfg.dHead(), M = cfg.dMlp();
        boolean norms = cfg.norm() != ModelConfig.Norm.NONE, mlp = !cfg.attnOnly();
        LayerActs a = new LayerActs();
        if (norms) {
            a.ln1Norm = s.empty(RB, RT, C);
            a.ln1Scale = s.empty(RB, RT, 1);
            a.ln1Out = s.empty(RB, RT, C);
        }
        a.q = s.empty(B, T, H, D);
        a.k = s.empty(B, T, HKV, D);
        a.v = s.empty(B, T, HKV, D);
        if (cfg.positions() == ModelConfig.Positions.ROTARY) {
            a.rotQ = s.empty(B, T, H, D);
            a.rotK = s.empty(B, T, HKV, D);
        }
        a.scores = s.empty(B, H, T, tk);
        a.pattern = s.empty(B, H, T, tk);
        a.z = s.empty(B, T, H, D);
        a.attnOut = s.empty(RB, RT, C);
        if (mlp) {
            a.residMid = s.empty(RB, RT, C);
            if (norms) {
                a.ln2Norm = s.empty(RB, RT, C);
                a.ln2Scale = s.empty(RB, RT, 1);
                a.ln2Out = s.empty(RB, RT, C);
            }
            a.pre = s.empty(RB, RT, M);
            if (cfg.gatedMlp()) a.preLinear = s.empty(RB, RT, M);
            a.post = s.empty(RB, RT, M);
            a.mlpOut = s.empty(RB, RT, C);
        }
        a.residPost = s.empty(RB, RT, C);
        return a;
    }

    /**
     * {@code out[B*T, outF] = x[B*T, inF] · Wᵀ + b} with W stored {@code [outF, inF]}: one GEMM per sequence
     * (strided-batched), so that a sequence's numbers do not depend on what else is in the batch. A BLAS
     * may round a row differently depending on the matrix's height; batched patching sweeps are checked
     * to equal one-cell-at-a-time forwards exactly, which this makes true.
     */
    private void linear(Tensor out, Tensor x, Tensor weight, Tensor bias, int B, int T) {
        int outF = weight.dim(0), inF = weight.dim(1);
        be.gemm(false, true, T, outF, inF, 1f, x.buffer(), x.offset(), inF, (long) T * inF,
                weight.buffer(), weight.offset(), inF, 0, 0f, out.buffer(), out.offset(), outF, (long) T * outF, B);
        if (bias != null) be.addBias(out.buffer(), out.offset(), bias.buffer(), bias.offset(), B * T, outF);
    }

    /**
     * Logits {@code [B, TL, d_vocab]} with only columns {@code ids} computed (the rest 0): the unembedding's
     * rows for those ids gathered into a small weight, one linear layer, the columns scattered back.
     */
    private Tensor someLogits(Scope scope, Tensor x, int[] ids, int B, int TL) {
        int V = cfg.vocab(), C = cfg.dModel(), n = ids.length, rows = B * TL;
        for (int id : ids)
            if (id < 0 || id >= V) throw new LoupeException("logit columns: vocabulary id " + id + " is outside [0, " + V + ")");
        Tensor idx = scope.fromInts(ids, n);
        Tensor wSub = scope.empty(n, C), bSub = w.unembedB == null ? null : scope.empty(n);
        be.gatherRows(wSub.buffer(), wSub.offset(), w.unembed.buffer(), w.unembed.offset(), idx.buffer(), idx.offset(), n, C);
        if (bSub != null) be.gatherRows(bSub.buffer(), bSub.offset(), w.unembedB.buffer(), w.unembedB.offset(), idx.buffer(), idx.offset(), n, 1);
        Tensor sub = scope.empty(B, TL, n);
        linear(sub, x, wSub, bSub, B, TL);
        Tensor logits = scope.zeros(B, TL, V);
        for (int i = 0; i < n; i++)
            be.copyStrided(logits.buffer(), logits.offset() + ids[i], new long[]{0, 0, V, 1}, sub.buffer(), sub.offset() + i,
                    new long[]{0, 0, n, 1}, new int[]{1, 1, rows, 1}, false);
        return logits;
    }

    /**
     * Fires split input {@code p} when hooked: {@code [batch, pos, n, d_model]}, each of the n heads a copy
     * of {@code resid} (or of {@code from}, an edited hook_attn_in). Returns the tensor when a hook may have
     * edited it (the projection must then read it), else the edited {@code from}, else null.
     */
    private Tensor splitInput(Hooks.Bound hk, HookPoint p, int l, Tensor resid, int n, Tensor from, int B, int T, Scope scope, int past) {
        int s = slot(p, l);
        if (!hk.active(s)) return from;
        int C = cfg.dModel();
        Tensor x = scope.empty(B, T, n, C);
        if (from != null) {
            x.copyFrom(from);
        } else {
            // Broadcast over heads: a source stride of 0 along the head axis.
            be.copyStrided(x.buffer(), x.offset(), new long[]{0, (long) n * C, C, 1}, resid.buffer(), resid.offset(),
                    new long[]{0, C, 0, 1}, new int[]{1, B * T, n, C}, false);
        }
        return hk.fire(s, x, p, l, scope, past) ? x : from;
    }

    /**
     * q, k or v {@code out [batch, pos, n, d_head]}: from the block's ln1 output, or, when {@code split}
     * {@code [batch, pos, n, d_model]} is given, head by head from ln1 of that head's own input
     * (TransformerLens's einsum over {@code head_index} with {@code use_split_qkv_input}). The ln1 hooks
     * are not fired again for the split rows.
     */
    private void projection(Tensor out, Tensor ln1Out, Tensor split, Tensor weight, Tensor bias, Weights.Layer lw,
                            int B, int T, int n, Scope scope) {
        if (split == null) {
            linear(out, ln1Out, weight, bias, B, T);
            return;
        }
        int C = cfg.dModel(), D = cfg.dHead(), rows = B * T * n;
        Tensor in = split;
        if (cfg.norm() != ModelConfig.Norm.NONE) {
            in = scope.empty(B, T, n, C);
            applyNorm(in, in, scope.empty(B, T, n, 1), split, lw.ln1W, lw.ln1B, rows);
        }
        // out[bt, h, :] = in[bt, h, :] · W[h*D:(h+1)*D, :]ᵀ, batched over the heads.
        be.gemm(false, true, B * T, D, C, 1f, in.buffer(), in.offset(), n * C, C,
                weight.buffer(), weight.offset(), C, (long) D * C, 0f, out.buffer(), out.offset(), n * D, D, n);
        if (bias != null) be.addBias(out.buffer(), out.offset(), bias.buffer(), bias.offset(), B * T, n * D);
    }

    private void activation(Tensor out, Tensor x, long n) {
        activation(be, cfg.act(), out, x, n);
    }

    /** {@code out = act(x)} over {@code n} elements (shared with the backward pass, which recomputes it). */
    static void activation(Backend be, ModelConfig.Activation act, Tensor out, Tensor x, long n) {
        switch (act) {
            case GELU_TANH -> be.gelu(out.buffer(), out.offset(), x.buffer(), x.offset(), n, true);
            case GELU -> be.gelu(out.buffer(), out.offset(), x.buffer(), x.offset(), n, false);
            case SILU -> be.silu(out.buffer(), out.offset(), x.buffer(), x.offset(), n);
            case RELU -> be.relu(out.buffer(), out.offset(), x.buffer(), x.offset(), n);
        }
    }

    /**
     * The configured norm of {@code x}, firing its scale and normalized hooks; when a hook edits
     * those, the output is recomputed from the edited normalized value. Returns the tensor holding the
     * norm's output: {@code out}, or {@code x} itself for a model without norms.
     */
    private Tensor norm(Tensor out, Tensor normalized, Tensor scale, Tensor x, Tensor gain, Tensor bias, int rows,
                        Hooks.Bound hk, HookPoint scaleP, HookPoint normP, int layer, Scope scope, int past) {
        if (cfg.norm() == ModelConfig.Norm.NONE) return x;   // no norm: its output is its input
        applyNorm(out, normalized, scale, x, gain, bias, rows);
        fireNorm(out, normalized, scale, gain, bias, rows, hk, scaleP, normP, layer, scope, past);
        return out;
    }

    /** Fires a computed norm's scale and normalized hooks; an edit of normalized recomputes {@code out}. */
    private void fireNorm(Tensor out, Tensor normalized, Tensor scale, Tensor gain, Tensor bias, int rows,
                          Hooks.Bound hk, HookPoint scaleP, HookPoint normP, int layer, Scope scope, int past) {
        int C = cfg.dModel();
        Buffer gb = buf(gain), bb = buf(bias);
        long go = off(gain), bo = off(bias);
        int ss = slot(scaleP, layer), ns = slot(normP, layer);
        if (hk.active(ss)) hk.fire(ss, scale, scaleP, layer, scope, past);
        if (hk.active(ns) && hk.fire(ns, normalized, normP, layer, scope, past)) {
            // The hook may have changed normalized: out = normalized * gain + bias again.
            if (out != normalized) be.scaleShiftRows(out.buffer(), out.offset(), normalized.buffer(), normalized.offset(), gb, go, bb, bo, rows, C);
        }
    }

    private static Buffer buf(Tensor t) {
        return t == null ? null : t.buffer();
    }

    private static long off(Tensor t) {
        return t == null ? 0 : t.offset();
    }

    /** The configured norm (not NONE) of {@code x [rows, d_model]}, without hooks. */
    private void applyNorm(Tensor out, Tensor normalized, Tensor scale, Tensor x, Tensor gain, Tensor bias, int rows) {
        int C = cfg.dModel();
        Buffer gb = buf(gain), bb = buf(bias);
        long go = off(gain), bo = off(bias);
        if (cfg.norm() == ModelConfig.Norm.LAYER_NORM)
            be.layerNorm(out.buffer(), out.offset(), normalized.buffer(), normalized.offset(), scale.buffer(), scale.offset(),
                    x.buffer(), x.offset(), gb, go, bb, bo, rows, C, cfg.normEps());
        else
            be.rmsNorm(out.buffer(), out.offset(), normalized.buffer(), normalized.offset(), scale.buffer(), scale.offset(),
                    x.buffer(), x.offset(), gb, go, rows, C, cfg.normEps());
    }

    /**
     * Causal (grouped-query) attention for one layer: scores = q·kᵀ/√d, masked and softmaxed into the
     * pattern, z = pattern·v. Keys/values are {@code [batch, kvRows, n_kv_heads, d_head]}; the
     * {@code tk} first rows are attended to.
     */
    private void attention(LayerActs a, Tensor q, Tensor keys, Tensor values, int kvRows, int B, int T, int tk, int past,
                           Buffer keyValid, long keyValidOff, Hooks.Bound hk, int l, Scope scope) {
        int H = cfg.nHeads(), HKV = cfg.nKvHeads(), D = cfg.dHead(), G = cfg.groupSize();
        float alpha = (float) (1 / Math.sqrt(D));
        for (int b = 0; b < B; b++) {
            for (int j = 0; j < HKV; j++) {
                int h0 = j * G;
                // scores[b, h0..h0+G, :, :] = q[b, :, h, :] · k[b, :, j, :]ᵀ, batched over the G query heads of kv head j.
                be.gemm(false, true, T, tk, D, alpha,
                        q.buffer(), q.offset() + (long) b * T * H * D + (long) h0 * D, H * D, D,
                        keys.buffer(), keys.offset() + (long) b * kvRows * HKV * D + (long) j * D, HKV * D, 0,
                        0f, a.scores.buffer(), a.scores.offset() + ((long) b * H + h0) * T * tk, tk, (long) T * tk, G);
            }
        }
        be.attentionSoftmax(a.scores.buffer(), a.scores.offset(), a.pattern.buffer(), a.pattern.offset(), keyValid, keyValidOff,
                B, H, T, tk, past, cfg.slidingWindow());
        int ss = slot(HookPoint.ATTN_SCORES, l);
        if (hk.active(ss) && hk.fire(ss, a.scores, HookPoint.ATTN_SCORES, l, scope, past)) {
            // The hook may have changed the scores: mask and normalize again.
            be.attentionSoftmax(a.scores.buffer(), a.scores.offset(), a.pattern.buffer(), a.pattern.offset(), keyValid, keyValidOff,
                    B, H, T, tk, past, cfg.slidingWindow());
        }
        fire(hk, HookPoint.PATTERN, l, a.pattern, scope, past);
        for (int b = 0; b < B; b++) {
            for (int j = 0; j < HKV; j++) {
                int h0 = j * G;
                // z[b, :, h, :] = pattern[b, h] · v[b, :, j, :].
                be.gemm(false, false, T, D, tk, 1f,
                        a.pattern.buffer(), a.pattern.offset() + ((long) b * H + h0) * T * tk, tk, (long) T * tk,
                        values.buffer(), values.offset() + (long) b * kvRows * HKV * D + (long) j * D, HKV * D, 0,
                        0f, a.z.buffer(), a.z.offset() + (long) b * T * H * D + (long) h0 * D, H * D, D, G);
            }
        }
        fire(hk, HookPoint.Z, l, a.z, scope, past);
    }

    /** {@code out[bt, :] = Σ_h result[bt, h, :]}, one strided copy per head (each writes disjoint rows). */
    private void sumHeads(Tensor out, Tensor result, int BT, int H, int C) {
        for (int h = 0; h < H; h++)
            be.copyStrided(out.buffer(), out.offset(), new long[]{0, 0, C, 1}, result.buffer(), result.offset() + (long) h * C,
                    new long[]{0, 0, (long) H * C, 1}, new int[]{1, 1, BT, C}, h > 0);
    }

    private void validate(Batch batch, KVCache cache) {
        int past = cache == null ? 0 : cache.length();
        if (past + batch.length() > cfg.nCtx())
            throw new LoupeException("sequence of " + (past + batch.length()) + " tokens is longer than the model's context of "
                    + cfg.nCtx() + " (n_ctx): shorten the prompt or generate fewer tokens");
        if (cache != null) {
            if (cache.batch() != batch.size())
                throw new LoupeException("KV cache holds " + cache.batch() + " sequences, the batch has " + batch.size());
            if (past + batch.length() > cache.capacity())
                throw new LoupeException("KV cache capacity " + cache.capacity() + " exceeded by " + (past + batch.length()) + " tokens");
        }
        int[][] t = batch.tokens();
        for (int b = 0; b < t.length; b++)
            for (int i = 0; i < t[b].length; i++)
                if (t[b][i] < 0 || t[b][i] >= cfg.vocab())
                    throw new LoupeException("token id " + t[b][i] + " at [" + b + ", " + i + "] is out of range [0, " + cfg.vocab() + ")");
    }
}
