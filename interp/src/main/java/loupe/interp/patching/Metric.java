package loupe.interp.patching;

import loupe.engine.Tensor;
import loupe.engine.model.Transformer;

/**
 * A patching metric: a function of a run's logits, as TransformerLens's {@code patching_metric}. It is
 * evaluated in two steps so that a whole batch of patch cells is measured at once:
 * <ol>
 *   <li>{@link #perRow} maps logits {@code [rows, pos, vocab]} to one value per row, reading only what it
 *       needs to the host (e.g. two logits of the last position), not the whole logits tensor;</li>
 *   <li>{@link #combine} turns the values of the rows of one patch cell (one row per prompt of the
 *       patched batch) into the cell's value; by default their mean, which is what TransformerLens's
 *       metrics do over a batch of prompts.</li>
 * </ol>
 *
 * <p>Row layout: in a patching forward pass the rows are grouped by cell, prompt fastest: row {@code r}
 * is prompt {@code r % P} of the target batch (P prompts). Per-prompt metric arguments (answer tokens)
 * are therefore indexed {@code r % P}; see {@link Metrics}.
 */
public interface Metric {

    /** One value per row of {@code logits [rows, pos, vocab]}. */
    float[] perRow(Tensor logits);

    /**
     * True when {@link #perRow} reads only the last position: sweeps then compute the logits of the last
     * position only ({@code Transformer.Options.lastLogitsOnly}), skipping most of the unembedding.
     */
    default boolean lastPositionOnly() {
        return false;
    }

    /**
     * The vocabulary ids {@link #perRow} reads, or null when it reads any (a softmax): sweeps then unembed
     * only those columns ({@code Transformer.Options.logitColumns}; the other logits are 0).
     */
    default int[] vocabIds() {
        return null;
    }

    /** {@code base} narrowed to what this metric reads: the last position only, and only its {@link #vocabIds}. */
    default Transformer.Options options(Transformer.Options base) {
        Transformer.Options o = lastPositionOnly() ? base.withLastLogitsOnly() : base;
        return o.withLogitColumns(vocabIds());
    }

    /** The value of one cell from its rows' values {@code rowValues[from .. from+count)}; by default their mean. */
    default float combine(float[] rowValues, int from, int count) {
        double s = 0;
        for (int i = from; i < from + count; i++) s += rowValues[i];
        return (float) (s / count);
    }

    /** The metric of a batch of {@code rowsPerCell} rows per cell: one value per cell. */
    default float[] evaluate(Tensor logits, int rowsPerCell) {
        float[] rows = perRow(logits);
        float[] cells = new float[rows.length / rowsPerCell];
        for (int c = 0; c < cells.length; c++) cells[c] = combine(rows, c * rowsPerCell, rowsPerCell);
        return cells;
    }
}
