package loupe.interp.patching;

import loupe.LoupeException;
import loupe.engine.Batch;
import loupe.engine.Scope;
import loupe.engine.Tensor;
import loupe.engine.hooks.HookFn;
import loupe.engine.hooks.HookPoint;
import loupe.engine.hooks.Hooks;
import loupe.engine.model.ModelConfig;
import loupe.engine.model.Transformer;
import loupe.kernels.Backend;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.EnumSet;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * Activation patching with TransformerLens's semantics and result shapes, run as batched device work.
 *
 * <p>The clean and the corrupted prompts ({@code [P, pos]} each, equal shapes) are run once. Then each
 * patch cell (see {@link PatchCell}, {@link Sweep}) replaces one slice of one activation of the
 * corrupted run by the clean run's (denoising, the default; {@link Direction#NOISING} swaps the roles)
 * and the metric of the patched logits is recorded. TransformerLens runs one forward pass per cell;
 * here:
 * <ul>
 *   <li>many cells share one forward pass: the batch holds {@code cells x P} rows (cell-major, prompt
 *       fastest), each row a copy of the corrupted prompt, and a hook copies each cell's clean slice
 *       into its own rows (one strided device copy per cell);</li>
 *   <li>blocks before the patched layer are not recomputed: their activations equal the corrupted run's,
 *       so a pass for layer l starts at block l from the corrupted run's cached {@code hook_resid_pre},
 *       replicated over the batch with one strided copy;</li>
 *   <li>positions before a cell's patched position are not recomputed either: a causal model's earlier
 *       positions never see the patch, so for a metric of the last position a pass computes only each
 *       cell's positions from its patched one on ({@link Transformer.Suffix}), taking the queries, keys
 *       and values of the earlier ones from the corrupted run. This is used when the backend gives the
 *       shorter GEMMs' rows the same bits ({@link Transformer#suffixExact}), so that the result stays
 *       exactly the one-cell loop's; {@link #rowsComputed} says how much was run;</li>
 *   <li>cells are grouped by layer and chunked so that a pass has at most {@link #maxBatch} rows.</li>
 * </ul>
 * Only the metric's few numbers per row come to the host.
 *
 * <p>A batched sweep gives what one plain forward pass per cell from the embedding gives, up to float
 * rounding: the numbers are bit-identical only when the backend computes each batch row the same way
 * whatever the batch size. The CPU backend does not quite (OpenBLAS sums a row of a GEMM differently
 * for different row counts; the Vector API's TANH/EXP change their last bit when the JIT compiles
 * them), so today the two agree to about 1e-6 of the logits (see the patching tests).
 *
 * <pre>{@code
 * try (ActivationPatching ap = new ActivationPatching(model, Batch.of(clean), Batch.of(corrupted))) {
 *     Metric ld = Metrics.logitDiff(answer, wrong);
 *     Metric m = Metrics.normalized(ld, ap.cleanValue(ld), ap.corruptedValue(ld));   // clean 1, corrupted 0
 *     PatchResult r = ap.residPre(m);                                                  // [n_layers, pos]
 * }
 * }</pre>
 *
 * <p>The instance owns the cached activations of the two runs (freed by {@link #close}); every patched
 * forward pass runs in its own scope, so a sweep's memory does not grow with its length.
 */
public final class ActivationPatching implements AutoCloseable {

    /** Which way activations move. */
    public enum Direction {
        /** Clean activations into the corrupted run (TransformerLens's default). */
        DENOISING,
        /** Corrupted activations into the clean run. */
        NOISING
    }

    /** Upper bound of rows per patched forward pass when none is set (and memory allows). */
    public static final int DEFAULT_MAX_ROWS = 256;

    private final Transformer model;
    private final ModelConfig cfg;
    private final Backend be;
    private final Batch clean, corrupted;
    private final int prompts, length;
    private final Scope cacheScope;
    /** The source run's activations per hook name (filled per hook point, on first use). */
    private final Map<String, Tensor> sourceActs = new HashMap<>();
    private final Set<HookPoint> sourcePoints = EnumSet.noneOf(HookPoint.class);
    /** The target run's {@code hook_resid_pre} per layer {@code [P, pos, d_model]}, on first use. */
    private Tensor[] targetResidPre;
    /** The target run's {@code hook_q/k/v} per layer (what suffix passes take for earlier positions), on first use. */
    private Tensor[] targetQ, targetK, targetV;
    /** The target run's last {@code hook_resid_post} {@code [P, pos, d_model]}: its logits without a pass. */
    private Tensor targetResidFinal;
    private long rowsComputed;
    /** {@link #plainValues} per metric (by identity). */
    private final Map<Metric, float[]> plainValueCache = new java.util.IdentityHashMap<>();
    private Direction direction = Direction.DENOISING;
    private int maxBatch;
    private ProgressListener listener = ProgressListener.NONE;

    /**
     * Patching between two runs of {@code model}.
     *
     * @param clean     the clean prompts {@code [P, pos]}
     * @param corrupted the corrupted prompts, same shape (and same padding mask, if any)
     */
    public ActivationPatching(Transformer model, Batch clean, Batch corrupted) {
        if (clean.size() != corrupted.size() || clean.length() != corrupted.length())
            throw new LoupeException("activation patching needs clean and corrupted prompts of the same shape: clean is ["
                    + clean.size() + ", " + clean.length() + "], corrupted [" + corrupted.size() + ", " + corrupted.length()
                    + "]; positions are patched one to one, so reword or pad the prompts to equal token counts");
        if (!Arrays.equals(clean.flatMask(), corrupted.flatMask()))
            throw new LoupeException("activation patching: clean and corrupted prompts are padded differently; pad them the same way");
        this.model = model;
        this.cfg = model.config();
        this.be = model.backend();
        this.clean = clean;
        this.corrupted = corrupted;
        this.prompts = clean.size();
        this.length = clean.length();
        this.cacheScope = new Scope(be);
    }

    /** Sets the direction (default {@link Direction#DENOISING}); cached activations are dropped. */
    public ActivationPatching direction(Direction d) {
        if (d != direction) {
            direction = d;
            sourceActs.clear();
            sourcePoints.clear();
            targetResidPre = null;   // memory stays in cacheScope until close: a direction change is rare
            targetQ = targetK = targetV = null;
            targetResidFinal = null;
        }
        return this;
    }

    /**
     * Sets the most rows (cells x prompts) one patched forward pass may hold; at least one cell always
     * runs. The default fits the logits and activations of a pass in about 256 MB (a metric of the last
     * position needs logits of one position per row), up to {@link #DEFAULT_MAX_ROWS}.
     */
    public ActivationPatching maxBatch(int rows) {
        if (rows < 1) throw new LoupeException("patching: max batch must be at least 1, got " + rows);
        this.maxBatch = rows;
        return this;
    }

    /** The most rows per pass: as set, or the default for a metric reading every position's logits. */
    public int maxBatch() {
        return maxBatch > 0 ? maxBatch : defaultMaxRows(cfg, length, false);
    }

    private int maxBatch(Metric metric) {
        return maxBatch > 0 ? maxBatch : defaultMaxRows(cfg, length, metric.lastPositionOnly());
    }

    /**
     * Positions run through blocks by the last {@link #run} (summed over its passes: a pass of s
     * sequences computing r positions each from block l counts {@code s * r * (n_layers - l)}). A
     * TransformerLens loop runs {@code cells * P * pos * n_layers}.
     */
    public long rowsComputed() {
        return rowsComputed;
    }

    /** Reports progress after each patched forward pass. */
    public ActivationPatching listener(ProgressListener l) {
        this.listener = l == null ? ProgressListener.NONE : l;
        return this;
    }

    /** Rows per pass such that logits and one layer's activations take about 256 MB. */
    static int defaultMaxRows(ModelConfig c, int pos, boolean lastLogitsOnly) {
        long floatsPerRow = (long) pos * (16L * c.dModel() + 3L * c.dMlp() + 2L * c.nHeads() * pos)
                + (lastLogitsOnly ? 1L : pos) * c.vocab();
        long budget = 64L << 20;   // floats
        return (int) Math.max(1, Math.min(DEFAULT_MAX_ROWS, budget / Math.max(1, floatsPerRow)));
    }

    // ------------------------------------------------------------------ baselines

    /** The metric's cell value on the unpatched clean run. */
    public float cleanValue(Metric metric) {
        return plainValues(metric)[0];
    }

    /** The metric's cell value on the unpatched corrupted run. */
    public float corruptedValue(Metric metric) {
        return plainValues(metric)[1];
    }

    /**
     * The metric on the clean and the corrupted run, from one forward pass of both prompt sets (a
     * sequence's numbers do not depend on its batch), remembered per metric. The first such run also
     * keeps what sweeps need of the runs: the target's resid_pre and q/k/v, the source's resid_pre.
     */
    private float[] plainValues(Metric metric) {
        float[] v = plainValueCache.get(metric);
        if (v != null) return v;
        Set<String> target = targetNames(), source = new java.util.HashSet<>();
        if (!sourcePoints.contains(HookPoint.RESID_PRE))
            for (int l = 0; l < cfg.nLayers(); l++) source.add(HookPoint.RESID_PRE.name(l));
        Map<String, Tensor> got = new HashMap<>();
        boolean keep = !target.isEmpty() || !source.isEmpty();
        try (Scope s = new Scope(be)) {
            Hooks hooks = keep ? new Hooks().cache(n -> target.contains(n) || source.contains(n), cacheScope, got) : Hooks.none();
            Transformer.Forward f = model.forward(s, both(), hooks, options(metric, Transformer.Options.DEFAULT));
            v = metric.evaluate(f.logits, prompts);   // [clean, corrupted]
        }
        // Rows [0, P) are the clean prompts, [P, 2P) the corrupted ones.
        int src = direction == Direction.DENOISING ? 0 : prompts, tgt = prompts - src;
        Map<String, Tensor> targetActs = new HashMap<>();
        got.forEach((name, t) -> {
            if (target.contains(name)) targetActs.put(name, t.slice(tgt, tgt + prompts));
            if (source.contains(name)) sourceActs.put(name, t.slice(src, src + prompts));
        });
        if (!target.isEmpty()) keepTarget(targetActs);
        if (!source.isEmpty()) sourcePoints.add(HookPoint.RESID_PRE);
        plainValueCache.put(metric, v);
        return v;
    }

    /** The clean prompts, then the corrupted ones. */
    private Batch both() {
        int[][] tok = new int[2 * prompts][], mask = clean.mask() == null ? null : new int[2 * prompts][];
        for (int i = 0; i < prompts; i++) {
            tok[i] = clean.tokens()[i];
            tok[prompts + i] = corrupted.tokens()[i];
            if (mask != null) {
                mask[i] = clean.mask()[i];
                mask[prompts + i] = corrupted.mask()[i];
            }
        }
        return new Batch(tok, mask);
    }

    // ------------------------------------------------------------------ TransformerLens's sweeps

    /** Residual stream entering each block, by position: {@code [n_layers, pos]}. */
    public PatchResult residPre(Metric m) { return run(Sweep.RESID_PRE, m); }

    /** Residual stream between attention and MLP, by position: {@code [n_layers, pos]}. */
    public PatchResult residMid(Metric m) { return run(Sweep.RESID_MID, m); }

    /** Attention layer outputs by position: {@code [n_layers, pos]}. */
    public PatchResult attnOut(Metric m) { return run(Sweep.ATTN_OUT, m); }

    /** MLP outputs by position: {@code [n_layers, pos]}. */
    public PatchResult mlpOut(Metric m) { return run(Sweep.MLP_OUT, m); }

    /** Head outputs ({@code hook_z}) by position: {@code [n_layers, pos, n_heads]}. */
    public PatchResult attnHeadOutByPos(Metric m) { return run(Sweep.HEAD_OUT_BY_POS, m); }

    /** Queries by position: {@code [n_layers, pos, n_heads]}. */
    public PatchResult attnHeadQByPos(Metric m) { return run(Sweep.Q_BY_POS, m); }

    /** Keys by position: {@code [n_layers, pos, n_kv_heads]}. */
    public PatchResult attnHeadKByPos(Metric m) { return run(Sweep.K_BY_POS, m); }

    /** Values by position: {@code [n_layers, pos, n_kv_heads]}. */
    public PatchResult attnHeadVByPos(Metric m) { return run(Sweep.V_BY_POS, m); }

    /** Head outputs over all positions: {@code [n_layers, n_heads]}. */
    public PatchResult attnHeadOutAllPos(Metric m) { return run(Sweep.HEAD_OUT_ALL_POS, m); }

    /** Queries over all positions: {@code [n_layers, n_heads]}. */
    public PatchResult attnHeadQAllPos(Metric m) { return run(Sweep.Q_ALL_POS, m); }

    /** Keys over all positions: {@code [n_layers, n_kv_heads]}. */
    public PatchResult attnHeadKAllPos(Metric m) { return run(Sweep.K_ALL_POS, m); }

    /** Values over all positions: {@code [n_layers, n_kv_heads]}. */
    public PatchResult attnHeadVAllPos(Metric m) { return run(Sweep.V_ALL_POS, m); }

    /** Attention patterns by destination position: {@code [n_layers, n_heads, dest_pos]}. */
    public PatchResult attnHeadPatternByPos(Metric m) { return run(Sweep.PATTERN_BY_POS, m); }

    /** Single attention-pattern entries: {@code [n_layers, n_heads, dest_pos, src_pos]}. */
    public PatchResult attnHeadPatternDestSrcPos(Metric m) { return run(Sweep.PATTERN_DEST_SRC, m); }

    /** Whole attention patterns of each head: {@code [n_layers, n_heads]}. */
    public PatchResult attnHeadPatternAllPos(Metric m) { return run(Sweep.PATTERN_ALL_POS, m); }

    /**
     * resid_pre, attn_out and mlp_out by position, stacked: {@code [3, n_layers, pos]}
     * (TransformerLens's {@code get_act_patch_block_every}).
     */
    public PatchResult blockEvery(Metric m) {
        List<PatchResult> r = runAll(List.of(Sweep.RESID_PRE, Sweep.ATTN_OUT, Sweep.MLP_OUT), m);
        return stack("block_every", r, r.get(0).axes(), r.get(0).shape());
    }

    /**
     * Head output, query, key, value and pattern of each head over all positions, stacked:
     * {@code [5, n_layers, n_heads]}; keys and values of grouped-query models are padded with zeros to
     * n_heads, as TransformerLens pads them ({@code get_act_patch_attn_head_all_pos_every}).
     */
    public PatchResult attnHeadAllPosEvery(Metric m) {
        List<PatchResult> r = runAll(List.of(Sweep.HEAD_OUT_ALL_POS, Sweep.Q_ALL_POS, Sweep.K_ALL_POS, Sweep.V_ALL_POS,
                Sweep.PATTERN_ALL_POS), m);
        int[] shape = r.get(0).shape();
        List<PatchResult> parts = List.of(r.get(0), r.get(1), padLast(r.get(2), shape), padLast(r.get(3), shape), r.get(4));
        return stack("attn_head_all_pos_every", parts, r.get(0).axes(), shape);
    }

    /**
     * Head output, query, key, value and pattern (by destination position) of each head by position,
     * stacked: {@code [5, n_layers, pos, n_heads]}; keys/values padded to n_heads and the pattern
     * result rearranged from {@code [layer, head, pos]} to {@code [layer, pos, head]}, as
     * TransformerLens's {@code get_act_patch_attn_head_by_pos_every}.
     */
    public PatchResult attnHeadByPosEvery(Metric m) {
        List<PatchResult> r = runAll(List.of(Sweep.HEAD_OUT_BY_POS, Sweep.Q_BY_POS, Sweep.K_BY_POS, Sweep.V_BY_POS,
                Sweep.PATTERN_BY_POS), m);
        int[] shape = r.get(0).shape();   // [L, pos, H]
        PatchResult pat = r.get(4);        // [L, H, pos]
        float[] moved = new float[pat.values().length];
        int L = shape[0], T = shape[1], H = shape[2];
        for (int l = 0; l < L; l++)
            for (int h = 0; h < H; h++)
                for (int p = 0; p < T; p++) moved[(l * T + p) * H + h] = pat.values()[(l * H + h) * T + p];
        PatchResult patByPos = new PatchResult(pat.name(), r.get(0).axes(), shape, moved);
        List<PatchResult> parts = List.of(r.get(0), r.get(1), padLast(r.get(2), shape), padLast(r.get(3), shape), patByPos);
        return stack("attn_head_by_pos_every", parts, r.get(0).axes(), shape);
    }

    /** One sweep, in TransformerLens's result shape. */
    public PatchResult run(Sweep sweep, Metric metric) {
        return runAll(List.of(sweep), metric).get(0);
    }

    /**
     * Several sweeps run together: their cells share batched forward passes (cells of one layer from
     * different sweeps go in the same pass), and progress counts all of them.
     */
    public List<PatchResult> runAll(List<Sweep> sweeps, Metric metric) {
        List<PatchCell> all = new ArrayList<>();
        int[] starts = new int[sweeps.size() + 1];
        for (int i = 0; i < sweeps.size(); i++) {
            starts[i] = all.size();
            all.addAll(Arrays.asList(sweeps.get(i).cells(cfg, length)));
        }
        starts[sweeps.size()] = all.size();
        float[] v = run(all, metric);
        List<PatchResult> out = new ArrayList<>();
        for (int i = 0; i < sweeps.size(); i++) {
            Sweep s = sweeps.get(i);
            out.add(new PatchResult(s.tlName, s.axes, s.shape(cfg, length), Arrays.copyOfRange(v, starts[i], starts[i + 1])));
        }
        return out;
    }

    // ------------------------------------------------------------------ the engine of it

    /**
     * The metric of each cell, {@code out[i]} for {@code cells[i]}, each cell patched on its own
     * (TransformerLens's semantics), run batched with at most {@link #maxBatch} rows per forward pass.
     * When cells are at positions, the metric reads the last one and the backend keeps the loop's bits
     * that way, cells of all layers share suffix passes (each joining at its block, computed from its
     * position on); otherwise passes hold cells of one layer and start at their block.
     */
    public float[] run(List<PatchCell> cells, Metric metric) {
        EnumSet<HookPoint> points = EnumSet.noneOf(HookPoint.class);
        boolean suffixable = metric.lastPositionOnly(), skips = false;
        for (PatchCell c : cells) {
            check(c);
            points.add(c.point());
            // Per-head GEMMs (hook_result, split inputs) are not among those suffixExact probes.
            suffixable &= c.point() != HookPoint.RESULT && !c.point().onDemand;
            skips |= c.firstAffectedPos() > 0;
        }
        suffixable &= skips;
        ensureSource(points);
        ensureTarget();

        rowsComputed = 0;
        float[] out = new float[cells.size()];
        int perPass = Math.max(1, maxBatch(metric) / prompts);
        // A cell whose slice holds the same bits in both runs (e.g. a position before the first differing
        // token) changes nothing: it gets the unpatched target's value, and no pass.
        boolean[] unchanged = unchanged(cells);
        List<Integer> byLayer = new ArrayList<>();
        for (int i = 0; i < cells.size(); i++) if (!unchanged[i]) byLayer.add(i);
        byLayer.sort(java.util.Comparator.comparingInt(i -> cells.get(i).layer()));
        long done = cells.size() - byLayer.size();
        if (done > 0) {
            float v = unpatchedValue(metric);
            for (int i = 0; i < cells.size(); i++) if (unchanged[i]) out[i] = v;
            listener.progress(done, cells.size());
        }
        for (int c0 = 0; c0 < byLayer.size(); ) {
            float[] v = suffixable ? suffixPass(pick(cells, byLayer.subList(c0, Math.min(byLayer.size(), c0 + perPass))), metric) : null;
            if (v == null) {
                // One layer's cells per whole pass.
                int layer = cells.get(byLayer.get(c0)).layer(), c1 = c0;
                while (c1 < byLayer.size() && c1 - c0 < perPass && cells.get(byLayer.get(c1)).layer() == layer) c1++;
                v = wholePass(layer, pick(cells, byLayer.subList(c0, c1)), metric);
            }
            List<Integer> chunk = byLayer.subList(c0, c0 + v.length);
            for (int j = 0; j < v.length; j++) out[chunk.get(j)] = v[j];
            c0 += v.length;
            done += v.length;
            listener.progress(done, cells.size());
        }
        return out;
    }

    /**
     * Which cells patch a slice that holds the same bits in the source and the target run, for points whose
     * target activation is kept (resid_pre, q, k, v); other points are never skipped.
     */
    private boolean[] unchanged(List<PatchCell> cells) {
        boolean[] same = new boolean[cells.size()];
        Map<String, float[][]> host = new HashMap<>();
        for (int i = 0; i < cells.size(); i++) {
            PatchCell c = cells.get(i);
            Tensor target = switch (c.point()) {
                case RESID_PRE -> targetResidPre[c.layer()];
                case Q -> targetQ[c.layer()];
                case K -> targetK[c.layer()];
                case V -> targetV[c.layer()];
                default -> null;
            };
            if (target == null) continue;
            float[][] acts = host.computeIfAbsent(c.hookName(), n -> new float[][]{sourceActs.get(n).toFloatArray(), target.toFloatArray()});
            same[i] = c.sameSlice(acts[0], acts[1], target.shape());
        }
        return same;
    }

    /** The metric on the target run as it is (what a cell that changes nothing gives): its final norm and unembedding again. */
    private float unpatchedValue(Metric metric) {
        try (Scope s = new Scope(be)) {
            Transformer.Options o = Transformer.Options.range(cfg.nLayers(), targetResidFinal, Integer.MAX_VALUE, false);
            return metric.evaluate(model.forward(s, target(), Hooks.none(), options(metric, o)).logits, prompts)[0];
        }
    }

    private static List<PatchCell> pick(List<PatchCell> cells, List<Integer> idx) {
        List<PatchCell> out = new ArrayList<>(idx.size());
        for (int i : idx) out.add(cells.get(i));
        return out;
    }

    /**
     * The logits of the target run with all of {@code cells} patched together in one forward pass
     * ({@code [P, pos, d_vocab]}, owned by {@code scope}); e.g. {@code PatchCell.whole(RESID_PRE, 0)}
     * patches the whole residual stream entering block 0.
     */
    public Tensor patchedLogits(Scope scope, PatchCell... cells) {
        if (cells.length == 0) throw new LoupeException("patchedLogits: give at least one patch cell");
        EnumSet<HookPoint> points = EnumSet.noneOf(HookPoint.class);
        int first = cfg.nLayers();
        for (PatchCell c : cells) {
            check(c);
            points.add(c.point());
            first = Math.min(first, c.layer());
        }
        ensureSource(points);
        ensureTarget();
        Hooks hooks = new Hooks();
        Map<String, List<PatchCell>> byName = new LinkedHashMap<>();
        for (PatchCell c : cells) byName.computeIfAbsent(c.hookName(), k -> new ArrayList<>()).add(c);
        for (Map.Entry<String, List<PatchCell>> e : byName.entrySet()) {
            Tensor src = sourceActs.get(e.getKey());
            List<PatchCell> cs = e.getValue();
            hooks.add(e.getKey(), (x, ctx) -> {
                for (PatchCell c : cs) c.copy(src, x, 0);
                return null;
            });
        }
        return forwardFrom(scope, first, target(), 1, hooks, null).logits;
    }

    /** One batched whole pass for cells of block {@code layer}: one value per cell (cell j owns sequences [j*P, (j+1)*P)). */
    private float[] wholePass(int layer, List<PatchCell> cells, Metric metric) {
        rowsComputed += (long) cells.size() * prompts * length * (cfg.nLayers() - layer);
        try (Scope s = new Scope(be)) {
            return metric.evaluate(forwardFrom(s, layer, target(), cells.size(), patchHooks(cells, null, null), metric).logits, prompts);
        }
    }

    /**
     * One suffix pass for {@code cells} (sorted by layer): each joins at its block and is computed from its
     * first affected position; null when the backend would not give the loop's bits (then whole passes run).
     */
    private float[] suffixPass(List<PatchCell> cells, Metric metric) {
        int n = cells.size(), seqs = n * prompts;
        int[] from = new int[seqs], join = new int[seqs];
        for (int j = 0; j < n; j++)
            for (int p = 0; p < prompts; p++) {
                from[j * prompts + p] = cells.get(j).firstAffectedPos();
                join[j * prompts + p] = cells.get(j).layer();
            }
        // Each block's GEMM height is the rows of the sequences joined by then: round each layer's rows.
        for (int s0 = 0; s0 < seqs; ) {
            int s1 = s0;
            while (s1 < seqs && join[s1] == join[s0]) s1++;
            roundRows(from, s0, s1);
            s0 = s1;
        }
        int first = join[0];
        Transformer.Suffix sfx = new Transformer.Suffix(from, join, targetResidPre, targetQ, targetK, targetV);
        for (int h : sfx.heights(length, first, cfg.nLayers()))
            if (!model.suffixExact(h, length)) return null;
        int[] rowStart = sfx.rowStart(length);
        for (int l = first; l < cfg.nLayers(); l++) rowsComputed += rowStart[sfx.active(l)];
        try (Scope s = new Scope(be)) {
            Transformer.Options o = options(metric, new Transformer.Options(false, null, first, null, Integer.MAX_VALUE, false))
                    .withSuffix(sfx);
            return metric.evaluate(model.forward(s, replicate(target(), n), patchHooks(cells, from, rowStart), o).logits, prompts);
        }
    }

    /**
     * One hook per hook name, copying each of its cells' slices into the cell's sequences (into compact
     * rows, for a suffix pass's row-wise points: {@code from}/{@code rowStart} non-null).
     */
    private Hooks patchHooks(List<PatchCell> cells, int[] from, int[] rowStart) {
        Map<String, List<Integer>> byName = new LinkedHashMap<>();
        for (int j = 0; j < cells.size(); j++) byName.computeIfAbsent(cells.get(j).hookName(), k -> new ArrayList<>()).add(j);
        Hooks hooks = new Hooks();
        for (Map.Entry<String, List<Integer>> e : byName.entrySet()) {
            Tensor src = sourceActs.get(e.getKey());
            List<Integer> js = e.getValue();
            boolean compact = from != null && !Transformer.Suffix.fullRows(cells.get(js.get(0)).point());
            HookFn patch = (x, ctx) -> {
                for (int j : js) {
                    if (compact) cells.get(j).copyIntoRows(src, x, j * prompts, from, rowStart);
                    else cells.get(j).copy(src, x, j * prompts);
                }
                return null;
            };
            hooks.add(e.getKey(), patch);
        }
        return hooks;
    }

    /**
     * A forward pass of {@code copies} copies of {@code batch} (copy-major), starting at block
     * {@code layer} from the target run's cached residual (from the embedding when layer is 0); with a
     * {@code metric}, only the logits it reads are computed ({@link Metric#options}), else all of them.
     */
    private Transformer.Forward forwardFrom(Scope s, int layer, Batch batch, int copies, Hooks hooks, Metric metric) {
        Batch rows = replicate(batch, copies);
        Transformer.Options plain = options(metric, Transformer.Options.DEFAULT);
        if (layer == 0) return model.forward(s, rows, hooks, plain);
        Tensor pre = targetResidPre[layer];                   // [P, pos, d_model]
        int rowBlock = Math.toIntExact(pre.numel());
        Tensor start = s.zeros(copies * prompts, length, cfg.dModel());
        // start[j] = pre for every copy j: a strided copy whose source stride over copies is 0.
        be.copyStrided(start.buffer(), start.offset(), new long[]{0, 0, rowBlock, 1},
                pre.buffer(), pre.offset(), new long[]{0, 0, 0, 1}, new int[]{1, 1, copies, rowBlock}, false);
        Transformer.Options o = Transformer.Options.range(layer, start, Integer.MAX_VALUE, false);
        return model.forward(s, rows, hooks, options(metric, o));
    }

    /**
     * GEMMs run fastest at row counts that are multiples of this (OpenBLAS's SkylakeX tile is 16 rows;
     * GPT-2-small block: 136 rows 6.9 ms, 144 rows 6.2 ms).
     */
    private static final int ROW_MULTIPLE = 16;

    /**
     * Starts sequences {@code [s0, s1)} earlier until the rows they compute are a multiple of
     * {@link #ROW_MULTIPLE} (or all start at 0): recomputing a position gives the reference's bits, so
     * only speed changes.
     */
    private void roundRows(int[] from, int s0, int s1) {
        long rows = 0;
        for (int b = s0; b < s1; b++) rows += length - from[b];
        for (long extra = Math.floorMod(-rows, ROW_MULTIPLE); extra > 0; extra--) {
            int latest = s0;
            for (int b = s0 + 1; b < s1; b++) if (from[b] > from[latest]) latest = b;
            if (from[latest] == 0) return;
            from[latest]--;
        }
    }

    /** {@code base} narrowed to what {@code metric} reads (null: everything), its token ids checked first. */
    private Transformer.Options options(Metric metric, Transformer.Options base) {
        if (metric == null) return base;
        int[] ids = metric.vocabIds();
        if (ids != null)
            for (int id : ids)
                if (id < 0 || id >= cfg.vocab())
                    throw new LoupeException("the metric reads token " + id + ", which is out of range [0, " + cfg.vocab() + ") for this model");
        return metric.options(base);
    }

    private static Batch replicate(Batch b, int copies) {
        if (copies == 1) return b;
        int P = b.size();
        int[][] tok = new int[copies * P][], mask = b.mask() == null ? null : new int[copies * P][];
        for (int r = 0; r < copies * P; r++) {
            tok[r] = b.tokens()[r % P];
            if (mask != null) mask[r] = b.mask()[r % P];
        }
        return new Batch(tok, mask);
    }

    private Batch source() {
        return direction == Direction.DENOISING ? clean : corrupted;
    }

    private Batch target() {
        return direction == Direction.DENOISING ? corrupted : clean;
    }

    private PatchCell check(PatchCell c) {
        if (c.layer() >= cfg.nLayers())
            throw new LoupeException("patching: layer " + c.layer() + " of " + c + " is out of range: the model has " + cfg.nLayers() + " blocks");
        if (!c.point().existsIn(cfg))
            throw new LoupeException("patching: this " + cfg.family() + " model has no " + c.hookName() + " hook");
        if (c.pos() >= length || c.srcPos() >= length)
            throw new LoupeException("patching: " + c + " indexes past the activation: the prompts have " + length + " positions");
        return c;
    }

    /** Runs the source prompts once, caching every layer of each point not cached yet. */
    private void ensureSource(Set<HookPoint> points) {
        EnumSet<HookPoint> missing = EnumSet.noneOf(HookPoint.class);
        for (HookPoint p : points) if (!sourcePoints.contains(p)) missing.add(p);
        if (missing.isEmpty()) return;
        Map<String, Tensor> got = new HashMap<>();
        try (Scope s = new Scope(be)) {
            model.forward(s, source(), new Hooks().cache(name -> isLayerPoint(name, missing), cacheScope, got));
        }
        sourceActs.putAll(got);
        sourcePoints.addAll(missing);
    }

    private boolean isLayerPoint(String name, Set<HookPoint> points) {
        for (HookPoint p : points)
            for (int l = 0; l < cfg.nLayers(); l++) if (name.equals(p.name(l))) return true;
        return false;
    }

    /**
     * Runs the target prompts once (unless a {@link #cleanValue}/{@link #corruptedValue} run already did),
     * keeping every block's resid_pre (where patched passes start), hook_q/k/v (what suffix passes take
     * for the positions they do not compute) and the last resid_post (the unpatched logits, again).
     */
    private void ensureTarget() {
        Set<String> names = targetNames();
        if (names.isEmpty()) return;
        Map<String, Tensor> got = new HashMap<>();
        try (Scope s = new Scope(be)) {
            model.forward(s, target(), new Hooks().cache(names::contains, cacheScope, got));
        }
        keepTarget(got);
    }

    /** The hook names of the target run still to keep (none once kept). */
    private Set<String> targetNames() {
        if (targetResidPre != null) return Set.of();
        Set<String> names = new java.util.HashSet<>();
        for (int l = 0; l < cfg.nLayers(); l++)
            for (HookPoint p : List.of(HookPoint.RESID_PRE, HookPoint.Q, HookPoint.K, HookPoint.V)) names.add(p.name(l));
        names.add(HookPoint.RESID_POST.name(cfg.nLayers() - 1));
        return names;
    }

    private void keepTarget(Map<String, Tensor> got) {
        targetResidPre = layers(got, HookPoint.RESID_PRE);
        targetQ = layers(got, HookPoint.Q);
        targetK = layers(got, HookPoint.K);
        targetV = layers(got, HookPoint.V);
        targetResidFinal = got.get(HookPoint.RESID_POST.name(cfg.nLayers() - 1));
    }

    private Tensor[] layers(Map<String, Tensor> got, HookPoint p) {
        Tensor[] t = new Tensor[cfg.nLayers()];
        for (int l = 0; l < t.length; l++) t[l] = got.get(p.name(l));
        return t;
    }

    private static PatchResult padLast(PatchResult r, int[] shape) {
        int[] s = r.shape();
        if (Arrays.equals(s, shape)) return r;
        int from = s[s.length - 1], to = shape[shape.length - 1];
        int outer = r.values().length / from;
        float[] v = new float[outer * to];   // zeros beyond the kv heads, as torch.nn.functional.pad
        for (int o = 0; o < outer; o++) System.arraycopy(r.values(), o * from, v, o * to, from);
        return new PatchResult(r.name(), r.axes(), shape, v);
    }

    private static PatchResult stack(String name, List<PatchResult> parts, List<String> axes, int[] shape) {
        int each = parts.get(0).values().length;
        float[] v = new float[each * parts.size()];
        for (int i = 0; i < parts.size(); i++) System.arraycopy(parts.get(i).values(), 0, v, i * each, each);
        List<String> ax = new ArrayList<>();
        ax.add("patch_type");
        ax.addAll(axes);
        int[] s = new int[shape.length + 1];
        s[0] = parts.size();
        System.arraycopy(shape, 0, s, 1, shape.length);
        return new PatchResult(name, ax, s, v);
    }

    /** Frees the cached activations of the clean and corrupted runs. */
    @Override
    public void close() {
        cacheScope.close();
    }
}
