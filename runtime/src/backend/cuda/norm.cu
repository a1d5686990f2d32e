// RMSNorm: one block per row; the sum of squares in float over a tree of warp sums.
#include "backend/cuda/ops.cuh"

namespace mole::cuda {

namespace {

constexpr int kThreads = 256;

MOLE_GLOBAL void rmsnorm_kernel(const float *x, const float *w, int64_t d, float eps, float *out) {
    MOLE_SHARED(float, part, kThreads / kWarp);
    const int64_t s = blockIdx.x;
    const float *xs = x + s * d;
    float ss = 0.0f;
    for (int64_t i = threadIdx.x; i < d; i += kThreads) ss = fmaf(xs[i], xs[i], ss);
    ss = warp_sum(ss);
    const int warp = int(threadIdx.x / kWarp), lane = int(threadIdx.x % kWarp);
    if (lane == 0) part[warp] = ss;
    __syncthreads();
    float total = 0.0f;
    for (int i = 0; i < kThreads / kWarp; ++i) total += part[i];
    const float r = rsqrtf(total / float(d) + eps);
    for (int64_t i = threadIdx.x; i < d; i += kThreads) out[s * d + i] = w[i] * (xs[i] * r);
}

}  // namespace

void rmsnorm(const float *x, const float *w, int64_t S, int64_t d, float eps, float *out, cudaStream_t st) {
    if (S <= 0) return;
    MOLE_LAUNCH(rmsnorm_kernel, unsigned(S), kThreads, 0, st, x, w, d, eps, out);
}

}  // namespace mole::cuda
