package loupe.interp.patching;

import loupe.LoupeException;
import loupe.engine.Scope;
import loupe.engine.Tensor;
import loupe.kernels.Backend;

import java.util.Arrays;

/**
 * The usual patching metrics, all read at the last position of each row (the prediction of the next
 * token), as in TransformerLens's demos. With padded prompts, pad on the left so that the last position
 * is a real token.
 *
 * <p>Token arguments are per prompt: an array of length 1 applies to every row; an array of length P
 * gives prompt {@code p}'s token, used for rows {@code r} with {@code r % P == p} (see {@link Metric}).
 *
 * <p>Each metric moves only what it needs to the host: the logit difference gathers two logits per row
 * on the device; loss and probability compute the cross-entropy of the last-position rows on the
 * device and read one float per row.
 */
public final class Metrics {
    private Metrics() {}

    /**
     * {@code logits[r, -1, answer] - logits[r, -1, wrong]}: the logit difference at the last position.
     *
     * @param answer the correct token per prompt (length 1 or P)
     * @param wrong  the wrong (counterfactual) token per prompt (same length)
     */
    public static Metric logitDiff(int[] answer, int[] wrong) {
        if (answer.length == 0 || answer.length != wrong.length)
            throw new LoupeException("logit difference: " + answer.length + " answer tokens and " + wrong.length
                    + " wrong tokens; give one of each per prompt (or one of each for all prompts)");
        int[] a = answer.clone(), w = wrong.clone();
        int[] ids = java.util.stream.IntStream.concat(java.util.Arrays.stream(a), java.util.Arrays.stream(w)).distinct().toArray();
        return lastPosition(ids, logits -> {
            int rows = logits.dim(0), T = logits.dim(1), V = logits.dim(2);
            checkTokens(a, V, rows, "answer");
            checkTokens(w, V, rows, "wrong");
            try (Scope s = new Scope(logits.backend())) {
                Tensor picked = s.zeros(2, rows);   // [answer | wrong, row]
                gatherLast(logits, a, picked.select(0));
                gatherLast(logits, w, picked.select(1));
                float[] v = picked.toFloatArray();
                float[] out = new float[rows];
                for (int r = 0; r < rows; r++) out[r] = v[r] - v[rows + r];
                return out;
            }
        });
    }

    /** {@code m}, declared to read the last position only (see {@link Metric#lastPositionOnly()}). */
    static Metric lastPosition(Metric m) {
        return lastPosition(null, m);
    }

    /** {@code m}, declared to read the last position only and, when {@code ids} is given, only those vocabulary ids. */
    static Metric lastPosition(int[] ids, Metric m) {
        return new Metric() {
            @Override
            public float[] perRow(Tensor logits) {
                return m.perRow(logits);
            }

            @Override
            public boolean lastPositionOnly() {
                return true;
            }

            @Override
            public int[] vocabIds() {
                return ids == null ? null : ids.clone();
            }
        };
    }

    /** {@link #logitDiff(int[], int[])} with the same two tokens for every prompt. */
    public static Metric logitDiff(int answer, int wrong) {
        return logitDiff(new int[]{answer}, new int[]{wrong});
    }

    /**
     * The cross-entropy loss of {@code target} at the last position: {@code -log softmax(logits[r, -1])[target]}.
     * Lower is better; normalize it with {@link #normalized} to get clean = 1, corrupted = 0.
     */
    public static Metric loss(int... target) {
        int[] t = target.clone();
        if (t.length == 0) throw new LoupeException("loss metric: give a target token");
        return lastPosition(logits -> lastPositionLoss(logits, t));
    }

    /** The probability of {@code target} at the last position: {@code softmax(logits[r, -1])[target]}. */
    public static Metric probability(int... target) {
        int[] t = target.clone();
        if (t.length == 0) throw new LoupeException("probability metric: give a target token");
        return lastPosition(logits -> {
            float[] loss = lastPositionLoss(logits, t);
            float[] p = new float[loss.length];
            for (int r = 0; r < p.length; r++) p[r] = (float) Math.exp(-loss[r]);
            return p;
        });
    }

    /**
     * {@code (m - corrupted) / (clean - corrupted)} of the cell value {@code m} of {@code metric}: 1 when a
     * patch restores the clean run's value, 0 when it changes nothing in the corrupted run. The
     * baselines are cell values of the same metric on the unpatched runs
     * ({@link ActivationPatching#cleanValue}, {@link ActivationPatching#corruptedValue}).
     */
    public static Metric normalized(Metric metric, float clean, float corrupted) {
        if (!(clean != corrupted) || !Float.isFinite(clean) || !Float.isFinite(corrupted))
            throw new LoupeException("cannot normalize the metric: the clean run gives " + clean + " and the corrupted run "
                    + corrupted + "; they must be finite and differ (choose prompts or answer tokens on which the runs disagree)");
        return new Metric() {
            @Override
            public float[] perRow(Tensor logits) {
                return metric.perRow(logits);
            }

            @Override
            public boolean lastPositionOnly() {
                return metric.lastPositionOnly();
            }

            @Override
            public int[] vocabIds() {
                return metric.vocabIds();
            }

            @Override
            public float combine(float[] rowValues, int from, int count) {
                // Normalized after combining, so that a cell that reproduces the clean rows exactly gives exactly 1.
                float m = metric.combine(rowValues, from, count);
                return (float) (((double) m - corrupted) / ((double) clean - corrupted));
            }
        };
    }

    /**
     * {@code out[r] = logits[r, T-1, token[r % n]]} for {@code out [rows]}: one strided copy per distinct
     * prompt (rows of prompt p sit every n rows).
     */
    private static void gatherLast(Tensor logits, int[] token, Tensor out) {
        int rows = logits.dim(0), T = logits.dim(1), V = logits.dim(2), n = token.length;
        Backend be = logits.backend();
        for (int p = 0; p < n && p < rows; p++) {
            int count = (rows - p + n - 1) / n;
            be.copyStrided(out.buffer(), out.offset() + p, new long[]{0, 0, n, 1},
                    logits.buffer(), logits.offset() + ((long) p * T + T - 1) * V + token[p], new long[]{0, 0, (long) n * T * V, 1},
                    new int[]{1, 1, count, 1}, false);
        }
    }

    /** Cross-entropy of the last-position rows, computed on the device; one float per row comes back. */
    private static float[] lastPositionLoss(Tensor logits, int[] target) {
        int rows = logits.dim(0), T = logits.dim(1), V = logits.dim(2);
        checkTokens(target, V, rows, "target");
        Backend be = logits.backend();
        try (Scope s = new Scope(be)) {
            Tensor last = s.zeros(rows, V);
            be.copyStrided(last.buffer(), last.offset(), new long[]{0, 0, V, 1},
                    logits.buffer(), logits.offset() + (long) (T - 1) * V, new long[]{0, 0, (long) T * V, 1},
                    new int[]{1, 1, rows, V}, false);
            int[] t = new int[rows];
            for (int r = 0; r < rows; r++) t[r] = target[r % target.length];
            Tensor targets = s.fromInts(t, rows);
            Tensor losses = s.zeros(rows);
            be.crossEntropy(losses.buffer(), losses.offset(), last.buffer(), last.offset(), targets.buffer(), targets.offset(), rows, V);
            return losses.toFloatArray();
        }
    }

    private static void checkTokens(int[] tokens, int vocab, int rows, String what) {
        for (int t : tokens)
            if (t < 0 || t >= vocab)
                throw new LoupeException(what + " token " + t + " is out of range [0, " + vocab + ")");
        if (rows % tokens.length != 0)
            throw new LoupeException(what + " tokens " + Arrays.toString(tokens) + ": " + tokens.length
                    + " per-prompt tokens do not divide the " + rows + " rows of the logits");
    }
}
