package loupe.kernels;

import loupe.LoupeException;

import java.lang.foreign.MemorySegment;

/**
 * The op set: every operation the models, their backward passes and the interpretability methods
 * need, with one contract for the CPU and the CUDA backend.
 *
 * <p>Conventions, as in llm.c:
 * <ul>
 *   <li>Tensors are row-major f32 unless an argument says i32. Every buffer argument comes with an
 *       element offset ({@code ...Off}), so that ops can work on views without copies.</li>
 *   <li>Sizes are explicit ints/longs; shapes are given in the Javadoc as {@code [rows, cols]}.</li>
 *   <li>Backward ops <b>accumulate</b> into their gradient outputs ({@code +=}), so that gradients
 *       flowing into one tensor from several uses add up without extra buffers.</li>
 *   <li>A nullable buffer argument is documented as such; passing null skips that output.</li>
 *   <li>Ops are asynchronous on devices that queue work; {@link #synchronize()} waits.</li>
 * </ul>
 */
public interface Backend extends AutoCloseable {

    /** Short name for messages and benchmarks: "cpu", "cuda:0", "emulated". */
    String name();

    // ------------------------------------------------------------------ memory

    /** Allocates {@code bytes} bytes, zero-filled. */
    Buffer allocate(long bytes);

    /**
     * Allocates {@code bytes} bytes whose content is undefined, for outputs that an op overwrites
     * entirely (most activations): it saves the zero-fill's memory traffic. Defaults to {@link #allocate}.
     */
    default Buffer allocateUninitialized(long bytes) {
        return allocate(bytes);
    }

    /** Copies {@code bytes} bytes from host memory into {@code dst} at byte offset {@code dstByteOff}. */
    void upload(MemorySegment src, Buffer dst, long dstByteOff, long bytes);

    /** Copies {@code bytes} bytes from {@code src} at byte offset {@code srcByteOff} to host memory. */
    void download(Buffer src, long srcByteOff, MemorySegment dst, long bytes);

    /**
     * Returns memory that the backend keeps cached for reuse (idle blocks of its allocation pool) to the
     * system, as after loading weights through temporaries. Default: nothing is cached.
     */
    default void releaseCachedMemory() {}

    /** Waits until all queued work has finished. */
    void synchronize();

    /** Releases the backend's own resources (thread pools, contexts, handles). */
    @Override
    default void close() {}

    // ------------------------------------------------------------------ dense linear algebra

    /**
     * Strided-batched row-major GEMM: for each {@code i < batch},
     * {@code C_i[m,n] = alpha * op(A_i) · op(B_i) + beta * C_i}, where {@code op(A_i)} is {@code [m,k]}
     * ({@code A_i} is stored {@code [k,m]} when {@code transA}) and {@code op(B_i)} is {@code [k,n]}
     * ({@code B_i} stored {@code [n,k]} when {@code transB}). {@code lda/ldb/ldc} are row strides in
     * elements; {@code A_i} starts at {@code aOff + i*strideA}, and so on. With {@code beta == 0} the
     * previous content of C is ignored (NaNs in it do not propagate).
     */
    void gemm(boolean transA, boolean transB, int m, int n, int k, float alpha,
              Buffer a, long aOff, int lda, long strideA,
              Buffer b, long bOff, int ldb, long strideB,
              float beta, Buffer c, long cOff, int ldc, long strideC, int batch);

    /**
     * Whether a dense row-major GEMM {@code C[m, n] = A[m, k] · op(B)} (alpha 1, beta 0) gives every row of
     * C the bits that GEMMs of {@code refM} rows give it, for this B ({@code [n, k]} when {@code transB},
     * else {@code [k, n]}; {@code ldb} its row stride). A BLAS may pick another kernel for another matrix
     * height and round differently; callers that recompute only some rows of a sequence (and must match a
     * whole-sequence run bit for bit) ask first. A backend that cannot promise it answers false.
     */
    default boolean sameRowBits(boolean transB, int m, int refM, int n, int k, Buffer b, long bOff, int ldb) {
        return false;
    }

    // ------------------------------------------------------------------ elementwise

    /** {@code x[0..n) = value}. */
    void fill(Buffer x, long xOff, long n, float value);

    /** {@code out = a + b} over {@code n} elements; {@code out} may alias {@code a} or {@code b}. */
    void add(Buffer out, long outOff, Buffer a, long aOff, Buffer b, long bOff, long n);

    /** {@code out = a * b} elementwise; {@code out} may alias an input. */
    void mul(Buffer out, long outOff, Buffer a, long aOff, Buffer b, long bOff, long n);

    /** {@code y += alpha * x} over {@code n} elements. */
    void axpy(Buffer y, long yOff, float alpha, Buffer x, long xOff, long n);

    /** {@code x *= alpha} over {@code n} elements. */
    void scale(Buffer x, long xOff, long n, float alpha);

    /** {@code x[r, :] += bias[:]} for {@code x [rows, cols]}, {@code bias [cols]}. */
    void addBias(Buffer x, long xOff, Buffer bias, long biasOff, int rows, int cols);

    /**
     * {@code out[r, :] = x[r, :] * weight[:] + bias[:]} for {@code x [rows, cols]} (weight and bias
     * nullable): a norm's affine part, applied again when a hook edits {@code hook_normalized}. The
     * default runs two ops per row; backends override it with one pass.
     */
    default void scaleShiftRows(Buffer out, long outOff, Buffer x, long xOff, Buffer weight, long wOff,
                                Buffer bias, long bOff, int rows, int cols) {
        for (int r = 0; r < rows; r++) {
            long o = outOff + (long) r * cols, i = xOff + (long) r * cols;
            if (weight != null) mul(out, o, x, i, weight, wOff, cols);
            else copyStrided(out, o, new long[]{0, 0, 0, 1}, x, i, new long[]{0, 0, 0, 1}, new int[]{1, 1, 1, cols}, false);
        }
        if (bias != null) addBias(out, outOff, bias, bOff, rows, cols);
    }

    /** {@code dBias[:] += Σ_r dOut[r, :]} for {@code dOut [rows, cols]}. */
    void biasBackward(Buffer dBias, long dBiasOff, Buffer dOut, long dOutOff, int rows, int cols);

    /**
     * Copies a 4-d strided block: {@code dst[i,j,k,l] = src[i,j,k,l]} for the index ranges
     * {@code shape[0..3]}, with element strides per dimension on each side (pad leading dimensions
     * with size 1). With {@code accumulate} it adds instead: {@code dst += src}.
     * This is how hooks read and write views (a head of {@code [b,p,h,d]}, a position, a batch row).
     * Destination elements must be distinct (no zero destination stride over a range larger than 1),
     * so that a parallel backend needs no atomics.
     */
    void copyStrided(Buffer dst, long dstOff, long[] dstStrides,
                     Buffer src, long srcOff, long[] srcStrides, int[] shape, boolean accumulate);

    // ------------------------------------------------------------------ activations

    /** GELU over {@code n} elements: the tanh approximation ({@code gelu_new}) or the exact erf form. */
    void gelu(Buffer out, long outOff, Buffer x, long xOff, long n, boolean tanhApprox);

    /**
     * Bias add and GELU in one pass over {@code pre [rows, cols]}: {@code pre[r, c] += bias[c]} (in place:
     * {@code pre} keeps the biased pre-activation, e.g. for {@code hook_pre}), then
     * {@code post[r, c] = gelu(pre[r, c])} ({@code post [rows, cols]}, {@code bias [cols]}), the tanh
     * approximation or the exact erf form as in {@link #gelu}. The result is bit-identical to
     * {@link #addBias} followed by {@link #gelu} on the same backend (the default runs exactly that), so
     * choosing the fused op changes no number. {@code post} may alias {@code pre} (the pre-activation is
     * then not kept).
     */
    default void addBiasGelu(Buffer pre, long preOff, Buffer post, long postOff, Buffer bias, long biasOff,
                             int rows, int cols, boolean tanhApprox) {
        addBias(pre, preOff, bias, biasOff, rows, cols);
        gelu(post, postOff, pre, preOff, (long) rows * cols, tanhApprox);
    }

    /** {@code dx += dOut * gelu'(x)}. */
    void geluBackward(Buffer dx, long dxOff, Buffer x, long xOff, Buffer dOut, long dOutOff, long n, boolean tanhApprox);

    /** {@code out = silu(x) = x * sigmoid(x)}. */
    void silu(Buffer out, long outOff, Buffer x, long xOff, long n);

    /** {@code dx += dOut * silu'(x)}. */
    void siluBackward(Buffer dx, long dxOff, Buffer x, long xOff, Buffer dOut, long dOutOff, long n);

    /** {@code out = max(x, 0)}. */
    void relu(Buffer out, long outOff, Buffer x, long xOff, long n);

    /** {@code dx += dOut * (x > 0)}. */
    void reluBackward(Buffer dx, long dxOff, Buffer x, long xOff, Buffer dOut, long dOutOff, long n);

    // ------------------------------------------------------------------ embeddings

    /**
     * Row gather: {@code out[i, :] = table[ids[i], :]} for {@code out [n, cols]}, {@code ids} i32 {@code [n]}.
     * Ids must be in range (the caller validates them on the host).
     */
    void gatherRows(Buffer out, long outOff, Buffer table, long tableOff, Buffer ids, long idsOff, int n, int cols);

    /** Backward of {@link #gatherRows}: {@code dTable[ids[i], :] += dOut[i, :]}. */
    void scatterAddRows(Buffer dTable, long dTableOff, Buffer ids, long idsOff, Buffer dOut, long dOutOff, int n, int cols);

    // ------------------------------------------------------------------ normalization

    /**
     * LayerNorm over rows of {@code x [rows, cols]} with biased variance:
     * {@code scale = sqrt(var + eps)} ({@code [rows]}), {@code normalized = (x - mean) / scale}
     * ({@code [rows, cols]}), {@code out = normalized * weight + bias}. {@code weight}/{@code bias} may be
     * null (gain 1 / bias 0). {@code out} may alias {@code normalized}.
     */
    void layerNorm(Buffer out, long outOff, Buffer normalized, long normOff, Buffer scale, long scaleOff,
                   Buffer x, long xOff, Buffer weight, long wOff, Buffer bias, long bOff,
                   int rows, int cols, float eps);

    /**
     * Backward of {@link #layerNorm} from its saved {@code normalized} and {@code scale}:
     * {@code dx += ...}, {@code dWeight += Σ dOut*normalized}, {@code dBias += Σ dOut}
     * ({@code dWeight}, {@code dBias}, {@code weight} may be null).
     */
    void layerNormBackward(Buffer dx, long dxOff, Buffer dWeight, long dwOff, Buffer dBias, long dbOff,
                           Buffer dOut, long dOutOff, Buffer normalized, long normOff, Buffer scale, long scaleOff,
                           Buffer weight, long wOff, int rows, int cols);

    /**
     * RMSNorm: {@code scale = sqrt(mean(x^2) + eps)}, {@code normalized = x / scale},
     * {@code out = normalized * weight} (weight may be null).
     */
    void rmsNorm(Buffer out, long outOff, Buffer normalized, long normOff, Buffer scale, long scaleOff,
                 Buffer x, long xOff, Buffer weight, long wOff, int rows, int cols, float eps);

    /**
     * Residual add and norm in one pass: {@code sum = a + b} ({@code sum}, {@code a}, {@code b}
     * {@code [rows, cols]}; {@code sum} may alias {@code a} or {@code b}), then {@link #layerNorm}
     * ({@code rms == false}) or {@link #rmsNorm} ({@code rms == true}; {@code bias} must then be null) of
     * {@code sum} into {@code out} / {@code normalized} ({@code [rows, cols]}) and {@code scale}
     * ({@code [rows]}), with those ops' conventions: {@code out}, {@code normalized}, {@code scale},
     * {@code weight} and {@code bias} nullable, {@code out} may alias {@code normalized}; none of the
     * three outputs may overlap {@code sum}, {@code a} or {@code b}. The result is bit-identical to
     * {@link #add} followed by the norm on the same backend (the default runs exactly that), so
     * choosing the fused op changes no number.
     */
    default void addNorm(Buffer sum, long sumOff, Buffer a, long aOff, Buffer b, long bOff,
                         Buffer out, long outOff, Buffer normalized, long normOff, Buffer scale, long scaleOff,
                         Buffer weight, long wOff, Buffer bias, long biasOff, int rows, int cols, float eps, boolean rms) {
        if (rms && bias != null) throw new LoupeException("addNorm: RMSNorm has no bias; pass null");
        add(sum, sumOff, a, aOff, b, bOff, (long) rows * cols);
        if (rms) rmsNorm(out, outOff, normalized, normOff, scale, scaleOff, sum, sumOff, weight, wOff, rows, cols, eps);
        else layerNorm(out, outOff, normalized, normOff, scale, scaleOff, sum, sumOff, weight, wOff, bias, biasOff, rows, cols, eps);
    }

    /** Backward of {@link #rmsNorm}; accumulates into {@code dx} and {@code dWeight} (nullable). */
    void rmsNormBackward(Buffer dx, long dxOff, Buffer dWeight, long dwOff,
                         Buffer dOut, long dOutOff, Buffer normalized, long normOff, Buffer scale, long scaleOff,
                         Buffer weight, long wOff, int rows, int cols);

    // ------------------------------------------------------------------ attention

    /**
     * Rotary embedding on {@code x [tokens, heads, headDim]} (the first {@code rotaryDim} channels of
     * each head; the rest are copied). Token {@code t} is rotated by angles
     * {@code positions[t] * invFreq[i]} ({@code positions} i32 {@code [tokens]}, {@code invFreq}
     * {@code [rotaryDim/2]}). {@code interleaved}: pairs {@code (2i, 2i+1)} (GPT-J, llama2.c);
     * otherwise halves {@code (i, i + rotaryDim/2)} (NeoX, HF Llama). {@code inverse} rotates by the
     * negative angle, which is the backward pass. {@code out} may alias {@code x}.
     */
    void rope(Buffer out, long outOff, Buffer x, long xOff, Buffer positions, long posOff, Buffer invFreq, long freqOff,
              int tokens, int heads, int headDim, int rotaryDim, boolean interleaved, boolean inverse);

    /**
     * Masks and normalizes attention scores, in place on {@code scores [batch, heads, tq, tk]}
     * (already scaled). Query {@code i} sits at key slot {@code qStart + i}; key {@code j} is masked when
     * {@code j > qStart + i}, when {@code window > 0} and {@code j <= qStart + i - window} (sliding-window
     * attention: the query sees its last {@code window} slots, itself included), or when {@code keyValid}
     * (i32 {@code [batch, tk]}, nullable) is 0 there. Masked scores become {@code -inf}; {@code pattern}
     * gets the softmax over keys, exactly 0 at masked entries; a row with every key masked gets all zeros.
     */
    void attentionSoftmax(Buffer scores, long scoresOff, Buffer pattern, long patternOff,
                          Buffer keyValid, long keyValidOff, int batch, int heads, int tq, int tk, int qStart, int window);

    /**
     * Softmax backward over rows of {@code n}: {@code dScores += P * (dP - Σ_j dP*P)}.
     * Entries where P is 0 (masked) get no gradient.
     */
    void softmaxBackward(Buffer dScores, long dsOff, Buffer dPattern, long dpOff, Buffer pattern, long pOff,
                         int rows, int n);

    // ------------------------------------------------------------------ loss

    /**
     * Cross-entropy per row of {@code logits [rows, vocab]}: {@code losses[r] = logsumexp(logits[r]) -
     * logits[r, targets[r]]} ({@code targets} i32 {@code [rows]}); a negative target means "ignored" and
     * gives loss 0.
     */
    void crossEntropy(Buffer losses, long lossOff, Buffer logits, long logitsOff, Buffer targets, long tOff,
                      int rows, int vocab);

    /**
     * {@code dLogits[r, :] += weight[r] * (softmax(logits[r]) - onehot(targets[r]))}; rows with a
     * negative target get nothing. {@code weight} is {@code [rows]} (e.g. 1/count for a mean loss).
     */
    void crossEntropyBackward(Buffer dLogits, long dOff, Buffer logits, long logitsOff, Buffer targets, long tOff,
                              Buffer weight, long wOff, int rows, int vocab);

    // ------------------------------------------------------------------ reductions and optimizers

    /** {@code out[0] = Σ x[i]^2} over {@code n} elements (one f32 written at {@code outOff}). */
    void sumSquares(Buffer out, long outOff, Buffer x, long xOff, long n);

    /**
     * One AdamW step on {@code n} parameters, with bias correction for step {@code t} (1-based):
     * {@code m = b1 m + (1-b1) g*gradScale; v = b2 v + (1-b2) (g*gradScale)^2;
     * p -= lr * (mhat / (sqrt(vhat) + eps) + wd * p)}. {@code gradScale} applies clipping.
     */
    void adamw(Buffer param, long pOff, Buffer grad, long gOff, Buffer m, long mOff, Buffer v, long vOff, long n,
               float lr, float beta1, float beta2, float eps, float weightDecay, int t, float gradScale);
}
