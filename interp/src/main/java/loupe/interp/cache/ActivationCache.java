package loupe.interp.cache;

import loupe.LoupeException;
import loupe.engine.Batch;
import loupe.engine.Scope;
import loupe.engine.Tensor;
import loupe.engine.hooks.HookContext;
import loupe.engine.hooks.HookFn;
import loupe.engine.hooks.HookPoint;
import loupe.engine.hooks.Hooks;
import loupe.engine.io.DType;
import loupe.engine.io.HostTensor;
import loupe.engine.io.Npy;
import loupe.engine.io.SafeTensorsWriter;
import loupe.engine.model.Transformer;
import loupe.interp.TensorOps;
import loupe.kernels.Backend;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * Activations recorded during forward passes, by hook name, as a {@link CacheRequest} selected, sliced
 * and reduced them. The cache owns its memory: device entries live in its own {@link Scope}, host
 * entries in its own arena, and {@link #close()} frees both.
 *
 * <pre>{@code
 * try (ActivationCache cache = ActivationCache.run(model, batch, CacheRequest.all())) {
 *     Tensor resid = cache.get("blocks.0.hook_resid_post");       // [batch, pos, d_model], on the device
 *     CacheAnalysis a = cache.analysis(scope);                      // TransformerLens's ActivationCache methods
 *     cache.saveSafetensors(Path.of("cache.safetensors"));
 * }
 * }</pre>
 *
 * <p>A hook that fires again (another forward pass with the same cache attached) overwrites its entry;
 * when the new value has the same shape it is copied into the existing memory, so a loop that refills
 * one cache does not grow.
 */
public final class ActivationCache implements AutoCloseable {
    private final Transformer model;
    private final Backend backend;
    private final Scope scope;
    private final Arena arena = Arena.ofShared();
    private final Map<String, Tensor> device = new LinkedHashMap<>();
    private final Map<String, Tensor> indices = new LinkedHashMap<>();
    private final Map<String, HostTensor> host = new LinkedHashMap<>();
    private final Map<String, HostTensor> hostIndices = new LinkedHashMap<>();
    private final Map<String, Integer> runs = new LinkedHashMap<>();
    private boolean closed;

    /** An empty cache for activations of {@code model} (which may be null for a cache of plain tensors). */
    public ActivationCache(Transformer model, Backend backend) {
        this.model = model;
        this.backend = backend;
        this.scope = new Scope(backend);
    }

    // ------------------------------------------------------------------ running

    /** Runs {@code model} on {@code batch} and returns what {@code req} selects (the logits only if selected). */
    public static ActivationCache run(Transformer model, Batch batch, CacheRequest req) {
        ActivationCache c = new ActivationCache(model, model.backend());
        try (Scope s = new Scope(model.backend())) {
            model.forward(s, batch, c.attach(new Hooks(), req));
        } catch (RuntimeException e) {
            c.close();
            throw e;
        }
        return c;
    }

    /**
     * Runs {@code model} on {@code batch} with {@code before} attached first (interventions, whose edits
     * the cache then sees) and returns what {@code req} selects.
     */
    public static ActivationCache run(Transformer model, Batch batch, Hooks before, CacheRequest req) {
        try (Scope s = new Scope(model.backend())) {
            return run(model, s, batch, before, req).cache();
        }
    }

    /** A forward pass's result and the cache filled during it. */
    public record Run(Transformer.Forward forward, ActivationCache cache) {}

    /**
     * Runs {@code model} with {@code before} attached first (interventions, whose edits the cache then
     * sees) and a cache; the forward's tensors live in {@code scope}, the cache's in the cache.
     */
    public static Run run(Transformer model, Scope scope, Batch batch, Hooks before, CacheRequest req) {
        ActivationCache c = new ActivationCache(model, model.backend());
        try {
            Hooks h = new Hooks().addAll(before == null ? Hooks.none() : before);
            Transformer.Forward f = model.forward(scope, batch, c.attach(h, req));
            return new Run(f, c);
        } catch (RuntimeException e) {
            c.close();
            throw e;
        }
    }

    /**
     * Adds caching callbacks for {@code req} to {@code hooks} (after what is there) and returns
     * {@code hooks}; this cache fills as forward passes run with them. Exact names are checked
     * against the model.
     */
    public Hooks attach(Hooks hooks, CacheRequest req) {
        if (model != null)
            for (String n : req.exactNames())
                if (!model.hasHook(n))
                    throw new LoupeException("cache request: unknown hook name '" + n + "'; nearest: "
                            + String.join(", ", Hooks.nearest(n, model.allHookNames(), 4)));
        return hooks.add((Hooks.Selector) req::selects, HookFn.reader((x, ctx) -> record(x, ctx, req)));
    }

    /**
     * A key/value activation {@code [batch, pos, n_kv_heads, d_head]} with each kv head repeated for its
     * {@code n_heads / n_kv_heads} query heads: {@code [batch, pos, n_heads, d_head]} (query head h reads
     * kv head h / group). Other activations, and models without grouped-query attention, pass through.
     */
    static Tensor expandKv(Scope s, Tensor t, HookPoint p, loupe.engine.model.ModelConfig cfg) {
        int G = cfg.groupSize();
        if (G == 1 || (p != HookPoint.K && p != HookPoint.V && p != HookPoint.ROT_K)) return t;
        int rows = t.dim(0) * t.dim(1), HKV = cfg.nKvHeads(), D = cfg.dHead();
        Tensor out = s.empty(t.dim(0), t.dim(1), cfg.nHeads(), D);
        for (int g = 0; g < G; g++)
            t.backend().copyStrided(out.buffer(), out.offset() + (long) g * D, new long[]{0, (long) cfg.nHeads() * D, (long) G * D, 1},
                    t.buffer(), t.offset(), new long[]{0, (long) HKV * D, D, 1}, new int[]{1, rows, HKV, D}, false);
        return out;
    }

    /** Position dimension of an activation at {@code p}, as TransformerLens slices it. */
    static int posDim(HookPoint p) {
        return p == HookPoint.ATTN_SCORES || p == HookPoint.PATTERN ? 2 : 1;
    }

    private void record(Tensor x, HookContext ctx, CacheRequest req) {
        if (closed) throw new LoupeException("activation cache is closed; it cannot record '" + ctx.name() + "'");
        // Temporaries (slices, partial reductions) live only for this hook: a sweep's memory does not grow.
        try (Scope tmp = new Scope(x.backend())) {
            Tensor t = x;
            if (req.expandsKvHeads() && model != null) t = expandKv(tmp, t, ctx.point(), model.config());
            int batchDim = 0, posDim = posDim(ctx.point());
            if (t.rank() < 2) posDim = -1;
            t = TensorOps.select(tmp, t, 0, req.batch(), "cache batch slice at '" + ctx.name() + "'");
            if (posDim >= 0) t = TensorOps.select(tmp, t, posDim, req.positions(), "cache position slice at '" + ctx.name() + "'");
            Tensor topIdx = null;
            for (Reducer r : req.reducers()) {
                switch (r) {
                    case Reducer.MeanOverPositions m -> {
                        if (posDim < 0) throw new LoupeException("mean over positions at '" + ctx.name() + "': no position dimension left");
                        t = TensorOps.meanDim(tmp, t, posDim);
                        posDim = -1;
                    }
                    case Reducer.MeanOverBatch m -> {
                        if (batchDim < 0) throw new LoupeException("mean over batch at '" + ctx.name() + "': no batch dimension left");
                        t = TensorOps.meanDim(tmp, t, 0);
                        batchDim = -1;
                        if (posDim > 0) posDim--;
                    }
                    case Reducer.Project p -> {
                        if (p.directions().dim(1) != t.dim(-1))
                            throw new LoupeException("projection at '" + ctx.name() + "': directions " + Arrays.toString(p.directions().shape())
                                    + " do not match the activation's last dimension " + t.dim(-1) + " (shape " + Arrays.toString(t.shape()) + ")");
                        t = TensorOps.matmulT(tmp, t, p.directions());
                    }
                    case Reducer.TopK k -> {
                        Tensor[] vi = topK(tmp, t, k.k(), ctx.name());
                        t = vi[0];
                        topIdx = vi[1];
                    }
                }
            }
            if (req.isMeanAcrossRuns()) accumulate(ctx.name(), t);
            else store(ctx.name(), t, topIdx, req.isOnHost());
        }
    }

    /**
     * Top-k along the last dimension. The op set has no top-k kernel, so the (already sliced and
     * reduced) tensor is read on the host and only the k values and indices go back to the device.
     */
    private static Tensor[] topK(Scope s, Tensor t, int k, String name) {
        int w = t.dim(-1);
        if (k > w) throw new LoupeException("top-" + k + " at '" + name + "': the last dimension has only " + w + " entries");
        float[] v = t.toFloatArray();
        int rows = v.length / Math.max(1, w);
        float[] vals = new float[rows * k];
        int[] idx = new int[rows * k];
        Integer[] order = new Integer[w];
        for (int r = 0; r < rows; r++) {
            int base = r * w;
            for (int i = 0; i < w; i++) order[i] = i;
            // Descending by value; ties keep the lower index first.
            Arrays.sort(order, (a, b) -> {
                int c = Float.compare(v[base + b], v[base + a]);
                return c != 0 ? c : Integer.compare(a, b);
            });
            for (int j = 0; j < k; j++) {
                vals[r * k + j] = v[base + order[j]];
                idx[r * k + j] = order[j];
            }
        }
        int[] shape = TensorOps.withLast(t.shape(), k);
        return new Tensor[]{s.fromArray(vals, shape), s.fromInts(idx, shape)};
    }

    private void store(String name, Tensor t, Tensor topIdx, boolean onHost) {
        if (onHost) {
            host.put(name, download(name, t));
            if (topIdx != null) hostIndices.put(name, download(name + ".indices", topIdx));
            return;
        }
        device.put(name, keep(device.get(name), t));
        if (topIdx != null) indices.put(name, keep(indices.get(name), topIdx));
    }

    /** Running mean over passes: {@code mean_n = mean_{n-1} · (n-1)/n + x / n}, on the device. */
    private void accumulate(String name, Tensor t) {
        Tensor old = device.get(name);
        if (old == null || !Arrays.equals(old.shape(), t.shape())) {
            if (old != null)
                throw new LoupeException("running mean at '" + name + "': this pass's shape " + Arrays.toString(t.shape())
                        + " differs from the earlier passes' " + Arrays.toString(old.shape()));
            device.put(name, scope.copyOf(t));
            runs.put(name, 1);
            return;
        }
        int n = runs.merge(name, 1, Integer::sum);
        TensorOps.scaleInPlace(old, (n - 1f) / n);
        old.backend().axpy(old.buffer(), old.offset(), 1f / n, t.buffer(), t.offset(), t.numel());
    }

    /** How many passes a running mean ({@link CacheRequest#meanAcrossRuns()}) has seen at {@code name}. */
    public int runs(String name) {
        return runs.getOrDefault(name, has(name) ? 1 : 0);
    }

    /** Copies {@code t} into the cache's memory, reusing {@code old} when the shape is unchanged. */
    private Tensor keep(Tensor old, Tensor t) {
        if (old != null && Arrays.equals(old.shape(), t.shape()) && old.dtype() == t.dtype()) {
            old.copyFrom(t);
            return old;
        }
        return scope.copyOf(t);
    }

    private HostTensor download(String name, Tensor t) {
        MemorySegment m = arena.allocate(Math.max(4, t.numel() * 4), 64).asSlice(0, t.numel() * 4);
        t.download(m);
        DType dt = t.dtype() == Tensor.DTypeKind.I32 ? DType.I32 : DType.F32;
        return new HostTensor(name, dt, Arrays.stream(t.shape()).asLongStream().toArray(), m);
    }

    /** Adds (a copy of) {@code t} under {@code name}, on the device. */
    public void put(String name, Tensor t) {
        device.put(name, keep(device.get(name), t));
    }

    // ------------------------------------------------------------------ reading

    /** The model the activations came from, or null. */
    public Transformer model() {
        return model;
    }

    public Backend backend() {
        return backend;
    }

    /** Hook names held, in the order they were recorded. */
    public Set<String> names() {
        Set<String> s = new LinkedHashSet<>(device.keySet());
        s.addAll(host.keySet());
        return Collections.unmodifiableSet(s);
    }

    public boolean has(String name) {
        return device.containsKey(name) || host.containsKey(name);
    }

    /** True when entries were copied to host memory ({@link CacheRequest#onHost()}). */
    public boolean isOnHost(String name) {
        return host.containsKey(name);
    }

    /** The device tensor cached under {@code name}. */
    public Tensor get(String name) {
        Tensor t = device.get(name);
        if (t != null) return t;
        if (host.containsKey(name))
            throw new LoupeException("'" + name + "' was cached in host memory: read it with host(name), or copy the cache with toDevice()");
        throw missing(name);
    }

    /** The top-k indices (i32) stored with {@code name}'s values by a {@link Reducer.TopK}. */
    public Tensor indices(String name) {
        Tensor t = indices.get(name);
        if (t == null) throw new LoupeException("no top-k indices were cached for '" + name + "'");
        return t;
    }

    /**
     * {@code name}'s entry in host memory: the stored host entry, or a fresh heap copy of a device entry
     * (garbage-collected heap memory, so repeated calls do not grow the cache).
     */
    public HostTensor host(String name) {
        HostTensor h = host.get(name);
        if (h != null) return h;
        Tensor t = device.get(name);
        if (t == null) throw missing(name);
        float[] v = t.toFloatArray();
        MemorySegment m = MemorySegment.ofArray(new byte[v.length * 4]);
        MemorySegment.copy(v, 0, m, ValueLayout.JAVA_FLOAT_UNALIGNED, 0, v.length);
        return new HostTensor(name, DType.F32, Arrays.stream(t.shape()).asLongStream().toArray(), m);
    }

    /** {@code name}'s values as a float array (a host copy). */
    public float[] floats(String name) {
        HostTensor h = host.get(name);
        if (h != null) return h.toFloatArray();
        return get(name).toFloatArray();
    }

    /** {@code name}'s shape. */
    public int[] shape(String name) {
        Tensor t = device.get(name);
        if (t != null) return t.shape();
        HostTensor h = host.get(name);
        if (h == null) throw missing(name);
        return Arrays.stream(h.shape()).mapToInt(Math::toIntExact).toArray();
    }

    private LoupeException missing(String name) {
        List<String> known = new ArrayList<>(names());
        return new LoupeException("'" + name + "' is not in the activation cache"
                + (known.isEmpty() ? " (it is empty)" : "; nearest: " + String.join(", ", Hooks.nearest(name, known, 4)))
                + ". Select it in the CacheRequest");
    }

    /** A copy of this cache with every entry on the device (host entries uploaded). */
    public ActivationCache toDevice() {
        ActivationCache c = new ActivationCache(model, backend);
        for (var e : device.entrySet()) c.device.put(e.getKey(), c.scope.copyOf(e.getValue()));
        for (var e : indices.entrySet()) c.indices.put(e.getKey(), c.scope.copyOf(e.getValue()));
        for (var e : host.entrySet()) c.device.put(e.getKey(), upload(c.scope, e.getValue()));
        for (var e : hostIndices.entrySet()) c.indices.put(e.getKey(), upload(c.scope, e.getValue()));
        return c;
    }

    private static Tensor upload(Scope s, HostTensor h) {
        int[] shape = Arrays.stream(h.shape()).mapToInt(Math::toIntExact).toArray();
        if (h.dtype() == DType.I32) return s.fromInts(h.toIntArray(), shape);
        return s.fromSegment(h.data(), shape);
    }

    /** TransformerLens's analysis methods on this cache; results are owned by {@code results}. */
    public CacheAnalysis analysis(Scope results) {
        if (model == null) throw new LoupeException("this cache has no model: the analysis methods need its weights and config");
        return new CacheAnalysis(this, model, results);
    }

    // ------------------------------------------------------------------ export

    /**
     * Writes every entry to a safetensors file (F32; top-k indices as I32 under {@code name + ".indices"}),
     * readable by {@code safetensors.numpy.load_file}.
     */
    public void saveSafetensors(Path file) {
        try (Arena a = Arena.ofConfined()) {
            SafeTensorsWriter w = new SafeTensorsWriter();
            w.metadata("format", "loupe activation cache");
            for (String n : names()) {
                HostTensor h = hostCopy(n, a);
                w.put(n, h.dtype(), h.shape(), h.data());
                HostTensor ix = indicesCopy(n, a);
                if (ix != null) w.put(n + ".indices", ix.dtype(), ix.shape(), ix.data());
            }
            w.write(file);
        }
    }

    /** Writes each entry to {@code dir/<name>.npy} (and {@code <name>.indices.npy}), creating the directory. */
    public void saveNpy(Path dir) {
        try {
            Files.createDirectories(dir);
        } catch (IOException e) {
            throw new LoupeException(dir + ": cannot create the directory for .npy files: " + e, e);
        }
        try (Arena a = Arena.ofConfined()) {
            for (String n : names()) {
                Npy.write(dir.resolve(n + ".npy"), hostCopy(n, a));
                HostTensor ix = indicesCopy(n, a);
                if (ix != null) Npy.write(dir.resolve(n + ".indices.npy"), ix);
            }
        }
    }

    private HostTensor hostCopy(String n, Arena a) {
        HostTensor h = host.get(n);
        if (h != null) return h;
        Tensor t = device.get(n);
        MemorySegment m = a.allocate(Math.max(4, t.numel() * 4), 64).asSlice(0, t.numel() * 4);
        t.download(m);
        return new HostTensor(n, DType.F32, Arrays.stream(t.shape()).asLongStream().toArray(), m);
    }

    private HostTensor indicesCopy(String n, Arena a) {
        HostTensor h = hostIndices.get(n);
        if (h != null) return h;
        Tensor t = indices.get(n);
        if (t == null) return null;
        MemorySegment m = a.allocate(Math.max(4, t.numel() * 4), 64).asSlice(0, t.numel() * 4);
        t.download(m);
        return new HostTensor(n + ".indices", DType.I32, Arrays.stream(t.shape()).asLongStream().toArray(), m);
    }

    /** Host bytes in use (host entries). */
    public long hostBytes() {
        long b = 0;
        for (HostTensor h : host.values()) b += h.data().byteSize();
        for (HostTensor h : hostIndices.values()) b += h.data().byteSize();
        return b;
    }

    /** Device bytes in use. */
    public long deviceBytes() {
        return scope.bytes();
    }

    @Override
    public void close() {
        if (closed) return;
        closed = true;
        scope.close();
        arena.close();
        device.clear();
        indices.clear();
        host.clear();
        hostIndices.clear();
        runs.clear();
    }

    @Override
    public String toString() {
        return "ActivationCache" + names();
    }
}
