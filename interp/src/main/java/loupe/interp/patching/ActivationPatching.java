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
    public static final int DEFAULT_MAX_ROWS = 64;

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
    private long rowsComputed;
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
        this.maxBatch = defaultMaxRows(cfg, length);
    }

    /** Sets the direction (default {@link Direction#DENOISING}); cached activations are dropped. */
    public ActivationPatching direction(Direction d) {
        if (d != direction) {
            direction = d;
            sourceActs.clear();
            sourcePoints.clear();
            targetResidPre = null;   // memory stays in cacheScope until close: a direction change is rare
            targetQ = targetK = targetV = null;
        }
        return this;
    }

    /**
     * Sets the most rows (cells x prompts) one patched forward pass may hold; at least one cell always
     * runs. The default fits the logits and activations of a pass in about 256 MB, up to
     * {@link #DEFAULT_MAX_ROWS}.
     */
    public ActivationPatching maxBatch(int rows) {
        if (rows < 1) throw new LoupeException("patching: max batch must be at least 1, got " + rows);
        this.maxBatch = rows;
        return this;
    }

    public int maxBatch() {
        return maxBatch;
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
    static int defaultMaxRows(ModelConfig c, int pos) {
        long floatsPerRow = (long) pos * (c.vocab() + 16L * c.dModel() + 3L * c.dMlp() + 2L * c.nHeads() * pos);
        long budget = 64L << 20;   // floats
        return (int) Math.max(1, Math.min(DEFAULT_MAX_ROWS, budget / Math.max(1, floatsPerRow)));
    }

    // ------------------------------------------------------------------ baselines

    /** The metric's cell value on the unpatched clean run. */
    public float cleanValue(Metric metric) {
        return plainValue(clean, metric);
    }

    /** The metric's cell value on the unpatched corrupted run. */
    public float corruptedValue(Metric metric) {
        return plainValue(corrupted, metric);
    }

    /** The metric of a plain run of {@code b}; when b is the target, the run also keeps what sweeps need of it. */
    private float plainValue(Batch b, Metric metric) {
        Map<String, Tensor> got = new HashMap<>();
        Set<String> keep = b == target() ? targetNames() : Set.of();
        try (Scope s = new Scope(be)) {
            Hooks hooks = keep.isEmpty() ? Hooks.none() : new Hooks().cache(keep::contains, cacheScope, got);
            Transformer.Forward f = model.forward(s, b, hooks, options(metric, Transformer.Options.DEFAULT));
            if (!keep.isEmpty()) keepTarget(got);
            return metric.evaluate(f.logits, prompts)[0];
        }
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
     * (TransformerLens's semantics), run batched: cells grouped by layer, at most {@link #maxBatch} rows
     * per forward pass, each pass starting at the cells' block.
     */
    public float[] run(List<PatchCell> cells, Metric metric) {
        EnumSet<HookPoint> points = EnumSet.noneOf(HookPoint.class);
        List<List<Integer>> byLayer = new ArrayList<>();
        for (int l = 0; l < cfg.nLayers(); l++) byLayer.add(new ArrayList<>());
        for (int i = 0; i < cells.size(); i++) {
            PatchCell c = check(cells.get(i));
            points.add(c.point());
            byLayer.get(c.layer()).add(i);
        }
        ensureSource(points);
        ensureTarget();

        rowsComputed = 0;
        float[] out = new float[cells.size()];
        int perPass = Math.max(1, maxBatch / prompts);
        long done = 0;
        for (int l = 0; l < cfg.nLayers(); l++) {
            List<Integer> idx = byLayer.get(l);
            for (int from = 0; from < idx.size(); from += perPass) {
                List<Integer> chunk = idx.subList(from, Math.min(idx.size(), from + perPass));
                List<PatchCell> chunkCells = new ArrayList<>(chunk.size());
                for (int i : chunk) chunkCells.add(cells.get(i));
                float[] v = runPass(l, chunkCells, metric);
                for (int j = 0; j < chunk.size(); j++) out[chunk.get(j)] = v[j];
                done += chunk.size();
                listener.progress(done, cells.size());
            }
        }
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
        return forwardFrom(scope, first, target(), 1, hooks, null, null).logits;
    }

    /**
     * One batched forward pass for cells of block {@code layer}: one value per cell. Cell j owns sequences
     * {@code [j*P, (j+1)*P)}; a suffix pass computes each from its cell's first affected position.
     */
    private float[] runPass(int layer, List<PatchCell> cells, Metric metric) {
        int n = cells.size(), seqs = n * prompts;
        int[] from = new int[seqs];
        boolean suffixable = metric.lastPositionOnly();
        for (int j = 0; j < n; j++) {
            PatchCell c = cells.get(j);
            suffixable &= c.point() != HookPoint.RESULT && !c.point().onDemand;   // per-head GEMMs: not probed
            for (int p = 0; p < prompts; p++) from[j * prompts + p] = c.firstAffectedPos();
        }
        Transformer.Suffix sfx = null;
        int[] rowStart = null;
        if (suffixable && Arrays.stream(from).anyMatch(f -> f > 0)) {
            roundRows(from);
            if (model.suffixExact(new Transformer.Suffix(from, null, null, null).rows(length), length)) {
                sfx = new Transformer.Suffix(from, targetQ, targetK, targetV);
                rowStart = sfx.rowStart(length);
            }
        }
        rowsComputed += (long) (sfx == null ? seqs * length : sfx.rows(length)) * (cfg.nLayers() - layer);
        try (Scope s = new Scope(be)) {
            // One hook per hook name, copying each of its cells' slices (into compact rows where the pass has them).
            Map<String, List<Integer>> byName = new LinkedHashMap<>();
            for (int j = 0; j < n; j++) byName.computeIfAbsent(cells.get(j).hookName(), k -> new ArrayList<>()).add(j);
            Hooks hooks = new Hooks();
            for (Map.Entry<String, List<Integer>> e : byName.entrySet()) {
                Tensor src = sourceActs.get(e.getKey());
                List<Integer> js = e.getValue();
                boolean compact = sfx != null && !Transformer.Suffix.fullRows(cells.get(js.get(0)).point());
                int[] rs = rowStart;
                HookFn patch = (x, ctx) -> {
                    for (int j : js) {
                        if (compact) cells.get(j).copyIntoRows(src, x, j * prompts, from, rs);
                        else cells.get(j).copy(src, x, j * prompts);
                    }
                    return null;
                };
                hooks.add(e.getKey(), patch);
            }
            Transformer.Forward f = forwardFrom(s, layer, target(), n, hooks, metric, sfx);
            return metric.evaluate(f.logits, prompts);
        }
    }

    /**
     * GEMMs run fastest at row counts that are multiples of this (OpenBLAS's SkylakeX tile is 16 rows;
     * GPT-2-small block: 136 rows 6.9 ms, 144 rows 6.2 ms).
     */
    private static final int ROW_MULTIPLE = 16;

    /**
     * Starts sequences earlier until the rows a suffix pass computes are a multiple of {@link #ROW_MULTIPLE}
     * (or all start at 0): recomputing a position gives the reference's bits, so only speed changes.
     */
    private void roundRows(int[] from) {
        long rows = 0;
        for (int f : from) rows += length - f;
        for (long extra = Math.floorMod(-rows, ROW_MULTIPLE); extra > 0; extra--) {
            int latest = 0;
            for (int b = 1; b < from.length; b++) if (from[b] > from[latest]) latest = b;
            if (from[latest] == 0) return;
            from[latest]--;
        }
    }

    /**
     * A forward pass of {@code copies} copies of {@code batch} (copy-major), starting at block
     * {@code layer} from the target run's cached residual (from the embedding when layer is 0 and no
     * {@code suffix}); with a {@code metric}, only the logits it reads are computed ({@link Metric#options}),
     * else all of them.
     */
    private Transformer.Forward forwardFrom(Scope s, int layer, Batch batch, int copies, Hooks hooks, Metric metric,
                                            Transformer.Suffix suffix) {
        Batch rows = replicate(batch, copies);
        Transformer.Options plain = options(metric, Transformer.Options.DEFAULT);
        if (layer == 0 && suffix == null) return model.forward(s, rows, hooks, plain);
        Tensor pre = targetResidPre[layer];                   // [P, pos, d_model]
        int rowBlock = Math.toIntExact(pre.numel());
        Tensor start = s.zeros(copies * prompts, length, cfg.dModel());
        // start[j] = pre for every copy j: a strided copy whose source stride over copies is 0.
        be.copyStrided(start.buffer(), start.offset(), new long[]{0, 0, rowBlock, 1},
                pre.buffer(), pre.offset(), new long[]{0, 0, 0, 1}, new int[]{1, 1, copies, rowBlock}, false);
        Transformer.Options o = Transformer.Options.range(layer, start, Integer.MAX_VALUE, false).withSuffix(suffix);
        return model.forward(s, rows, hooks, options(metric, o));
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
     * Runs the target prompts once (unless a {@link #corruptedValue}/{@link #cleanValue} run of them already
     * did), keeping every block's resid_pre (where patched passes start) and hook_q/k/v (what suffix passes
     * take for the positions they do not compute).
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
        return names;
    }

    private void keepTarget(Map<String, Tensor> got) {
        targetResidPre = layers(got, HookPoint.RESID_PRE);
        targetQ = layers(got, HookPoint.Q);
        targetK = layers(got, HookPoint.K);
        targetV = layers(got, HookPoint.V);
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
