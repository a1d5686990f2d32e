// Row dequantization with AVX2 + F16C (compiled with those flags; called only after the
// run-time check): the same values as dequantize_row_ref.
#include <cstring>

#include "backend/cpu/avx2_common.h"
#include "backend/cpu/kernels.h"

namespace mole::cpu {

void dequantize_row_avx2(Type type, const void *src, float *dst, int64_t n) {
    const uint8_t *p = static_cast<const uint8_t *>(src);
    switch (type) {
    case Type::F32: std::memcpy(dst, src, size_t(n) * 4); return;
    case Type::F16:
    case Type::BF16: {
        int64_t i = 0;
        for (; i + 8 <= n; i += 8) {
            const __m256 v = type == Type::F16 ? load_w<Type::F16>(p, i) : load_w<Type::BF16>(p, i);
            _mm256_storeu_ps(dst + i, v);
        }
        for (; i < n; ++i) dst[i] = type == Type::F16 ? w_at<Type::F16>(p, i) : w_at<Type::BF16>(p, i);
        return;
    }
    case Type::Q8_0: {
        const BlockQ8_0 *b = static_cast<const BlockQ8_0 *>(src);
        for (int64_t j = 0; j < n / QK; ++j) {
            const __m256 d = _mm256_set1_ps(_cvtsh_ss(b[j].d));
            for (int h = 0; h < 4; ++h) {
                const __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i *>(b[j].qs + 8 * h));
                _mm256_storeu_ps(dst + j * QK + 8 * h, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), d));
            }
        }
        return;
    }
    case Type::Q4_0:
    case Type::IQ4_NL: {   // the same block layout; a nibble's value from a 16-entry int8 table (pshufb)
        const BlockQ4_0 *b = static_cast<const BlockQ4_0 *>(src);
        const __m128i low4 = _mm_set1_epi8(0x0f);
        const __m128i book = type == Type::IQ4_NL
            ? iq4nl_book_sse()
            : _mm_setr_epi8(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7);
        for (int64_t j = 0; j < n / QK; ++j) {
            const __m256 d = _mm256_set1_ps(_cvtsh_ss(b[j].d));
            const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i *>(b[j].qs));
            const __m128i lo = _mm_shuffle_epi8(book, _mm_and_si128(q, low4));
            const __m128i hi = _mm_shuffle_epi8(book, _mm_and_si128(_mm_srli_epi16(q, 4), low4));
            const __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
            for (int h = 0; h < 4; ++h)
                _mm256_storeu_ps(dst + j * QK + 8 * h,
                                 _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(parts[h])), d));
        }
        return;
    }
    case Type::Q3_K: {
        const BlockQ3_K *b = static_cast<const BlockQ3_K *>(src);
        for (int64_t j = 0; j < n / QK_K; ++j) {
            const float d = _cvtsh_ss(b[j].d);
            for (int sb = 0; sb < QK_K / 16; ++sb) {
                const __m128i q = q3k_sub_block_sse(b[j], sb);
                const __m256 dl = _mm256_set1_ps(d * float(q3k_scale(b[j].scales, sb)));
                float *o = dst + j * QK_K + 16 * sb;
                _mm256_storeu_ps(o, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), dl));
                _mm256_storeu_ps(o + 8,
                                 _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q, 8))), dl));
            }
        }
        return;
    }
    }
}

}  // namespace mole::cpu
