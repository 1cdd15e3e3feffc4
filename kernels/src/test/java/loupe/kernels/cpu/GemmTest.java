package loupe.kernels.cpu;

import loupe.kernels.Buffer;
import org.junit.jupiter.api.Test;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.SplittableRandom;

import static org.junit.jupiter.api.Assertions.assertEquals;

/** The CPU GEMM (BLAS GEMM, the single-row GEMV path, and the Java fallback) against a naive loop. */
class GemmTest {
    static float[] random(SplittableRandom r, int n) {
        float[] a = new float[n];
        for (int i = 0; i < n; i++) a[i] = (float) (r.nextDouble() * 2 - 1);
        return a;
    }

    static Buffer upload(CpuBackend be, float[] v) {
        Buffer b = be.allocate(v.length * 4L);
        try (Arena a = Arena.ofConfined()) {
            be.upload(a.allocateFrom(ValueLayout.JAVA_FLOAT, v), b, 0, v.length * 4L);
        }
        return b;
    }

    @Test
    void everyTransposeAndRowCount() {
        SplittableRandom r = new SplittableRandom(1);
        for (String blas : new String[]{null, "java"}) {
            if (blas != null) System.setProperty("loupe.blas", blas);
            try (CpuBackend be = new CpuBackend(2)) {
                for (int m : new int[]{1, 3, 17})
                    for (boolean ta : new boolean[]{false, true})
                        for (boolean tb : new boolean[]{false, true}) {
                            int n = 13, k = 29;
                            float[] a = random(r, m * k), b = random(r, k * n), c = random(r, m * n);
                            Buffer ba = upload(be, a), bb = upload(be, b), bc = upload(be, c);
                            float alpha = 0.7f, beta = 0.3f;
                            be.gemm(ta, tb, m, n, k, alpha, ba, 0, ta ? m : k, 0, bb, 0, tb ? k : n, 0, beta, bc, 0, n, 0, 1);
                            float[] got = new float[m * n];
                            try (Arena ar = Arena.ofConfined()) {
                                MemorySegment s = ar.allocate(m * n * 4L);
                                be.download(bc, 0, s, m * n * 4L);
                                got = s.toArray(ValueLayout.JAVA_FLOAT);
                            }
                            for (int i = 0; i < m; i++)
                                for (int j = 0; j < n; j++) {
                                    double acc = 0;
                                    for (int p = 0; p < k; p++)
                                        acc += (double) (ta ? a[p * m + i] : a[i * k + p]) * (tb ? b[j * k + p] : b[p * n + j]);
                                    double want = alpha * acc + beta * c[i * n + j];
                                    assertEquals(want, got[i * n + j], 1e-4, "m " + m + " ta " + ta + " tb " + tb + " blas " + be.gemmLibrary());
                                }
                            ba.close();
                            bb.close();
                            bc.close();
                        }
            } finally {
                System.clearProperty("loupe.blas");
            }
        }
    }

    static float[] download(CpuBackend be, Buffer b, int n) {
        try (Arena ar = Arena.ofConfined()) {
            MemorySegment s = ar.allocate(n * 4L);
            be.download(b, 0, s, n * 4L);
            return s.toArray(ValueLayout.JAVA_FLOAT);
        }
    }

    /**
     * A sequence's rows get the same bits whatever else is in the batch: a strided-batched GEMM against a
     * shared weight (the engine's linear layers) equals the same GEMM run one sequence at a time, bit for
     * bit, for single rows (the skinny path), small shapes (the BLAS's small-matrix path) and large ones
     * (merged into one tall GEMM when that keeps the bits). Also close to a naive loop.
     */
    @Test
    void stackedSequencesGetTheBitsTheyGetAlone() {
        SplittableRandom r = new SplittableRandom(2);
        try (CpuBackend be = new CpuBackend(2)) {
            // {m, n, k, batch}; the 1 x 20483 x 820 weight (67 MB) takes the skinny kernel (groups of 8 rows and single rows)
            int[][] shapes = {{1, 50, 29, 7}, {1, 3000, 768, 7}, {1, 20483, 820, 11}, {3, 13, 29, 7}, {16, 768, 768, 7},
                    {16, 2304, 768, 7}, {16, 768, 3072, 7}, {5, 40, 64, 7}};
            for (int[] sh : shapes) {
                int m = sh[0], n = sh[1], k = sh[2], batch = sh[3];
                float[] a = random(r, batch * m * k), w = random(r, n * k);
                Buffer ba = upload(be, a), bw = upload(be, w), together = be.allocate((long) batch * m * n * 4), alone = be.allocate((long) batch * m * n * 4);
                be.gemm(false, true, m, n, k, 1f, ba, 0, k, (long) m * k, bw, 0, k, 0, 0f, together, 0, n, (long) m * n, batch);
                for (int i = 0; i < batch; i++)
                    be.gemm(false, true, m, n, k, 1f, ba, (long) i * m * k, k, 0, bw, 0, k, 0, 0f, alone, (long) i * m * n, n, 0, 1);
                float[] t = download(be, together, batch * m * n), s = download(be, alone, batch * m * n);
                org.junit.jupiter.api.Assertions.assertArrayEquals(s, t, "m " + m + " n " + n + " k " + k);
                for (int row = 0; row < batch * m; row += 5)
                    for (int j = 0; j < n; j += 7) {
                        double acc = 0;
                        for (int p = 0; p < k; p++) acc += (double) a[row * k + p] * w[j * k + p];
                        assertEquals(acc, t[row * n + j], 1e-4 * Math.sqrt(k), "m " + m + " n " + n + " k " + k);
                    }
                ba.close();
                bw.close();
                together.close();
                alone.close();
            }
        }
    }
}
