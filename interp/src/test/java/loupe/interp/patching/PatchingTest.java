package loupe.interp.patching;

import loupe.LoupeException;
import loupe.engine.Batch;
import loupe.engine.Model;
import loupe.engine.Scope;
import loupe.engine.hooks.HookPoint;
import loupe.engine.hooks.Hooks;
import loupe.engine.model.ModelConfig;
import loupe.engine.model.Transformer;
import loupe.interp.TestModels;
import loupe.kernels.cpu.CpuBackend;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

import java.util.Arrays;
import java.util.List;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Activation patching on the gpt2-tiny-b fixture model and on a random grouped-query Llama: the
 * invariants (clean into clean changes nothing; the whole residual at layer 0 carries the whole run),
 * batched sweeps against the one-cell-at-a-time loop, and TransformerLens's result shapes. Numbers are
 * compared to {@link LoopReference#TOLERANCE}, which says why that is not yet 0.
 */
class PatchingTest {
    static CpuBackend cpu;
    static Model gpt2, llama, wideGpt2, wideLlama;

    @BeforeAll
    static void init() {
        cpu = new CpuBackend(2);
        llama = TestModels.randomLlama(cpu, 7, 32, 3, 4, 2, 64, 16, 50);
        // Wide enough that OpenBLAS rounds a row the same at every GEMM height here: sweeps take suffix passes.
        wideGpt2 = TestModels.randomGpt2(cpu, 3, 256, 2, 4, 32, 64);
        wideLlama = TestModels.randomLlama(cpu, 4, 256, 2, 4, 2, 512, 32, 64);
    }

    @AfterAll
    static void done() {
        if (gpt2 != null) gpt2.close();
        llama.close();
        wideGpt2.close();
        wideLlama.close();
        cpu.close();
    }

    static Model gpt2() {
        if (gpt2 == null) gpt2 = TestModels.fixtureModel("gpt2-tiny-b", cpu);
        return gpt2;
    }

    /** A clean prompt of {@code n} fixture tokens (gpt2) or random ids (llama), and a corrupted copy. */
    record Prompts(Batch clean, Batch corrupted, int answer, int wrong) {}

    static Prompts prompts(Model m, int n, int batch) {
        int vocab = m.config().vocab();
        int[][] clean = new int[batch][];
        int[][] fixture = m == gpt2 ? TestModels.fixtureTokens("gpt2-tiny-b") : null;
        int[][] random = TestModels.randomTokens(11, batch, n, vocab);
        for (int b = 0; b < batch; b++)
            clean[b] = fixture != null && b == 0 ? Arrays.copyOf(fixture[0], n) : random[b];
        int[][] corrupted = new int[batch][];
        for (int b = 0; b < batch; b++) {
            corrupted[b] = clean[b].clone();
            // Corrupt two positions (the second near the end, so late positions matter too).
            corrupted[b][1] = (clean[b][1] + 17) % vocab;
            corrupted[b][n - 2] = (clean[b][n - 2] + 5) % vocab;
        }
        // answer: the clean run's top token at the last position (of prompt 0); wrong: the corrupted run's,
        // or the runner-up when both agree, so that the logit difference separates the runs.
        float[] cl = lastLogits(m.transformer(), Batch.of(clean[0])), co = lastLogits(m.transformer(), Batch.of(corrupted[0]));
        int answer = argmax(cl, -1), wrong = argmax(co, -1);
        if (wrong == answer) wrong = argmax(cl, answer);
        return new Prompts(Batch.of(clean), Batch.of(corrupted), answer, wrong);
    }

    static float[] lastLogits(Transformer t, Batch b) {
        try (Scope s = new Scope(cpu)) {
            float[] all = t.forward(s, b, Hooks.none()).logits.toFloatArray();
            int v = t.config().vocab();
            return Arrays.copyOfRange(all, all.length - v, all.length);
        }
    }

    static int argmax(float[] v, int skip) {
        int best = -1;
        for (int i = 0; i < v.length; i++) if (i != skip && (best < 0 || v[i] > v[best])) best = i;
        return best;
    }

    static final List<Sweep> ALL_SWEEPS = List.of(Sweep.values());

    // ------------------------------------------------------------------ invariants

    @Test
    void patchingCleanIntoCleanChangesNothing() {
        for (Model m : List.of(gpt2(), llama)) {
            Transformer t = m.transformer();
            Prompts p = prompts(m, 6, 1);
            Metric raw = Metrics.logitDiff(p.answer, p.wrong);
            float clean, corrupted;
            try (ActivationPatching ap = new ActivationPatching(t, p.clean, p.corrupted)) {
                clean = ap.cleanValue(raw);
                corrupted = ap.corruptedValue(raw);
            }
            Metric normalized = Metrics.normalized(raw, clean, corrupted);
            double normTol = LoopReference.TOLERANCE / Math.abs(clean - corrupted);
            // Source and target are both the clean prompt: every patch copies a value onto itself.
            try (ActivationPatching ap = new ActivationPatching(t, p.clean, p.clean).maxBatch(7)) {
                for (PatchResult r : ap.runAll(ALL_SWEEPS, raw)) {
                    float[] expected = new float[r.values().length];
                    Arrays.fill(expected, clean);
                    LoopReference.assertClose(expected, r.values(), m.config().family() + " " + r.name());
                }
                for (PatchResult r : List.of(ap.blockEvery(normalized), ap.attnHeadAllPosEvery(normalized), ap.attnHeadByPosEvery(normalized))) {
                    int part = r.values().length / r.shape()[0];
                    for (int i = 0; i < r.values().length; i++) {
                        // k/v of a grouped-query model are zero-padded to n_heads in the "every" stacks.
                        boolean pad = r.name().startsWith("attn_head") && (i / part == 2 || i / part == 3)
                                && i % m.config().nHeads() >= m.config().nKvHeads();
                        assertEquals(pad ? 0f : 1f, r.values()[i], pad ? 0 : normTol, m.config().family() + " " + r.name() + " cell " + i);
                    }
                }
            }
        }
    }

    @Test
    void patchingTheWholeResidualAtLayerZeroReproducesTheCleanLogits() {
        for (Model m : List.of(gpt2(), llama)) {
            Transformer t = m.transformer();
            Prompts p = prompts(m, 9, 2);
            try (ActivationPatching ap = new ActivationPatching(t, p.clean, p.corrupted); Scope s = new Scope(cpu)) {
                float[] patched = ap.patchedLogits(s, PatchCell.whole(HookPoint.RESID_PRE, 0)).toFloatArray();
                float[] clean = t.forward(s, p.clean, Hooks.none()).logits.toFloatArray();
                float[] corrupted = t.forward(s, p.corrupted, Hooks.none()).logits.toFloatArray();
                LoopReference.assertClose(clean, patched, m.config().family());
                assertTrue(!Arrays.equals(clean, corrupted), "the corruption changes the logits");
                // Every position patched one cell at a time adds up to the same: the whole residual.
                PatchCell[] perPos = new PatchCell[9];
                for (int i = 0; i < 9; i++) perPos[i] = PatchCell.atPos(HookPoint.RESID_PRE, 0, i);
                LoopReference.assertClose(clean, ap.patchedLogits(s, perPos).toFloatArray(), "per position");
                // Noising: the corrupted residual into the clean run gives the corrupted logits.
                ap.direction(ActivationPatching.Direction.NOISING);
                LoopReference.assertClose(corrupted, ap.patchedLogits(s, PatchCell.whole(HookPoint.RESID_PRE, 0)).toFloatArray(), "noising");
            }
        }
    }

    // ------------------------------------------------------------------ batched == loop

    @Test
    void batchedSweepsEqualTheOneCellAtATimeLoop() {
        List<Sweep> sweeps = List.of(Sweep.RESID_PRE, Sweep.RESID_MID, Sweep.ATTN_OUT, Sweep.MLP_OUT, Sweep.HEAD_OUT_BY_POS,
                Sweep.Q_BY_POS, Sweep.K_BY_POS, Sweep.V_BY_POS, Sweep.HEAD_OUT_ALL_POS, Sweep.K_ALL_POS,
                Sweep.PATTERN_BY_POS, Sweep.PATTERN_DEST_SRC, Sweep.PATTERN_ALL_POS);
        for (Model m : List.of(gpt2(), llama, wideGpt2, wideLlama)) {
            Transformer t = m.transformer();
            boolean wide = m == wideGpt2 || m == wideLlama;
            int T = wide ? 12 : 5;   // 8 or 16 rows would take OpenBLAS's small-matrix kernels for the llama's k/v (no suffix)
            for (int batch : new int[]{1, 2}) {
                Prompts p = prompts(m, T, batch);
                Metric raw = Metrics.logitDiff(p.answer, p.wrong);
                for (Sweep sw : sweeps) {
                    PatchCell[] cells = sw.cells(m.config(), T);
                    float[] loop = LoopReference.run(t, p.clean, p.corrupted, cells, raw, true);
                    // Odd chunk sizes, so that passes of different batch sizes (and a last short one) occur.
                    for (int rows : new int[]{7 * batch, 64}) {
                        try (ActivationPatching ap = new ActivationPatching(t, p.clean, p.corrupted).maxBatch(rows)) {
                            float[] batched = ap.run(sw, raw).values();
                            String what = m.config().family() + (wide ? " (wide)" : "") + " " + sw + " prompts " + batch + " rows " + rows;
                            LoopReference.assertClose(loop, batched, what);
                            // By-position cells skip the positions before theirs (suffix passes) on the wide models.
                            long whole = 0;
                            for (PatchCell c : cells) whole += (long) batch * T * (m.config().nLayers() - c.layer());
                            boolean byPos = cells[0].pos() != PatchCell.ALL;
                            if (wide && byPos) assertTrue(ap.rowsComputed() < whole, what + ": " + ap.rowsComputed() + " of " + whole + " rows computed");
                            else if (!byPos) assertEquals(whole, ap.rowsComputed(), what);
                        }
                    }
                }
            }
        }
    }

    /**
     * Cells whose slice is the same in both runs (positions before the first differing token) run no pass
     * and get the corrupted run's value, bit for bit what the loop gives them.
     */
    @Test
    void cellsThatChangeNothingRunNoPass() {
        for (Model m : List.of(gpt2(), llama, wideLlama)) {
            Transformer t = m.transformer();
            int V = m.config().vocab(), T = 8;
            int[] clean = TestModels.randomTokens(31, 1, T, V)[0], corrupted = clean.clone();
            corrupted[5] = (corrupted[5] + 1) % V;
            Metric raw = Metrics.logitDiff(1, 2);
            List<PatchCell> before = new java.util.ArrayList<>(), all = new java.util.ArrayList<>();
            for (int l = 0; l < m.config().nLayers(); l++)
                for (int p = 0; p < T; p++) {
                    all.add(PatchCell.atPos(HookPoint.RESID_PRE, l, p));
                    all.add(new PatchCell(HookPoint.K, l, p, 0, PatchCell.ALL));
                    if (p < 5) before.addAll(all.subList(all.size() - 2, all.size()));
                }
            try (ActivationPatching ap = new ActivationPatching(t, Batch.of(clean), Batch.of(corrupted))) {
                float corruptedValue = ap.corruptedValue(raw);
                float[] v = ap.run(before, raw);
                assertEquals(0, ap.rowsComputed(), m.config().family() + ": no pass for cells before position 5");
                for (float x : v) assertEquals(corruptedValue, x, 0f);
                float[] loop = LoopReference.run(t, Batch.of(clean), Batch.of(corrupted), all.toArray(new PatchCell[0]), raw, true);
                LoopReference.assertClose(loop, ap.run(all, raw), m.config().family() + " mixed cells");
            }
        }
    }

    /** Left-padded prompts of different lengths: suffix passes (wide models) still equal the loop exactly. */
    @Test
    void paddedPromptsInSuffixPassesEqualTheLoop() {
        for (Model m : List.of(wideGpt2, wideLlama)) {
            Transformer t = m.transformer();
            int V = m.config().vocab();
            int[][] r = TestModels.randomTokens(21, 2, 12, V);
            int[] a = r[0], b = Arrays.copyOf(r[1], 9);
            int[] a2 = a.clone(), b2 = b.clone();
            a2[3] = (a2[3] + 7) % V;
            b2[6] = (b2[6] + 3) % V;
            Batch clean = Batch.leftPadded(0, a, b), corrupted = Batch.leftPadded(0, a2, b2);
            Metric raw = Metrics.logitDiff(new int[]{1, 2}, new int[]{3, 4});
            for (Sweep sw : List.of(Sweep.RESID_PRE, Sweep.ATTN_OUT, Sweep.HEAD_OUT_BY_POS, Sweep.PATTERN_BY_POS)) {
                PatchCell[] cells = sw.cells(m.config(), 12);
                float[] loop = LoopReference.run(t, clean, corrupted, cells, raw, true);
                try (ActivationPatching ap = new ActivationPatching(t, clean, corrupted)) {
                    float[] batched = ap.run(sw, raw).values();
                    String what = m.config().family() + " (wide, padded) " + sw;
                    LoopReference.assertClose(loop, batched, what);
                    long whole = 0;
                    for (PatchCell c : cells) whole += 2L * 12 * (m.config().nLayers() - c.layer());
                    assertTrue(ap.rowsComputed() < whole, what + ": " + ap.rowsComputed() + " of " + whole + " rows computed");
                }
            }
        }
    }

    @Test
    void lossAndProbabilityMetricsMatchTheHostComputation() {
        for (Model m : List.of(gpt2(), llama)) {
            Transformer t = m.transformer();
            Prompts p = prompts(m, 5, 2);
            int V = m.config().vocab();
            try (Scope s = new Scope(cpu)) {
                var logits = t.forward(s, p.clean, Hooks.none()).logits;
                float[] all = logits.toFloatArray();
                float[] loss = Metrics.loss(p.answer, p.wrong).perRow(logits);
                float[] prob = Metrics.probability(p.answer, p.wrong).perRow(logits);
                float[] ld = Metrics.logitDiff(p.answer, p.wrong).perRow(logits);
                for (int r = 0; r < 2; r++) {
                    int target = r == 0 ? p.answer : p.wrong;
                    int base = (r * 5 + 4) * V;
                    double max = Double.NEGATIVE_INFINITY, sum = 0;
                    for (int i = 0; i < V; i++) max = Math.max(max, all[base + i]);
                    for (int i = 0; i < V; i++) sum += Math.exp(all[base + i] - max);
                    double lse = max + Math.log(sum);
                    assertEquals(lse - all[base + target], loss[r], 1e-5);
                    assertEquals(Math.exp(all[base + target] - lse), prob[r], 1e-6);
                    assertEquals(all[base + p.answer] - all[base + p.wrong], ld[r], 0f);
                }
            }
        }
    }

    // ------------------------------------------------------------------ TransformerLens's shapes

    @Test
    void resultShapesAreTransformerLenss() {
        for (Model m : List.of(gpt2(), llama)) {
            ModelConfig c = m.config();
            int L = c.nLayers(), H = c.nHeads(), KV = c.nKvHeads(), T = 4;
            Prompts p = prompts(m, T, 1);
            Metric metric = Metrics.logitDiff(p.answer, p.wrong);
            try (ActivationPatching ap = new ActivationPatching(t(m), p.clean, p.corrupted)) {
                assertShape(new int[]{L, T}, ap.residPre(metric));
                assertShape(new int[]{L, T}, ap.residMid(metric));
                assertShape(new int[]{L, T}, ap.attnOut(metric));
                assertShape(new int[]{L, T}, ap.mlpOut(metric));
                assertShape(new int[]{L, T, H}, ap.attnHeadOutByPos(metric));
                assertShape(new int[]{L, T, H}, ap.attnHeadQByPos(metric));
                assertShape(new int[]{L, T, KV}, ap.attnHeadKByPos(metric));
                assertShape(new int[]{L, T, KV}, ap.attnHeadVByPos(metric));
                assertShape(new int[]{L, H}, ap.attnHeadOutAllPos(metric));
                assertShape(new int[]{L, H}, ap.attnHeadQAllPos(metric));
                assertShape(new int[]{L, KV}, ap.attnHeadKAllPos(metric));
                assertShape(new int[]{L, KV}, ap.attnHeadVAllPos(metric));
                PatchResult patByPos = ap.attnHeadPatternByPos(metric);
                assertShape(new int[]{L, H, T}, patByPos);
                assertShape(new int[]{L, H, T, T}, ap.attnHeadPatternDestSrcPos(metric));
                assertShape(new int[]{L, H}, ap.attnHeadPatternAllPos(metric));

                PatchResult block = ap.blockEvery(metric);
                assertShape(new int[]{3, L, T}, block);
                LoopReference.assertClose(ap.residPre(metric).values(), Arrays.copyOfRange(block.values(), 0, L * T), "block_every[0]");
                LoopReference.assertClose(ap.mlpOut(metric).values(), Arrays.copyOfRange(block.values(), 2 * L * T, 3 * L * T), "block_every[2]");

                PatchResult allPos = ap.attnHeadAllPosEvery(metric);
                assertShape(new int[]{5, L, H}, allPos);
                PatchResult kAll = ap.attnHeadKAllPos(metric);
                for (int l = 0; l < L; l++)
                    for (int h = 0; h < H; h++)
                        assertEquals(h < KV ? kAll.get(l, h) : 0f, allPos.get(2, l, h), h < KV ? LoopReference.TOLERANCE : 0, "k padded with zeros");

                PatchResult byPos = ap.attnHeadByPosEvery(metric);
                assertShape(new int[]{5, L, T, H}, byPos);
                for (int l = 0; l < L; l++)
                    for (int pos = 0; pos < T; pos++)
                        for (int h = 0; h < H; h++)
                            assertEquals(patByPos.get(l, h, pos), byPos.get(4, l, pos, h), LoopReference.TOLERANCE, "pattern rearranged to [layer, pos, head]");
            }
        }
    }

    static Transformer t(Model m) {
        return m.transformer();
    }

    static void assertShape(int[] expected, PatchResult r) {
        assertArrayEquals(expected, r.shape(), r.name());
        assertEquals(expected.length, r.axes().size());
    }

    // ------------------------------------------------------------------ progress and errors

    @Test
    void progressCountsEveryCellOnce() {
        Prompts p = prompts(llama, 6, 1);
        long[] last = {0, 0};
        int[] calls = {0};
        try (ActivationPatching ap = new ActivationPatching(llama.transformer(), p.clean, p.corrupted).maxBatch(4)
                .listener((done, total) -> {
                    assertTrue(done > last[0] && done <= total);
                    last[0] = done;
                    last[1] = total;
                    calls[0]++;
                })) {
            ap.residPre(Metrics.logitDiff(p.answer, p.wrong));
        }
        assertEquals(18, last[0]);
        assertEquals(18, last[1]);
        assertEquals(3 * 2, calls[0], "3 layers x 2 passes of at most 4 cells (6 positions)");
    }

    @Test
    void badInputRaisesLoupeException() {
        Transformer t = llama.transformer();
        LoupeException e = assertThrows(LoupeException.class,
                () -> new ActivationPatching(t, Batch.of(new int[]{1, 2, 3}), Batch.of(new int[]{1, 2})));
        assertTrue(e.getMessage().contains("same shape"), e.getMessage());
        try (ActivationPatching ap = new ActivationPatching(t, Batch.of(new int[]{1, 2, 3}), Batch.of(new int[]{1, 9, 3}))) {
            Metric ld = Metrics.logitDiff(1, 2);
            e = assertThrows(LoupeException.class, () -> ap.run(List.of(PatchCell.atPos(HookPoint.RESID_PRE, 3, 0)), ld));
            assertTrue(e.getMessage().contains("has 3 blocks"), e.getMessage());
            e = assertThrows(LoupeException.class, () -> ap.run(List.of(PatchCell.atPos(HookPoint.RESID_PRE, 0, 3)), ld));
            assertTrue(e.getMessage().contains("indexes past"), e.getMessage());
            e = assertThrows(LoupeException.class, () -> ap.run(List.of(new PatchCell(HookPoint.K, 0, 0, 2, PatchCell.ALL)), ld));
            assertTrue(e.getMessage().contains("indexes past"), e.getMessage());   // 2 kv heads
            e = assertThrows(LoupeException.class, () -> ap.run(List.of(PatchCell.atPos(HookPoint.POS_EMBED, 0, 0)), ld));
            assertTrue(e.getMessage().contains("not a per-block hook"), e.getMessage());
            e = assertThrows(LoupeException.class, () -> ap.run(List.of(PatchCell.atPos(HookPoint.RESID_PRE, 0, 0)), Metrics.logitDiff(1, 50)));
            assertTrue(e.getMessage().contains("token 50, which is out of range"), e.getMessage());
            e = assertThrows(LoupeException.class, () -> new PatchCell(HookPoint.RESID_PRE, 0, 1, 0, PatchCell.ALL));
            assertTrue(e.getMessage().contains("no head axis"), e.getMessage());
            e = assertThrows(LoupeException.class, () -> Metrics.normalized(ld, 1f, 1f));
            assertTrue(e.getMessage().contains("cannot normalize"), e.getMessage());
        }
    }
}
