package loupe.kernels.cpu;

import jdk.incubator.vector.FloatVector;
import jdk.incubator.vector.VectorShuffle;
import jdk.incubator.vector.VectorSpecies;

import java.lang.foreign.MemorySegment;
import java.nio.ByteOrder;

import static java.lang.foreign.ValueLayout.JAVA_FLOAT;

/**
 * {@code C[rows, n] = alpha · A[rows, k] · Wᵀ + beta · C} for a few rows against a weight {@code W [n, k]}
 * stored row-major (a linear layer's single-token step, or the last-position unembedding of many
 * sequences): memory-bound, so W is streamed once for all the rows.
 *
 * <p>Why not the BLAS: {@code sgemv} serves one row only (B rows would read W B times), and
 * {@code sgemm} rounds a row differently depending on how many rows it is given. Here every output
 * element is the same dot product whatever the number of rows: vector FMAs over k in order, the lanes
 * summed by a fixed tree, then the scalar tail. So one sequence's logits are bit-identical whether it is
 * unembedded alone or with 191 others (what batched patching sweeps rely on).
 */
final class SkinnyGemm {
    private static final VectorSpecies<Float> S = FloatVector.SPECIES_PREFERRED;
    private static final ByteOrder LE = ByteOrder.nativeOrder();
    /** Rows sharing one pass over W: their A rows stay in L1 while W streams by. */
    private static final int GROUP = 8;

    private SkinnyGemm() {}

    /**
     * Output columns {@code [j0, j1)} of every row; A row r starts at float {@code r * strideA}, C row r at
     * {@code r * strideC}, W row j at {@code j * ldw}. With {@code beta == 0}, C is not read.
     */
    static void columns(MemorySegment a, long strideA, int rows, MemorySegment w, int ldw, int k,
                        float alpha, float beta, MemorySegment c, long strideC, int j0, int j1) {
        // W in blocks of about 256 KB (L2): every group of rows re-reads the block from cache, not memory.
        int block = Math.max(1, (256 << 10) / (4 * Math.max(k, 1)));
        for (int jb = j0; jb < j1; jb += block) {
            int je = Math.min(j1, jb + block);
            int r = 0;
            for (; r + GROUP <= rows; r += GROUP) group8(a, strideA, r, w, ldw, k, alpha, beta, c, strideC, jb, je);
            for (; r < rows; r++) single(a, r * strideA, w, ldw, k, alpha, beta, c, r * strideC, jb, je);
        }
    }

    /** One row: eight W rows at a time, so that eight independent FMA chains keep both FMA units busy. */
    private static void single(MemorySegment a, long aRow, MemorySegment w, int ldw, int k, float alpha, float beta,
                               MemorySegment c, long cRow, int j0, int j1) {
        int vk = S.loopBound(k), L = S.length();
        int j = j0;
        for (; j + 8 <= j1; j += 8) {
            long w0 = (long) j * ldw;
            FloatVector s0 = FloatVector.zero(S), s1 = s0, s2 = s0, s3 = s0, s4 = s0, s5 = s0, s6 = s0, s7 = s0;
            for (int p = 0; p < vk; p += L) {
                FloatVector av = FloatVector.fromMemorySegment(S, a, (aRow + p) * 4, LE);
                long o = (w0 + p) * 4, d = (long) ldw * 4;
                s0 = av.fma(FloatVector.fromMemorySegment(S, w, o, LE), s0);
                s1 = av.fma(FloatVector.fromMemorySegment(S, w, o + d, LE), s1);
                s2 = av.fma(FloatVector.fromMemorySegment(S, w, o + 2 * d, LE), s2);
                s3 = av.fma(FloatVector.fromMemorySegment(S, w, o + 3 * d, LE), s3);
                s4 = av.fma(FloatVector.fromMemorySegment(S, w, o + 4 * d, LE), s4);
                s5 = av.fma(FloatVector.fromMemorySegment(S, w, o + 5 * d, LE), s5);
                s6 = av.fma(FloatVector.fromMemorySegment(S, w, o + 6 * d, LE), s6);
                s7 = av.fma(FloatVector.fromMemorySegment(S, w, o + 7 * d, LE), s7);
            }
            store(c, cRow + j, finish(s0, a, aRow, w, w0, vk, k), alpha, beta);
            store(c, cRow + j + 1, finish(s1, a, aRow, w, w0 + ldw, vk, k), alpha, beta);
            store(c, cRow + j + 2, finish(s2, a, aRow, w, w0 + 2L * ldw, vk, k), alpha, beta);
            store(c, cRow + j + 3, finish(s3, a, aRow, w, w0 + 3L * ldw, vk, k), alpha, beta);
            store(c, cRow + j + 4, finish(s4, a, aRow, w, w0 + 4L * ldw, vk, k), alpha, beta);
            store(c, cRow + j + 5, finish(s5, a, aRow, w, w0 + 5L * ldw, vk, k), alpha, beta);
            store(c, cRow + j + 6, finish(s6, a, aRow, w, w0 + 6L * ldw, vk, k), alpha, beta);
            store(c, cRow + j + 7, finish(s7, a, aRow, w, w0 + 7L * ldw, vk, k), alpha, beta);
        }
        for (; j < j1; j++) {
            long wRow = (long) j * ldw;
            FloatVector acc = FloatVector.zero(S);
            for (int p = 0; p < vk; p += L)
                acc = FloatVector.fromMemorySegment(S, a, (aRow + p) * 4, LE).fma(FloatVector.fromMemorySegment(S, w, (wRow + p) * 4, LE), acc);
            store(c, cRow + j, finish(acc, a, aRow, w, wRow, vk, k), alpha, beta);
        }
    }

    /**
     * Eight rows at once: the same arithmetic per element as {@link #single}, W loaded once for eight
     * independent FMA chains (enough to hide the FMA latency).
     */
    private static void group8(MemorySegment a, long strideA, int r, MemorySegment w, int ldw, int k, float alpha, float beta,
                               MemorySegment c, long strideC, int j0, int j1) {
        int vk = S.loopBound(k), L = S.length();
        long a0 = r * strideA, a1 = a0 + strideA, a2 = a1 + strideA, a3 = a2 + strideA,
                a4 = a3 + strideA, a5 = a4 + strideA, a6 = a5 + strideA, a7 = a6 + strideA;
        for (int j = j0; j < j1; j++) {
            long wRow = (long) j * ldw;
            FloatVector s0 = FloatVector.zero(S), s1 = s0, s2 = s0, s3 = s0, s4 = s0, s5 = s0, s6 = s0, s7 = s0;
            for (int p = 0; p < vk; p += L) {
                FloatVector wv = FloatVector.fromMemorySegment(S, w, (wRow + p) * 4, LE);
                s0 = FloatVector.fromMemorySegment(S, a, (a0 + p) * 4, LE).fma(wv, s0);
                s1 = FloatVector.fromMemorySegment(S, a, (a1 + p) * 4, LE).fma(wv, s1);
                s2 = FloatVector.fromMemorySegment(S, a, (a2 + p) * 4, LE).fma(wv, s2);
                s3 = FloatVector.fromMemorySegment(S, a, (a3 + p) * 4, LE).fma(wv, s3);
                s4 = FloatVector.fromMemorySegment(S, a, (a4 + p) * 4, LE).fma(wv, s4);
                s5 = FloatVector.fromMemorySegment(S, a, (a5 + p) * 4, LE).fma(wv, s5);
                s6 = FloatVector.fromMemorySegment(S, a, (a6 + p) * 4, LE).fma(wv, s6);
                s7 = FloatVector.fromMemorySegment(S, a, (a7 + p) * 4, LE).fma(wv, s7);
            }
            long c0 = r * strideC + j;
            store(c, c0, finish(s0, a, a0, w, wRow, vk, k), alpha, beta);
            store(c, c0 + strideC, finish(s1, a, a1, w, wRow, vk, k), alpha, beta);
            store(c, c0 + 2 * strideC, finish(s2, a, a2, w, wRow, vk, k), alpha, beta);
            store(c, c0 + 3 * strideC, finish(s3, a, a3, w, wRow, vk, k), alpha, beta);
            store(c, c0 + 4 * strideC, finish(s4, a, a4, w, wRow, vk, k), alpha, beta);
            store(c, c0 + 5 * strideC, finish(s5, a, a5, w, wRow, vk, k), alpha, beta);
            store(c, c0 + 6 * strideC, finish(s6, a, a6, w, wRow, vk, k), alpha, beta);
            store(c, c0 + 7 * strideC, finish(s7, a, a7, w, wRow, vk, k), alpha, beta);
        }
    }

    /** The lanes summed by a fixed pairwise tree (lane i with lane i ^ d, d = L/2 ... 1), then the tail {@code [vk, k)}. */
    private static float finish(FloatVector acc, MemorySegment a, long aRow, MemorySegment w, long wRow, int vk, int k) {
        for (VectorShuffle<Float> sh : TREE) acc = acc.add(acc.rearrange(sh));
        float s = acc.lane(0);
        for (int p = vk; p < k; p++)
            s = Math.fma(a.getAtIndex(JAVA_FLOAT, aRow + p), w.getAtIndex(JAVA_FLOAT, wRow + p), s);
        return s;
    }

    @SuppressWarnings("unchecked")
    private static final VectorShuffle<Float>[] TREE = treeShuffles();

    @SuppressWarnings("unchecked")
    private static VectorShuffle<Float>[] treeShuffles() {
        int L = S.length(), stages = Integer.numberOfTrailingZeros(L);
        VectorShuffle<Float>[] t = new VectorShuffle[stages];
        for (int i = 0, d = L / 2; d >= 1; i++, d /= 2) {
            int dd = d;
            t[i] = VectorShuffle.fromOp(S, lane -> lane ^ dd);
        }
        return t;
    }

    private static void store(MemorySegment c, long i, float dot, float alpha, float beta) {
        float v = alpha * dot;
        if (beta != 0f) v += beta * c.getAtIndex(JAVA_FLOAT, i);
        c.setAtIndex(JAVA_FLOAT, i, v);
    }
}
