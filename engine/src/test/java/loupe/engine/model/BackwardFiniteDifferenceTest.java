package loupe.engine.model;

import loupe.engine.Batch;
import loupe.engine.Model;
import loupe.engine.Scope;
import loupe.engine.Tensor;
import loupe.engine.hooks.Hooks;
import loupe.kernels.cpu.CpuBackend;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Random;

import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

/**
 * The backward pass against central finite differences of the float32 forward, on small random models
 * of both families (padded batches; GQA, partial rotary with both pairings, biases, untied unembedding
 * on the Llama side), for every parameter tensor and every hook point:
 * <ul>
 *   <li>directional derivatives: for a random direction v over a whole tensor (scaled to the tensor's
 *       size), {@code <grad, v>} against
 *       {@code (L(x + h v) - L(x - h v)) / 2h}, Richardson-extrapolated (h and h/2), which checks every
 *       entry at once with a good signal-to-noise ratio;</li>
 *   <li>single entries: the entry of each parameter tensor with the largest gradient.</li>
 * </ul>
 * The test also checks that it can fail: a gradient with a random half of its entries negated is
 * rejected by the same tolerance.
 */
class BackwardFiniteDifferenceTest {
    static CpuBackend cpu;
    /**
     * Relative tolerance of a directional derivative and of a single entry, plus an absolute floor for
     * the float32 noise: the loss carries rounding noise of about one ulp (sigma ~ 2.4e-7 at L ~ 3), and
     * the Richardson combination of central differences at h = 1e-2 and h/2 multiplies it by ~200
     * (observed errors of near-zero derivatives: up to 6e-5). The floor is ~400 sigma.
     */
    static final double DIR_TOL = 2e-3, ENTRY_TOL = 1e-2, NOISE = 1e-4;
    /** The finite-difference step (and half of it, for Richardson extrapolation). */
    static final float STEP = 1e-2f;

    @BeforeAll
    static void init() {
        cpu = new CpuBackend(2);
    }

    @AfterAll
    static void done() {
        cpu.close();
    }

    @ParameterizedTest
    @ValueSource(strings = {"gpt2", "llama-halves", "llama-interleaved", "attn-only", "llama-window"})
    void gradientsMatchFiniteDifferences(String family) {
        ModelConfig cfg = family.equals("gpt2") ? RandomModels.gpt2(2) : family.equals("attn-only") ? RandomModels.attnOnly()
                : family.equals("llama-window") ? RandomModels.llama(false).withSlidingWindow(3)
                : RandomModels.llama(family.endsWith("interleaved"));
        try (Model m = Model.of(RandomModels.build(cfg, cpu, 7)); Scope s = new Scope(cpu)) {
            Transformer t = m.transformer();
            Batch batch = RandomModels.paddedBatch(cfg.vocab(), 11);
            // GPT-2 with llm.c-style explicit targets, Llama with HF's shifted labels; both masked.
            Loss.Targets targets;
            if (!family.startsWith("llama")) {
                Random r = new Random(5);
                int[][] tg = new int[batch.size()][batch.length()];
                for (int[] row : tg) for (int i = 0; i < row.length; i++) row[i] = r.nextInt(cfg.vocab());
                targets = Loss.targets(s, batch, tg);
            } else {
                targets = Loss.shifted(s, batch);
            }
            Map<String, Tensor> acts = new LinkedHashMap<>();
            Transformer.Forward f = t.forward(s, batch, new Hooks().cache(n -> true, s, acts), new Transformer.Options(true, null));
            Map<String, Tensor> grads = new LinkedHashMap<>();
            Backward.Result r = Backward.run(s, t, f, Backward.Options.fromLoss(targets).withHooks(new Hooks().cache(n -> true, s, grads)));

            Checker ck = new Checker(t, batch, targets);
            Random rnd = new Random(3);
            // Parameters.
            Map<String, Tensor> params = t.weights().named();
            Map<String, Tensor> pgrads = r.params.named();
            for (var e : params.entrySet()) {
                Tensor p = e.getValue(), gt = pgrads.get(e.getKey());
                assertTrue(gt != null, "no gradient for " + e.getKey());
                float[] g = gt.toFloatArray();
                ck.direction(family + " param " + e.getKey(), g, p.toFloatArray(), rnd, (v, h) -> ck.lossWithParam(p, v, h));
                ck.entry(family + " param " + e.getKey(), g, (v, h) -> ck.lossWithParam(p, v, h));
            }
            // Hook points: the gradient cache against perturbing the activation with a forward hook.
            int hooks = 0;
            for (String name : t.hookNames()) {
                if (name.endsWith("hook_scale")) continue;
                Tensor gt = grads.get(name);
                assertTrue(gt != null, "no gradient cached at " + name);
                ck.direction(family + " hook " + name, gt.toFloatArray(), acts.get(name).toFloatArray(), rnd, (v, h) -> ck.lossWithHook(name, v, h));
                hooks++;
            }
            System.out.printf("%s: %d parameter tensors and %d hook points; worst rel err (derivatives above noise) %.3g directional, "
                    + "%.3g single entry; worst error %.2f of its tolerance; a half-negated gradient was caught %d/%d times%n",
                    family, params.size(), hooks, ck.worstDir, ck.worstEntry, ck.worstOfTol, ck.caught, ck.checks);
            assertTrue(ck.caught >= 0.9 * ck.checks, "the tolerance must reject wrong gradients: " + ck.caught + "/" + ck.checks);
        }
    }

    @FunctionalInterface
    interface Perturbed {
        /** The loss with {@code h * v} added to the variable. */
        double loss(float[] v, float h);
    }

    static final class Checker {
        final Transformer t;
        final Batch batch;
        final Loss.Targets targets;
        /** Worst relative error where the derivative is well above the noise; worst error as a fraction of its tolerance. */
        double worstDir, worstEntry, worstOfTol;
        int checks, caught;

        Checker(Transformer t, Batch batch, Loss.Targets targets) {
            this.t = t;
            this.batch = batch;
            this.targets = targets;
        }

        /** The mean loss (summed in double on the host) of a forward with {@code hooks}. */
        double loss(Hooks hooks) {
            try (Scope s = new Scope(cpu)) {
                Transformer.Forward f = t.forward(s, batch, hooks);
                float[] l = Loss.of(s, f.logits, targets).losses().toFloatArray();
                double sum = 0;
                for (float x : l) sum += x;
                return sum / targets.count();
            }
        }

        double lossWithParam(Tensor p, float[] v, float h) {
            try (Scope s = new Scope(cpu)) {
                Tensor saved = s.copyOf(p), dv = s.fromArray(v, p.shape());
                cpu.axpy(p.buffer(), p.offset(), h, dv.buffer(), dv.offset(), p.numel());
                try {
                    return loss(Hooks.none());
                } finally {
                    p.copyFrom(saved);
                }
            }
        }

        double lossWithHook(String name, float[] v, float h) {
            try (Scope s = new Scope(cpu)) {
                return loss(new Hooks().add(name, (x, ctx) -> {
                    Tensor dv = s.fromArray(v, x.shape());
                    cpu.axpy(x.buffer(), x.offset(), h, dv.buffer(), dv.offset(), x.numel());
                    return null;
                }));
            }
        }

        /** Central difference at h and h/2, Richardson-extrapolated to O(h^4). */
        static double derivative(float[] v, float h, Perturbed f) {
            double d1 = (f.loss(v, h) - f.loss(v, -h)) / (2.0 * h);
            double d2 = (f.loss(v, h / 2) - f.loss(v, -h / 2)) / (double) h;
            return (4 * d2 - d1) / 3;
        }

        /**
         * Checks {@code <g, v>} for a random direction v whose entries are N(0, s^2) with s = max(rms(x), 0.5):
         * a step moves a variable x of ordinary size by about STEP of its own size, whatever its number of
         * entries (so truncation error stays small), and a small one (biases) by enough to rise above the
         * float32 noise.
         */
        void direction(String what, float[] g, float[] x, Random rnd, Perturbed f) {
            double ss = 0;
            int finite = 0;
            for (float xi : x) if (Float.isFinite(xi)) { ss += (double) xi * xi; finite++; }
            double rms = Math.max(0.5, finite == 0 ? 0 : Math.sqrt(ss / finite));
            float[] v = new float[g.length];
            for (int i = 0; i < v.length; i++) v[i] = (float) (rms * rnd.nextGaussian());
            double analytic = 0, wrong = 0;
            for (int i = 0; i < g.length; i++) {
                analytic += (double) g[i] * v[i];
                wrong += (rnd.nextBoolean() ? -1.0 : 1.0) * g[i] * v[i];
            }
            double numeric = derivative(v, STEP, f);
            double err = Math.abs(numeric - analytic), tol = DIR_TOL * Math.abs(numeric) + NOISE;
            if (Math.abs(numeric) > 50 * NOISE) worstDir = Math.max(worstDir, err / Math.abs(numeric));
            worstOfTol = Math.max(worstOfTol, err / tol);
            if (err > tol)
                fail(what + ": directional derivative " + analytic + ", finite difference " + numeric + " (|diff| " + err + ")");
            if (Math.abs(numeric) > 50 * NOISE) {
                checks++;
                if (Math.abs(numeric - wrong) > DIR_TOL * Math.abs(numeric) + NOISE) caught++;
            }
        }

        void entry(String what, float[] g, Perturbed f) {
            int k = 0;
            for (int i = 1; i < g.length; i++) if (Math.abs(g[i]) > Math.abs(g[k])) k = i;
            float[] v = new float[g.length];
            v[k] = 1f;
            double numeric = derivative(v, STEP, f);
            double err = Math.abs(numeric - g[k]), tol = ENTRY_TOL * Math.abs(numeric) + NOISE;
            if (Math.abs(numeric) > 50 * NOISE) worstEntry = Math.max(worstEntry, err / Math.abs(numeric));
            worstOfTol = Math.max(worstOfTol, err / tol);
            if (err > tol)
                fail(what + "[" + k + "]: gradient " + g[k] + ", finite difference " + numeric + " (|diff| " + err + ")");
        }
    }
}
