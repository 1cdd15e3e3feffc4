// LayerNorm and RMSNorm, forward and backward, writing the cached normalized rows and scales.
// Launch shape (row kernels): one block of LOUPE_BLOCK threads per row. A row of d_model = 768..8192
// floats is 3..32 elements per thread, small enough that the second pass over x hits L1; block
// reductions go through warp shuffles and 32 floats of shared memory. The column sums of the
// parameter gradients use a separate (32, 8) block kernel, see norm_params_backward.
#include "loupe_cuda.cuh"

// The row of layernorm_forward after its first pass over x: every thread of the row's block passes
// its partial sum of xr over columns threadIdx.x + k * blockDim.x. Shared by layernorm_forward and
// add_layernorm_forward, so that the fused kernel gives the same bits as add + layernorm_forward.
__device__ inline void loupe_layernorm_row(dptr<float> out, dptr<float> normalized, dptr<float> scale,
                                           dptr<const float> xr, dptr<const float> weight, dptr<const float> bias,
                                           int r, int cols, float eps, float sum, float* scratch) {
    const float mean = loupe_block_sum(sum, scratch) / cols;
    float sq = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float d = xr[c] - mean;
        sq += d * d;
    }
    const float s = sqrtf(loupe_block_sum(sq, scratch) / cols + eps);
    if (scale && threadIdx.x == 0) scale[r] = s;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float n = (xr[c] - mean) / s;
        const long long e = (long long)r * cols + c;
        if (normalized) normalized[e] = n;
        if (out) out[e] = (weight ? n * weight[c] : n) + (bias ? bias[c] : 0.0f);
    }
}

// scale[r] = sqrt(var + eps) (biased variance), normalized = (x - mean) / scale,
// out = normalized * weight + bias. weight, bias, out, normalized and scale may be null;
// out may alias normalized (each element is written by the thread that computed it).
LOUPE_KERNEL layernorm_forward(dptr<float> out, dptr<float> normalized, dptr<float> scale, dptr<const float> x,
                               dptr<const float> weight, dptr<const float> bias, int rows, int cols, float eps) {
    __shared__ float scratch[32];
    const int r = blockIdx.x;
    dptr<const float> xr = x + (long long)r * cols;
    float sum = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) sum += xr[c];
    loupe_layernorm_row(out, normalized, scale, xr, weight, bias, r, cols, eps, sum, scratch);
}
LOUPE_REGISTER(layernorm_forward);

// Residual add + LayerNorm: sum = a + b (sum may alias a or b), then layernorm_forward of sum, in one
// kernel: the add's pass is the norm's first pass (the row is summed as it is written), so a, b are
// read once, sum written once and read back from L1/L2 for the last two passes. Bit-identical to
// add (elementwise.cu) + layernorm_forward: each thread sums the columns layernorm_forward's thread
// would, in the same order, and the rest is loupe_layernorm_row. Launch shape: one block per row.
LOUPE_KERNEL add_layernorm_forward(dptr<float> sum, dptr<const float> a, dptr<const float> b, dptr<float> out,
                                   dptr<float> normalized, dptr<float> scale, dptr<const float> weight,
                                   dptr<const float> bias, int rows, int cols, float eps) {
    __shared__ float scratch[32];
    const int r = blockIdx.x;
    const long long base = (long long)r * cols;
    float partial = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float v = a[base + c] + b[base + c];
        sum[base + c] = v;   // read back below by this same thread only
        partial += v;
    }
    loupe_layernorm_row(out, normalized, scale, sum + base, weight, bias, r, cols, eps, partial, scratch);
}
LOUPE_REGISTER(add_layernorm_forward);

// dx += (g - mean(g) - normalized * mean(g * normalized)) / scale with g = dOut * weight.
LOUPE_KERNEL layernorm_backward(dptr<float> dx, dptr<const float> dOut, dptr<const float> normalized,
                                dptr<const float> scale, dptr<const float> weight, int rows, int cols) {
    __shared__ float scratch[32];
    const int r = blockIdx.x;
    const long long base = (long long)r * cols;
    float sumG = 0.0f, sumGN = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float g = weight ? dOut[base + c] * weight[c] : dOut[base + c];
        sumG += g;
        sumGN += g * normalized[base + c];
    }
    const float meanG = loupe_block_sum(sumG, scratch) / cols;
    const float meanGN = loupe_block_sum(sumGN, scratch) / cols;
    const float inv = 1.0f / scale[r];
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float g = weight ? dOut[base + c] * weight[c] : dOut[base + c];
        dx[base + c] += (g - meanG - normalized[base + c] * meanGN) * inv;
    }
}
LOUPE_REGISTER(layernorm_backward);

// The row of rmsnorm_forward after its pass over x for the sum of squares (each thread's partial sq,
// as in loupe_layernorm_row). Shared by rmsnorm_forward and add_rmsnorm_forward.
__device__ inline void loupe_rmsnorm_row(dptr<float> out, dptr<float> normalized, dptr<float> scale,
                                         dptr<const float> xr, dptr<const float> weight,
                                         int r, int cols, float eps, float sq, float* scratch) {
    const float s = sqrtf(loupe_block_sum(sq, scratch) / cols + eps);
    if (scale && threadIdx.x == 0) scale[r] = s;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float n = xr[c] / s;
        const long long e = (long long)r * cols + c;
        if (normalized) normalized[e] = n;
        if (out) out[e] = weight ? n * weight[c] : n;
    }
}

// scale[r] = sqrt(mean(x^2) + eps), normalized = x / scale, out = normalized * weight (all nullable but x).
LOUPE_KERNEL rmsnorm_forward(dptr<float> out, dptr<float> normalized, dptr<float> scale, dptr<const float> x,
                             dptr<const float> weight, int rows, int cols, float eps) {
    __shared__ float scratch[32];
    const int r = blockIdx.x;
    dptr<const float> xr = x + (long long)r * cols;
    float sq = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) sq += xr[c] * xr[c];
    loupe_rmsnorm_row(out, normalized, scale, xr, weight, r, cols, eps, sq, scratch);
}
LOUPE_REGISTER(rmsnorm_forward);

// Residual add + RMSNorm: sum = a + b, then rmsnorm_forward of sum, one block per row, as
// add_layernorm_forward (bit-identical to add + rmsnorm_forward).
LOUPE_KERNEL add_rmsnorm_forward(dptr<float> sum, dptr<const float> a, dptr<const float> b, dptr<float> out,
                                 dptr<float> normalized, dptr<float> scale, dptr<const float> weight,
                                 int rows, int cols, float eps) {
    __shared__ float scratch[32];
    const int r = blockIdx.x;
    const long long base = (long long)r * cols;
    float sq = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float v = a[base + c] + b[base + c];
        sum[base + c] = v;   // read back below by this same thread only
        sq += v * v;
    }
    loupe_rmsnorm_row(out, normalized, scale, sum + base, weight, r, cols, eps, sq, scratch);
}
LOUPE_REGISTER(add_rmsnorm_forward);

// dx += (g - normalized * mean(g * normalized)) / scale with g = dOut * weight.
LOUPE_KERNEL rmsnorm_backward(dptr<float> dx, dptr<const float> dOut, dptr<const float> normalized,
                              dptr<const float> scale, dptr<const float> weight, int rows, int cols) {
    __shared__ float scratch[32];
    const int r = blockIdx.x;
    const long long base = (long long)r * cols;
    float sumGN = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float g = weight ? dOut[base + c] * weight[c] : dOut[base + c];
        sumGN += g * normalized[base + c];
    }
    const float meanGN = loupe_block_sum(sumGN, scratch) / cols;
    const float inv = 1.0f / scale[r];
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float g = weight ? dOut[base + c] * weight[c] : dOut[base + c];
        dx[base + c] += (g - normalized[base + c] * meanGN) * inv;
    }
}
LOUPE_REGISTER(rmsnorm_backward);

// dWeight[c] += sum_r dOut[r,c] * normalized[r,c]; dBias[c] += sum_r dOut[r,c] (either may be null).
// Launch shape: block (32, 8), grid (ceil(cols/32), row chunks), as bias_backward: coalesced rows,
// rows split over warps and blocks, one atomicAdd per column per block.
LOUPE_KERNEL norm_params_backward(dptr<float> dWeight, dptr<float> dBias, dptr<const float> dOut,
                                  dptr<const float> normalized, int rows, int cols) {
    __shared__ float partialW[8][33];
    __shared__ float partialB[8][33];
    const int c = blockIdx.x * 32 + threadIdx.x;
    float sw = 0.0f, sb = 0.0f;
    if (c < cols) {
        for (int r = blockIdx.y * 8 + threadIdx.y; r < rows; r += gridDim.y * 8) {
            const long long e = (long long)r * cols + c;
            const float g = dOut[e];
            sb += g;
            if (dWeight) sw += g * normalized[e];
        }
    }
    partialW[threadIdx.y][threadIdx.x] = sw;
    partialB[threadIdx.y][threadIdx.x] = sb;
    __syncthreads();
    if (threadIdx.y == 0 && c < cols) {
        float tw = 0.0f, tb = 0.0f;
        for (int k = 0; k < 8; k++) {
            tw += partialW[k][threadIdx.x];
            tb += partialB[k][threadIdx.x];
        }
        if (dWeight) atomicAdd(&dWeight[c], tw);
        if (dBias) atomicAdd(&dBias[c], tb);
    }
}
LOUPE_REGISTER(norm_params_backward);

// out[r, c] = x[r, c] * weight[c] + bias[c] (weight, bias nullable): a norm's affine part, applied
// again when a hook edits hook_normalized. Launch shape: 1-d grid-stride loop over rows * cols,
// LOUPE_BLOCK threads (memory-bound; the parameter rows stay in cache).
LOUPE_KERNEL scale_shift_rows(dptr<float> out, dptr<const float> x, dptr<const float> weight, dptr<const float> bias,
                              int rows, int cols) {
    const long long n = (long long)rows * cols;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const int c = (int)(i % cols);
        const float v = weight ? x[i] * weight[c] : x[i];
        out[i] = bias ? v + bias[c] : v;
    }
}
LOUPE_REGISTER(scale_shift_rows);
