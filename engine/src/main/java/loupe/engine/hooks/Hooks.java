package loupe.engine.hooks;

import loupe.LoupeException;
import loupe.engine.Scope;
import loupe.engine.Tensor;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.Comparator;
import java.util.List;
import java.util.Map;
import java.util.function.Predicate;
import java.util.regex.Pattern;

/**
 * The callbacks attached to a forward pass, by hook name. Callbacks at one point run in the order they
 * were added; each hook point fires once per forward pass.
 *
 * <pre>{@code
 * Map<String, Tensor> cache = new LinkedHashMap<>();
 * Hooks hooks = new Hooks()
 *     .cache(Hooks.glob("blocks.*.hook_resid_post"), scope, cache)   // read
 *     .add("blocks.1.attn.hook_z", (z, ctx) -> { ... edit z in place ...; return null; });  // write
 * }</pre>
 */
public final class Hooks {
    /** One attachment: which names, and what to do there. */
    record Entry(Predicate<String> names, String exactName, HookFn fn) {}

    private final List<Entry> entries = new ArrayList<>();

    /** Hooks with nothing attached. */
    public static Hooks none() {
        return new Hooks();
    }

    /** Attaches {@code fn} at the hook point named exactly {@code name} (checked against the model). */
    public Hooks add(String name, HookFn fn) {
        entries.add(new Entry((Selector) name::equals, name, fn));
        return this;
    }

    /**
     * Attaches {@code fn} at every hook point whose name matches. A plain predicate never selects an
     * on-demand point ({@link HookPoint#onDemand}); a {@link Selector} (an exact name, a {@link #glob})
     * decides about those too.
     */
    public Hooks add(Predicate<String> names, HookFn fn) {
        entries.add(new Entry(names, null, fn));
        return this;
    }

    /**
     * Caches the activations whose names match: at each, a copy (owned by {@code owner}) is put in
     * {@code into} under the hook name, after the callbacks added before this one have run. When
     * {@code owner} is the forward pass's own scope and nothing edits the activation there, the
     * activation itself is kept instead of a copy ({@link HookContext#kept}).
     */
    public Hooks cache(Predicate<String> names, Scope owner, Map<String, Tensor> into) {
        return add(names, HookFn.reader((x, ctx) -> into.put(ctx.name(), ctx.kept() && ctx.scope() == owner ? x : owner.copyOf(x))));
    }

    /** Everything added to {@code other} is added here too, after what is here. */
    public Hooks addAll(Hooks other) {
        entries.addAll(other.entries);
        return this;
    }

    public boolean isEmpty() {
        return entries.isEmpty();
    }

    List<Entry> entries() {
        return entries;
    }

    /**
     * A name filter that decides about on-demand hook points ({@link HookPoint#onDemand}) itself. A plain
     * {@link Predicate} is asked about the usual points only, so that {@code n -> true} means
     * "TransformerLens's default set" and costs no per-head copies of the residual stream.
     */
    @FunctionalInterface
    public interface Selector extends Predicate<String> {}

    /** Whether filter {@code p} selects the hook named {@code name} (the rule of {@link Selector}). */
    public static boolean selects(Predicate<String> p, String name) {
        return (p instanceof Selector || !HookPoint.isOnDemand(name)) && p.test(name);
    }

    /**
     * A glob over hook names: {@code *} matches within one dot-separated part or across parts
     * ({@code blocks.*.hook_resid_post}, {@code *} for all, {@code blocks.3.attn.*}). An on-demand point
     * (a split input: {@code hook_q_input}, {@code hook_k_input}, {@code hook_v_input},
     * {@code hook_attn_in}, {@code hook_mlp_in}) is selected only by a glob that spells out {@code _in}
     * ({@code blocks.*.hook_q_input}, {@code blocks.2.hook_*_in*}); {@code *} leaves them out.
     */
    public static Selector glob(String pattern) {
        StringBuilder re = new StringBuilder();
        for (char c : pattern.toCharArray()) {
            if (c == '*') re.append(".*");
            else if (c == '?') re.append('.');
            else re.append(Pattern.quote(String.valueOf(c)));
        }
        Pattern p = Pattern.compile(re.toString());
        boolean namesInputs = pattern.contains("_in");
        return s -> p.matcher(s).matches() && (namesInputs || !HookPoint.isOnDemand(s));
    }

    /** Throws for an exact name the model does not have, listing the nearest names. */
    static void checkName(String name, List<String> known) {
        if (known.contains(name)) return;
        List<String> near = new ArrayList<>(known);
        near.sort(Comparator.comparingInt(k -> editDistance(k, name)));
        throw new LoupeException("unknown hook name '" + name + "'; nearest: "
                + String.join(", ", near.subList(0, Math.min(4, near.size()))));
    }

    /** The nearest names to {@code name} among {@code known}, for error messages. */
    public static List<String> nearest(String name, List<String> known, int count) {
        List<String> near = new ArrayList<>(known);
        near.sort(Comparator.comparingInt(k -> editDistance(k, name)));
        return near.subList(0, Math.min(count, near.size()));
    }

    static int editDistance(String a, String b) {
        int[] prev = new int[b.length() + 1], cur = new int[b.length() + 1];
        for (int j = 0; j <= b.length(); j++) prev[j] = j;
        for (int i = 1; i <= a.length(); i++) {
            cur[0] = i;
            for (int j = 1; j <= b.length(); j++)
                cur[j] = Math.min(Math.min(cur[j - 1] + 1, prev[j] + 1), prev[j - 1] + (a.charAt(i - 1) == b.charAt(j - 1) ? 0 : 1));
            int[] t = prev;
            prev = cur;
            cur = t;
        }
        return prev[b.length()];
    }

    /**
     * The hooks resolved against one model's hook points: for each point, the callbacks to run, so
     * that the forward pass checks an array slot, not a list of predicates, at every point.
     */
    public static final class Bound {
        private final HookFn[][] fns;    // [point index][callbacks]
        private final String[] names;

        private boolean keepsActivations;

        Bound(HookFn[][] fns, String[] names) {
            this.fns = fns;
            this.names = names;
        }

        /**
         * Declares that the pass firing these hooks never writes a fired activation again (see
         * {@link HookContext#kept}); the forward pass does, the backward pass (which reuses scratch) does not.
         */
        public Bound keepingActivations() {
            keepsActivations = true;
            return this;
        }

        public boolean active(int index) {
            return fns[index] != null;
        }

        /** Whether a callback at point {@code index} may edit the activation (an active point with a non-reader). */
        public boolean mayEdit(int index) {
            if (fns[index] == null) return false;
            for (HookFn fn : fns[index]) if (!fn.readsOnly()) return true;
            return false;
        }

        /**
         * Runs the callbacks at point {@code index} on {@code x}; a returned replacement must have
         * x's shape and is copied into x. Returns false when every callback only reads (x is unchanged).
         */
        public boolean fire(int index, Tensor x, HookPoint point, int layer, Scope scope, int positionOffset) {
            return fire(index, x, point, layer, scope, positionOffset, -1);
        }

        /**
         * {@link #fire(int, Tensor, HookPoint, int, Scope, int)} for an activation that is fired again at
         * point {@code alsoAt} (-1: none; e.g. a block's resid_post is the next block's resid_pre): it is
         * kept only if no callback there may edit it either.
         */
        public boolean fire(int index, Tensor x, HookPoint point, int layer, Scope scope, int positionOffset, int alsoAt) {
            HookFn[] f = fns[index];
            if (f == null) return false;
            boolean kept = keepsActivations && !mayEdit(index) && (alsoAt < 0 || !mayEdit(alsoAt));
            HookContext ctx = new HookContext(names[index], point, layer, scope, positionOffset, kept);
            boolean mayEdit = false;
            for (HookFn fn : f) {
                mayEdit |= !fn.readsOnly();
                Tensor r = fn.apply(x, ctx);
                if (r != null && r != x) {
                    if (!Arrays.equals(r.shape(), x.shape()))
                        throw new LoupeException("hook at '" + names[index] + "' returned a tensor of shape "
                                + Arrays.toString(r.shape()) + "; the activation has shape " + Arrays.toString(x.shape()));
                    x.copyFrom(r);
                }
            }
            return mayEdit;
        }
    }

    /** Resolves these hooks against {@code names} (index = hook point slot); unknown exact names throw. */
    public Bound bind(String[] names, List<String> existing) {
        HookFn[][] fns = new HookFn[names.length][];
        for (Entry e : entries) {
            if (e.exactName() != null) checkName(e.exactName(), existing);
            for (int i = 0; i < names.length; i++) {
                if (names[i] == null || !selects(e.names(), names[i])) continue;
                HookFn[] old = fns[i];
                HookFn[] grown = old == null ? new HookFn[1] : Arrays.copyOf(old, old.length + 1);
                grown[grown.length - 1] = e.fn();
                fns[i] = grown;
            }
        }
        return new Bound(fns, names);
    }
}
