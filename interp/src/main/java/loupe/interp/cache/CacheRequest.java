package loupe.interp.cache;

import loupe.LoupeException;
import loupe.engine.hooks.Hooks;
import loupe.interp.Slice;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.function.Predicate;

/**
 * What to cache: which hooks (exact names, globs, a predicate; any that matches selects), which batch
 * rows and positions (applied inside the hook, before anything is stored), which reducers, and
 * whether entries stay on the device or are copied to host memory.
 *
 * <pre>{@code
 * CacheRequest req = CacheRequest.glob("blocks.*.hook_resid_post")
 *         .positions(Slice.at(-1))                     // last position only
 *         .reduce(Reducer.meanOverBatch());            // [pos=1, d_model] per layer
 * }</pre>
 *
 * The position slice applies to TransformerLens's position dimension: dimension 1, except for
 * {@code hook_attn_scores}/{@code hook_pattern} {@code [batch, head, query, key]} where it is the query
 * dimension 2. During KV-cached generation it applies to each pass's positions.
 */
public final class CacheRequest {
    private final List<String> exact = new ArrayList<>();
    private final List<Predicate<String>> predicates = new ArrayList<>();
    private Slice positions = Slice.all();
    private Slice batch = Slice.all();
    private final List<Reducer> reducers = new ArrayList<>();
    private boolean onHost;
    private boolean expandKvHeads;
    private boolean meanAcrossRuns;

    private CacheRequest() {}

    /** Every hook point. */
    public static CacheRequest all() {
        return matching(n -> true);
    }

    /** Hooks named exactly so (checked against the model when the cache is attached). */
    public static CacheRequest names(String... names) {
        CacheRequest r = new CacheRequest();
        r.exact.addAll(Arrays.asList(names));
        return r;
    }

    /** Hooks matching any of the globs ({@link Hooks#glob}). */
    public static CacheRequest glob(String... patterns) {
        CacheRequest r = new CacheRequest();
        for (String p : patterns) r.predicates.add(Hooks.glob(p));
        return r;
    }

    /** Hooks whose names satisfy {@code p}. */
    public static CacheRequest matching(Predicate<String> p) {
        CacheRequest r = new CacheRequest();
        r.predicates.add(p);
        return r;
    }

    /** Also selects these exact names. */
    public CacheRequest and(String... names) {
        exact.addAll(Arrays.asList(names));
        return this;
    }

    /** Also selects names matching {@code p}. */
    public CacheRequest and(Predicate<String> p) {
        predicates.add(p);
        return this;
    }

    /** Keeps only these positions. */
    public CacheRequest positions(Slice s) {
        positions = Slice.orAll(s);
        return this;
    }

    /** Keeps only these batch rows. */
    public CacheRequest batch(Slice s) {
        batch = Slice.orAll(s);
        return this;
    }

    /** Reductions applied in the hook, in order (after the slices). */
    public CacheRequest reduce(Reducer... rs) {
        for (Reducer r : rs) {
            if (!reducers.isEmpty() && reducers.getLast() instanceof Reducer.TopK)
                throw new LoupeException("top-k must be the last reducer: nothing can follow it");
            if (r instanceof Reducer.TopK && meanAcrossRuns)
                throw new LoupeException("top-k results cannot be averaged across runs");
            reducers.add(r);
        }
        return this;
    }

    /** Entries are copied to host memory as each hook fires, so that device memory does not grow. */
    public CacheRequest onHost() {
        if (meanAcrossRuns) throw new LoupeException("a running mean across runs is kept on the device: do not combine it with onHost()");
        onHost = true;
        return this;
    }

    /**
     * When a hook fires again (the next batch of a sweep through a dataset), its entry becomes the mean
     * of its values over all the passes, updated in place on the device, instead of being replaced.
     * Every pass counts once: with {@link Reducer#meanOverBatch()} and equal batch sizes this is the
     * mean over every row seen.
     */
    public CacheRequest meanAcrossRuns() {
        if (onHost) throw new LoupeException("a running mean across runs is kept on the device: do not combine it with onHost()");
        for (Reducer r : reducers)
            if (r instanceof Reducer.TopK) throw new LoupeException("top-k results cannot be averaged across runs");
        meanAcrossRuns = true;
        return this;
    }

    public boolean isMeanAcrossRuns() {
        return meanAcrossRuns;
    }

    /**
     * Whether this request caches hook {@code name}. On-demand points (split inputs) are selected by an
     * exact name or a glob that names them, never by {@link #all()} or a plain predicate ({@link Hooks#selects}).
     */
    public boolean selects(String name) {
        if (exact.contains(name)) return true;
        for (Predicate<String> p : predicates) if (Hooks.selects(p, name)) return true;
        return false;
    }

    List<String> exactNames() {
        return exact;
    }

    public Slice positions() {
        return positions;
    }

    public Slice batch() {
        return batch;
    }

    public List<Reducer> reducers() {
        return List.copyOf(reducers);
    }

    public boolean expandsKvHeads() {
        return expandKvHeads;
    }

    /**
     * Under grouped-query attention, caches {@code hook_k}, {@code hook_v} and {@code hook_rot_k} with
     * one head per query head ({@code [batch, pos, n_heads, d_head]}, each kv head repeated for the
     * query heads that share it) instead of TransformerLens's default {@code n_kv_heads}.
     */
    public CacheRequest expandKvHeads() {
        this.expandKvHeads = true;
        return this;
    }

    public boolean isOnHost() {
        return onHost;
    }
}
