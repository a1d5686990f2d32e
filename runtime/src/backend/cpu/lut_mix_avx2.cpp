// The LUT mix fused with Q8_0 / IQ4_NL / Q3_K dequantization on AVX2 (compiled with -mavx2 -mfma
// -mf16c; called only after the run-time check): no f32 copy of the slice. The same arithmetic as
// lut_mix_avx512.cpp (s = g d, then one fma per value in expert order), so the two agree exactly.
#include "backend/cpu/avx2_common.h"
#include "backend/cpu/kernels.h"

namespace mole::cpu {

namespace {

// acc[0], acc[1] += s * float(v) for the 16 int8 values of v, in order.
inline void fma_i8(__m256 *acc, __m256 s, __m128i v16) {
    acc[0] = _mm256_fmadd_ps(s, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v16)), acc[0]);
    acc[1] = _mm256_fmadd_ps(s, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(v16, 8))), acc[1]);
}

// out[b*QK .. +QK) over the N experts in 4 registers; dec(blk) gives the block's 32 int8 values as
// two 16-lane halves, in element order.
template <class Block, class Decode>
void mix32(const float *g, const Block *blocks, int64_t N, int64_t d, float *out, Decode dec) {
    const int64_t nb = d / QK;
    for (int64_t b = 0; b < nb; ++b) {
        __m256 acc[4];
        for (int i = 0; i < 4; ++i) acc[i] = _mm256_loadu_ps(out + b * QK + 8 * i);
        for (int64_t j = 0; j < N; ++j) {
            const Block &blk = blocks[j * nb + b];
            const __m256 s = _mm256_set1_ps(g[j] * _cvtsh_ss(blk.d));
            __m128i lo, hi;
            dec(blk, lo, hi);
            fma_i8(acc, s, lo);
            fma_i8(acc + 2, s, hi);
        }
        for (int i = 0; i < 4; ++i) _mm256_storeu_ps(out + b * QK + 8 * i, acc[i]);
    }
}

}  // namespace

void lut_mix_q8_0_avx2(const float *g, const BlockQ8_0 *blocks, int64_t N, int64_t d, float *out) {
    mix32(g, blocks, N, d, out, [](const BlockQ8_0 &blk, __m128i &lo, __m128i &hi) {
        lo = _mm_loadu_si128(reinterpret_cast<const __m128i *>(blk.qs));
        hi = _mm_loadu_si128(reinterpret_cast<const __m128i *>(blk.qs + 16));
    });
}

void lut_mix_iq4_nl_avx2(const float *g, const BlockIQ4_NL *blocks, int64_t N, int64_t d, float *out) {
    const __m128i low4 = _mm_set1_epi8(0x0f), book = iq4nl_book_sse();
    mix32(g, blocks, N, d, out, [&](const BlockIQ4_NL &blk, __m128i &lo, __m128i &hi) {
        const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i *>(blk.qs));
        lo = _mm_shuffle_epi8(book, _mm_and_si128(q, low4));
        hi = _mm_shuffle_epi8(book, _mm_and_si128(_mm_srli_epi16(q, 4), low4));
    });
}

void lut_mix_q3_k_avx2(const float *g, const BlockQ3_K *blocks, int64_t N, int64_t d, float *out) {
    const int64_t nb = d / QK_K;
    for (int64_t b = 0; b < nb; ++b) {   // 256 outputs, 32 registers: the super-block in two halves
        for (int half = 0; half < 2; ++half) {
            constexpr int kSub = QK_K / 16 / 2;   // sub-blocks of 16 per half
            __m256 acc[2 * kSub];
            float *o = out + b * QK_K + half * QK_K / 2;
            for (int i = 0; i < 2 * kSub; ++i) acc[i] = _mm256_loadu_ps(o + 8 * i);
            for (int64_t j = 0; j < N; ++j) {
                const BlockQ3_K &blk = blocks[j * nb + b];
                const float gd = g[j] * _cvtsh_ss(blk.d);
                for (int k = 0; k < kSub; ++k) {
                    const int sb = half * kSub + k;
                    fma_i8(acc + 2 * k, _mm256_set1_ps(gd * float(q3k_scale(blk.scales, sb))),
                           q3k_sub_block_sse(blk, sb));
                }
            }
            for (int i = 0; i < 2 * kSub; ++i) _mm256_storeu_ps(o + 8 * i, acc[i]);
        }
    }
}

}  // namespace mole::cpu
