// The LUT mix fused with Q8_0 / IQ4_NL / Q3_K dequantization, AVX-512 (compiled with -mavx512*;
// called only after the run-time check): no f32 copy of the slice.
#include "backend/cpu/avx2_common.h"
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

void lut_mix_iq4_nl_avx512(const float *g, const BlockIQ4_NL *blocks, int64_t N, int64_t d, float *out) {
    const int64_t nb = d / QK;
    const __m128i low4 = _mm_set1_epi8(0x0f), book = iq4nl_book_sse();
    for (int64_t b = 0; b < nb; ++b) {   // as Q8_0: the codebook values are int8, looked up by pshufb
        __m512 lo = _mm512_loadu_ps(out + b * QK), hi = _mm512_loadu_ps(out + b * QK + 16);
        for (int64_t j = 0; j < N; ++j) {
            const BlockIQ4_NL &blk = blocks[j * nb + b];
            const __m512 s = _mm512_set1_ps(g[j] * _cvtsh_ss(blk.d));
            const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i *>(blk.qs));
            const __m128i vl = _mm_shuffle_epi8(book, _mm_and_si128(q, low4));
            const __m128i vh = _mm_shuffle_epi8(book, _mm_and_si128(_mm_srli_epi16(q, 4), low4));
            lo = _mm512_fmadd_ps(s, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(vl)), lo);
            hi = _mm512_fmadd_ps(s, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(vh)), hi);
        }
        _mm512_storeu_ps(out + b * QK, lo);
        _mm512_storeu_ps(out + b * QK + 16, hi);
    }
}

void lut_mix_q3_k_avx512(const float *g, const BlockQ3_K *blocks, int64_t N, int64_t d, float *out) {
    const int64_t nb = d / QK_K;
    for (int64_t b = 0; b < nb; ++b) {   // 256 outputs in 16 registers over the N experts
        __m512 acc[QK_K / 16];
        for (int sb = 0; sb < QK_K / 16; ++sb) acc[sb] = _mm512_loadu_ps(out + b * QK_K + 16 * sb);
        for (int64_t j = 0; j < N; ++j) {
            const BlockQ3_K &blk = blocks[j * nb + b];
            const float gd = g[j] * _cvtsh_ss(blk.d);
            for (int sb = 0; sb < QK_K / 16; ++sb) {
                const __m512 s = _mm512_set1_ps(gd * float(q3k_scale(blk.scales, sb)));
                const __m512 v = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q3k_sub_block_sse(blk, sb)));
                acc[sb] = _mm512_fmadd_ps(s, v, acc[sb]);
            }
        }
        for (int sb = 0; sb < QK_K / 16; ++sb) _mm512_storeu_ps(out + b * QK_K + 16 * sb, acc[sb]);
    }
}

}  // namespace mole::cpu
