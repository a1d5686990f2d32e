// The LUT mix fused with Q8_0 dequantization, AVX-512 (compiled with -mavx512*; called only
// after the run-time check): no f32 copy of the slice.
#include "backend/cpu/avx512_common.h"
#include "backend/cpu/kernels.h"

namespace mole::cpu {

void lut_mix_q8_0_avx512(const float *g, const BlockQ8_0 *blocks, int64_t N, int64_t d, float *out) {
    const int64_t nb = d / QK;
    for (int64_t b = 0; b < nb; ++b) {   // 32 outputs stay in two registers over the N experts
        __m512 lo = _mm512_loadu_ps(out + b * QK), hi = _mm512_loadu_ps(out + b * QK + 16);
        for (int64_t j = 0; j < N; ++j) {
            const BlockQ8_0 &blk = blocks[j * nb + b];
            const __m512 s = _mm512_set1_ps(g[j] * _cvtsh_ss(blk.d));
            const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(blk.qs));
            lo = _mm512_fmadd_ps(s, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(q))), lo);
            hi = _mm512_fmadd_ps(s, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(q, 1))), hi);
        }
        _mm512_storeu_ps(out + b * QK, lo);
        _mm512_storeu_ps(out + b * QK + 16, hi);
    }
}

}  // namespace mole::cpu
