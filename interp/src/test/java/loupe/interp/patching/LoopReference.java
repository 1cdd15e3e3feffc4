package loupe.interp.patching;

import loupe.engine.Batch;
import loupe.engine.Scope;
import loupe.engine.Tensor;
import loupe.engine.hooks.HookPoint;
import loupe.engine.hooks.Hooks;
import loupe.engine.model.Transformer;

import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * The one-cell-at-a-time reference for the batched sweeps, as TransformerLens's
 * {@code generic_activation_patch} runs them: for each cell, a plain forward pass of the corrupted
 * prompts from the embedding (no prefix reuse, batch = the prompts only) with one patch hook.
 */
final class LoopReference {
    private LoopReference() {}

    /**
     * Batched sweeps must equal the one-cell loop exactly: the engine runs linear layers as one GEMM per
     * sequence (a BLAS may round a row differently for other matrix heights) and the CPU backend's math
     * gives the same bits cold or JIT-compiled, so a cell's numbers do not depend on its batch.
     */
    static final double TOLERANCE = 0;

    /** {@code |expected[i] - actual[i]| <= TOLERANCE} for every i (see {@link #TOLERANCE}). */
    static void assertClose(float[] expected, float[] actual, String what) {
        org.junit.jupiter.api.Assertions.assertEquals(expected.length, actual.length, what + ": length");
        for (int i = 0; i < expected.length; i++)
            if (!(Math.abs(expected[i] - actual[i]) <= TOLERANCE))
                org.junit.jupiter.api.Assertions.fail(what + ": element " + i + " is " + actual[i] + ", expected " + expected[i]
                        + " (difference " + Math.abs(expected[i] - actual[i]) + " > " + TOLERANCE + ")");
    }

    /**
     * The metric of each cell. {@code hostPatch}: the hook patches on the host with its own index
     * arithmetic (independent of {@link PatchCell#copy}); otherwise it uses the device copy (for timing).
     */
    static float[] run(Transformer t, Batch clean, Batch corrupted, PatchCell[] cells, Metric metric, boolean hostPatch) {
        Map<String, float[]> cleanHost = new LinkedHashMap<>();
        float[] out = new float[cells.length];
        try (Scope cacheScope = new Scope(t.backend())) {
            Map<String, Tensor> cache = new LinkedHashMap<>();
            // Cache only the patched hooks: hooking e.g. hook_result would change how attn_out is summed.
            java.util.Set<String> names = new java.util.HashSet<>();
            for (PatchCell c : cells) names.add(c.hookName());
            try (Scope s = new Scope(t.backend())) {
                t.forward(s, clean, new Hooks().cache(names::contains, cacheScope, cache));
            }
            for (int i = 0; i < cells.length; i++) {
                PatchCell c = cells[i];
                Tensor src = cache.get(c.hookName());
                try (Scope s = new Scope(t.backend())) {
                    Hooks h = new Hooks().add(c.hookName(), (x, ctx) -> {
                        if (!hostPatch) {
                            c.copy(src, x, 0);
                            return null;
                        }
                        float[] xs = x.toFloatArray();
                        float[] cs = cleanHost.computeIfAbsent(c.hookName(), k -> src.toFloatArray());
                        patchOnHost(c, x.shape(), xs, cs);
                        return ctx.scope().fromArray(xs, x.shape());
                    });
                    Transformer.Forward f = t.forward(s, corrupted, h, metric.options(Transformer.Options.DEFAULT));
                    out[i] = metric.evaluate(f.logits, corrupted.size())[0];
                }
            }
        }
        return out;
    }

    /** x[idx] = clean[idx] for every multi-index the cell selects (TransformerLens's patch setters). */
    static void patchOnHost(PatchCell c, int[] shape, float[] x, float[] clean) {
        int[] idx = new int[shape.length];
        for (int flat = 0; flat < x.length; flat++) {
            int rem = flat;
            for (int d = shape.length - 1; d >= 0; d--) {
                idx[d] = rem % shape[d];
                rem /= shape[d];
            }
            if (selects(c, idx)) x[flat] = clean[flat];
        }
    }

    private static boolean selects(PatchCell c, int[] idx) {
        HookPoint p = c.point();
        boolean pattern = p == HookPoint.PATTERN || p == HookPoint.ATTN_SCORES;
        boolean headVector = List.of(HookPoint.Q, HookPoint.K, HookPoint.V, HookPoint.Z, HookPoint.RESULT,
                HookPoint.ROT_Q, HookPoint.ROT_K).contains(p);
        if (pattern) // [batch, head, dest, src]
            return match(c.head(), idx[1]) && match(c.pos(), idx[2]) && match(c.srcPos(), idx[3]);
        if (headVector) // [batch, pos, head, d]
            return match(c.pos(), idx[1]) && match(c.head(), idx[2]);
        return match(c.pos(), idx[1]);   // [batch, pos, ...]
    }

    private static boolean match(int want, int got) {
        return want == PatchCell.ALL || want == got;
    }
}
