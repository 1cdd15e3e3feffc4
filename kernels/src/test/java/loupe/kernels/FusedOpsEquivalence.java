package loupe.kernels;

import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;

/**
 * The contract of the fused ops on any backend: {@link Backend#addBiasGelu} equals {@link Backend#addBias}
 * then {@link Backend#gelu}, and {@link Backend#addNorm} equals {@link Backend#add} then
 * {@link Backend#layerNorm} / {@link Backend#rmsNorm}, bit for bit, on the same backend (so that an
 * engine choosing the fused path changes no number). Used by the CPU and the emulated CUDA tests.
 */
public final class FusedOpsEquivalence implements AutoCloseable {
    private final Backend be;
    private final SplittableRandom rnd;
    private final List<Buffer> buffers = new ArrayList<>();

    public FusedOpsEquivalence(Backend be, long seed) {
        this.be = be;
        this.rnd = new SplittableRandom(seed);
    }

    /** Both tanhApprox values, a separate post and post aliasing pre, with element offsets. */
    public void addBiasGelu(int rows, int cols) {
        int n = rows * cols;
        for (boolean tanh : new boolean[]{true, false}) {
            String what = "addBiasGelu " + rows + "x" + cols + (tanh ? " tanh" : " erf");
            float[] x = random(n + 3, -6, 6), bias = random(cols + 1, -1, 1), postInit = random(n + 2, -1, 1);
            Buffer b = upload(bias);
            Buffer pre1 = upload(x), post1 = upload(postInit), pre2 = upload(x), post2 = upload(postInit), pre3 = upload(x);
            be.addBiasGelu(pre1, 3, post1, 2, b, 1, rows, cols, tanh);
            be.addBias(pre2, 3, b, 1, rows, cols);
            be.gelu(post2, 2, pre2, 3, n, tanh);
            be.addBiasGelu(pre3, 3, pre3, 3, b, 1, rows, cols, tanh);   // post aliases pre
            assertArrayEquals(download(pre2, n + 3), download(pre1, n + 3), what + ": pre");
            float[] post = download(post2, n + 2);
            assertArrayEquals(post, download(post1, n + 2), what + ": post");
            float[] inPlace = download(pre3, n + 3);
            float[] want = new float[n + 3];
            System.arraycopy(x, 0, want, 0, 3);
            System.arraycopy(post, 2, want, 3, n);
            assertArrayEquals(want, inPlace, what + ": post aliasing pre");
        }
    }

    /**
     * Both norms; with and without weight (and bias for LayerNorm); sum separate or aliasing a; out
     * separate, aliasing normalized, or the only output.
     */
    public void addNorm(int rows, int cols) {
        int n = rows * cols;
        for (boolean rms : new boolean[]{false, true})
            for (boolean withWeight : new boolean[]{true, false})
                for (boolean withBias : rms ? new boolean[]{false} : new boolean[]{true, false})
                    for (int layout = 0; layout < 3; layout++) {
                        String what = "addNorm " + rows + "x" + cols + (rms ? " rms" : " layer") + (withWeight ? " weight" : "")
                                + (withBias ? " bias" : "") + switch (layout) {
                                    case 0 -> ", all outputs";
                                    case 1 -> ", sum aliases a, out aliases normalized";
                                    default -> ", out only";
                                };
                        float eps = rms ? 1e-6f : 1e-5f;
                        float[] a = random(n + 1, -3, 5), b = random(n + 2, -2, 2), w = random(cols, -2, 2), bi = random(cols + 1, -1, 1);
                        float[] sumInit = random(n, -1, 1), outInit = random(n, -1, 1), normInit = random(n, -1, 1),
                                scaleInit = random(rows + 1, -1, 1);
                        Buffer bb = upload(b), bw = withWeight ? upload(w) : null, bbi = withBias ? upload(bi) : null;
                        Buffer[] fused = new Buffer[5], plain = new Buffer[5];   // sum, a, out, normalized, scale
                        for (Buffer[] s : new Buffer[][]{fused, plain}) {
                            s[1] = upload(a);
                            s[0] = layout == 1 ? s[1] : upload(sumInit);
                            s[2] = upload(outInit);
                            s[3] = layout == 0 ? upload(normInit) : layout == 1 ? s[2] : null;
                            s[4] = layout == 2 ? null : upload(scaleInit);
                        }
                        long sumOff = layout == 1 ? 1 : 0;
                        be.addNorm(fused[0], sumOff, fused[1], 1, bb, 2, fused[2], 0, fused[3], 0, fused[4], 1,
                                bw, 0, bbi, 1, rows, cols, eps, rms);
                        be.add(plain[0], sumOff, plain[1], 1, bb, 2, n);
                        if (rms) be.rmsNorm(plain[2], 0, plain[3], 0, plain[4], 1, plain[0], sumOff, bw, 0, rows, cols, eps);
                        else be.layerNorm(plain[2], 0, plain[3], 0, plain[4], 1, plain[0], sumOff, bw, 0, bbi, 1, rows, cols, eps);
                        assertArrayEquals(download(plain[0], n + sumOff), download(fused[0], n + sumOff), what + ": sum");
                        assertArrayEquals(download(plain[1], n + 1), download(fused[1], n + 1), what + ": a");
                        assertArrayEquals(download(plain[2], n), download(fused[2], n), what + ": out");
                        if (layout == 0) assertArrayEquals(download(plain[3], n), download(fused[3], n), what + ": normalized");
                        if (layout != 2) assertArrayEquals(download(plain[4], rows + 1), download(fused[4], rows + 1), what + ": scale");
                    }
    }

    private float[] random(int n, float lo, float hi) {
        float[] v = new float[n];
        for (int i = 0; i < n; i++) v[i] = lo + (hi - lo) * (float) rnd.nextDouble();
        return v;
    }

    private Buffer upload(float[] v) {
        Buffer b = be.allocate(v.length * 4L);
        buffers.add(b);
        be.upload(MemorySegment.ofArray(v), b, 0, v.length * 4L);
        return b;
    }

    private float[] download(Buffer b, long n) {
        float[] v = new float[Math.toIntExact(n)];
        be.download(b, 0, MemorySegment.ofArray(v), n * 4);
        return v;
    }

    @Override
    public void close() {
        for (Buffer b : buffers) b.close();
    }
}
