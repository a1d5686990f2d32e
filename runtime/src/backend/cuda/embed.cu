// Embedding rows: x [S, d] = E [ids] decoded from the file type, one thread per element (exact:
// the same f32 values as the reference decoder).
#include "backend/cuda/ops.cuh"

namespace mole::cuda {

namespace {

constexpr int kThreads = 256;

MOLE_GLOBAL void embed_kernel(Type type, const uint8_t *E, int64_t row_bytes, int64_t d, const int32_t *ids, int64_t n,
                              float *x) {
    const int64_t t = int64_t(blockIdx.x) * kThreads + threadIdx.x;
    if (t >= n) return;
    const int64_t s = t / d, e = t % d;
    x[t] = load_element(type, E + int64_t(ids[s]) * row_bytes, e);
}

}  // namespace

void embed(Type type, const uint8_t *E, int64_t d, const int32_t *ids, int64_t S, float *x, cudaStream_t st) {
    const int64_t n = S * d;
    if (n <= 0) return;
    MOLE_LAUNCH(embed_kernel, unsigned((n + kThreads - 1) / kThreads), kThreads, 0, st, type, E, row_bytes(type, d), d,
                ids, n, x);
}

}  // namespace mole::cuda
