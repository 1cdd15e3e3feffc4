package loupe.interp.patching;

import loupe.LoupeException;
import loupe.engine.Tensor;
import loupe.engine.hooks.HookPoint;

/**
 * One activation-patching intervention: at hook {@code point} of block {@code layer}, the slice chosen
 * by {@code pos}, {@code head} and {@code srcPos} is replaced by the same slice of the source run
 * (the clean run, when denoising). {@link #ALL} in a field means "every index along that axis".
 *
 * <p>What the fields index depends on how the hook's activation is laid out (see {@link Layout}):
 * <ul>
 *   <li>{@code [batch, pos, ...]} (resid_pre, resid_mid, attn_out, mlp_out, mlp.hook_post, ...):
 *       {@code pos}; {@code head} and {@code srcPos} must be {@link #ALL};</li>
 *   <li>{@code [batch, pos, head, d]} (hook_q, hook_k, hook_v, hook_z, hook_result, rotary q/k):
 *       {@code pos} and {@code head}; {@code srcPos} must be {@link #ALL};</li>
 *   <li>{@code [batch, head, dest_pos, src_pos]} (hook_pattern, hook_attn_scores): {@code head},
 *       {@code pos} (the destination, i.e. query, position) and {@code srcPos} (the source, i.e. key,
 *       position).</li>
 * </ul>
 * This is TransformerLens's patch setters ({@code layer_pos_patch_setter},
 * {@code layer_pos_head_vector_patch_setter}, {@code layer_head_pos_pattern_patch_setter}, ...) as a value.
 *
 * @param point  the hook point (a per-block point)
 * @param layer  the block
 * @param pos    position (destination position for patterns), or {@link #ALL}
 * @param head   head (key/value head for hook_k/hook_v of grouped-query models), or {@link #ALL}
 * @param srcPos source position of a pattern entry, or {@link #ALL}
 */
public record PatchCell(HookPoint point, int layer, int pos, int head, int srcPos) {
    /** "Every index along this axis". */
    public static final int ALL = -1;

    /** How a hook's activation is laid out after its batch dimension. */
    public enum Layout {
        /** {@code [batch, pos, ...]}. */
        POS,
        /** {@code [batch, pos, head, d]}. */
        POS_HEAD,
        /** {@code [batch, head, dest_pos, src_pos]}. */
        HEAD_DEST_SRC;

        public static Layout of(HookPoint p) {
            return switch (p) {
                case PATTERN, ATTN_SCORES -> HEAD_DEST_SRC;
                case Q, K, V, ROT_Q, ROT_K, Z, RESULT, ATTN_IN, Q_INPUT, K_INPUT, V_INPUT -> POS_HEAD;
                default -> POS;
            };
        }
    }

    public PatchCell {
        if (point == null || !point.perLayer)
            throw new LoupeException("patching: hook point " + point + " is not a per-block hook; patch a blocks.{l}.* point");
        if (layer < 0) throw new LoupeException("patching: layer " + layer + " is negative");
        if (pos < ALL || head < ALL || srcPos < ALL)
            throw new LoupeException("patching: negative index in " + describe(point, layer, pos, head, srcPos) + " (use PatchCell.ALL for every index)");
        Layout lay = Layout.of(point);
        if (lay == Layout.POS && head != ALL)
            throw new LoupeException("patching: " + point.name(layer) + " has no head axis; give head = ALL");
        if (lay != Layout.HEAD_DEST_SRC && srcPos != ALL)
            throw new LoupeException("patching: " + point.name(layer) + " has no source-position axis; give srcPos = ALL");
    }

    /** The slice at one position of a {@code [batch, pos, ...]} point (every head, every channel). */
    public static PatchCell atPos(HookPoint point, int layer, int pos) {
        return new PatchCell(point, layer, pos, ALL, ALL);
    }

    /** The whole activation of a point at one layer (every position and head). */
    public static PatchCell whole(HookPoint point, int layer) {
        return new PatchCell(point, layer, ALL, ALL, ALL);
    }

    public Layout layout() {
        return Layout.of(point);
    }

    /** The full hook name, {@code blocks.{layer}.<suffix>}. */
    public String hookName() {
        return point.name(layer);
    }

    /**
     * Copies this cell's slice of {@code source} ({@code [P, ...]}: the source run's activation at this
     * hook) into rows {@code [firstRow, firstRow + P)} of {@code target} ({@code [batch, ...]}, same
     * trailing shape): one strided device copy, whatever the layout.
     */
    public void copy(Tensor source, Tensor target, int firstRow) {
        int[] s = source.shape(), t = target.shape();
        int P = s[0];
        if (s.length != t.length || firstRow < 0 || firstRow + P > t[0])
            throw new LoupeException("patching: cannot copy rows of " + java.util.Arrays.toString(s) + " into rows ["
                    + firstRow + ", " + (firstRow + P) + ") of " + java.util.Arrays.toString(t));
        for (int i = 1; i < s.length; i++)
            if (s[i] != t[i])
                throw new LoupeException("patching: source activation " + java.util.Arrays.toString(s) + " and target "
                        + java.util.Arrays.toString(t) + " at " + hookName() + " differ after the batch dimension");
        Slice sl = slice(s);
        int d1 = sl.d1, d2 = sl.d2, d3 = sl.d3, i1 = sl.i1, i2 = sl.i2, i3 = sl.i3;
        long row = (long) d1 * d2 * d3;
        long[] strides = {row, (long) d2 * d3, d3, 1};
        int[] shape = {P, i1 == ALL ? d1 : 1, i2 == ALL ? d2 : 1, i3 == ALL ? d3 : 1};
        long off = (i1 == ALL ? 0 : (long) i1 * d2 * d3) + (i2 == ALL ? 0 : (long) i2 * d3) + (i3 == ALL ? 0 : i3);
        target.backend().copyStrided(target.buffer(), target.offset() + firstRow * row + off, strides,
                source.buffer(), source.offset() + off, strides, shape, false);
    }

    /**
     * Whether this cell's slice holds the same bits in {@code a} and {@code b}, two activations of shape
     * {@code shape} ({@code [P, ...]}, on the host): then patching it writes what is already there.
     */
    public boolean sameSlice(float[] a, float[] b, int[] shape) {
        Slice sl = slice(shape);
        int P = shape[0], d1 = sl.d1, d2 = sl.d2, d3 = sl.d3, i1 = sl.i1, i2 = sl.i2, i3 = sl.i3;
        for (int p = 0; p < P; p++)
            for (int x = i1 == ALL ? 0 : i1; x < (i1 == ALL ? d1 : i1 + 1); x++)
                for (int y = i2 == ALL ? 0 : i2; y < (i2 == ALL ? d2 : i2 + 1); y++)
                    for (int z = i3 == ALL ? 0 : i3; z < (i3 == ALL ? d3 : i3 + 1); z++) {
                        int i = ((p * d1 + x) * d2 + y) * d3 + z;
                        if (Float.floatToRawIntBits(a[i]) != Float.floatToRawIntBits(b[i])) return false;
                    }
        return true;
    }

    /**
     * The first position this cell's patch can change: its position (a causal model's earlier positions
     * never see it; for patterns, the destination), or 0 when it patches every position.
     */
    public int firstAffectedPos() {
        return pos == ALL ? 0 : pos;
    }

    /**
     * As {@link #copy}, into the compact activation {@code target [1, rows, ...]} of a suffix pass
     * ({@code Transformer.Suffix}): sequence {@code firstSeq + i} (prompt i of {@code source [P, pos, ...]})
     * holds positions {@code from[firstSeq + i]} onward from compact row {@code rowStart[firstSeq + i]}.
     * For row-wise points ({@link Layout#POS}, {@link Layout#POS_HEAD}); one strided copy per prompt.
     */
    public void copyIntoRows(Tensor source, Tensor target, int firstSeq, int[] from, int[] rowStart) {
        int[] s = source.shape(), t = target.shape();
        if (layout() == Layout.HEAD_DEST_SRC || s.length != t.length || t[0] != 1)
            throw new LoupeException("patching: cannot copy " + this + " into compact rows " + java.util.Arrays.toString(t));
        for (int i = 2; i < s.length; i++)
            if (s[i] != t[i])
                throw new LoupeException("patching: source activation " + java.util.Arrays.toString(s) + " and compact target "
                        + java.util.Arrays.toString(t) + " at " + hookName() + " differ after the position dimension");
        int P = s[0], T = s[1];
        int d2 = layout() == Layout.POS ? 1 : s[2], d3 = trailing(s, layout() == Layout.POS ? 2 : 3);
        check(pos, T);
        check(head, d2);
        long[] strides = {0, (long) d2 * d3, d3, 1};
        for (int i = 0; i < P; i++) {
            int b = firstSeq + i, t0 = pos == ALL ? from[b] : pos, t1 = pos == ALL ? T : pos + 1;
            if (t0 < from[b])
                throw new LoupeException("patching: " + this + " patches position " + t0 + ", before sequence " + b
                        + "'s first computed position " + from[b]);
            int h0 = head == ALL ? 0 : head, nh = head == ALL ? d2 : 1;
            long src = source.offset() + (((long) i * T + t0) * d2 + h0) * d3;
            long dst = target.offset() + (((long) rowStart[b] + t0 - from[b]) * d2 + h0) * d3;
            if (rowStart[b] + t1 - from[b] > t[1])
                throw new LoupeException("patching: compact rows of sequence " + b + " run past the target's " + t[1] + " rows");
            target.backend().copyStrided(target.buffer(), dst, strides, source.buffer(), src, strides,
                    new int[]{1, t1 - t0, nh, d3}, false);
        }
    }

    /** Each batch row of an activation {@code [P, ...]} seen as {@code [d1, d2, d3]}, and the index (or ALL) selected along each. */
    private record Slice(int d1, int d2, int d3, int i1, int i2, int i3) {}

    private Slice slice(int[] s) {
        Slice sl = switch (layout()) {
            case POS -> new Slice(1, s[1], trailing(s, 2), ALL, pos, ALL);
            case POS_HEAD -> new Slice(s[1], s[2], trailing(s, 3), pos, head, ALL);
            case HEAD_DEST_SRC -> new Slice(s[1], s[2], s[3], head, pos, srcPos);
        };
        check(sl.i1, sl.d1);
        check(sl.i2, sl.d2);
        check(sl.i3, sl.d3);
        return sl;
    }

    private void check(int index, int size) {
        if (index >= size)
            throw new LoupeException("patching: " + this + " indexes past the activation (size " + size + " along that axis)");
    }

    private static int trailing(int[] s, int from) {
        int n = 1;
        for (int i = from; i < s.length; i++) n *= s[i];
        return n;
    }

    private static String describe(HookPoint point, int layer, int pos, int head, int srcPos) {
        return point.name(layer) + "[pos " + idx(pos) + ", head " + idx(head) + ", src " + idx(srcPos) + "]";
    }

    private static String idx(int i) {
        return i == ALL ? "all" : String.valueOf(i);
    }

    @Override
    public String toString() {
        return describe(point, layer, pos, head, srcPos);
    }
}
