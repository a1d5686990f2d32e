// The LUT mix: x [r] += sum_j gate [r, j] LUT[id_r][layer][j], read straight from the row's file
// bytes (F32, F16, BF16, Q8_0, Q4_0, IQ4_NL, Q3_K) in a slot or the step's staging, decoded inside
// the mix: no row is expanded to f32 in memory. One thread per output element, experts in order (as the CPU).
#include "backend/cuda/ops.cuh"

namespace mole::cuda {

namespace {

constexpr int kThreads = 128;

MOLE_GLOBAL void lut_mix_kernel(Type type, const uint8_t *const *rows, const int32_t *uniq_slot, int64_t skip,
                                const float *gate, int64_t N, int64_t d, float *x) {
    const int64_t r = blockIdx.y, i = int64_t(blockIdx.x) * kThreads + threadIdx.x;
    if (i >= d) return;
    const uint8_t *src = rows[uniq_slot[r]];
    float acc = x[r * d + i];
    for (int64_t j = 0; j < N; ++j) acc = fmaf(gate[r * N + j], load_element(type, src, skip + j * d + i), acc);
    x[r * d + i] = acc;
}

}  // namespace

void lut_mix(Type type, const uint8_t *const *rows, const int32_t *uniq_slot, int64_t skip, const float *gate,
             int64_t S, int64_t N, int64_t d, float *x, cudaStream_t st) {
    if (S <= 0 || d <= 0) return;
    const dim3 grid(unsigned((d + kThreads - 1) / kThreads), unsigned(S));
    MOLE_LAUNCH(lut_mix_kernel, grid, kThreads, 0, st, type, rows, uniq_slot, skip, gate, N, d, x);
}

}  // namespace mole::cuda
