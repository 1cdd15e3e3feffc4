package loupe.interp.intervene;

import loupe.LoupeException;
import loupe.engine.Scope;
import loupe.engine.Tensor;
import loupe.engine.hooks.HookContext;
import loupe.engine.hooks.HookFn;
import loupe.engine.hooks.Hooks;
import loupe.engine.io.Json;
import loupe.engine.model.Transformer;
import loupe.interp.TensorOps;
import loupe.interp.cache.ActivationCache;
import loupe.kernels.Backend;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import java.util.function.Predicate;

/**
 * Turns {@link Intervention} values into hook callbacks, and reads and writes them as JSON.
 *
 * <pre>{@code
 * List<Intervention> edits = List.of(
 *         Intervention.zeroHead(1, 2),
 *         Intervention.steer("blocks.0.hook_resid_post", vector, 4f, 5, 6),
 *         new Intervention.Patch("blocks.1.hook_attn_out", Target.positions(-1), "clean", null));
 * try (Interventions.Applied a = Interventions.attach(model, new Hooks(), edits, Map.of("clean", cleanCache))) {
 *     Transformer.Forward f = model.forward(scope, corrupted, a.hooks());
 * }
 * String json = Interventions.toJson(edits);   // and Interventions.fromJson(json) replays them
 * }</pre>
 *
 * <p>Every callback edits the activation in place with device work only: strided copies for
 * replacing, zeroing, patching and ablating regions, an accumulating strided copy for adding, two GEMMs
 * for projecting out a direction. Interventions at one hook run in list order. They work in a plain
 * forward pass and during KV-cached generation ({@link Target} positions are absolute).
 */
public final class Interventions {
    private Interventions() {}

    /** Interventions attached to hooks, and the device memory they hold (uploaded values, reference means). */
    public static final class Applied implements AutoCloseable {
        private final Hooks hooks;
        private final Scope scope;

        private Applied(Hooks hooks, Scope scope) {
            this.hooks = hooks;
            this.scope = scope;
        }

        /** The hooks to pass to a forward pass. */
        public Hooks hooks() {
            return hooks;
        }

        @Override
        public void close() {
            scope.close();
        }
    }

    /** {@link #attach} to new hooks. */
    public static Applied of(Transformer model, List<Intervention> list, Map<String, ActivationCache> sources) {
        return attach(model, new Hooks(), list, sources);
    }

    /**
     * Adds the interventions, in order, to {@code hooks} (after what is there).
     *
     * @param sources the caches that {@link Intervention.Patch}, {@link Intervention.MeanAblate} and
     *                {@link Intervention.ResampleAblate} name (may be empty when none does); they must stay
     *                open while the hooks are used
     */
    public static Applied attach(Transformer model, Hooks hooks, List<Intervention> list, Map<String, ActivationCache> sources) {
        Scope scope = new Scope(model.backend());
        try {
            for (Intervention iv : list) hooks.add(names(model, iv), compile(model.backend(), scope, iv, sources == null ? Map.of() : sources));
            return new Applied(hooks, scope);
        } catch (RuntimeException e) {
            scope.close();
            throw e;
        }
    }

    private static Predicate<String> names(Transformer model, Intervention iv) {
        String h = iv.hook();
        if (h.contains("*") || h.contains("?")) return Hooks.glob(h);
        if (!model.hasHook(h))
            throw new LoupeException("intervention at unknown hook '" + h + "'; nearest: " + String.join(", ", Hooks.nearest(h, model.allHookNames(), 4)));
        return (Hooks.Selector) h::equals;
    }

    private static ActivationCache source(Map<String, ActivationCache> sources, String name, Intervention iv) {
        ActivationCache c = sources.get(name);
        if (c == null)
            throw new LoupeException(kind(iv) + " at '" + iv.hook() + "' names the cache '" + name + "', which was not given; given: " + sources.keySet());
        return c;
    }

    private static String kind(Intervention iv) {
        return String.valueOf(iv.toJson().get("type"));
    }

    private static HookFn compile(Backend be, Scope scope, Intervention iv, Map<String, ActivationCache> sources) {
        return switch (iv) {
            case Intervention.Replace r -> {
                Tensor v = scope.fromArray(r.values(), r.shape());
                yield (x, ctx) -> setFrom(x, ctx, iv, v, broadcastStrides(v.shape(), x.shape(), ctx, iv), false, false);
            }
            case Intervention.Add a -> {
                float[] scaled = a.values().clone();
                for (int i = 0; i < scaled.length; i++) scaled[i] *= a.coefficient();
                Tensor v = scope.fromArray(scaled, a.shape());
                yield (x, ctx) -> setFrom(x, ctx, iv, v, broadcastStrides(v.shape(), x.shape(), ctx, iv), false, true);
            }
            case Intervention.ZeroAblate z -> {
                Tensor zero = scope.zeros(1);
                yield (x, ctx) -> setFrom(x, ctx, iv, zero, new long[x.rank()], false, false);
            }
            case Intervention.MeanAblate m -> {
                ActivationCache ref = source(sources, m.reference(), iv);
                Map<String, Tensor> means = new HashMap<>();
                yield (x, ctx) -> {
                    // The mean over the reference batch is computed once per hook name, on the device.
                    Tensor mean = means.computeIfAbsent(ctx.name(), n -> referenceMean(scope, ref, n, ctx, m.overPositions()));
                    long[] st = meanStrides(mean, x, ctx, m.overPositions(), iv);
                    return setFrom(x, ctx, iv, mean, st, !m.overPositions(), false);
                };
            }
            case Intervention.ResampleAblate r -> {
                ActivationCache ref = source(sources, r.reference(), iv);
                yield (x, ctx) -> resample(x, ctx, r, ref);
            }
            case Intervention.ProjectOut p -> {
                double n = 0;
                for (float f : p.direction()) n += (double) f * f;
                float[] u = new float[p.direction().length];
                for (int i = 0; i < u.length; i++) u[i] = (float) (p.direction()[i] / Math.sqrt(n));
                Tensor unit = scope.fromArray(u, u.length);
                yield (x, ctx) -> projectOut(x, ctx, p, unit);
            }
            case Intervention.Patch p -> {
                ActivationCache src = source(sources, p.source(), iv);
                yield (x, ctx) -> {
                    String name = p.sourceHook() == null ? ctx.name() : p.sourceHook();
                    if (!src.has(name))
                        throw new LoupeException("patch at '" + ctx.name() + "': the cache '" + p.source() + "' has no '" + name + "'");
                    Tensor s = src.get(name);
                    return setFrom(x, ctx, iv, s, sourceStrides(s, x, ctx, iv), true, false);
                };
            }
        };
    }

    /**
     * Copies (or adds) {@code src} into the target region of {@code x}. {@code srcStrides} are per
     * activation dimension (0 to repeat); with {@code absolutePositions} the source's position index is
     * the absolute position (the source covers a whole sequence; the activation a KV-cached window).
     */
    private static Tensor setFrom(Tensor x, HookContext ctx, Intervention iv, Tensor src, long[] srcStrides,
                                  boolean absolutePositions, boolean accumulate) {
        Region r = Region.of(x, ctx.point(), iv.target(), ctx.positionOffset(), ctx.name());
        long[] sv = r.viewStrides(srcStrides);
        int shift = absolutePositions ? ctx.positionOffset() : 0;
        r.forEachBlock(b -> TensorOps.copyStrided(x, b.offset(r.stride), r.stride, src, b.offset(sv) + shift * sv[1], sv,
                b.shape(r.size[3]), accumulate));
        return null;
    }

    /**
     * NumPy broadcasting of {@code vshape} to {@code xshape}: per activation dimension, the value's stride
     * or 0 where it repeats. A mismatch names the hook.
     */
    private static long[] broadcastStrides(int[] vshape, int[] xshape, HookContext ctx, Intervention iv) {
        long[] vs = Region.contiguousStrides(vshape);
        long[] out = new long[xshape.length];
        if (vshape.length > xshape.length) throw shapeError(vshape, xshape, ctx, iv);
        for (int i = 1; i <= xshape.length; i++) {
            int xi = xshape.length - i, vi = vshape.length - i;
            if (vi < 0 || vshape[vi] == 1) {
                out[xi] = 0;
            } else if (vshape[vi] == xshape[xi]) {
                out[xi] = vs[vi];
            } else {
                throw shapeError(vshape, xshape, ctx, iv);
            }
        }
        return out;
    }

    private static LoupeException shapeError(int[] vshape, int[] xshape, HookContext ctx, Intervention iv) {
        return new LoupeException("intervention " + kind(iv) + " at '" + ctx.name() + "': values of shape " + Arrays.toString(vshape)
                + " do not broadcast to the activation's shape " + Arrays.toString(xshape));
    }

    /** Strides of a patch source: same shape as the activation (one batch row repeats), positions absolute. */
    private static long[] sourceStrides(Tensor s, Tensor x, HookContext ctx, Intervention iv) {
        return sourceStrides(s, x, ctx, iv, false);
    }

    /** As above; {@code anyBatch} accepts a source with any number of batch rows (resampling). */
    private static long[] sourceStrides(Tensor s, Tensor x, HookContext ctx, Intervention iv, boolean anyBatch) {
        int[] ss = s.shape(), xs = x.shape();
        int posDim = Region.of(x, ctx.point(), Target.all(), 0, ctx.name()).posDim;
        boolean ok = ss.length == xs.length && (anyBatch || ss[0] == xs[0] || ss[0] == 1);
        for (int d = 1; ok && d < xs.length; d++) ok = d == posDim ? ss[d] >= ctx.positionOffset() + xs[d] : ss[d] == xs[d];
        if (!ok)
            throw new LoupeException(kind(iv) + " at '" + ctx.name() + "': the source activation " + Arrays.toString(ss)
                    + " does not match the activation " + Arrays.toString(xs) + (ctx.positionOffset() > 0 ? " at positions from " + ctx.positionOffset() : "")
                    + " (same shape, or one batch row; at least as many positions)");
        long[] st = Region.contiguousStrides(ss);
        if (ss[0] == 1) st[0] = 0;
        return st;
    }

    /** The reference cache's activation at {@code name}, averaged over its batch (and positions). */
    private static Tensor referenceMean(Scope scope, ActivationCache ref, String name, HookContext ctx, boolean overPositions) {
        if (!ref.has(name)) throw new LoupeException("mean ablation at '" + name + "': the reference cache has no '" + name + "'");
        Tensor a = ref.get(name);
        Tensor m = TensorOps.meanDim(scope, a, 0);
        if (overPositions) {
            int posDim = ctx.point() == loupe.engine.hooks.HookPoint.PATTERN || ctx.point() == loupe.engine.hooks.HookPoint.ATTN_SCORES ? 2 : 1;
            m = TensorOps.meanDim(scope, m, posDim - 1);
        }
        return m;
    }

    /** Strides of a mean (the activation's shape without batch, and without positions if averaged over them). */
    private static long[] meanStrides(Tensor mean, Tensor x, HookContext ctx, boolean overPositions, Intervention iv) {
        int[] xs = x.shape();
        int posDim = Region.of(x, ctx.point(), Target.all(), 0, ctx.name()).posDim;
        int[] full = new int[xs.length];
        int[] ms = mean.shape();
        int j = 0;
        boolean ok = true;
        for (int d = 0; d < xs.length; d++) {
            if (d == 0 || (overPositions && d == posDim)) {
                full[d] = 1;
                continue;
            }
            if (j >= ms.length) {
                ok = false;
                break;
            }
            full[d] = ms[j++];
            ok &= d == posDim ? full[d] >= ctx.positionOffset() + xs[d] : full[d] == xs[d];
        }
        if (!ok || j != ms.length)
            throw new LoupeException("mean ablation at '" + ctx.name() + "': the reference mean " + Arrays.toString(ms)
                    + " does not match the activation " + Arrays.toString(xs) + " (the reference needs as many positions, or over_positions)");
        long[] st = Region.contiguousStrides(full);
        st[0] = 0;
        if (overPositions) st[posDim] = 0;
        return st;
    }

    /** Each batch row's region from a seeded random row of the reference batch. */
    private static Tensor resample(Tensor x, HookContext ctx, Intervention.ResampleAblate r, ActivationCache ref) {
        if (!ref.has(ctx.name())) throw new LoupeException("resample ablation at '" + ctx.name() + "': the reference cache has no '" + ctx.name() + "'");
        Tensor s = ref.get(ctx.name());
        sourceStrides(s, x, ctx, r, true);
        Region reg = Region.of(x, ctx.point(), r.target(), ctx.positionOffset(), ctx.name());
        long[] sv = reg.viewStrides(Region.contiguousStrides(s.shape()));
        // A fresh generator per firing: the same seed gives each batch row the same reference row in every
        // pass, so KV-cached generation resamples consistently.
        SplittableRandom rng = new SplittableRandom(r.seed());
        int[] rows = new int[x.dim(0)];
        for (int b = 0; b < rows.length; b++) rows[b] = rng.nextInt(s.dim(0));
        int shift = ctx.positionOffset();
        reg.forEachRowBlock(b -> {
            long srcOff = (long) rows[b.b0()] * sv[0] + (long) (b.p0() + shift) * sv[1] + (long) b.g0() * sv[2];
            TensorOps.copyStrided(x, b.offset(reg.stride), reg.stride, s, srcOff, sv, b.shape(reg.size[3]), false);
        });
        return null;
    }

    /** {@code x -= (x·u) u} on each row of the region: gather, two GEMMs, scatter. */
    private static Tensor projectOut(Tensor x, HookContext ctx, Intervention.ProjectOut p, Tensor unit) {
        int I = x.dim(-1);
        if (unit.dim(0) != I)
            throw new LoupeException("project-out at '" + ctx.name() + "': the direction has " + unit.dim(0) + " entries, the activation's last dimension "
                    + I + " (shape " + Arrays.toString(x.shape()) + ")");
        Region r = Region.of(x, ctx.point(), p.target(), ctx.positionOffset(), ctx.name());
        if (r.orig[3] != x.rank() - 1)
            throw new LoupeException("project-out at '" + ctx.name() + "': the target must keep whole rows of the last dimension (no neuron target)");
        try (Scope tmp = new Scope(x.backend())) {
            r.forEachBlock(b -> {
                int rows = b.nb() * b.np() * b.ng();
                Tensor t = tmp.zeros(rows, I);
                long[] cs = {(long) b.np() * b.ng() * I, (long) b.ng() * I, I, 1};
                TensorOps.copyStrided(t, 0, cs, x, b.offset(r.stride), r.stride, b.shape(I), false);
                Tensor c = tmp.zeros(rows);
                TensorOps.gemm(false, false, rows, 1, I, 1f, t, 0, I, 0, unit, 0, 1, 0, 0f, c, 0, 1, 0, 1);
                TensorOps.gemm(false, false, rows, I, 1, -1f, c, 0, 1, 0, unit, 0, I, 0, 1f, t, 0, I, 0, 1);
                TensorOps.copyStrided(x, b.offset(r.stride), r.stride, t, 0, cs, b.shape(I), false);
            });
        }
        return null;
    }

    // ------------------------------------------------------------------ JSON

    /** A list of interventions as a JSON array (replayable with {@link #fromJson}). */
    public static String toJson(List<Intervention> list) {
        List<Object> l = new ArrayList<>();
        for (Intervention iv : list) l.add(iv.toJson());
        return Json.write(l);
    }

    /** Reads what {@link #toJson} wrote. */
    public static List<Intervention> fromJson(String json) {
        Object v = Json.parse(json, "interventions JSON");
        if (!(v instanceof List<?> l)) throw new LoupeException("interventions JSON: expected an array of interventions");
        List<Intervention> out = new ArrayList<>();
        for (int i = 0; i < l.size(); i++) {
            if (!(l.get(i) instanceof Map<?, ?> m)) throw new LoupeException("interventions JSON: entry " + i + " is not an object");
            out.add(Intervention.fromJson(m, "interventions JSON entry " + i));
        }
        return out;
    }
}
