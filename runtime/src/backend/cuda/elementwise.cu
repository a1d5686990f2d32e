// Element-wise and small row ops: exact (erf) GELU, the residual add, the router softmax (one warp
// per row) and the gather of the rows whose logits are wanted.
#include "backend/cuda/ops.cuh"

namespace mole::cuda {

namespace {

constexpr int kThreads = 256;

// 0.5 x (1 + erf(x / sqrt 2)) written with erfc so large negative x keeps its relative precision;
// erfc amplifies its argument's rounding by x^2, so below x = -2 the argument is formed in double.
MOLE_GLOBAL void gelu_kernel(float *x, int64_t n) {
    const int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x;
    if (i >= n) return;
    const float v = x[i];
    x[i] = v >= -2.0f ? 0.5f * v * erfcf(-v * 0.70710678118654752f)
                      : float(0.5 * double(v) * erfc(-double(v) * 0.70710678118654752440));
}

MOLE_GLOBAL void add_kernel(float *x, const float *y, int64_t n) {
    const int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x;
    if (i < n) x[i] += y[i];
}

constexpr int kRowsPerBlock = kThreads / kWarp;

MOLE_GLOBAL void softmax_kernel(float *x, int64_t S, int64_t n) {
    const int64_t s = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
    const int lane = int(threadIdx.x % kWarp);
    if (s >= S) return;   // a whole warp at once
    float *r = x + s * n;
    float mx = -INFINITY;
    for (int64_t i = lane; i < n; i += kWarp) mx = fmaxf(mx, r[i]);
    mx = warp_max(mx);
    float sum = 0.0f;
    for (int64_t i = lane; i < n; i += kWarp) {
        const float e = expf(r[i] - mx);
        r[i] = e;
        sum += e;
    }
    const float inv = 1.0f / warp_sum(sum);
    for (int64_t i = lane; i < n; i += kWarp) r[i] *= inv;
}

MOLE_GLOBAL void gather_kernel(const float *x, const int32_t *rows, int64_t n, int64_t d, float *out) {
    const int64_t t = int64_t(blockIdx.x) * kThreads + threadIdx.x;
    if (t >= n * d) return;
    out[t] = x[int64_t(rows[t / d]) * d + t % d];
}

unsigned blocks(int64_t n) { return unsigned((n + kThreads - 1) / kThreads); }

}  // namespace

void gelu(float *x, int64_t n, cudaStream_t st) {
    if (n > 0) MOLE_LAUNCH(gelu_kernel, blocks(n), kThreads, 0, st, x, n);
}

void add(float *x, const float *y, int64_t n, cudaStream_t st) {
    if (n > 0) MOLE_LAUNCH(add_kernel, blocks(n), kThreads, 0, st, x, y, n);
}

void softmax(float *x, int64_t S, int64_t n, cudaStream_t st) {
    if (S > 0 && n > 0)
        MOLE_LAUNCH(softmax_kernel, unsigned((S + kRowsPerBlock - 1) / kRowsPerBlock), kThreads, 0, st, x, S, n);
}

void gather_rows(const float *x, const int32_t *rows, int64_t n, int64_t d, float *out, cudaStream_t st) {
    if (n > 0 && d > 0) MOLE_LAUNCH(gather_kernel, blocks(n * d), kThreads, 0, st, x, rows, n, d, out);
}

}  // namespace mole::cuda
