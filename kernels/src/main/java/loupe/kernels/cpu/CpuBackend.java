package loupe.kernels.cpu;

import jdk.incubator.vector.FloatVector;
import jdk.incubator.vector.IntVector;
import jdk.incubator.vector.VectorOperators;
import jdk.incubator.vector.VectorSpecies;
import loupe.LoupeException;
import loupe.kernels.Backend;
import loupe.kernels.Buffer;

import java.lang.foreign.MemorySegment;
import java.nio.ByteOrder;
import java.util.Optional;
import java.util.concurrent.ForkJoinPool;

import static java.lang.foreign.ValueLayout.JAVA_FLOAT;
import static java.lang.foreign.ValueLayout.JAVA_INT;

/**
 * The reference backend: off-heap f32 memory (FFM), GEMM through a native BLAS (OpenBLAS via FFM, with a
 * Vector API fallback), and every other op as a vectorized, row-parallel Java loop.
 *
 * <p>Every CUDA kernel is checked against this class, and this class against the fixtures, so it
 * favours plain, obviously correct loops; vectorization is used only where a loop is hot in a forward
 * pass (GELU, norms, softmax, adds).
 */
public final class CpuBackend implements Backend {
    private static final VectorSpecies<Float> S = FloatVector.SPECIES_PREFERRED;
    private static final ByteOrder LE = ByteOrder.LITTLE_ENDIAN;
    private static final float NEG_INF = Float.NEGATIVE_INFINITY;
    private static final float SQRT_2_OVER_PI = (float) Math.sqrt(2.0 / Math.PI);

    private final int threads;
    private final ForkJoinPool forkJoin;
    private final Optional<Blas> blas;
    /** Idle blocks kept for reuse: at most 1 GiB, or the LOUPE_CPU_POOL_MB environment variable. */
    private final BufferPool pool = new BufferPool(Long.getLong("loupe.cpu.poolMb",
            System.getenv("LOUPE_CPU_POOL_MB") != null ? Long.parseLong(System.getenv("LOUPE_CPU_POOL_MB")) : 1024L) << 20);

    /** A CPU backend using {@code threads} threads (BLAS and row-parallel ops). */
    public CpuBackend(int threads) {
        this.threads = Math.max(1, threads);
        this.forkJoin = new ForkJoinPool(this.threads);
        this.blas = Blas.load(this.threads);
    }

    /** A CPU backend using every available processor. */
    public CpuBackend() {
        this(Runtime.getRuntime().availableProcessors());
    }

    @Override
    public String name() {
        return "cpu";
    }

    /** The native BLAS library in use, or "java" for the Vector API fallback. */
    public String gemmLibrary() {
        return blas.map(b -> b.library).orElse("java");
    }

    public int threads() {
        return threads;
    }

    @Override
    public void close() {
        pool.clear();
        forkJoin.shutdown();
    }

    // ------------------------------------------------------------------ memory

    @Override
    public CpuBuffer allocate(long bytes) {
        if (bytes < 0) throw new LoupeException("negative allocation size " + bytes);
        MemorySegment s = pool.take(bytes);
        s.fill((byte) 0);
        return new CpuBuffer(this, s, bytes);
    }

    @Override
    public CpuBuffer allocateUninitialized(long bytes) {
        if (bytes < 0) throw new LoupeException("negative allocation size " + bytes);
        return new CpuBuffer(this, pool.take(bytes), bytes);
    }

    @Override
    public void releaseCachedMemory() {
        pool.clear();
    }

    /** Takes back a closed buffer's memory. */
    void release(MemorySegment s) {
        pool.give(s);
    }

    /** The memory behind a buffer of this backend. */
    public static MemorySegment seg(Buffer b) {
        if (b instanceof CpuBuffer c) return c.segment();
        throw new LoupeException("buffer of backend '" + b.backend().name() + "' passed to the CPU backend");
    }

    @Override
    public void upload(MemorySegment src, Buffer dst, long dstByteOff, long bytes) {
        MemorySegment.copy(src, 0, seg(dst), dstByteOff, bytes);
    }

    @Override
    public void download(Buffer src, long srcByteOff, MemorySegment dst, long bytes) {
        MemorySegment.copy(seg(src), srcByteOff, dst, 0, bytes);
    }

    @Override
    public void synchronize() {}

    // ------------------------------------------------------------------ parallel loops

    @FunctionalInterface
    private interface RangeBody {
        void run(int start, int end);
    }

    /**
     * Runs {@code body} over {@code [0, n)} split into contiguous chunks, one per thread. The calling
     * thread takes chunks too, and pool workers take what is left when they wake: a worker that wakes
     * late (its core busy, e.g. with OpenBLAS's spinning threads) delays nothing, it finds no chunk.
     * Which thread runs a chunk never changes its numbers.
     */
    private void parallel(int n, long workPerItem, RangeBody body) {
        // Small ops are not worth a fork: the hand-off costs a few microseconds.
        if (threads == 1 || n < 2 || (long) n * workPerItem < 32_768) {
            body.run(0, n);
            return;
        }
        int chunks = Math.min(n, threads);
        java.util.concurrent.atomic.AtomicInteger next = new java.util.concurrent.atomic.AtomicInteger(),
                done = new java.util.concurrent.atomic.AtomicInteger();
        java.util.concurrent.atomic.AtomicReference<Throwable> failure = new java.util.concurrent.atomic.AtomicReference<>();
        Runnable take = () -> {
            for (int c; (c = next.getAndIncrement()) < chunks; ) {
                try {
                    body.run((int) ((long) n * c / chunks), (int) ((long) n * (c + 1) / chunks));
                } catch (Throwable t) {
                    failure.compareAndSet(null, t);
                } finally {
                    done.incrementAndGet();
                }
            }
        };
        for (int h = 1; h < chunks; h++) forkJoin.execute(take);
        take.run();
        while (done.get() < chunks) Thread.onSpinWait();   // only chunks already running remain
        Throwable t = failure.get();
        if (t instanceof RuntimeException re) throw re;
        if (t instanceof Error e) throw e;
        if (t != null) throw new IllegalStateException(t);
    }

    private static float get(MemorySegment s, long i) {
        return s.getAtIndex(JAVA_FLOAT, i);
    }

    private static void set(MemorySegment s, long i, float v) {
        s.setAtIndex(JAVA_FLOAT, i, v);
    }

    // ------------------------------------------------------------------ deterministic math
    //
    // The Vector API's EXP/TANH and floating-point reduceLanes give different bits in the interpreter
    // and in compiled code, so results would depend on when the JIT kicked in. These use only add, mul
    // and fma (exact IEEE operations on both paths), and the scalar forms repeat the vector arithmetic
    // step for step, so an element gives the same bits in a vector body or a loop tail, cold or hot.

    private static final float LOG2E = 1.44269504088896341f, EXP_C1 = 0.693359375f, EXP_C2 = -2.12194440e-4f;
    private static final float ROUND = 12582912f;   // 1.5 * 2^23: adding and subtracting it rounds to an integer
    private static final float EXP_LO = -87f, EXP_HI = 88f;

    /** e^x (Cephes expf: Cody-Waite reduction and a degree-6 polynomial, about 1 ulp); inputs clamped to [-87, 88]. */
    static FloatVector exp(FloatVector x) {
        x = x.max(EXP_LO).min(EXP_HI);
        FloatVector n = x.mul(LOG2E).add(ROUND).sub(ROUND);
        FloatVector r = n.mul(-EXP_C1).add(x);
        r = n.mul(-EXP_C2).add(r);
        FloatVector z = r.mul(r);
        FloatVector y = r.mul(1.9875691500E-4f).add(1.3981999507E-3f);
        y = y.mul(r).add(8.3334519073E-3f);
        y = y.mul(r).add(4.1665795894E-2f);
        y = y.mul(r).add(1.6666665459E-1f);
        y = y.mul(r).add(5.0000001201E-1f);
        y = y.mul(z).add(r).add(1f);
        IntVector bits = ((IntVector) n.convert(VectorOperators.F2I, 0)).add(127).lanewise(VectorOperators.LSHL, 23);
        return y.mul(bits.reinterpretAsFloats());
    }

    /** The scalar twin of {@link #exp(FloatVector)}: the same operations in the same order. */
    static float expf(float x) {
        x = Math.min(Math.max(x, EXP_LO), EXP_HI);
        float n = x * LOG2E + ROUND - ROUND;
        float r = n * -EXP_C1 + x;
        r = n * -EXP_C2 + r;
        float z = r * r;
        float y = r * 1.9875691500E-4f + 1.3981999507E-3f;
        y = y * r + 8.3334519073E-3f;
        y = y * r + 4.1665795894E-2f;
        y = y * r + 1.6666665459E-1f;
        y = y * r + 5.0000001201E-1f;
        y = y * z + r + 1f;
        return y * Float.intBitsToFloat(((int) n + 127) << 23);
    }

    /** tanh(x) = 1 - 2 / (e^{2x} + 1). */
    static FloatVector tanh(FloatVector x) {
        return FloatVector.broadcast(S, 1f).sub(FloatVector.broadcast(S, 2f).div(exp(x.add(x)).add(1f)));
    }

    static float tanh(float x) {
        return 1f - 2f / (expf(x + x) + 1f);
    }

    /** Σ of the lanes, in lane order (reduceLanes(ADD) may reorder). */
    static float laneSum(FloatVector v) {
        // A per-thread scratch array: lane(i) with a variable index is not compiled to a register
        // extract (it was 3x slower on a whole forward), and a fresh array per row would be garbage.
        float[] lanes = LANES.get();
        v.intoArray(lanes, 0);
        float s = 0f;
        for (int i = 0; i < lanes.length; i++) s += lanes[i];
        return s;
    }

    private static final ThreadLocal<float[]> LANES = ThreadLocal.withInitial(() -> new float[S.length()]);

    // ------------------------------------------------------------------ GEMM

    @Override
    public void gemm(boolean transA, boolean transB, int m, int n, int k, float alpha,
                     Buffer a, long aOff, int lda, long strideA,
                     Buffer b, long bOff, int ldb, long strideB,
                     float beta, Buffer c, long cOff, int ldc, long strideC, int batch) {
        MemorySegment sa = seg(a), sb = seg(b), sc = seg(c);
        if (m == 0 || n == 0) return;
        if (m == 1 && k > 0 && !transA && transB && ((long) n * k >= SKINNY_MIN_WEIGHT || blas.isEmpty() || !blas.get().hasGemv())) {
            // Single rows against a large W [n, k] (an unembedding): streamed once for every row that shares
            // it (strideB 0). The choice depends on W's size only, never on the batch, so a row's bits do not
            // depend on its company.
            if (strideB == 0) {
                skinny(sa.asSlice(aOff * 4), strideA, batch, sb.asSlice(bOff * 4), ldb, n, k, alpha, beta, sc.asSlice(cOff * 4), strideC);
            } else {
                for (int i = 0; i < batch; i++)
                    skinny(sa.asSlice((aOff + i * strideA) * 4), 0, 1, sb.asSlice((bOff + i * strideB) * 4), ldb, n, k,
                            alpha, beta, sc.asSlice((cOff + i * strideC) * 4), 0);
            }
            return;
        }
        if (batch > 1 && k > 0 && m > 1 && !transA && strideB == 0 && strideA == (long) m * lda && strideC == (long) m * ldc
                && (long) m * batch <= Integer.MAX_VALUE && blas.isPresent()
                && mergeKeepsRows(transB, m, n, k, lda, ldb, ldc, batch, sb.asSlice(bOff * 4))) {
            // Stacked sequences against one weight: one tall GEMM instead of one per sequence (the BLAS packs
            // the weight once and runs at its large-matrix rate); checked to give every row the same bits.
            blas.get().sgemm(false, transB, m * batch, n, k, alpha, sa.asSlice(aOff * 4), lda, sb.asSlice(bOff * 4), ldb,
                    beta, sc.asSlice(cOff * 4), ldc);
            return;
        }
        for (int i = 0; i < batch; i++) {
            MemorySegment ca = sc.asSlice((cOff + i * strideC) * 4);
            if (k == 0) {
                scaleMatrix(ca, m, n, ldc, beta);
                continue;
            }
            MemorySegment aa = sa.asSlice((aOff + i * strideA) * 4);
            MemorySegment bb = sb.asSlice((bOff + i * strideB) * 4);
            if (blas.isPresent() && m == 1 && blas.get().hasGemv()) {
                // One row: c[0, :] = alpha * a[0, :] · op(B) + beta * c, i.e. op(B)ᵀ a as a matrix-vector
                // product over B stored [n, k] (transB) or [k, n]. a's elements are lda apart when transposed.
                int incA = transA ? lda : 1;
                if (transB) blas.get().sgemv(false, n, k, alpha, bb, ldb, aa, incA, beta, ca, 1);
                else blas.get().sgemv(true, k, n, alpha, bb, ldb, aa, incA, beta, ca, 1);
            } else if (blas.isPresent()) {
                blas.get().sgemm(transA, transB, m, n, k, alpha, aa, lda, bb, ldb, beta, ca, ldc);
            } else {
                javaGemm(transA, transB, m, n, k, alpha, aa, lda, bb, ldb, beta, ca, ldc);
            }
        }
    }

    /**
     * Weights of at least this many elements (64 MB) take the skinny kernel for single rows: they stream
     * from memory, where reading W once for all rows wins. Smaller ones stay cache-resident, where
     * cblas_sgemv (whose threads are already spinning) is faster per row.
     */
    private static final long SKINNY_MIN_WEIGHT = 16L << 20;

    private void skinny(MemorySegment a, long strideA, int rows, MemorySegment w, int ldw, int n, int k,
                        float alpha, float beta, MemorySegment c, long strideC) {
        parallel(n, (long) k * rows, (j0, j1) -> SkinnyGemm.columns(a, strideA, rows, w, ldw, k, alpha, beta, c, strideC, j0, j1));
    }

    /** Per GEMM shape: whether a GEMM of m rows gives each row the bits GEMMs of refM rows give it. */
    private final java.util.concurrent.ConcurrentHashMap<java.util.List<Integer>, Boolean> rowVerdicts = new java.util.concurrent.ConcurrentHashMap<>();

    /**
     * Whether {@code batch} row-major GEMMs of {@code m} rows against one shared B may run as one GEMM of
     * {@code m * batch} rows: sequences must not change numbers with the company they keep in a batch
     * (batched patching equals the one-cell loop exactly).
     */
    private boolean mergeKeepsRows(boolean transB, int m, int n, int k, int lda, int ldb, int ldc, int batch, MemorySegment b) {
        return rowBits(transB, m * batch, m, n, k, lda, ldb, ldc, b);
    }

    @Override
    public boolean sameRowBits(boolean transB, int m, int refM, int n, int k, Buffer b, long bOff, int ldb) {
        if (m <= 0 || refM <= 0 || n <= 0 || k <= 0) throw new LoupeException("sameRowBits: sizes must be positive");
        if (m == refM) return true;
        if (m == 1 || refM == 1) return false;   // single rows take other kernels (gemm's m == 1 paths)
        if (blas.isEmpty()) return true;   // the Java GEMM computes each row on its own, whatever m
        return rowBits(transB, m, refM, n, k, k, ldb, n, seg(b).asSlice(bOff * 4));
    }

    /**
     * The answer of {@link #sameRowBits}, measured once per shape (the BLAS's choice of kernel depends on
     * the shape, not the values): one GEMM of m pseudo-random rows against the real B, and the first,
     * middle and last blocks of refM of those rows in GEMMs of their own, compared bit for bit. (Rows in
     * between go through the same kernel as the first block; sampling keeps the probe at about one GEMM
     * of m rows, which a suffix pass with many heights pays once per height.)
     */
    private boolean rowBits(boolean transB, int m, int refM, int n, int k, int lda, int ldb, int ldc, MemorySegment b) {
        return rowVerdicts.computeIfAbsent(java.util.List.of(transB ? 1 : 0, m, refM, n, k, lda, ldb, ldc), key -> {
            long chunks = (m + refM - 1) / refM, rows = chunks * refM;
            try (java.lang.foreign.Arena arena = java.lang.foreign.Arena.ofConfined()) {
                MemorySegment pa = arena.allocate(rows * lda * 4, 64), c1 = arena.allocate(rows * ldc * 4, 64),
                        c2 = arena.allocate((long) refM * ldc * 4, 64);
                int seed = 12345;
                for (long i = 0; i < rows * lda; i++) {
                    seed = seed * 1103515245 + 12345;
                    set(pa, i, (seed >>> 8) * (1f / (1 << 24)) - 0.5f);
                }
                Blas bl = blas.get();
                bl.sgemm(false, transB, m, n, k, 1f, pa, lda, b, ldb, 0f, c1, ldc);
                for (long i : new java.util.TreeSet<>(java.util.List.of(0L, chunks / 2, chunks - 1))) {
                    bl.sgemm(false, transB, refM, n, k, 1f, pa.asSlice(i * refM * lda * 4), lda, b, ldb, 0f, c2, ldc);
                    long used = (Math.min(m, (i + 1) * refM) - i * refM) * ldc * 4;
                    if (c1.asSlice(i * refM * ldc * 4, used).mismatch(c2.asSlice(0, used)) != -1) return false;
                }
                return true;
            }
        });
    }

    private static void scaleMatrix(MemorySegment c, int m, int n, int ldc, float beta) {
        for (int r = 0; r < m; r++)
            for (int j = 0; j < n; j++) set(c, (long) r * ldc + j, beta == 0 ? 0 : beta * get(c, (long) r * ldc + j));
    }

    /** Vector API GEMM, row-parallel; used only when no native BLAS is installed. */
    private void javaGemm(boolean transA, boolean transB, int m, int n, int k, float alpha,
                          MemorySegment a, int lda, MemorySegment b, int ldb, float beta, MemorySegment c, int ldc) {
        parallel(m, (long) n * k, (r0, r1) -> {
            float[] row = new float[n];
            float[] brow = new float[Math.max(n, k)];
            float[] arow = new float[k];
            for (int r = r0; r < r1; r++) {
                for (int p = 0; p < k; p++) arow[p] = transA ? get(a, (long) p * lda + r) : get(a, (long) r * lda + p);
                java.util.Arrays.fill(row, 0f);
                if (!transB) {
                    for (int p = 0; p < k; p++) {
                        float av = arow[p];
                        if (av == 0f) continue;
                        MemorySegment.copy(b, JAVA_FLOAT, (long) p * ldb * 4, brow, 0, n);
                        FloatVector va = FloatVector.broadcast(S, av);
                        int j = 0;
                        for (; j <= n - S.length(); j += S.length()) {
                            FloatVector.fromArray(S, brow, j).fma(va, FloatVector.fromArray(S, row, j)).intoArray(row, j);
                        }
                        for (; j < n; j++) row[j] += av * brow[j];
                    }
                } else {
                    for (int j = 0; j < n; j++) {
                        MemorySegment.copy(b, JAVA_FLOAT, (long) j * ldb * 4, brow, 0, k);
                        FloatVector acc = FloatVector.zero(S);
                        int p = 0;
                        for (; p <= k - S.length(); p += S.length())
                            acc = FloatVector.fromArray(S, arow, p).fma(FloatVector.fromArray(S, brow, p), acc);
                        float s = acc.reduceLanes(VectorOperators.ADD);
                        for (; p < k; p++) s += arow[p] * brow[p];
                        row[j] = s;
                    }
                }
                for (int j = 0; j < n; j++) {
                    long ci = (long) r * ldc + j;
                    set(c, ci, alpha * row[j] + (beta == 0 ? 0 : beta * get(c, ci)));
                }
            }
        });
    }

    // ------------------------------------------------------------------ elementwise

    @Override
    public void fill(Buffer x, long xOff, long n, float value) {
        MemorySegment s = seg(x).asSlice(xOff * 4, n * 4);
        if (value == 0f) s.fill((byte) 0);
        else for (long i = 0; i < n; i++) set(s, i, value);
    }

    @FunctionalInterface
    private interface VecBinary {
        FloatVector apply(FloatVector a, FloatVector b);
    }

    @FunctionalInterface
    private interface ScalarBinary {
        float apply(float a, float b);
    }

    /** {@code out[i] = f(a[i], b[i])}, vectorized, split over threads for large n. */
    private void binary(Buffer out, long outOff, Buffer a, long aOff, Buffer b, long bOff, long n,
                        VecBinary vf, ScalarBinary sf) {
        MemorySegment so = seg(out), sa = seg(a), sb = seg(b);
        int blocks = (int) Math.min(Integer.MAX_VALUE, (n + 4095) / 4096);
        parallel(blocks, 4096, (b0, b1) ->
                binaryRange(so, outOff, sa, aOff, sb, bOff, (long) b0 * 4096, Math.min(n, (long) b1 * 4096), vf, sf));
    }

    /** {@code out[i] = f(a[i], b[i])} for {@code i} in {@code [start, end)}: the body of {@link #binary} (and of {@link #addNorm}'s add). */
    private static void binaryRange(MemorySegment so, long outOff, MemorySegment sa, long aOff, MemorySegment sb, long bOff,
                                    long start, long end, VecBinary vf, ScalarBinary sf) {
        long i = start;
        for (; i <= end - S.length(); i += S.length()) {
            FloatVector va = FloatVector.fromMemorySegment(S, sa, (aOff + i) * 4, LE);
            FloatVector vb = FloatVector.fromMemorySegment(S, sb, (bOff + i) * 4, LE);
            vf.apply(va, vb).intoMemorySegment(so, (outOff + i) * 4, LE);
        }
        for (; i < end; i++) set(so, outOff + i, sf.apply(get(sa, aOff + i), get(sb, bOff + i)));
    }

    @Override
    public void add(Buffer out, long outOff, Buffer a, long aOff, Buffer b, long bOff, long n) {
        binary(out, outOff, a, aOff, b, bOff, n, FloatVector::add, Float::sum);
    }

    @Override
    public void mul(Buffer out, long outOff, Buffer a, long aOff, Buffer b, long bOff, long n) {
        binary(out, outOff, a, aOff, b, bOff, n, FloatVector::mul, (x, y) -> x * y);
    }

    @Override
    public void axpy(Buffer y, long yOff, float alpha, Buffer x, long xOff, long n) {
        FloatVector va = FloatVector.broadcast(S, alpha);
        binary(y, yOff, y, yOff, x, xOff, n, (vy, vx) -> vx.fma(va, vy), (fy, fx) -> fy + alpha * fx);
    }

    @Override
    public void scale(Buffer x, long xOff, long n, float alpha) {
        MemorySegment s = seg(x);
        for (long i = 0; i < n; i++) set(s, xOff + i, get(s, xOff + i) * alpha);
    }

    @Override
    public void addBias(Buffer x, long xOff, Buffer bias, long biasOff, int rows, int cols) {
        MemorySegment sx = seg(x), sb = seg(bias);
        parallel(rows, cols, (r0, r1) -> {
            for (int r = r0; r < r1; r++) {
                long base = xOff + (long) r * cols;
                int j = 0;
                for (; j <= cols - S.length(); j += S.length()) {
                    FloatVector.fromMemorySegment(S, sx, (base + j) * 4, LE)
                            .add(FloatVector.fromMemorySegment(S, sb, (biasOff + j) * 4, LE))
                            .intoMemorySegment(sx, (base + j) * 4, LE);
                }
                for (; j < cols; j++) set(sx, base + j, get(sx, base + j) + get(sb, biasOff + j));
            }
        });
    }

    @Override
    public void scaleShiftRows(Buffer out, long outOff, Buffer x, long xOff, Buffer weight, long wOff,
                               Buffer bias, long bOff, int rows, int cols) {
        MemorySegment so = seg(out), sx = seg(x);
        MemorySegment sw = weight == null ? null : seg(weight), sb = bias == null ? null : seg(bias);
        parallel(rows, cols, (r0, r1) -> {
            for (int r = r0; r < r1; r++)
                for (int j = 0; j < cols; j++) {
                    float v = get(sx, xOff + (long) r * cols + j);
                    if (sw != null) v *= get(sw, wOff + j);
                    if (sb != null) v += get(sb, bOff + j);
                    set(so, outOff + (long) r * cols + j, v);
                }
        });
    }

    @Override
    public void biasBackward(Buffer dBias, long dBiasOff, Buffer dOut, long dOutOff, int rows, int cols) {
        MemorySegment sd = seg(dBias), so = seg(dOut);
        parallel(cols, rows, (c0, c1) -> {
            for (int j = c0; j < c1; j++) {
                double s = 0;
                for (int r = 0; r < rows; r++) s += get(so, dOutOff + (long) r * cols + j);
                set(sd, dBiasOff + j, get(sd, dBiasOff + j) + (float) s);
            }
        });
    }

    @Override
    public void copyStrided(Buffer dst, long dstOff, long[] dstStrides, Buffer src, long srcOff, long[] srcStrides,
                            int[] shape, boolean accumulate) {
        if (shape.length != 4 || dstStrides.length != 4 || srcStrides.length != 4)
            throw new LoupeException("copyStrided takes 4-d shapes and strides");
        MemorySegment sd = seg(dst), ss = seg(src);
        boolean contiguousInner = dstStrides[3] == 1 && srcStrides[3] == 1;
        int rows = shape[0] * shape[1] * shape[2];
        if (rows == 1 && contiguousInner && !accumulate && shape[3] >= 1 << 16) {
            // One long contiguous run (a cached activation, a whole tensor): split it over the threads.
            long n = shape[3], d0 = dstOff, s0 = srcOff;
            int chunks = (int) Math.min(64, n >> 14);
            parallel(chunks, n / chunks, (c0, c1) -> {
                long from = n * c0 / chunks, to = n * c1 / chunks;
                MemorySegment.copy(ss, (s0 + from) * 4, sd, (d0 + from) * 4, (to - from) * 4);
            });
            return;
        }
        parallel(rows, shape[3], (r0, r1) -> {
            for (int r = r0; r < r1; r++) {
                int i = r / (shape[1] * shape[2]), j = (r / shape[2]) % shape[1], k = r % shape[2];
                long d = dstOff + i * dstStrides[0] + j * dstStrides[1] + k * dstStrides[2];
                long s = srcOff + i * srcStrides[0] + j * srcStrides[1] + k * srcStrides[2];
                if (contiguousInner && !accumulate) {
                    MemorySegment.copy(ss, s * 4, sd, d * 4, shape[3] * 4L);
                } else if (contiguousInner) {
                    int l = 0;
                    for (; l <= shape[3] - S.length(); l += S.length()) {
                        FloatVector.fromMemorySegment(S, sd, (d + l) * 4, LE)
                                .add(FloatVector.fromMemorySegment(S, ss, (s + l) * 4, LE))
                                .intoMemorySegment(sd, (d + l) * 4, LE);
                    }
                    for (; l < shape[3]; l++) set(sd, d + l, get(sd, d + l) + get(ss, s + l));
                } else {
                    for (int l = 0; l < shape[3]; l++) {
                        long di = d + l * dstStrides[3];
                        float v = get(ss, s + l * srcStrides[3]);
                        set(sd, di, accumulate ? get(sd, di) + v : v);
                    }
                }
            }
        });
    }

    // ------------------------------------------------------------------ activations

    @FunctionalInterface
    private interface VecUnary {
        FloatVector apply(FloatVector x);
    }

    @FunctionalInterface
    private interface ScalarUnary {
        float apply(float x);
    }

    /** {@code out[i] = f(x[i])}; {@code vf} is the vectorized form, or null for the scalar loop only. */
    private void unary(Buffer out, long outOff, Buffer x, long xOff, long n, VecUnary vf, ScalarUnary sf) {
        MemorySegment so = seg(out), sx = seg(x);
        int blocks = (int) Math.min(Integer.MAX_VALUE, (n + 4095) / 4096);
        parallel(blocks, 4096 * 8, (b0, b1) -> {
            long start = (long) b0 * 4096, end = Math.min(n, (long) b1 * 4096);
            long i = start;
            if (vf != null)
                for (; i <= end - S.length(); i += S.length())
                    vf.apply(FloatVector.fromMemorySegment(S, sx, (xOff + i) * 4, LE)).intoMemorySegment(so, (outOff + i) * 4, LE);
            for (; i < end; i++) set(so, outOff + i, sf.apply(get(sx, xOff + i)));
        });
    }

    /** {@code dx[i] += dOut[i] * f'(x[i])}; {@code vf} is the vectorized derivative, or null. */
    private void unaryBackward(Buffer dx, long dxOff, Buffer x, long xOff, Buffer dOut, long dOutOff, long n,
                               VecUnary vf, ScalarUnary derivative) {
        MemorySegment sd = seg(dx), sx = seg(x), so = seg(dOut);
        int blocks = (int) Math.min(Integer.MAX_VALUE, (n + 4095) / 4096);
        parallel(blocks, 4096 * 8, (b0, b1) -> {
            long start = (long) b0 * 4096, end = Math.min(n, (long) b1 * 4096);
            long i = start;
            if (vf != null)
                for (; i <= end - S.length(); i += S.length()) {
                    FloatVector d = vf.apply(FloatVector.fromMemorySegment(S, sx, (xOff + i) * 4, LE));
                    FloatVector.fromMemorySegment(S, so, (dOutOff + i) * 4, LE).fma(d, FloatVector.fromMemorySegment(S, sd, (dxOff + i) * 4, LE))
                            .intoMemorySegment(sd, (dxOff + i) * 4, LE);
                }
            for (; i < end; i++)
                set(sd, dxOff + i, get(sd, dxOff + i) + get(so, dOutOff + i) * derivative.apply(get(sx, xOff + i)));
        });
    }

    @Override
    public void gelu(Buffer out, long outOff, Buffer x, long xOff, long n, boolean tanhApprox) {
        if (tanhApprox) {
            unary(out, outOff, x, xOff, n, CpuBackend::geluTanh, CpuBackend::geluTanh);
        } else {
            unary(out, outOff, x, xOff, n, null, CpuBackend::geluErf);
        }
    }

    /**
     * One pass per row: {@code pre += bias}, {@code post = gelu(pre)}, with the same per-element arithmetic
     * as {@link #addBias} and {@link #gelu} (which gives the same bits in a vector body or a scalar tail,
     * so the row-aligned vectors here match the flat ones there).
     */
    @Override
    public void addBiasGelu(Buffer pre, long preOff, Buffer post, long postOff, Buffer bias, long biasOff,
                            int rows, int cols, boolean tanhApprox) {
        MemorySegment sp = seg(pre), so = seg(post), sb = seg(bias);
        parallel(rows, cols * 8L, (r0, r1) -> {
            for (int r = r0; r < r1; r++) {
                long pb = preOff + (long) r * cols, ob = postOff + (long) r * cols;
                int j = 0;
                if (tanhApprox)
                    for (; j <= cols - S.length(); j += S.length()) {
                        FloatVector v = FloatVector.fromMemorySegment(S, sp, (pb + j) * 4, LE)
                                .add(FloatVector.fromMemorySegment(S, sb, (biasOff + j) * 4, LE));
                        v.intoMemorySegment(sp, (pb + j) * 4, LE);
                        geluTanh(v).intoMemorySegment(so, (ob + j) * 4, LE);
                    }
                for (; j < cols; j++) {
                    float v = get(sp, pb + j) + get(sb, biasOff + j);
                    set(sp, pb + j, v);
                    set(so, ob + j, tanhApprox ? geluTanh(v) : geluErf(v));
                }
            }
        });
    }

    /** The vector form of {@link #geluTanh(float)}: the same operations, so the same bits per lane. */
    static FloatVector geluTanh(FloatVector v) {
        FloatVector inner = v.mul(v).mul(0.044715f).add(1f).mul(v).mul(SQRT_2_OVER_PI);
        return tanh(inner).add(1f).mul(v.mul(0.5f));
    }

    static float geluTanh(float x) {
        return 0.5f * x * (1f + tanh((x * x * 0.044715f + 1f) * x * SQRT_2_OVER_PI));
    }

    static float geluErf(float x) {
        return (float) (0.5 * x * (1 + erf(x / Math.sqrt(2))));
    }

    /** erf with |error| < 1.2e-7 (Numerical Recipes' erfc Chebyshev fit), in double. */
    static double erf(double x) {
        double z = Math.abs(x), t = 1 / (1 + 0.5 * z);
        double r = t * Math.exp(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418
                + t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587
                + t * (-0.82215223 + t * 0.17087277)))))))));
        return x >= 0 ? 1 - r : r - 1;
    }

    @Override
    public void geluBackward(Buffer dx, long dxOff, Buffer x, long xOff, Buffer dOut, long dOutOff, long n, boolean tanhApprox) {
        if (tanhApprox) {
            FloatVector c = FloatVector.broadcast(S, SQRT_2_OVER_PI);
            unaryBackward(dx, dxOff, x, xOff, dOut, dOutOff, n, v -> {
                FloatVector v2 = v.mul(v);
                FloatVector th = tanh(v2.mul(0.044715f).add(1f).mul(v).mul(c));
                FloatVector du = v2.mul(3 * 0.044715f).add(1f).mul(c);
                return th.add(1f).mul(0.5f).add(v.mul(0.5f).mul(th.mul(th).neg().add(1f)).mul(du));
            }, v -> {
                float v2 = v * v;
                float th = tanh((v2 * 0.044715f + 1f) * v * SQRT_2_OVER_PI);
                float du = (v2 * (3 * 0.044715f) + 1f) * SQRT_2_OVER_PI;
                return (th + 1f) * 0.5f + v * 0.5f * (-(th * th) + 1f) * du;
            });
            return;
        }
        unaryBackward(dx, dxOff, x, xOff, dOut, dOutOff, n, null, tanhApprox ? v -> {
            double u = SQRT_2_OVER_PI * (v + 0.044715 * v * v * v);
            double th = Math.tanh(u);
            double du = SQRT_2_OVER_PI * (1 + 3 * 0.044715 * v * v);
            return (float) (0.5 * (1 + th) + 0.5 * v * (1 - th * th) * du);
        } : v -> (float) (0.5 * (1 + erf(v / Math.sqrt(2))) + v * Math.exp(-0.5 * v * v) / Math.sqrt(2 * Math.PI)));
    }

    @Override
    public void silu(Buffer out, long outOff, Buffer x, long xOff, long n) {
        unary(out, outOff, x, xOff, n, v -> v.div(exp(v.neg()).add(1f)),
                v -> v / (expf(-v) + 1f));
    }

    @Override
    public void siluBackward(Buffer dx, long dxOff, Buffer x, long xOff, Buffer dOut, long dOutOff, long n) {
        unaryBackward(dx, dxOff, x, xOff, dOut, dOutOff, n, v -> {
            FloatVector sg = FloatVector.broadcast(S, 1f).div(exp(v.neg()).add(1f));
            return sg.mul(v.mul(sg.neg().add(1f)).add(1f));
        }, v -> {
            float sg = 1f / (expf(-v) + 1f);
            return sg * (v * (-sg + 1f) + 1f);
        });
    }

    @Override
    public void relu(Buffer out, long outOff, Buffer x, long xOff, long n) {
        unary(out, outOff, x, xOff, n, v -> v.max(0f), v -> Math.max(v, 0f));
    }

    @Override
    public void reluBackward(Buffer dx, long dxOff, Buffer x, long xOff, Buffer dOut, long dOutOff, long n) {
        unaryBackward(dx, dxOff, x, xOff, dOut, dOutOff, n, null, v -> v > 0 ? 1f : 0f);
    }

    // ------------------------------------------------------------------ embeddings

    @Override
    public void gatherRows(Buffer out, long outOff, Buffer table, long tableOff, Buffer ids, long idsOff, int n, int cols) {
        MemorySegment so = seg(out), st = seg(table), si = seg(ids);
        for (int i = 0; i < n; i++) {
            int id = si.getAtIndex(JAVA_INT, idsOff + i);
            MemorySegment.copy(st, (tableOff + (long) id * cols) * 4, so, (outOff + (long) i * cols) * 4, cols * 4L);
        }
    }

    @Override
    public void scatterAddRows(Buffer dTable, long dTableOff, Buffer ids, long idsOff, Buffer dOut, long dOutOff, int n, int cols) {
        MemorySegment st = seg(dTable), si = seg(ids), so = seg(dOut);
        // Sequential over rows: two rows may share an id, and the sum must not race.
        for (int i = 0; i < n; i++) {
            long t = dTableOff + (long) si.getAtIndex(JAVA_INT, idsOff + i) * cols, o = dOutOff + (long) i * cols;
            for (int j = 0; j < cols; j++) set(st, t + j, get(st, t + j) + get(so, o + j));
        }
    }

    // ------------------------------------------------------------------ normalization

    @Override
    public void layerNorm(Buffer out, long outOff, Buffer normalized, long normOff, Buffer scale, long scaleOff,
                          Buffer x, long xOff, Buffer weight, long wOff, Buffer bias, long bOff,
                          int rows, int cols, float eps) {
        norm(out, outOff, normalized, normOff, scale, scaleOff, x, xOff, weight, wOff, bias, bOff, rows, cols, eps, true);
    }

    @Override
    public void rmsNorm(Buffer out, long outOff, Buffer normalized, long normOff, Buffer scale, long scaleOff,
                        Buffer x, long xOff, Buffer weight, long wOff, int rows, int cols, float eps) {
        norm(out, outOff, normalized, normOff, scale, scaleOff, x, xOff, weight, wOff, null, 0, rows, cols, eps, false);
    }

    /** LayerNorm ({@code center}) or RMSNorm: one pass for the moments, one to write. */
    private void norm(Buffer out, long outOff, Buffer normalized, long normOff, Buffer scale, long scaleOff,
                      Buffer x, long xOff, Buffer weight, long wOff, Buffer bias, long bOff,
                      int rows, int cols, float eps, boolean center) {
        NormRows nr = normRows(out, outOff, normalized, normOff, scale, scaleOff, x, xOff, weight, wOff, bias, bOff, cols, eps, center);
        parallel(rows, cols, (r0, r1) -> {
            for (int r = r0; r < r1; r++) nr.row(r);
        });
    }

    /**
     * One pass per row: {@code sum = a + b} (the arithmetic of {@link #add}), then the row of
     * {@link #layerNorm} / {@link #rmsNorm} on it while it is in cache.
     */
    @Override
    public void addNorm(Buffer sum, long sumOff, Buffer a, long aOff, Buffer b, long bOff,
                        Buffer out, long outOff, Buffer normalized, long normOff, Buffer scale, long scaleOff,
                        Buffer weight, long wOff, Buffer bias, long biasOff, int rows, int cols, float eps, boolean rms) {
        if (rms && bias != null) throw new LoupeException("addNorm: RMSNorm has no bias; pass null");
        MemorySegment ssum = seg(sum), sa = seg(a), sb = seg(b);
        NormRows nr = normRows(out, outOff, normalized, normOff, scale, scaleOff, sum, sumOff, weight, wOff, bias, biasOff,
                cols, eps, !rms);
        parallel(rows, cols, (r0, r1) -> {
            for (int r = r0; r < r1; r++) {
                long rb = (long) r * cols;
                binaryRange(ssum, sumOff + rb, sa, aOff + rb, sb, bOff + rb, 0, cols, FloatVector::add, Float::sum);
                nr.row(r);
            }
        });
    }

    private static NormRows normRows(Buffer out, long outOff, Buffer normalized, long normOff, Buffer scale, long scaleOff,
                                     Buffer x, long xOff, Buffer weight, long wOff, Buffer bias, long bOff,
                                     int cols, float eps, boolean center) {
        return new NormRows(out == null ? null : seg(out), outOff, normalized == null ? null : seg(normalized), normOff,
                scale == null ? null : seg(scale), scaleOff, seg(x), xOff, weight == null ? null : seg(weight), wOff,
                bias == null ? null : seg(bias), bOff, cols, eps, center);
    }

    /** The memory of one norm call (null segments: outputs skipped, gain 1, bias 0); {@link #row} normalizes one row. */
    private record NormRows(MemorySegment so, long outOff, MemorySegment sn, long normOff, MemorySegment ss, long scaleOff,
                            MemorySegment sx, long xOff, MemorySegment sw, long wOff, MemorySegment sb, long bOff,
                            int cols, float eps, boolean center) {
        void row(int r) {
            long xb = xOff + (long) r * cols;
            float mean = center ? sum(sx, xb, cols) / cols : 0f;
            float var = sumSquaredDeviation(sx, xb, cols, mean) / cols;
            double sc = Math.sqrt(var + (double) eps);
            float inv = (float) (1 / sc);
            if (ss != null) set(ss, scaleOff + r, (float) sc);
            long nb = normOff + (long) r * cols, ob = outOff + (long) r * cols;
            FloatVector vm = FloatVector.broadcast(S, mean), vi = FloatVector.broadcast(S, inv);
            int j = 0;
            for (; j <= cols - S.length(); j += S.length()) {
                FloatVector nv = FloatVector.fromMemorySegment(S, sx, (xb + j) * 4, LE).sub(vm).mul(vi);
                if (sn != null) nv.intoMemorySegment(sn, (nb + j) * 4, LE);
                if (so != null) {
                    FloatVector o = nv;
                    if (sw != null) o = o.mul(FloatVector.fromMemorySegment(S, sw, (wOff + j) * 4, LE));
                    if (sb != null) o = o.add(FloatVector.fromMemorySegment(S, sb, (bOff + j) * 4, LE));
                    o.intoMemorySegment(so, (ob + j) * 4, LE);
                }
            }
            for (; j < cols; j++) {
                float nv = (get(sx, xb + j) - mean) * inv;
                if (sn != null) set(sn, nb + j, nv);
                if (so != null) {
                    float o = nv;
                    if (sw != null) o *= get(sw, wOff + j);
                    if (sb != null) o += get(sb, bOff + j);
                    set(so, ob + j, o);
                }
            }
        }
    }

    /** Σ x[base..base+n), vectorized. */
    private static float sum(MemorySegment s, long base, int n) {
        FloatVector acc = FloatVector.zero(S);
        int j = 0;
        for (; j <= n - S.length(); j += S.length()) acc = acc.add(FloatVector.fromMemorySegment(S, s, (base + j) * 4, LE));
        float r = laneSum(acc);
        for (; j < n; j++) r += get(s, base + j);
        return r;
    }

    /** Σ (x - mean)^2 over x[base..base+n), vectorized. */
    private static float sumSquaredDeviation(MemorySegment s, long base, int n, float mean) {
        FloatVector acc = FloatVector.zero(S), vm = FloatVector.broadcast(S, mean);
        int j = 0;
        for (; j <= n - S.length(); j += S.length()) {
            FloatVector d = FloatVector.fromMemorySegment(S, s, (base + j) * 4, LE).sub(vm);
            acc = d.fma(d, acc);
        }
        float r = laneSum(acc);
        for (; j < n; j++) {
            float d = get(s, base + j) - mean;
            r += d * d;
        }
        return r;
    }

    @Override
    public void layerNormBackward(Buffer dx, long dxOff, Buffer dWeight, long dwOff, Buffer dBias, long dbOff,
                                  Buffer dOut, long dOutOff, Buffer normalized, long normOff, Buffer scale, long scaleOff,
                                  Buffer weight, long wOff, int rows, int cols) {
        normBackward(dx, dxOff, dWeight, dwOff, dBias, dbOff, dOut, dOutOff, normalized, normOff, scale, scaleOff,
                weight, wOff, rows, cols, true);
    }

    @Override
    public void rmsNormBackward(Buffer dx, long dxOff, Buffer dWeight, long dwOff, Buffer dOut, long dOutOff,
                                Buffer normalized, long normOff, Buffer scale, long scaleOff, Buffer weight, long wOff,
                                int rows, int cols) {
        normBackward(dx, dxOff, dWeight, dwOff, null, 0, dOut, dOutOff, normalized, normOff, scale, scaleOff,
                weight, wOff, rows, cols, false);
    }

    /**
     * With g = dOut*w and n = normalized: LayerNorm dx = (g - mean(g) - n*mean(g*n)) / scale;
     * RMSNorm dx = (g - n*mean(g*n)) / scale.
     */
    private void normBackward(Buffer dx, long dxOff, Buffer dWeight, long dwOff, Buffer dBias, long dbOff,
                              Buffer dOut, long dOutOff, Buffer normalized, long normOff, Buffer scale, long scaleOff,
                              Buffer weight, long wOff, int rows, int cols, boolean center) {
        MemorySegment sdx = seg(dx), sdo = seg(dOut), sn = seg(normalized), ss = seg(scale);
        MemorySegment sw = weight == null ? null : seg(weight);
        parallel(rows, cols, (r0, r1) -> {
            for (int r = r0; r < r1; r++) {
                long b = (long) r * cols;
                double sg = 0, sgn = 0;
                for (int j = 0; j < cols; j++) {
                    double g = get(sdo, dOutOff + b + j) * (sw == null ? 1f : get(sw, wOff + j));
                    sg += g;
                    sgn += g * get(sn, normOff + b + j);
                }
                double mg = center ? sg / cols : 0, mgn = sgn / cols;
                double inv = 1 / get(ss, scaleOff + r);
                for (int j = 0; j < cols; j++) {
                    double g = get(sdo, dOutOff + b + j) * (sw == null ? 1f : get(sw, wOff + j));
                    double d = (g - mg - get(sn, normOff + b + j) * mgn) * inv;
                    set(sdx, dxOff + b + j, get(sdx, dxOff + b + j) + (float) d);
                }
            }
        });
        // Parameter gradients: column sums over rows, parallel over columns so no two threads share a column.
        if (dWeight != null || dBias != null) {
            MemorySegment sdw = dWeight == null ? null : seg(dWeight), sdb = dBias == null ? null : seg(dBias);
            parallel(cols, rows, (c0, c1) -> {
                for (int j = c0; j < c1; j++) {
                    double w = 0, bsum = 0;
                    for (int r = 0; r < rows; r++) {
                        float d = get(sdo, dOutOff + (long) r * cols + j);
                        w += d * get(sn, normOff + (long) r * cols + j);
                        bsum += d;
                    }
                    if (sdw != null) set(sdw, dwOff + j, get(sdw, dwOff + j) + (float) w);
                    if (sdb != null) set(sdb, dbOff + j, get(sdb, dbOff + j) + (float) bsum);
                }
            });
        }
    }

    // ------------------------------------------------------------------ attention

    @Override
    public void rope(Buffer out, long outOff, Buffer x, long xOff, Buffer positions, long posOff, Buffer invFreq, long freqOff,
                     int tokens, int heads, int headDim, int rotaryDim, boolean interleaved, boolean inverse) {
        MemorySegment so = seg(out), sx = seg(x), sp = seg(positions), sf = seg(invFreq);
        int half = rotaryDim / 2;
        parallel(tokens, (long) heads * headDim, (t0, t1) -> {
            for (int t = t0; t < t1; t++) {
                int pos = sp.getAtIndex(JAVA_INT, posOff + t);
                for (int h = 0; h < heads; h++) {
                    long base = ((long) t * heads + h) * headDim;
                    for (int i = 0; i < half; i++) {
                        double ang = pos * (double) get(sf, freqOff + i);
                        float c = (float) Math.cos(ang), s = (float) Math.sin(ang);
                        if (inverse) s = -s;
                        int i0 = interleaved ? 2 * i : i, i1 = interleaved ? 2 * i + 1 : i + half;
                        float a = get(sx, xOff + base + i0), b = get(sx, xOff + base + i1);
                        set(so, outOff + base + i0, a * c - b * s);
                        set(so, outOff + base + i1, a * s + b * c);
                    }
                    for (int i = rotaryDim; i < headDim; i++) set(so, outOff + base + i, get(sx, xOff + base + i));
                }
            }
        });
    }

    @Override
    public void attentionSoftmax(Buffer scores, long scoresOff, Buffer pattern, long patternOff,
                                 Buffer keyValid, long keyValidOff, int batch, int heads, int tq, int tk, int qStart, int window) {
        if (window < 0) throw new LoupeException("attentionSoftmax: window " + window + " is negative (0 means no window)");
        MemorySegment ss = seg(scores), sp = seg(pattern), sv = keyValid == null ? null : seg(keyValid);
        int rows = batch * heads * tq;
        parallel(rows, tk, (r0, r1) -> {
            for (int r = r0; r < r1; r++) {
                int b = r / (heads * tq), q = r % tq;
                long base = (long) r * tk;
                int last = Math.min(tk - 1, qStart + q);
                // The first live key: 0, or the oldest slot of the sliding window.
                int first = window > 0 ? Math.max(0, qStart + q - window + 1) : 0;
                if (sv == null) {
                    // Causal (and window) mask only: keys [first, last] are live, the rest -inf.
                    for (int j = 0; j < tk; j++) {
                        if (j >= first && j <= last) continue;
                        set(ss, scoresOff + base + j, NEG_INF);
                        set(sp, patternOff + base + j, 0f);
                    }
                    if (last < first) continue;
                    softmaxRow(ss, scoresOff + base + first, sp, patternOff + base + first, last - first + 1);
                    continue;
                }
                float max = NEG_INF;
                for (int j = 0; j < tk; j++) {
                    boolean masked = j > last || j < first || sv.getAtIndex(JAVA_INT, keyValidOff + (long) b * tk + j) == 0;
                    if (masked) set(ss, scoresOff + base + j, NEG_INF);
                    else max = Math.max(max, get(ss, scoresOff + base + j));
                }
                if (max == NEG_INF) {
                    for (int j = 0; j < tk; j++) set(sp, patternOff + base + j, 0f);
                    continue;
                }
                double sum = 0;
                for (int j = 0; j < tk; j++) {
                    float s = get(ss, scoresOff + base + j);
                    float e = s == NEG_INF ? 0f : expf(s - max);
                    set(sp, patternOff + base + j, e);
                    sum += e;
                }
                float inv = (float) (1 / sum);
                for (int j = 0; j < tk; j++) set(sp, patternOff + base + j, get(sp, patternOff + base + j) * inv);
            }
        });
    }

    /** {@code p[0..n) = softmax(s[0..n))}, vectorized; every entry is live. */
    private static void softmaxRow(MemorySegment s, long sBase, MemorySegment p, long pBase, int n) {
        FloatVector vmax = FloatVector.broadcast(S, NEG_INF);
        int j = 0;
        for (; j <= n - S.length(); j += S.length()) vmax = vmax.max(FloatVector.fromMemorySegment(S, s, (sBase + j) * 4, LE));
        float max = vmax.reduceLanes(VectorOperators.MAX);
        for (; j < n; j++) max = Math.max(max, get(s, sBase + j));
        FloatVector vm = FloatVector.broadcast(S, max), acc = FloatVector.zero(S);
        j = 0;
        for (; j <= n - S.length(); j += S.length()) {
            FloatVector e = exp(FloatVector.fromMemorySegment(S, s, (sBase + j) * 4, LE).sub(vm));
            e.intoMemorySegment(p, (pBase + j) * 4, LE);
            acc = acc.add(e);
        }
        float sum = laneSum(acc);
        for (; j < n; j++) {
            float e = expf(get(s, sBase + j) - max);
            set(p, pBase + j, e);
            sum += e;
        }
        FloatVector inv = FloatVector.broadcast(S, 1f / sum);
        j = 0;
        for (; j <= n - S.length(); j += S.length())
            FloatVector.fromMemorySegment(S, p, (pBase + j) * 4, LE).mul(inv).intoMemorySegment(p, (pBase + j) * 4, LE);
        float invS = 1f / sum;
        for (; j < n; j++) set(p, pBase + j, get(p, pBase + j) * invS);
    }

    @Override
    public void softmaxBackward(Buffer dScores, long dsOff, Buffer dPattern, long dpOff, Buffer pattern, long pOff, int rows, int n) {
        MemorySegment sds = seg(dScores), sdp = seg(dPattern), sp = seg(pattern);
        parallel(rows, n, (r0, r1) -> {
            for (int r = r0; r < r1; r++) {
                long b = (long) r * n;
                double dot = 0;
                for (int j = 0; j < n; j++) dot += get(sdp, dpOff + b + j) * get(sp, pOff + b + j);
                for (int j = 0; j < n; j++) {
                    float p = get(sp, pOff + b + j);
                    if (p == 0f) continue;
                    set(sds, dsOff + b + j, get(sds, dsOff + b + j) + (float) (p * (get(sdp, dpOff + b + j) - dot)));
                }
            }
        });
    }

    // ------------------------------------------------------------------ loss

    @Override
    public void crossEntropy(Buffer losses, long lossOff, Buffer logits, long logitsOff, Buffer targets, long tOff,
                             int rows, int vocab) {
        MemorySegment sl = seg(losses), sx = seg(logits), st = seg(targets);
        parallel(rows, vocab, (r0, r1) -> {
            for (int r = r0; r < r1; r++) {
                int t = st.getAtIndex(JAVA_INT, tOff + r);
                if (t < 0) {
                    set(sl, lossOff + r, 0f);
                    continue;
                }
                long b = logitsOff + (long) r * vocab;
                set(sl, lossOff + r, (float) (logSumExp(sx, b, vocab) - get(sx, b + t)));
            }
        });
    }

    private static float rowMax(MemorySegment s, long base, int n) {
        FloatVector vmax = FloatVector.broadcast(S, NEG_INF);
        int j = 0;
        for (; j <= n - S.length(); j += S.length()) vmax = vmax.max(FloatVector.fromMemorySegment(S, s, (base + j) * 4, LE));
        float max = vmax.reduceLanes(VectorOperators.MAX);
        for (; j < n; j++) max = Math.max(max, get(s, base + j));
        return max;
    }

    private static double logSumExp(MemorySegment s, long base, int n) {
        float max = rowMax(s, base, n);
        int j;
        FloatVector vm = FloatVector.broadcast(S, max), acc = FloatVector.zero(S);
        j = 0;
        for (; j <= n - S.length(); j += S.length())
            acc = acc.add(exp(FloatVector.fromMemorySegment(S, s, (base + j) * 4, LE).sub(vm)));
        double sum = laneSum(acc);
        for (; j < n; j++) sum += expf(get(s, base + j) - max);
        return max + Math.log(sum);
    }

    @Override
    public void crossEntropyBackward(Buffer dLogits, long dOff, Buffer logits, long logitsOff, Buffer targets, long tOff,
                                     Buffer weight, long wOff, int rows, int vocab) {
        MemorySegment sd = seg(dLogits), sx = seg(logits), st = seg(targets), sw = seg(weight);
        parallel(rows, vocab, (r0, r1) -> {
            for (int r = r0; r < r1; r++) {
                int t = st.getAtIndex(JAVA_INT, tOff + r);
                if (t < 0) continue;
                long b = logitsOff + (long) r * vocab, d = dOff + (long) r * vocab;
                // p = e^(x - max) / Σ e^(x - max): the same exponentials as the forward's log-sum-exp,
                // without rounding the log-sum-exp itself to float first.
                float w = get(sw, wOff + r);
                float max = rowMax(sx, b, vocab);
                float inv = (float) (1 / Math.exp(logSumExp(sx, b, vocab) - max));
                float before = get(sd, d + t);
                FloatVector vm = FloatVector.broadcast(S, max);
                int j = 0;
                for (; j <= vocab - S.length(); j += S.length()) {
                    FloatVector p = exp(FloatVector.fromMemorySegment(S, sx, (b + j) * 4, LE).sub(vm)).mul(inv);
                    p.mul(w).add(FloatVector.fromMemorySegment(S, sd, (d + j) * 4, LE)).intoMemorySegment(sd, (d + j) * 4, LE);
                }
                for (; j < vocab; j++) set(sd, d + j, get(sd, d + j) + w * (expf(get(sx, b + j) - max) * inv));
                // The target's entry is w * (p - 1), formed before adding so that p near 1 does not cancel.
                set(sd, d + t, before + w * (expf(get(sx, b + t) - max) * inv - 1f));
            }
        });
    }

    // ------------------------------------------------------------------ reductions and optimizers

    @Override
    public void sumSquares(Buffer out, long outOff, Buffer x, long xOff, long n) {
        MemorySegment sx = seg(x);
        double s = 0;
        for (long i = 0; i < n; i++) {
            double v = get(sx, xOff + i);
            s += v * v;
        }
        set(seg(out), outOff, (float) s);
    }

    @Override
    public void adamw(Buffer param, long pOff, Buffer grad, long gOff, Buffer m, long mOff, Buffer v, long vOff, long n,
                      float lr, float beta1, float beta2, float eps, float weightDecay, int t, float gradScale) {
        MemorySegment sp = seg(param), sg = seg(grad), sm = seg(m), sv = seg(v);
        double c1 = 1 - Math.pow(beta1, t), c2 = 1 - Math.pow(beta2, t);
        for (long i = 0; i < n; i++) {
            float g = get(sg, gOff + i) * gradScale;
            float mi = beta1 * get(sm, mOff + i) + (1 - beta1) * g;
            float vi = beta2 * get(sv, vOff + i) + (1 - beta2) * g * g;
            set(sm, mOff + i, mi);
            set(sv, vOff + i, vi);
            double mhat = mi / c1, vhat = vi / c2;
            float p = get(sp, pOff + i);
            set(sp, pOff + i, (float) (p - lr * (mhat / (Math.sqrt(vhat) + eps) + weightDecay * p)));
        }
    }
}
