// Portable q8 activation quantization (ggml q8_0 rounding: d = amax / 127, q = roundf(x / d)),
// dispatched to the SIMD versions, which give bit-identical results.
#include <cmath>

#include "backend/cpu/kernels.h"

namespace mole::cpu {

void quantize_rows_q8_portable(const float *X, int64_t s0, int64_t s1, const Q8Rows &out) {
    const int64_t k = out.k, nb = k / QK;
    for (int64_t s = s0; s < s1; ++s) {
        const float *x = X + s * k;
        for (int64_t b = 0; b < nb; ++b) {
            const float *xb = x + b * QK;
            float amax = 0.0f;
            bool finite = true;
            for (int i = 0; i < QK; ++i) {
                finite &= std::isfinite(xb[i]);
                amax = std::fmax(amax, std::fabs(xb[i]));
            }
            if (!finite) {
                q8_block_not_finite(out, s, b);
                continue;
            }
            const float d = amax / 127.0f, id = q8_inverse_scale(d);
            int8_t *q = out.q + s * k + b * QK;
            int32_t sum = 0;
            for (int i = 0; i < QK; ++i) {
                q[i] = int8_t(std::roundf(xb[i] * id));
                sum += q[i];
            }
            out.d[s * nb + b] = d;
            out.sum[s * nb + b] = sum;
        }
    }
}

void quantize_rows_q8(const float *X, int64_t S, int64_t k, const Q8Rows &out) {
    switch (active_isa()) {
    case Isa::Avx512: quantize_rows_q8_avx512(X, 0, S, out); break;
    case Isa::Avx2:
    case Isa::AvxVnni: quantize_rows_q8_avx2(X, 0, S, out); break;
    default: quantize_rows_q8_portable(X, 0, S, out); break;
    }
}

}  // namespace mole::cpu
