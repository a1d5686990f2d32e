// Activations quantized to q8 blocks for the Q8_0 / Q4_0 matmuls: one warp per 32-value block,
// the same rounding as the CPU's (d = amax / 127, q = roundf(x / d)), so the bits are identical,
// and the CPU's rule for the blocks rounding cannot take (backend/cpu/kernels.h): one holding Inf
// or NaN is d = NaN, q = 0, sum = 0; one of subnormal scale is q = 0.
#include "backend/cuda/ops.cuh"

namespace mole::cuda {

namespace {

constexpr int kWarpsPerBlock = 8;

MOLE_GLOBAL void quantize_q8_kernel(const float *X, int64_t n_blocks, int64_t nb, int64_t k, int8_t *q, float *d,
                                    int32_t *sum) {
    const int64_t b = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
    const int lane = int(threadIdx.x % kWarp);
    if (b >= n_blocks) return;   // a whole warp at once
    const int64_t s = b / nb, j = b % nb, at = s * k + j * kQK + lane;
    const float x = X[at];
    if (__any_sync(kFull, !(fabsf(x) <= 3.40282347e38f))) {   // Inf or NaN (not <= FLT_MAX); warp-uniform
        q[at] = 0;
        if (lane == 0) {
            d[b] = __int_as_float(0x7fc00000);   // quiet NaN
            sum[b] = 0;
        }
        return;
    }
    const float amax = warp_max(fabsf(x));
    const float dd = amax / 127.0f, id = dd >= 1.17549435e-38f ? 1.0f / dd : 0.0f;   // FLT_MIN
    const int qi = int(roundf(x * id));
    q[at] = int8_t(qi);
    int total = qi;
    for (int o = kWarp / 2; o > 0; o >>= 1) total += __shfl_xor_sync(kFull, total, o);
    if (lane == 0) {
        d[b] = dd;
        sum[b] = total;
    }
}

}  // namespace

void quantize_q8(const float *X, int64_t S, int64_t k, Q8Act out, cudaStream_t st) {
    const int64_t nb = k / kQK, n_blocks = S * nb;
    if (n_blocks == 0) return;
    const unsigned grid = unsigned((n_blocks + kWarpsPerBlock - 1) / kWarpsPerBlock);
    MOLE_LAUNCH(quantize_q8_kernel, grid, kWarpsPerBlock * kWarp, 0, st, X, n_blocks, nb, k, out.q, out.d, out.sum);
}

}  // namespace mole::cuda
