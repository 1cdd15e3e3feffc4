package loupe.kernels.cuda;

import loupe.LoupeException;
import loupe.kernels.Backend;
import loupe.kernels.Buffer;

import java.lang.foreign.MemorySegment;

/**
 * The CUDA backend: every {@link Backend} op as a launch of a kernel from kernels/src/main/cuda (or a
 * cuBLAS GEMM), queued on one stream. The op code here (shape checks, buffer views, grid and block
 * sizes, argument packing, the row-major to cuBLAS mapping) runs unchanged over a real GPU
 * ({@link JCudaRuntime}) and over the CPU execution harness ({@link EmulatedRuntime}), so what CI runs
 * is what a GPU user runs. Use {@link Device#cuda(int)}, {@link Device#best()} or {@link #emulated()}.
 *
 * <p>Every buffer argument is checked on the host against its buffer before a launch (a bad offset
 * or size raises LoupeException naming the op and argument); under the emulator every access inside a
 * kernel is checked as well.
 */
public final class CudaBackend implements Backend {
    /** Threads per block for grid-stride and row kernels (LOUPE_BLOCK in loupe_cuda.cuh). */
    static final int BLOCK = 256;
    /** Rows per block of the warp-per-row kernels (attention_softmax, softmax_backward). */
    static final int WARP_ROWS = BLOCK / 32;

    private final DeviceRuntime runtime;
    private final KernelLauncher launcher;
    private final DeviceMemoryPool pool;
    private volatile boolean closed;

    /** A backend over the given runtime; closing the backend closes the runtime. */
    public CudaBackend(DeviceRuntime runtime) {
        this.runtime = runtime;
        this.launcher = runtime.launcher();
        this.pool = new DeviceMemoryPool(runtime);
    }

    /** The CUDA backend over the CPU execution harness (needs the emulator library, see {@link EmulatedRuntime}). */
    public static CudaBackend emulated() {
        return new CudaBackend(new EmulatedRuntime(Long.getLong("loupe.cuda.emulator.seed", 0x10095L)));
    }

    @Override
    public String name() {
        return runtime.name();
    }

    /** The runtime below this backend (for diagnostics and tests). */
    public DeviceRuntime runtime() {
        return runtime;
    }

    DeviceMemoryPool pool() {
        return pool;
    }

    /** Bytes held by open buffers and by the pool's cache. */
    public long[] memoryInUse() {
        return new long[]{pool.liveBytes(), pool.cachedBytes()};
    }

    // ------------------------------------------------------------------ memory

    @Override
    public CudaBuffer allocate(long bytes) {
        if (bytes < 0) throw new LoupeException("negative allocation size " + bytes);
        if (closed) throw new LoupeException("allocation on a closed CUDA backend");
        if (bytes == 0) return new CudaBuffer(this, null, 0);
        DeviceAllocation a = pool.acquire(bytes);
        runtime.memsetZero(a, 0, bytes);
        return new CudaBuffer(this, a, bytes);
    }

    /** Memory from the pool without the zero fill (under the emulator: filled with NaN). */
    @Override
    public CudaBuffer allocateUninitialized(long bytes) {
        if (bytes < 0) throw new LoupeException("negative allocation size " + bytes);
        if (closed) throw new LoupeException("allocation on a closed CUDA backend");
        if (bytes == 0) return new CudaBuffer(this, null, 0);
        DeviceAllocation a = pool.acquire(bytes);
        runtime.markUninitialized(a, bytes);
        return new CudaBuffer(this, a, bytes);
    }

    @Override
    public void upload(MemorySegment src, Buffer dst, long dstByteOff, long bytes) {
        CudaBuffer d = own("upload", "dst", dst);
        range("upload", "dst", d, dstByteOff, bytes);
        if (src.byteSize() < bytes)
            throw new LoupeException("upload: the host segment holds " + src.byteSize() + " bytes, " + bytes + " requested");
        if (bytes > 0) runtime.upload(src, d.allocation(), dstByteOff, bytes);
    }

    @Override
    public void download(Buffer src, long srcByteOff, MemorySegment dst, long bytes) {
        CudaBuffer s = own("download", "src", src);
        range("download", "src", s, srcByteOff, bytes);
        if (dst.byteSize() < bytes)
            throw new LoupeException("download: the host segment holds " + dst.byteSize() + " bytes, " + bytes + " requested");
        if (bytes > 0) runtime.download(s.allocation(), srcByteOff, dst, bytes);
    }

    @Override
    public void synchronize() {
        runtime.synchronize();
    }

    @Override
    public void close() {
        if (closed) return;
        closed = true;
        try {
            runtime.synchronize();
        } finally {
            pool.close();
            runtime.close();
        }
    }

    // ------------------------------------------------------------------ argument checks and launches

    private CudaBuffer own(String op, String arg, Buffer b) {
        if (b == null) throw new LoupeException(op + ": argument " + arg + " is null");
        if (!(b instanceof CudaBuffer c) || c.backend() != this)
            throw new LoupeException(op + ": argument " + arg + " is a buffer of backend '" + b.backend().name()
                    + "', not of " + name() + "; copy it over first");
        if (c.isClosed()) throw new LoupeException(op + ": argument " + arg + " is a closed buffer");
        return c;
    }

    private static void range(String op, String arg, CudaBuffer b, long byteOff, long bytes) {
        if (byteOff < 0 || bytes < 0 || byteOff + bytes > b.bytes())
            throw new LoupeException(op + ": argument " + arg + " needs bytes [" + byteOff + ", " + (byteOff + bytes)
                    + ") but its buffer holds " + b.bytes() + " bytes");
    }

    /** A view of {@code count} 4-byte elements (f32 or i32) at element offset {@code off}. */
    private DeviceView view(String op, String arg, Buffer b, long off, long count) {
        CudaBuffer c = own(op, arg, b);
        if (off < 0 || count < 0) throw new LoupeException(op + ": argument " + arg + " has offset " + off + " and size " + count);
        range(op, arg, c, off * 4, count * 4);
        return new DeviceView(c.address() + off * 4, count * 4);
    }

    private DeviceView viewOrNull(String op, String arg, Buffer b, long off, long count) {
        return b == null ? null : view(op, arg, b, off, count);
    }

    /** A view from element {@code off} to the end of the buffer (for tables indexed by data). */
    private DeviceView tail(String op, String arg, Buffer b, long off) {
        CudaBuffer c = own(op, arg, b);
        long count = c.bytes() / 4 - off;
        if (off < 0 || count < 0) throw new LoupeException(op + ": argument " + arg + " offset " + off + " is past its buffer");
        return new DeviceView(c.address() + off * 4, count * 4);
    }

    private static void positive(String op, String what, long v) {
        if (v < 0) throw new LoupeException(op + ": " + what + " is negative (" + v + ")");
    }

    private void launch(String op, String kernel, Dim3 grid, Dim3 block, KernelArgs args) {
        if (closed) throw new LoupeException(op + " on a closed CUDA backend");
        launcher.launch(op, launcher.kernel(kernel), grid, block, args);
    }

    /** Blocks for a grid-stride loop over {@code work} items: one item per thread, capped at a few waves. */
    int gridStrideBlocks(long work) {
        return (int) Math.max(1, Math.min((work + BLOCK - 1) / BLOCK, runtime.gridStrideCap()));
    }

    private void gridStride(String op, String kernel, long work, KernelArgs args) {
        if (work == 0) return;
        launch(op, kernel, Dim3.of(gridStrideBlocks(work)), Dim3.of(BLOCK), args);
    }

    private void perRow(String op, String kernel, int rows, KernelArgs args) {
        if (rows == 0) return;
        launch(op, kernel, Dim3.of(rows), Dim3.of(BLOCK), args);
    }

    /** Grid of the (32, 8)-block column-sum kernels: column tiles x row chunks of at least 64 rows. */
    private Dim3 columnSumGrid(int rows, int cols) {
        int colBlocks = (cols + 31) / 32;
        int chunks = (int) Math.min((rows + 63L) / 64, Math.max(2, runtime.gridStrideCap() / colBlocks));
        return Dim3.of(colBlocks, Math.max(1, Math.min(chunks, 65535)));
    }

    // ------------------------------------------------------------------ dense linear algebra

    @Override
    public void gemm(boolean transA, boolean transB, int m, int n, int k, float alpha,
                     Buffer a, long aOff, int lda, long strideA,
                     Buffer b, long bOff, int ldb, long strideB,
                     float beta, Buffer c, long cOff, int ldc, long strideC, int batch) {
        String op = "gemm";
        positive(op, "m", m);
        positive(op, "n", n);
        positive(op, "k", k);
        positive(op, "batch", batch);
        // row-major storage: A is [rowsA, colsA] with row stride lda, and so on
        int rowsA = transA ? k : m, colsA = transA ? m : k, rowsB = transB ? n : k, colsB = transB ? k : n;
        if (lda < Math.max(1, colsA) || ldb < Math.max(1, colsB) || ldc < Math.max(1, n))
            throw new LoupeException("gemm: row strides lda=" + lda + " ldb=" + ldb + " ldc=" + ldc + " are shorter than the rows ("
                    + colsA + ", " + colsB + ", " + n + ")");
        if (m == 0 || n == 0 || batch == 0) return;
        DeviceView va = k == 0 ? null : view(op, "a", a, aOff, extent(batch, strideA, rowsA, lda, colsA));
        DeviceView vb = k == 0 ? null : view(op, "b", b, bOff, extent(batch, strideB, rowsB, ldb, colsB));
        view(op, "c", c, cOff, extent(batch, strideC, m, ldc, n));
        // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: hand cuBLAS the operands
        // swapped, with m and n swapped; each row-major matrix read column-major is its transpose, so
        // the op flags stay as they are.
        // With k == 0 cuBLAS reads neither A nor B (C = beta C); any valid pointer will do.
        DeviceAllocation dc = ((CudaBuffer) c).allocation();
        DeviceAllocation da = va == null ? dc : ((CudaBuffer) a).allocation();
        DeviceAllocation db = vb == null ? dc : ((CudaBuffer) b).allocation();
        long aByte = va == null ? 0 : aOff * 4, bByte = vb == null ? 0 : bOff * 4;
        ColumnMajorBlas blas = runtime.blas();
        if (batch == 1) {
            blas.sgemm(transB, transA, n, m, k, alpha, db, bByte, ldb, da, aByte, lda, beta, dc, cOff * 4, ldc);
        } else {
            blas.sgemmStridedBatched(transB, transA, n, m, k, alpha, db, bByte, ldb, strideB, da, aByte, lda, strideA,
                    beta, dc, cOff * 4, ldc, strideC, batch);
        }
    }

    /** Elements spanned by a batch of row-major matrices. */
    private static long extent(int batch, long stride, int rows, int ld, int cols) {
        if (stride < 0) throw new LoupeException("gemm: negative batch stride " + stride);
        return (batch - 1) * stride + (long) (rows - 1) * ld + cols;
    }

    // ------------------------------------------------------------------ elementwise

    @Override
    public void fill(Buffer x, long xOff, long n, float value) {
        positive("fill", "n", n);
        gridStride("fill", "fill", n, new KernelArgs().ptr("x", view("fill", "x", x, xOff, n)).i64(n).f32(value));
    }

    @Override
    public void add(Buffer out, long outOff, Buffer a, long aOff, Buffer b, long bOff, long n) {
        binary("add", out, outOff, a, aOff, b, bOff, n);
    }

    @Override
    public void mul(Buffer out, long outOff, Buffer a, long aOff, Buffer b, long bOff, long n) {
        binary("mul", out, outOff, a, aOff, b, bOff, n);
    }

    private void binary(String op, Buffer out, long outOff, Buffer a, long aOff, Buffer b, long bOff, long n) {
        positive(op, "n", n);
        gridStride(op, op, n, new KernelArgs().ptr("out", view(op, "out", out, outOff, n))
                .ptr("a", view(op, "a", a, aOff, n)).ptr("b", view(op, "b", b, bOff, n)).i64(n));
    }

    @Override
    public void axpy(Buffer y, long yOff, float alpha, Buffer x, long xOff, long n) {
        positive("axpy", "n", n);
        gridStride("axpy", "axpy", n, new KernelArgs().ptr("y", view("axpy", "y", y, yOff, n)).f32(alpha)
                .ptr("x", view("axpy", "x", x, xOff, n)).i64(n));
    }

    @Override
    public void scale(Buffer x, long xOff, long n, float alpha) {
        positive("scale", "n", n);
        gridStride("scale", "scale", n, new KernelArgs().ptr("x", view("scale", "x", x, xOff, n)).i64(n).f32(alpha));
    }

    @Override
    public void addBias(Buffer x, long xOff, Buffer bias, long biasOff, int rows, int cols) {
        String op = "addBias";
        positive(op, "rows", rows);
        positive(op, "cols", cols);
        long n = (long) rows * cols;
        gridStride(op, "add_bias", n, new KernelArgs().ptr("x", view(op, "x", x, xOff, n))
                .ptr("bias", view(op, "bias", bias, biasOff, cols)).i32(rows).i32(cols));
    }

    @Override
    public void scaleShiftRows(Buffer out, long outOff, Buffer x, long xOff, Buffer weight, long wOff,
                               Buffer bias, long bOff, int rows, int cols) {
        String op = "scaleShiftRows";
        positive(op, "rows", rows);
        positive(op, "cols", cols);
        long n = (long) rows * cols;
        gridStride(op, "scale_shift_rows", n, new KernelArgs().ptr("out", view(op, "out", out, outOff, n))
                .ptr("x", view(op, "x", x, xOff, n)).ptr("weight", viewOrNull(op, "weight", weight, wOff, cols))
                .ptr("bias", viewOrNull(op, "bias", bias, bOff, cols)).i32(rows).i32(cols));
    }

    @Override
    public void biasBackward(Buffer dBias, long dBiasOff, Buffer dOut, long dOutOff, int rows, int cols) {
        String op = "biasBackward";
        positive(op, "rows", rows);
        positive(op, "cols", cols);
        if (rows == 0 || cols == 0) return;
        launch(op, "bias_backward", columnSumGrid(rows, cols), Dim3.of(32, 8), new KernelArgs()
                .ptr("dBias", view(op, "dBias", dBias, dBiasOff, cols))
                .ptr("dOut", view(op, "dOut", dOut, dOutOff, (long) rows * cols)).i32(rows).i32(cols));
    }

    @Override
    public void copyStrided(Buffer dst, long dstOff, long[] dstStrides, Buffer src, long srcOff, long[] srcStrides,
                            int[] shape, boolean accumulate) {
        String op = "copyStrided";
        if (shape.length != 4 || dstStrides.length != 4 || srcStrides.length != 4)
            throw new LoupeException("copyStrided takes 4-d shapes and strides");
        long total = 1, dstSpan = 1, srcSpan = 1;
        for (int d = 0; d < 4; d++) {
            positive(op, "shape[" + d + "]", shape[d]);
            positive(op, "dstStrides[" + d + "]", dstStrides[d]);
            positive(op, "srcStrides[" + d + "]", srcStrides[d]);
            total *= shape[d];
            dstSpan += (shape[d] - 1L) * dstStrides[d];
            srcSpan += (shape[d] - 1L) * srcStrides[d];
        }
        if (total == 0) return;
        gridStride(op, "copy_strided", total, new KernelArgs()
                .ptr("dst", view(op, "dst", dst, dstOff, dstSpan)).ptr("src", view(op, "src", src, srcOff, srcSpan))
                .i32(shape[0]).i32(shape[1]).i32(shape[2]).i32(shape[3])
                .i64(dstStrides[0]).i64(dstStrides[1]).i64(dstStrides[2]).i64(dstStrides[3])
                .i64(srcStrides[0]).i64(srcStrides[1]).i64(srcStrides[2]).i64(srcStrides[3])
                .i32(accumulate ? 1 : 0));
    }

    // ------------------------------------------------------------------ activations

    @Override
    public void gelu(Buffer out, long outOff, Buffer x, long xOff, long n, boolean tanhApprox) {
        positive("gelu", "n", n);
        gridStride("gelu", "gelu_forward", n, new KernelArgs().ptr("out", view("gelu", "out", out, outOff, n))
                .ptr("x", view("gelu", "x", x, xOff, n)).i64(n).i32(tanhApprox ? 1 : 0));
    }

    /** {@code add_bias_gelu_forward}: {@link #addBias} and {@link #gelu} in one grid-stride pass (same bits). */
    @Override
    public void addBiasGelu(Buffer pre, long preOff, Buffer post, long postOff, Buffer bias, long biasOff,
                            int rows, int cols, boolean tanhApprox) {
        String op = "addBiasGelu";
        positive(op, "rows", rows);
        positive(op, "cols", cols);
        long n = (long) rows * cols;
        gridStride(op, "add_bias_gelu_forward", n, new KernelArgs().ptr("pre", view(op, "pre", pre, preOff, n))
                .ptr("post", view(op, "post", post, postOff, n)).ptr("bias", view(op, "bias", bias, biasOff, cols))
                .i32(rows).i32(cols).i32(tanhApprox ? 1 : 0));
    }

    @Override
    public void geluBackward(Buffer dx, long dxOff, Buffer x, long xOff, Buffer dOut, long dOutOff, long n, boolean tanhApprox) {
        String op = "geluBackward";
        positive(op, "n", n);
        gridStride(op, "gelu_backward", n, new KernelArgs().ptr("dx", view(op, "dx", dx, dxOff, n))
                .ptr("x", view(op, "x", x, xOff, n)).ptr("dOut", view(op, "dOut", dOut, dOutOff, n)).i64(n).i32(tanhApprox ? 1 : 0));
    }

    @Override
    public void silu(Buffer out, long outOff, Buffer x, long xOff, long n) {
        unary("silu", "silu_forward", out, outOff, x, xOff, n);
    }

    @Override
    public void siluBackward(Buffer dx, long dxOff, Buffer x, long xOff, Buffer dOut, long dOutOff, long n) {
        unaryBackward("siluBackward", "silu_backward", dx, dxOff, x, xOff, dOut, dOutOff, n);
    }

    @Override
    public void relu(Buffer out, long outOff, Buffer x, long xOff, long n) {
        unary("relu", "relu_forward", out, outOff, x, xOff, n);
    }

    @Override
    public void reluBackward(Buffer dx, long dxOff, Buffer x, long xOff, Buffer dOut, long dOutOff, long n) {
        unaryBackward("reluBackward", "relu_backward", dx, dxOff, x, xOff, dOut, dOutOff, n);
    }

    private void unary(String op, String kernel, Buffer out, long outOff, Buffer x, long xOff, long n) {
        positive(op, "n", n);
        gridStride(op, kernel, n, new KernelArgs().ptr("out", view(op, "out", out, outOff, n)).ptr("x", view(op, "x", x, xOff, n)).i64(n));
    }

    private void unaryBackward(String op, String kernel, Buffer dx, long dxOff, Buffer x, long xOff, Buffer dOut, long dOutOff, long n) {
        positive(op, "n", n);
        gridStride(op, kernel, n, new KernelArgs().ptr("dx", view(op, "dx", dx, dxOff, n)).ptr("x", view(op, "x", x, xOff, n))
                .ptr("dOut", view(op, "dOut", dOut, dOutOff, n)).i64(n));
    }

    // ------------------------------------------------------------------ embeddings

    @Override
    public void gatherRows(Buffer out, long outOff, Buffer table, long tableOff, Buffer ids, long idsOff, int n, int cols) {
        String op = "gatherRows";
        positive(op, "n", n);
        positive(op, "cols", cols);
        gridStride(op, "gather_rows", (long) n * cols, new KernelArgs().ptr("out", view(op, "out", out, outOff, (long) n * cols))
                .ptr("table", tail(op, "table", table, tableOff)).ptr("ids", view(op, "ids", ids, idsOff, n)).i32(n).i32(cols));
    }

    @Override
    public void scatterAddRows(Buffer dTable, long dTableOff, Buffer ids, long idsOff, Buffer dOut, long dOutOff, int n, int cols) {
        String op = "scatterAddRows";
        positive(op, "n", n);
        positive(op, "cols", cols);
        gridStride(op, "scatter_add_rows", (long) n * cols, new KernelArgs().ptr("dTable", tail(op, "dTable", dTable, dTableOff))
                .ptr("ids", view(op, "ids", ids, idsOff, n)).ptr("dOut", view(op, "dOut", dOut, dOutOff, (long) n * cols))
                .i32(n).i32(cols));
    }

    // ------------------------------------------------------------------ normalization

    @Override
    public void layerNorm(Buffer out, long outOff, Buffer normalized, long normOff, Buffer scale, long scaleOff,
                          Buffer x, long xOff, Buffer weight, long wOff, Buffer bias, long bOff,
                          int rows, int cols, float eps) {
        String op = "layerNorm";
        positive(op, "rows", rows);
        positive(op, "cols", cols);
        long n = (long) rows * cols;
        perRow(op, "layernorm_forward", cols == 0 ? 0 : rows, new KernelArgs()
                .ptr("out", viewOrNull(op, "out", out, outOff, n)).ptr("normalized", viewOrNull(op, "normalized", normalized, normOff, n))
                .ptr("scale", viewOrNull(op, "scale", scale, scaleOff, rows)).ptr("x", view(op, "x", x, xOff, n))
                .ptr("weight", viewOrNull(op, "weight", weight, wOff, cols)).ptr("bias", viewOrNull(op, "bias", bias, bOff, cols))
                .i32(rows).i32(cols).f32(eps));
    }

    @Override
    public void layerNormBackward(Buffer dx, long dxOff, Buffer dWeight, long dwOff, Buffer dBias, long dbOff,
                                  Buffer dOut, long dOutOff, Buffer normalized, long normOff, Buffer scale, long scaleOff,
                                  Buffer weight, long wOff, int rows, int cols) {
        normBackward("layerNormBackward", "layernorm_backward", dx, dxOff, dWeight, dwOff, dBias, dbOff, dOut, dOutOff,
                normalized, normOff, scale, scaleOff, weight, wOff, rows, cols);
    }

    @Override
    public void rmsNorm(Buffer out, long outOff, Buffer normalized, long normOff, Buffer scale, long scaleOff,
                        Buffer x, long xOff, Buffer weight, long wOff, int rows, int cols, float eps) {
        String op = "rmsNorm";
        positive(op, "rows", rows);
        positive(op, "cols", cols);
        long n = (long) rows * cols;
        perRow(op, "rmsnorm_forward", cols == 0 ? 0 : rows, new KernelArgs()
                .ptr("out", viewOrNull(op, "out", out, outOff, n)).ptr("normalized", viewOrNull(op, "normalized", normalized, normOff, n))
                .ptr("scale", viewOrNull(op, "scale", scale, scaleOff, rows)).ptr("x", view(op, "x", x, xOff, n))
                .ptr("weight", viewOrNull(op, "weight", weight, wOff, cols)).i32(rows).i32(cols).f32(eps));
    }

    /**
     * {@code add_layernorm_forward} / {@code add_rmsnorm_forward}: {@link #add} and the norm in one block
     * per row (same bits as the two launches).
     */
    @Override
    public void addNorm(Buffer sum, long sumOff, Buffer a, long aOff, Buffer b, long bOff,
                        Buffer out, long outOff, Buffer normalized, long normOff, Buffer scale, long scaleOff,
                        Buffer weight, long wOff, Buffer bias, long biasOff, int rows, int cols, float eps, boolean rms) {
        String op = "addNorm";
        positive(op, "rows", rows);
        positive(op, "cols", cols);
        if (rms && bias != null) throw new LoupeException("addNorm: RMSNorm has no bias; pass null");
        long n = (long) rows * cols;
        KernelArgs args = new KernelArgs().ptr("sum", view(op, "sum", sum, sumOff, n))
                .ptr("a", view(op, "a", a, aOff, n)).ptr("b", view(op, "b", b, bOff, n))
                .ptr("out", viewOrNull(op, "out", out, outOff, n)).ptr("normalized", viewOrNull(op, "normalized", normalized, normOff, n))
                .ptr("scale", viewOrNull(op, "scale", scale, scaleOff, rows)).ptr("weight", viewOrNull(op, "weight", weight, wOff, cols));
        if (!rms) args.ptr("bias", viewOrNull(op, "bias", bias, biasOff, cols));
        perRow(op, rms ? "add_rmsnorm_forward" : "add_layernorm_forward", cols == 0 ? 0 : rows, args.i32(rows).i32(cols).f32(eps));
    }

    @Override
    public void rmsNormBackward(Buffer dx, long dxOff, Buffer dWeight, long dwOff, Buffer dOut, long dOutOff,
                                Buffer normalized, long normOff, Buffer scale, long scaleOff, Buffer weight, long wOff,
                                int rows, int cols) {
        normBackward("rmsNormBackward", "rmsnorm_backward", dx, dxOff, dWeight, dwOff, null, 0, dOut, dOutOff,
                normalized, normOff, scale, scaleOff, weight, wOff, rows, cols);
    }

    private void normBackward(String op, String kernel, Buffer dx, long dxOff, Buffer dWeight, long dwOff, Buffer dBias, long dbOff,
                              Buffer dOut, long dOutOff, Buffer normalized, long normOff, Buffer scale, long scaleOff,
                              Buffer weight, long wOff, int rows, int cols) {
        positive(op, "rows", rows);
        positive(op, "cols", cols);
        if (rows == 0 || cols == 0) return;
        long n = (long) rows * cols;
        DeviceView vOut = view(op, "dOut", dOut, dOutOff, n), vNorm = view(op, "normalized", normalized, normOff, n);
        perRow(op, kernel, rows, new KernelArgs().ptr("dx", view(op, "dx", dx, dxOff, n)).ptr("dOut", vOut)
                .ptr("normalized", vNorm).ptr("scale", view(op, "scale", scale, scaleOff, rows))
                .ptr("weight", viewOrNull(op, "weight", weight, wOff, cols)).i32(rows).i32(cols));
        if (dWeight != null || dBias != null)
            launch(op, "norm_params_backward", columnSumGrid(rows, cols), Dim3.of(32, 8), new KernelArgs()
                    .ptr("dWeight", viewOrNull(op, "dWeight", dWeight, dwOff, cols)).ptr("dBias", viewOrNull(op, "dBias", dBias, dbOff, cols))
                    .ptr("dOut", vOut).ptr("normalized", vNorm).i32(rows).i32(cols));
    }

    // ------------------------------------------------------------------ attention

    @Override
    public void rope(Buffer out, long outOff, Buffer x, long xOff, Buffer positions, long posOff, Buffer invFreq, long freqOff,
                     int tokens, int heads, int headDim, int rotaryDim, boolean interleaved, boolean inverse) {
        String op = "rope";
        positive(op, "tokens", tokens);
        positive(op, "heads", heads);
        if (rotaryDim < 0 || rotaryDim % 2 != 0 || rotaryDim > headDim)
            throw new LoupeException("rope: rotaryDim " + rotaryDim + " must be even and at most headDim " + headDim);
        long n = (long) tokens * heads * headDim;
        long work = (long) tokens * heads * (rotaryDim / 2 + headDim - rotaryDim);
        gridStride(op, "rope", work, new KernelArgs().ptr("out", view(op, "out", out, outOff, n)).ptr("x", view(op, "x", x, xOff, n))
                .ptr("positions", view(op, "positions", positions, posOff, tokens))
                .ptr("invFreq", view(op, "invFreq", invFreq, freqOff, rotaryDim / 2))
                .i32(tokens).i32(heads).i32(headDim).i32(rotaryDim).i32(interleaved ? 1 : 0).i32(inverse ? 1 : 0));
    }

    @Override
    public void attentionSoftmax(Buffer scores, long scoresOff, Buffer pattern, long patternOff,
                                 Buffer keyValid, long keyValidOff, int batch, int heads, int tq, int tk, int qStart, int window) {
        String op = "attentionSoftmax";
        if (window < 0) throw new LoupeException(op + ": window " + window + " is negative (0 means no window)");
        positive(op, "batch", batch);
        positive(op, "heads", heads);
        positive(op, "tq", tq);
        positive(op, "tk", tk);
        long rows = (long) batch * heads * tq, n = rows * tk;
        if (rows == 0 || tk == 0) return;
        launch(op, "attention_softmax", Dim3.of(Math.toIntExact((rows + WARP_ROWS - 1) / WARP_ROWS)), Dim3.of(BLOCK), new KernelArgs()
                .ptr("scores", view(op, "scores", scores, scoresOff, n)).ptr("pattern", view(op, "pattern", pattern, patternOff, n))
                .ptr("keyValid", viewOrNull(op, "keyValid", keyValid, keyValidOff, (long) batch * tk))
                .i32(batch).i32(heads).i32(tq).i32(tk).i32(qStart).i32(window));
    }

    @Override
    public void softmaxBackward(Buffer dScores, long dsOff, Buffer dPattern, long dpOff, Buffer pattern, long pOff, int rows, int n) {
        String op = "softmaxBackward";
        positive(op, "rows", rows);
        positive(op, "n", n);
        if (rows == 0 || n == 0) return;
        long total = (long) rows * n;
        launch(op, "softmax_backward", Dim3.of((rows + WARP_ROWS - 1) / WARP_ROWS), Dim3.of(BLOCK), new KernelArgs()
                .ptr("dScores", view(op, "dScores", dScores, dsOff, total)).ptr("dPattern", view(op, "dPattern", dPattern, dpOff, total))
                .ptr("pattern", view(op, "pattern", pattern, pOff, total)).i32(rows).i32(n));
    }

    // ------------------------------------------------------------------ loss

    @Override
    public void crossEntropy(Buffer losses, long lossOff, Buffer logits, long logitsOff, Buffer targets, long tOff, int rows, int vocab) {
        String op = "crossEntropy";
        positive(op, "rows", rows);
        positive(op, "vocab", vocab);
        perRow(op, "cross_entropy_forward", rows, new KernelArgs().ptr("losses", view(op, "losses", losses, lossOff, rows))
                .ptr("logits", view(op, "logits", logits, logitsOff, (long) rows * vocab))
                .ptr("targets", view(op, "targets", targets, tOff, rows)).i32(rows).i32(vocab));
    }

    @Override
    public void crossEntropyBackward(Buffer dLogits, long dOff, Buffer logits, long logitsOff, Buffer targets, long tOff,
                                     Buffer weight, long wOff, int rows, int vocab) {
        String op = "crossEntropyBackward";
        positive(op, "rows", rows);
        positive(op, "vocab", vocab);
        long n = (long) rows * vocab;
        perRow(op, "cross_entropy_backward", rows, new KernelArgs().ptr("dLogits", view(op, "dLogits", dLogits, dOff, n))
                .ptr("logits", view(op, "logits", logits, logitsOff, n)).ptr("targets", view(op, "targets", targets, tOff, rows))
                .ptr("weight", view(op, "weight", weight, wOff, rows)).i32(rows).i32(vocab));
    }

    // ------------------------------------------------------------------ reductions and optimizers

    @Override
    public void sumSquares(Buffer out, long outOff, Buffer x, long xOff, long n) {
        String op = "sumSquares";
        positive(op, "n", n);
        DeviceView vOut = view(op, "out", out, outOff, 1);
        if (n == 0) {
            fill(out, outOff, 1, 0f);
            return;
        }
        int blocks = gridStrideBlocks(n);
        try (CudaBuffer partials = allocate(blocks * 4L)) {
            DeviceView vp = new DeviceView(partials.address(), blocks * 4L);
            launch(op, "sum_squares_partial", Dim3.of(blocks), Dim3.of(BLOCK), new KernelArgs().ptr("partials", vp)
                    .ptr("x", view(op, "x", x, xOff, n)).i64(n));
            launch(op, "sum_squares_final", Dim3.of(1), Dim3.of(BLOCK), new KernelArgs().ptr("out", vOut).ptr("partials", vp).i32(blocks));
        }
    }

    @Override
    public void adamw(Buffer param, long pOff, Buffer grad, long gOff, Buffer m, long mOff, Buffer v, long vOff, long n,
                      float lr, float beta1, float beta2, float eps, float weightDecay, int t, float gradScale) {
        String op = "adamw";
        positive(op, "n", n);
        if (t < 1) throw new LoupeException("adamw: step t is 1-based, got " + t);
        float c1 = (float) (1 - Math.pow(beta1, t)), c2 = (float) (1 - Math.pow(beta2, t));
        gridStride(op, "adamw", n, new KernelArgs().ptr("param", view(op, "param", param, pOff, n))
                .ptr("grad", view(op, "grad", grad, gOff, n)).ptr("m", view(op, "m", m, mOff, n)).ptr("v", view(op, "v", v, vOff, n))
                .i64(n).f32(lr).f32(beta1).f32(beta2).f32(eps).f32(weightDecay).f32(c1).f32(c2).f32(gradScale));
    }

    @Override
    public String toString() {
        return "CudaBackend[" + name() + ", GEMM: " + runtime.blas().library() + "]";
    }
}
