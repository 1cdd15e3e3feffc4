// Attention: causal/padding mask + softmax with the -inf score write-out the activation cache needs
// (hook_attn_scores), and the softmax backward.
// Launch shape: one warp per row of tk keys, 8 warps (LOUPE_BLOCK threads) per block, grid =
// ceil(rows / 8). A warp per row needs no shared memory and no __syncthreads; with rows = batch *
// heads * tq (98k for GPT-2 small at 8 x 1024) there is ample parallelism, and lanes stride over the
// keys so loads are coalesced for any tk.
#include "loupe_cuda.cuh"

#define ROWS_PER_BLOCK (LOUPE_BLOCK / 32)

// In place on scores [batch, heads, tq, tk]: masked entries (key j > qStart + i, j <= qStart + i - window
// when window > 0, or keyValid[b, j] == 0) become -inf; pattern = softmax over keys, exactly 0 where
// masked; all-masked rows give zeros.
LOUPE_KERNEL attention_softmax(dptr<float> scores, dptr<float> pattern, dptr<const int> keyValid,
                               int batch, int heads, int tq, int tk, int qStart, int window) {
    const long long rows = (long long)batch * heads * tq;
    const long long row = (long long)blockIdx.x * ROWS_PER_BLOCK + (threadIdx.x >> 5);
    if (row >= rows) return;  // whole warps leave together
    const int lane = threadIdx.x & 31;
    const int i = (int)(row % tq);
    const int b = (int)(row / ((long long)heads * tq));
    const long long base = row * tk;
    const int limit = qStart + i;
    const int oldest = window > 0 ? limit - window + 1 : 0;  // the sliding window's first slot

    float mx = -INFINITY;
    for (int j = lane; j < tk; j += 32) {
        const bool masked = j > limit || j < oldest || (keyValid && keyValid[(long long)b * tk + j] == 0);
        if (masked) scores[base + j] = -INFINITY;
        else mx = fmaxf(mx, scores[base + j]);
    }
    mx = loupe_warp_max(mx);
    if (mx == -INFINITY) {  // every key masked (or every score -inf): all-zero pattern
        for (int j = lane; j < tk; j += 32) pattern[base + j] = 0.0f;
        return;
    }
    float sum = 0.0f;
    for (int j = lane; j < tk; j += 32) {
        const float s = scores[base + j];
        if (s != -INFINITY) sum += expf(s - mx);
    }
    const float inv = 1.0f / loupe_warp_sum(sum);
    for (int j = lane; j < tk; j += 32) {
        const float s = scores[base + j];
        pattern[base + j] = s == -INFINITY ? 0.0f : expf(s - mx) * inv;
    }
}
LOUPE_REGISTER(attention_softmax);

// dScores += P * (dP - sum_j dP * P) over rows of n; entries with P == 0 (masked) get nothing.
// Launch shape: one warp per row, as attention_softmax.
LOUPE_KERNEL softmax_backward(dptr<float> dScores, dptr<const float> dPattern, dptr<const float> pattern,
                              int rows, int n) {
    const long long row = (long long)blockIdx.x * ROWS_PER_BLOCK + (threadIdx.x >> 5);
    if (row >= rows) return;
    const int lane = threadIdx.x & 31;
    const long long base = row * n;
    float dot = 0.0f;
    for (int j = lane; j < n; j += 32) {
        const float p = pattern[base + j];
        if (p != 0.0f) dot += dPattern[base + j] * p;
    }
    dot = loupe_warp_sum(dot);
    for (int j = lane; j < n; j += 32) {
        const float p = pattern[base + j];
        if (p != 0.0f) dScores[base + j] += p * (dPattern[base + j] - dot);
    }
}
LOUPE_REGISTER(softmax_backward);
