package loupe.kernels.cuda;

import loupe.LoupeException;
import loupe.kernels.Backend;
import loupe.kernels.Buffer;
import loupe.kernels.cpu.CpuBackend;

import java.io.PrintStream;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Random;
import java.util.stream.Collectors;

/**
 * Runs every CUDA kernel on random inputs against the CPU backend and reports the worst relative error
 * {@code max|out - ref| / max|ref|} per kernel (tolerance 1e-5, reductions 1e-4). The sizes are odd,
 * not multiples of the block, and above one block (the emulator caps grid-stride grids at 8 blocks,
 * so stride loops run too). Backward ops start from random gradients, to check that they accumulate.
 * Used by the tests and by {@code loupe kernels --check}.
 */
public final class KernelCheck {
    static final double TOL = 1e-5, TOL_REDUCTION = 1e-4;

    private KernelCheck() {}

    /** One kernel's (or kernel group's) outcome. */
    public record Result(String kernels, int kernelCount, String sizes, double worst, double tolerance, String failure) {
        public boolean passed() {
            return failure == null && worst <= tolerance;
        }
    }

    /**
     * Runs the check on {@code device} ("emulated": the CPU execution harness; "cuda": GPU 0), printing
     * one line per kernel and a summary line; returns the number of failed kernels.
     */
    public static int run(String device, PrintStream out) {
        CudaBackend dev;
        try {
            dev = switch (device) {
                case "emulated" -> Device.emulated();
                case "cuda" -> Device.cuda(0);
                default -> throw new LoupeException("unknown device '" + device + "': use emulated or cuda");
            };
        } catch (LoupeException e) {
            out.println("cannot open the " + device + " device: " + e.getMessage());
            return 1;
        }
        try (dev; CpuBackend ref = new CpuBackend(Math.min(4, Runtime.getRuntime().availableProcessors()))) {
            out.println("kernel check on " + dev + " against " + ref.name());
            List<Result> results = check(dev, ref, 20240601L);
            // one line per case; the summary counts distinct kernels (a kernel fails if any of its lines fails)
            java.util.Map<String, Boolean> kernels = new java.util.LinkedHashMap<>();
            for (Result r : results) {
                for (String k : r.kernels().split("\\+")) kernels.merge(k.replaceAll(" \\(.*\\)$", ""), r.passed(), Boolean::logicalAnd);
                out.println(format(r));
            }
            int failedKernels = (int) kernels.values().stream().filter(ok -> !ok).count();
            out.println(kernels.size() + " kernels, " + (kernels.size() - failedKernels) + " passed, " + failedKernels + " failed");
            return failedKernels;
        }
    }

    static String format(Result r) {
        String err = r.failure() != null ? "FAILED: " + r.failure()
                : String.format("worst rel err %.2e (tol %.0e) %s", r.worst(), r.tolerance(), r.passed() ? "ok" : "FAILED");
        return String.format("%-48s sizes %-58s %s", r.kernels(), r.sizes(), err);
    }

    /** Runs every case; under the emulator also reports each kernel of the library that no case ran. */
    public static List<Result> check(Backend dev, Backend ref, long seed) {
        List<Result> results = new ArrayList<>();
        for (Case c : cases()) results.add(c.run(dev, ref, seed));
        if (dev instanceof CudaBackend cb && cb.runtime() instanceof EmulatedRuntime emu) {
            for (EmulatedRuntime.KernelStats k : emu.kernelStats())
                if (k.launches() == 0) results.add(new Result(k.name(), 1, "-", Double.NaN, TOL, "never launched by any check case"));
        }
        return results;
    }

    // ------------------------------------------------------------------ cases

    @FunctionalInterface
    interface Body {
        /** Runs one size; returns the worst relative error over the outputs compared. */
        double run(Ctx c, int[] size);
    }

    record Case(String kernels, double tolerance, int[][] sizes, Body body) {
        int kernelCount() {
            return kernels.split("\\+").length;
        }

        Result run(Backend dev, Backend ref, long seed) {
            double worst = 0;
            String sizeText = Arrays.stream(sizes).map(s -> Arrays.stream(s).mapToObj(Integer::toString)
                    .collect(Collectors.joining("x"))).collect(Collectors.joining(" "));
            for (int[] s : sizes) {
                try (Ctx c = new Ctx(dev, ref, new Random(seed ^ Arrays.hashCode(s) ^ kernels.hashCode()))) {
                    double e = body.run(c, s);
                    worst = Double.isNaN(e) ? Double.POSITIVE_INFINITY : Math.max(worst, e);
                } catch (RuntimeException e) {
                    return new Result(kernels, kernelCount(), sizeText, worst, tolerance,
                            "size " + Arrays.toString(s) + ": " + e.getMessage());
                }
            }
            return new Result(kernels, kernelCount(), sizeText, worst, tolerance, null);
        }
    }

    static List<Case> cases() {
        List<Case> l = new ArrayList<>();
        int[][] lengths = {{1}, {37}, {300}, {5003}};
        int[][] matrices = {{1, 1}, {3, 33}, {7, 300}, {2, 1500}, {130, 5}};

        l.add(new Case("cublasSgemm+cublasSgemmStridedBatched (gemm)", TOL_REDUCTION, new int[][]{
                {1, 1, 1, 1, 0, 0}, {5, 7, 3, 1, 0, 0}, {17, 9, 33, 1, 1, 0}, {8, 20, 13, 1, 0, 1}, {6, 11, 7, 3, 1, 1},
                {4, 5, 0, 2, 0, 0}, {16, 16, 64, 4, 0, 1}}, (c, s) -> {
            int m = s[0], n = s[1], k = s[2], batch = s[3];
            boolean ta = s[4] == 1, tb = s[5] == 1;
            int lda = (ta ? m : k) + 2, ldb = (tb ? k : n) + 1, ldc = n + 3;   // padded row strides
            long sa = (long) (ta ? k : m) * lda + 5, sb = (long) (tb ? n : k) * ldb + 1, sc = (long) m * ldc + 2;
            Twin a = c.rand(sa * batch + 4), b = c.rand(sb * batch + 3), cc = c.rand(sc * batch + 1);
            float beta = batch == 3 ? 0f : 0.5f;
            if (beta == 0f) c.nanFill(cc, sc * batch + 1);  // beta == 0: C must not be read
            c.both((be, t) -> be.gemm(ta, tb, m, n, k, 1.25f, t.a(a), 2, lda, sa, t.a(b), 1, ldb, sb, beta, t.a(cc), 1, ldc, sc, batch));
            return c.err(cc);
        }));
        l.add(new Case("fill", TOL, lengths, (c, s) -> {
            Twin x = c.rand(s[0] + 2);
            c.both((be, t) -> be.fill(t.a(x), 1, s[0], -2.5f));
            return c.err(x);
        }));
        l.add(new Case("add", TOL, lengths, (c, s) -> {
            Twin a = c.rand(s[0]), b = c.rand(s[0] + 1), o = c.out(s[0]);
            c.both((be, t) -> be.add(t.a(o), 0, t.a(a), 0, t.a(b), 1, s[0]));
            c.both((be, t) -> be.add(t.a(a), 0, t.a(a), 0, t.a(b), 0, s[0]));  // out aliases a
            return Math.max(c.err(o), c.err(a));
        }));
        l.add(new Case("mul", TOL, lengths, (c, s) -> {
            Twin a = c.rand(s[0]), b = c.rand(s[0]), o = c.out(s[0]);
            c.both((be, t) -> be.mul(t.a(o), 0, t.a(a), 0, t.a(b), 0, s[0]));
            c.both((be, t) -> be.mul(t.a(b), 0, t.a(a), 0, t.a(b), 0, s[0]));  // out aliases b
            return Math.max(c.err(o), c.err(b));
        }));
        l.add(new Case("axpy", TOL, lengths, (c, s) -> {
            Twin y = c.rand(s[0]), x = c.rand(s[0]);
            c.both((be, t) -> be.axpy(t.a(y), 0, -0.75f, t.a(x), 0, s[0]));
            return c.err(y);
        }));
        l.add(new Case("scale", TOL, lengths, (c, s) -> {
            Twin x = c.rand(s[0]);
            c.both((be, t) -> be.scale(t.a(x), 0, s[0], 1.5f));
            return c.err(x);
        }));
        l.add(new Case("add_bias", TOL, matrices, (c, s) -> {
            Twin x = c.rand((long) s[0] * s[1]), b = c.rand(s[1]);
            c.both((be, t) -> be.addBias(t.a(x), 0, t.a(b), 0, s[0], s[1]));
            return c.err(x);
        }));
        l.add(new Case("scale_shift_rows", TOL, matrices, (c, s) -> {
            int rows = s[0], cols = s[1];
            Twin x = c.rand((long) rows * cols), w = c.rand(cols), b = c.rand(cols), o1 = c.out((long) rows * cols),
                    o2 = c.out((long) rows * cols);
            c.both((be, t) -> be.scaleShiftRows(t.a(o1), 0, t.a(x), 0, t.a(w), 0, t.a(b), 0, rows, cols));
            c.both((be, t) -> be.scaleShiftRows(t.a(o2), 0, t.a(x), 0, null, 0, t.a(b), 0, rows, cols));
            return Math.max(c.err(o1), c.err(o2));
        }));
        l.add(new Case("bias_backward", TOL_REDUCTION, new int[][]{{1, 1}, {3, 33}, {70, 45}, {200, 7}, {1100, 3}}, (c, s) -> {
            Twin d = c.rand(s[1]), g = c.rand((long) s[0] * s[1]);
            c.both((be, t) -> be.biasBackward(t.a(d), 0, t.a(g), 0, s[0], s[1]));
            return c.err(d);
        }));
        l.add(new Case("copy_strided", TOL, new int[][]{{1, 1, 1, 1}, {2, 5, 3, 7}, {3, 4, 2, 33}, {1, 1, 9, 300}}, (c, s) -> {
            // src is a [b, p, h, d] tensor; copy its transpose into dst [b, h, p, d] (a hook's head view), then accumulate back
            int b = s[0], p = s[1], h = s[2], d = s[3];
            long n = (long) b * p * h * d;
            Twin src = c.rand(n + 3), dst = c.rand(n + 1), back = c.rand(n + 3);
            long[] srcStr = {(long) p * h * d, (long) h * d, d, 1}, dstStr = {(long) h * p * d, d, (long) p * d, 1};
            int[] shape = {b, p, h, d};
            c.both((be, t) -> be.copyStrided(t.a(dst), 1, dstStr, t.a(src), 3, srcStr, shape, false));
            c.both((be, t) -> be.copyStrided(t.a(back), 3, srcStr, t.a(dst), 1, dstStr, shape, true));
            return Math.max(c.err(dst), c.err(back));
        }));
        for (boolean tanh : new boolean[]{true, false}) {
            String name = tanh ? " (tanh)" : " (erf)";
            l.add(new Case("gelu_forward" + name, TOL, lengths, (c, s) -> {
                Twin x = c.rand(s[0], -5, 5), o = c.out(s[0]);
                c.both((be, t) -> be.gelu(t.a(o), 0, t.a(x), 0, s[0], tanh));
                return c.err(o);
            }));
            l.add(new Case("gelu_backward" + name, TOL, lengths, (c, s) -> {
                Twin x = c.rand(s[0], -5, 5), g = c.rand(s[0]), dx = c.rand(s[0]);
                c.both((be, t) -> be.geluBackward(t.a(dx), 0, t.a(x), 0, t.a(g), 0, s[0], tanh));
                return c.err(dx);
            }));
        }
        for (boolean tanh : new boolean[]{true, false}) {
            l.add(new Case("add_bias_gelu_forward" + (tanh ? " (tanh)" : " (erf)"), TOL, matrices, (c, s) -> {
                int rows = s[0], cols = s[1];
                long n = (long) rows * cols;
                // a lone element deep in the negative tail has |gelu| ~ 1e-6, where erf's absolute accuracy (~1e-7)
                // is no 1e-5 relative one: the 1x1 size stays above -2
                float lo = n == 1 ? -1 : -5;
                Twin pre = c.rand(n + 3, lo, 5), pre2 = c.rand(n, lo, 5), b = c.rand(cols + 1), post = c.rand(n + 2);
                c.both((be, t) -> be.addBiasGelu(t.a(pre), 3, t.a(post), 2, t.a(b), 1, rows, cols, tanh));
                c.both((be, t) -> be.addBiasGelu(t.a(pre2), 0, t.a(pre2), 0, t.a(b), 0, rows, cols, tanh)); // post aliases pre
                return Math.max(Math.max(c.err(pre), c.err(post)), c.err(pre2));
            }));
        }
        l.add(new Case("silu_forward", TOL, lengths, (c, s) -> {
            Twin x = c.rand(s[0], -8, 8), o = c.out(s[0]);
            c.both((be, t) -> be.silu(t.a(o), 0, t.a(x), 0, s[0]));
            return c.err(o);
        }));
        l.add(new Case("silu_backward", TOL, lengths, (c, s) -> {
            Twin x = c.rand(s[0], -8, 8), g = c.rand(s[0]), dx = c.rand(s[0]);
            c.both((be, t) -> be.siluBackward(t.a(dx), 0, t.a(x), 0, t.a(g), 0, s[0]));
            return c.err(dx);
        }));
        l.add(new Case("relu_forward", TOL, lengths, (c, s) -> {
            Twin x = c.rand(s[0]), o = c.out(s[0]);
            c.both((be, t) -> be.relu(t.a(o), 0, t.a(x), 0, s[0]));
            return c.err(o);
        }));
        l.add(new Case("relu_backward", TOL, lengths, (c, s) -> {
            Twin x = c.rand(s[0]), g = c.rand(s[0]), dx = c.rand(s[0]);
            c.both((be, t) -> be.reluBackward(t.a(dx), 0, t.a(x), 0, t.a(g), 0, s[0]));
            return c.err(dx);
        }));
        int[][] embeddings = {{1, 1, 1}, {5, 33, 7}, {40, 70, 11}, {9, 300, 4}};  // n, cols, vocab
        l.add(new Case("gather_rows", TOL, embeddings, (c, s) -> {
            int n = s[0], cols = s[1], vocab = s[2];
            Twin table = c.rand((long) vocab * cols), ids = c.ids(n, vocab), o = c.out((long) n * cols);
            c.both((be, t) -> be.gatherRows(t.a(o), 0, t.a(table), 0, t.a(ids), 0, n, cols));
            return c.err(o);
        }));
        l.add(new Case("scatter_add_rows", TOL, embeddings, (c, s) -> {
            int n = s[0], cols = s[1], vocab = s[2];   // n > vocab: ids repeat, rows collide
            Twin table = c.rand((long) vocab * cols), ids = c.ids(n, vocab), g = c.rand((long) n * cols);
            c.both((be, t) -> be.scatterAddRows(t.a(table), 0, t.a(ids), 0, t.a(g), 0, n, cols));
            return c.err(table);
        }));
        l.add(new Case("layernorm_forward", TOL, matrices, (c, s) -> {
            int rows = s[0], cols = s[1];
            long n = (long) rows * cols;
            Twin x = c.rand(n, -3, 5), w = c.rand(cols), b = c.rand(cols), o = c.out(n), norm = c.out(n), sc = c.out(rows),
                    o2 = c.out(n);
            c.both((be, t) -> be.layerNorm(t.a(o), 0, t.a(norm), 0, t.a(sc), 0, t.a(x), 0, t.a(w), 0, t.a(b), 0, rows, cols, 1e-5f));
            c.both((be, t) -> be.layerNorm(t.a(o2), 0, null, 0, null, 0, t.a(x), 0, null, 0, null, 0, rows, cols, 1e-5f));
            return Math.max(Math.max(c.err(o), c.err(norm)), Math.max(c.err(sc), c.err(o2)));
        }));
        l.add(new Case("add_layernorm_forward", TOL, matrices, (c, s) -> {
            int rows = s[0], cols = s[1];
            long n = (long) rows * cols;
            Twin a = c.rand(n + 1, -3, 5), b = c.rand(n + 2), w = c.rand(cols), bi = c.rand(cols), sum = c.out(n),
                    o = c.out(n), norm = c.out(n), sc = c.rand(rows + 1), o2 = c.out(n), o3 = c.out(n), sc3 = c.out(rows);
            // every output, weight and bias, at offsets
            c.both((be, t) -> be.addNorm(t.a(sum), 0, t.a(a), 1, t.a(b), 2, t.a(o), 0, t.a(norm), 0, t.a(sc), 1,
                    t.a(w), 0, t.a(bi), 0, rows, cols, 1e-5f, false));
            // no weight or bias, only out
            c.both((be, t) -> be.addNorm(t.a(sum), 0, t.a(a), 1, t.a(b), 2, t.a(o2), 0, null, 0, null, 0,
                    null, 0, null, 0, rows, cols, 1e-5f, false));
            // sum aliases a (the residual stream updated in place), out aliases normalized, bias only
            c.both((be, t) -> be.addNorm(t.a(a), 1, t.a(a), 1, t.a(b), 2, t.a(o3), 0, t.a(o3), 0, t.a(sc3), 0,
                    null, 0, t.a(bi), 0, rows, cols, 1e-5f, false));
            return Math.max(Math.max(Math.max(c.err(sum), c.err(o)), Math.max(c.err(norm), c.err(sc))),
                    Math.max(Math.max(c.err(o2), c.err(a)), Math.max(c.err(o3), c.err(sc3))));
        }));
        l.add(new Case("layernorm_backward", TOL, matrices, (c, s) -> {
            int rows = s[0], cols = s[1];
            long n = (long) rows * cols;
            Twin[] saved = c.normalized(rows, cols, true);
            Twin w = c.rand(cols), g = c.rand(n), dx = c.rand(n), dx2 = c.rand(n);
            c.both((be, t) -> be.layerNormBackward(t.a(dx), 0, null, 0, null, 0, t.a(g), 0, t.a(saved[0]), 0, t.a(saved[1]), 0,
                    t.a(w), 0, rows, cols));
            c.both((be, t) -> be.layerNormBackward(t.a(dx2), 0, null, 0, null, 0, t.a(g), 0, t.a(saved[0]), 0, t.a(saved[1]), 0,
                    null, 0, rows, cols));
            return Math.max(c.err(dx), c.err(dx2));
        }));
        l.add(new Case("norm_params_backward", TOL_REDUCTION, new int[][]{{1, 1}, {3, 33}, {70, 45}, {200, 7}, {1100, 3}}, (c, s) -> {
            int rows = s[0], cols = s[1];
            long n = (long) rows * cols;
            Twin[] saved = c.normalized(rows, cols, true);
            Twin w = c.rand(cols), g = c.rand(n), dx = c.rand(n), dw = c.rand(cols), db = c.rand(cols), dw2 = c.rand(cols);
            c.both((be, t) -> be.layerNormBackward(t.a(dx), 0, t.a(dw), 0, t.a(db), 0, t.a(g), 0, t.a(saved[0]), 0, t.a(saved[1]), 0,
                    t.a(w), 0, rows, cols));
            c.both((be, t) -> be.rmsNormBackward(t.a(dx), 0, t.a(dw2), 0, t.a(g), 0, t.a(saved[0]), 0, t.a(saved[1]), 0,
                    t.a(w), 0, rows, cols));
            return Math.max(Math.max(c.err(dw), c.err(db)), c.err(dw2));
        }));
        l.add(new Case("rmsnorm_forward", TOL, matrices, (c, s) -> {
            int rows = s[0], cols = s[1];
            long n = (long) rows * cols;
            Twin x = c.rand(n, -3, 5), w = c.rand(cols), o = c.out(n), norm = c.out(n), sc = c.out(rows), o2 = c.out(n);
            c.both((be, t) -> be.rmsNorm(t.a(o), 0, t.a(norm), 0, t.a(sc), 0, t.a(x), 0, t.a(w), 0, rows, cols, 1e-6f));
            c.both((be, t) -> be.rmsNorm(t.a(o2), 0, t.a(o2), 0, null, 0, t.a(x), 0, null, 0, rows, cols, 1e-6f)); // out aliases normalized
            return Math.max(Math.max(c.err(o), c.err(norm)), Math.max(c.err(sc), c.err(o2)));
        }));
        l.add(new Case("add_rmsnorm_forward", TOL, matrices, (c, s) -> {
            int rows = s[0], cols = s[1];
            long n = (long) rows * cols;
            Twin a = c.rand(n, -3, 5), b = c.rand(n + 1), w = c.rand(cols + 2), sum = c.rand(n + 1),
                    o = c.out(n), norm = c.out(n), sc = c.out(rows), o2 = c.out(n), sc2 = c.out(rows);
            c.both((be, t) -> be.addNorm(t.a(sum), 1, t.a(a), 0, t.a(b), 1, t.a(o), 0, t.a(norm), 0, t.a(sc), 0,
                    t.a(w), 2, null, 0, rows, cols, 1e-6f, true));
            // sum aliases a, no weight, out aliases normalized
            c.both((be, t) -> be.addNorm(t.a(a), 0, t.a(a), 0, t.a(b), 1, t.a(o2), 0, t.a(o2), 0, t.a(sc2), 0,
                    null, 0, null, 0, rows, cols, 1e-6f, true));
            return Math.max(Math.max(Math.max(c.err(sum), c.err(o)), Math.max(c.err(norm), c.err(sc))),
                    Math.max(c.err(a), Math.max(c.err(o2), c.err(sc2))));
        }));
        l.add(new Case("rmsnorm_backward", TOL, matrices, (c, s) -> {
            int rows = s[0], cols = s[1];
            long n = (long) rows * cols;
            Twin[] saved = c.normalized(rows, cols, false);
            Twin w = c.rand(cols), g = c.rand(n), dx = c.rand(n);
            c.both((be, t) -> be.rmsNormBackward(t.a(dx), 0, null, 0, t.a(g), 0, t.a(saved[0]), 0, t.a(saved[1]), 0, t.a(w), 0, rows, cols));
            return c.err(dx);
        }));
        // tokens, heads, headDim, rotaryDim, interleaved, inverse, max position
        l.add(new Case("rope", TOL, new int[][]{{1, 1, 2, 2, 0, 0, 1}, {5, 3, 16, 16, 1, 0, 40}, {7, 2, 64, 32, 0, 1, 4000},
                {33, 4, 10, 6, 1, 1, 2048}, {3, 1, 12, 0, 0, 0, 9}}, (c, s) -> {
            int tokens = s[0], heads = s[1], hd = s[2], rd = s[3];
            boolean inter = s[4] == 1, inv = s[5] == 1;
            long n = (long) tokens * heads * hd;
            Twin x = c.rand(n), o = c.out(n), pos = c.ids(tokens, s[6] + 1), freq = c.invFreq(rd / 2);
            c.both((be, t) -> be.rope(t.a(o), 0, t.a(x), 0, t.a(pos), 0, t.a(freq), 0, tokens, heads, hd, rd, inter, inv));
            c.both((be, t) -> be.rope(t.a(x), 0, t.a(x), 0, t.a(pos), 0, t.a(freq), 0, tokens, heads, hd, rd, !inter, !inv)); // in place
            return Math.max(c.err(o), c.err(x));
        }));
        // batch, heads, tq, tk, qStart, with keyValid, sliding window (0: none)
        l.add(new Case("attention_softmax", TOL, new int[][]{{1, 1, 1, 1, 0, 0, 0}, {2, 3, 5, 7, 2, 0, 0}, {2, 2, 9, 40, 31, 1, 0},
                {1, 2, 3, 70, 0, 1, 0}, {3, 1, 11, 11, 0, 0, 0}, {1, 1, 2, 5, 9, 0, 0}, {2, 3, 13, 13, 0, 0, 4},
                {2, 2, 9, 40, 31, 1, 7}, {1, 1, 6, 6, 0, 0, 1}}, (c, s) -> {
            int b = s[0], h = s[1], tq = s[2], tk = s[3], q0 = s[4], win = s[6];
            long n = (long) b * h * tq * tk;
            Twin scores = c.rand(n, -6, 6), pattern = c.out(n);
            Twin valid = s[5] == 1 ? c.keyValid(b, tk) : null;
            c.both((be, t) -> be.attentionSoftmax(t.a(scores), 0, t.a(pattern), 0, t.a(valid), 0, b, h, tq, tk, q0, win));
            return Math.max(c.err(scores), c.err(pattern));
        }));
        l.add(new Case("softmax_backward", TOL, new int[][]{{1, 1}, {7, 9}, {40, 33}, {3, 300}}, (c, s) -> {
            int rows = s[0], n = s[1];
            Twin p = c.pattern(rows, n), dp = c.rand((long) rows * n), ds = c.rand((long) rows * n);
            c.both((be, t) -> be.softmaxBackward(t.a(ds), 0, t.a(dp), 0, t.a(p), 0, rows, n));
            return c.err(ds);
        }));
        int[][] vocabRows = {{1, 1}, {3, 50}, {5, 1000}, {2, 3001}};
        l.add(new Case("cross_entropy_forward", TOL_REDUCTION, vocabRows, (c, s) -> {
            int rows = s[0], vocab = s[1];
            Twin logits = c.rand((long) rows * vocab, -8, 8), targets = c.targets(rows, vocab), loss = c.out(rows);
            c.both((be, t) -> be.crossEntropy(t.a(loss), 0, t.a(logits), 0, t.a(targets), 0, rows, vocab));
            return c.err(loss);
        }));
        l.add(new Case("cross_entropy_backward", TOL, vocabRows, (c, s) -> {
            int rows = s[0], vocab = s[1];
            Twin logits = c.rand((long) rows * vocab, -8, 8), targets = c.targets(rows, vocab), w = c.rand(rows, 0, 1),
                    d = c.rand((long) rows * vocab, -1e-3f, 1e-3f);
            c.both((be, t) -> be.crossEntropyBackward(t.a(d), 0, t.a(logits), 0, t.a(targets), 0, t.a(w), 0, rows, vocab));
            return c.err(d);
        }));
        l.add(new Case("sum_squares_partial+sum_squares_final", TOL_REDUCTION, new int[][]{{1}, {255}, {2049}, {70001}}, (c, s) -> {
            Twin x = c.rand(s[0] + 1), out = c.rand(3);
            c.both((be, t) -> be.sumSquares(t.a(out), 1, t.a(x), 1, s[0]));
            return c.err(out);
        }));
        l.add(new Case("adamw", TOL, lengths, (c, s) -> {
            int n = s[0];
            Twin p = c.rand(n), g = c.rand(n), m = c.rand(n, -0.1f, 0.1f), v = c.rand(n, 0, 0.01f);
            c.both((be, t) -> be.adamw(t.a(p), 0, t.a(g), 0, t.a(m), 0, t.a(v), 0, n, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 3, 0.7f));
            return Math.max(Math.max(c.err(p), c.err(m)), c.err(v));
        }));
        return l;
    }

    // ------------------------------------------------------------------ test data on both backends

    /** A buffer on the device backend and one with the same contents on the reference backend. */
    record Twin(Buffer dev, Buffer ref, long count) {}

    @FunctionalInterface
    interface Side {
        /** Picks a twin's buffer on one side (null for a null twin). */
        Buffer a(Twin t);
    }

    @FunctionalInterface
    interface Op {
        void run(Backend backend, Side side);
    }

    static final class Ctx implements AutoCloseable {
        final Backend dev, ref;
        final Random rnd;
        private final List<Buffer> buffers = new ArrayList<>();

        Ctx(Backend dev, Backend ref, Random rnd) {
            this.dev = dev;
            this.ref = ref;
            this.rnd = rnd;
        }

        /** Runs an op on both backends. */
        void both(Op op) {
            op.run(dev, t -> t == null ? null : t.dev());
            op.run(ref, t -> t == null ? null : t.ref());
        }

        Twin floats(float[] v) {
            return twin(MemorySegment.ofArray(v), v.length);
        }

        Twin ints(int[] v) {
            return twin(MemorySegment.ofArray(v), v.length);
        }

        private Twin twin(MemorySegment data, long count) {
            Buffer d = dev.allocate(count * 4), r = ref.allocate(count * 4);
            buffers.add(d);
            buffers.add(r);
            dev.upload(data, d, 0, count * 4);
            ref.upload(data, r, 0, count * 4);
            return new Twin(d, r, count);
        }

        /** An output the op overwrites entirely: uninitialized on the device (NaN under the emulator), zeros on the reference. */
        Twin out(long n) {
            Buffer d = dev.allocateUninitialized(n * 4), r = ref.allocate(n * 4);
            buffers.add(d);
            buffers.add(r);
            return new Twin(d, r, n);
        }

        Twin rand(long n) {
            return rand(n, -1, 1);
        }

        Twin rand(long n, float lo, float hi) {
            float[] v = new float[Math.toIntExact(n)];
            for (int i = 0; i < v.length; i++) v[i] = lo + (hi - lo) * rnd.nextFloat();
            return floats(v);
        }

        void nanFill(Twin t, long n) {
            float[] v = new float[Math.toIntExact(n)];
            Arrays.fill(v, Float.NaN);
            dev.upload(MemorySegment.ofArray(v), t.dev(), 0, n * 4);
            ref.upload(MemorySegment.ofArray(v), t.ref(), 0, n * 4);
        }

        /** Uniform ids in [0, bound). */
        Twin ids(int n, int bound) {
            int[] v = new int[n];
            for (int i = 0; i < n; i++) v[i] = rnd.nextInt(bound);
            return ints(v);
        }

        /** Targets in range, with every third one negative (ignored). */
        Twin targets(int rows, int vocab) {
            int[] v = new int[rows];
            for (int i = 0; i < rows; i++) v[i] = i % 3 == 2 ? -1 : rnd.nextInt(vocab);
            return ints(v);
        }

        /** Key-validity flags with some padding, and the first batch row fully masked. */
        Twin keyValid(int batch, int tk) {
            int[] v = new int[batch * tk];
            for (int b = 0; b < batch; b++)
                for (int j = 0; j < tk; j++) v[b * tk + j] = b == 0 ? 0 : (rnd.nextInt(4) == 0 ? 0 : 1);
            return ints(v);
        }

        /** Rotary inverse frequencies 10000^(-2i/d). */
        Twin invFreq(int half) {
            float[] v = new float[half];
            for (int i = 0; i < half; i++) v[i] = (float) Math.pow(10000, -2.0 * i / Math.max(1, 2 * half));
            return floats(v);
        }

        /** Softmax rows with some exact zeros (masked entries). */
        Twin pattern(int rows, int n) {
            float[] v = new float[rows * n];
            for (int r = 0; r < rows; r++) {
                double sum = 0;
                for (int j = 0; j < n; j++) {
                    v[r * n + j] = j > 0 && rnd.nextInt(3) == 0 ? 0f : rnd.nextFloat();
                    sum += v[r * n + j];
                }
                for (int j = 0; j < n; j++) v[r * n + j] = (float) (v[r * n + j] / sum);
            }
            return floats(v);
        }

        /** The saved {normalized, scale} of a norm forward on random x (computed by the reference). */
        Twin[] normalized(int rows, int cols, boolean center) {
            long n = (long) rows * cols;
            Twin x = rand(n, -2, 3), norm = rand(n), scale = rand(rows);
            if (center) ref.layerNorm(null, 0, norm.ref(), 0, scale.ref(), 0, x.ref(), 0, null, 0, null, 0, rows, cols, 1e-5f);
            else ref.rmsNorm(null, 0, norm.ref(), 0, scale.ref(), 0, x.ref(), 0, null, 0, rows, cols, 1e-5f);
            copyRefToDev(norm);
            copyRefToDev(scale);
            return new Twin[]{norm, scale};
        }

        private void copyRefToDev(Twin t) {
            try (Arena a = Arena.ofConfined()) {
                MemorySegment s = a.allocate(t.count() * 4);
                ref.download(t.ref(), 0, s, t.count() * 4);
                dev.upload(s, t.dev(), 0, t.count() * 4);
            }
        }

        /** max|dev - ref| / max|ref| over the twin's elements; infinities and NaNs must match exactly. */
        double err(Twin t) {
            float[] got = new float[Math.toIntExact(t.count())], want = new float[got.length];
            dev.download(t.dev(), 0, MemorySegment.ofArray(got), t.count() * 4);
            ref.download(t.ref(), 0, MemorySegment.ofArray(want), t.count() * 4);
            return relativeError(got, want);
        }

        @Override
        public void close() {
            for (Buffer b : buffers) b.close();
        }
    }

    /** max|got - want| / max|want| (the absolute error when want is all zeros); +inf when a non-finite value differs. */
    public static double relativeError(float[] got, float[] want) {
        double maxRef = 0, maxDiff = 0;
        for (int i = 0; i < want.length; i++) {
            if (!Float.isFinite(want[i]) || !Float.isFinite(got[i])) {
                if (Float.compare(got[i], want[i]) != 0) return Double.POSITIVE_INFINITY;
                continue;
            }
            maxRef = Math.max(maxRef, Math.abs(want[i]));
            maxDiff = Math.max(maxDiff, Math.abs((double) got[i] - want[i]));
        }
        return maxRef == 0 ? maxDiff : maxDiff / maxRef;
    }
}
