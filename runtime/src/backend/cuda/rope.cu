// Rotate-half RoPE: one thread per (row, head, pair). The angle pos * freq_scale * theta^(-2i/hd)
// is formed and turned in double, as on the CPU (at position 65000 a float angle is off by 4e-3),
// as a multiple of pi: sincospi's argument reduction is exact and needs no local memory.
#include "backend/cuda/ops.cuh"

namespace mole::cuda {

namespace {

constexpr int kThreads = 256;

MOLE_GLOBAL void rope_kernel(float *x, int64_t n_pairs, int64_t n_head, int64_t hd, const int32_t *pos,
                             double log_theta, double scale_over_pi) {
    const int64_t t = int64_t(blockIdx.x) * kThreads + threadIdx.x;
    if (t >= n_pairs) return;
    const int64_t half = hd / 2, i = t % half, sh = t / half, s = sh / n_head;
    const double turns = double(pos[s]) * scale_over_pi * exp(-2.0 * double(i) / double(hd) * log_theta);
    double sd, cd;
    sincospi(turns, &sd, &cd);
    const float c = float(cd), sn = float(sd);
    float *v = x + sh * hd;
    const float a = v[i], b = v[i + half];
    v[i] = a * c - b * sn;
    v[i + half] = a * sn + b * c;
}

}  // namespace

void rope(float *x, int64_t S, int64_t n_head, int64_t hd, const int32_t *pos, float theta, float freq_scale,
          cudaStream_t st) {
    const int64_t n_pairs = S * n_head * (hd / 2);
    if (n_pairs <= 0) return;
    MOLE_LAUNCH(rope_kernel, unsigned((n_pairs + kThreads - 1) / kThreads), kThreads, 0, st, x, n_pairs, n_head, hd,
                pos, log(double(theta)), double(freq_scale) / 3.14159265358979323846);
}

}  // namespace mole::cuda
