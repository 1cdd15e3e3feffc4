// Activations and their backward passes (which accumulate: dx += dOut * f'(x)).
// Launch shape: 1-d grid-stride loop, LOUPE_BLOCK threads, grid capped by the host. Memory-bound:
// one read (two for backward) and one write per element; the transcendental costs hide under the
// loads.
#include "loupe_cuda.cuh"

#define GRID_STRIDE_LOOP(i, n) \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (long long)gridDim.x * blockDim.x)

#define GELU_TANH_C 0.7978845608028654f   // sqrt(2/pi)
#define GELU_CUBIC 0.044715f
#define INV_SQRT2 0.7071067811865476f
#define INV_SQRT_2PI 0.3989422804014327f

// gelu_new (tanh approximation) or exact erf GELU of one value. Shared by gelu_forward and
// add_bias_gelu_forward, so that the fused kernel gives the same bits as add_bias + gelu_forward.
__device__ inline float loupe_gelu(float v, int tanhApprox) {
    if (tanhApprox) {
        const float t = tanhf(GELU_TANH_C * (v + GELU_CUBIC * v * v * v));
        return 0.5f * v * (1.0f + t);
    }
    return 0.5f * v * (1.0f + erff(v * INV_SQRT2));
}

LOUPE_KERNEL gelu_forward(dptr<float> out, dptr<const float> x, long long n, int tanhApprox) {
    GRID_STRIDE_LOOP(i, n) out[i] = loupe_gelu(x[i], tanhApprox);
}
LOUPE_REGISTER(gelu_forward);

// The MLP's bias add and activation in one pass over pre [rows, cols]: pre[r, c] += bias[c] (pre keeps
// the biased pre-activation, hook_pre), post[r, c] = gelu(pre[r, c]). The arithmetic of add_bias
// (elementwise.cu) followed by gelu_forward, so the result is bit-identical; one read and two writes
// per element instead of two reads and two writes. post may alias pre (each element is read, then
// written, by one thread). Launch shape: 1-d grid-stride loop over rows * cols, as add_bias.
LOUPE_KERNEL add_bias_gelu_forward(dptr<float> pre, dptr<float> post, dptr<const float> bias, int rows, int cols,
                                   int tanhApprox) {
    const long long n = (long long)rows * cols;
    GRID_STRIDE_LOOP(i, n) {
        const float v = pre[i] + bias[i % cols];
        pre[i] = v;
        post[i] = loupe_gelu(v, tanhApprox);
    }
}
LOUPE_REGISTER(add_bias_gelu_forward);

LOUPE_KERNEL gelu_backward(dptr<float> dx, dptr<const float> x, dptr<const float> dOut, long long n, int tanhApprox) {
    GRID_STRIDE_LOOP(i, n) {
        const float v = x[i];
        float grad;
        if (tanhApprox) {
            const float t = tanhf(GELU_TANH_C * (v + GELU_CUBIC * v * v * v));
            const float dInner = GELU_TANH_C * (1.0f + 3.0f * GELU_CUBIC * v * v);
            grad = 0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * dInner;
        } else {
            grad = 0.5f * (1.0f + erff(v * INV_SQRT2)) + v * INV_SQRT_2PI * expf(-0.5f * v * v);
        }
        dx[i] += dOut[i] * grad;
    }
}
LOUPE_REGISTER(gelu_backward);

LOUPE_KERNEL silu_forward(dptr<float> out, dptr<const float> x, long long n) {
    GRID_STRIDE_LOOP(i, n) {
        const float v = x[i];
        out[i] = v / (1.0f + expf(-v));
    }
}
LOUPE_REGISTER(silu_forward);

// silu'(x) = s(x) * (1 + x * (1 - s(x))) with s the logistic sigmoid.
LOUPE_KERNEL silu_backward(dptr<float> dx, dptr<const float> x, dptr<const float> dOut, long long n) {
    GRID_STRIDE_LOOP(i, n) {
        const float v = x[i];
        const float s = 1.0f / (1.0f + expf(-v));
        dx[i] += dOut[i] * s * (1.0f + v * (1.0f - s));
    }
}
LOUPE_REGISTER(silu_backward);

LOUPE_KERNEL relu_forward(dptr<float> out, dptr<const float> x, long long n) {
    GRID_STRIDE_LOOP(i, n) out[i] = fmaxf(x[i], 0.0f);
}
LOUPE_REGISTER(relu_forward);

LOUPE_KERNEL relu_backward(dptr<float> dx, dptr<const float> x, dptr<const float> dOut, long long n) {
    GRID_STRIDE_LOOP(i, n) if (x[i] > 0.0f) dx[i] += dOut[i];
}
LOUPE_REGISTER(relu_backward);
