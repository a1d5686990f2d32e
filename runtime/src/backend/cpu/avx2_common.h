// Shared by the *_avx2.cpp and *_avx512.cpp kernels only (compiled with -mavx2 -mfma -mf16c or
// more): horizontal sum, the loads of one weight row's elements as floats, the e^r * 2^k of the
// exp-based kernels, and the SSE decoders of the LUT types' small-integer values (IQ4_NL codebook,
// Q3_K sub-blocks).
#pragma once

#include <immintrin.h>

#include "backend/cpu/exp_poly.h"
#include "types.h"

namespace mole::cpu {

// e^r * 2^k for |r| <= ~0.35 and integral k >= -252 (after a Cody-Waite reduction x = k ln2 + r;
// exp_poly.h). 2^k is applied as two powers built in the exponent bits, so results down to the
// denormals come out as AVX-512's scalef gives them (to within the denormal's last bit).
inline __m256 exp_reduced_avx2(__m256 r, __m256 k) {
    const __m256 e = exp_taylor(
        r, [](__m256 a, __m256 b, __m256 c) { return _mm256_fmadd_ps(a, b, c); },
        [](float c) { return _mm256_set1_ps(c); });
    const __m256i ki = _mm256_cvtps_epi32(k), k1 = _mm256_srai_epi32(ki, 1), k2 = _mm256_sub_epi32(ki, k1);
    const __m256i bias = _mm256_set1_epi32(127);
    const __m256 p1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k1, bias), 23));
    const __m256 p2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k2, bias), 23));
    return _mm256_mul_ps(_mm256_mul_ps(e, p1), p2);
}

inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

template <Type T> inline __m256 load_w(const uint8_t *row, int64_t i) {
    if constexpr (T == Type::F32) {
        return _mm256_loadu_ps(reinterpret_cast<const float *>(row) + i);
    } else {
        const __m128i h =
            _mm_loadu_si128(reinterpret_cast<const __m128i *>(reinterpret_cast<const uint16_t *>(row) + i));
        if constexpr (T == Type::F16)
            return _mm256_cvtph_ps(h);
        else
            return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
}

template <Type T> inline float w_at(const uint8_t *row, int64_t i) {
    if constexpr (T == Type::F32)
        return reinterpret_cast<const float *>(row)[i];
    else if constexpr (T == Type::F16)
        return f16_to_f32(reinterpret_cast<const uint16_t *>(row)[i]);
    else
        return bf16_to_f32(reinterpret_cast<const uint16_t *>(row)[i]);
}

// IQ4_NL's codebook as 16 int8 lanes, for _mm_shuffle_epi8 by nibble.
inline __m128i iq4nl_book_sse() { return _mm_loadu_si128(reinterpret_cast<const __m128i *>(kIq4nlValues)); }

// Q3_K sub-block sb's 16 values q in -4..3 (int8 lanes; the element order of types.h): the low two
// bits from qs, the third from hmask. 16-bit shifts are safe: the masks keep bits of each byte only.
inline __m128i q3k_sub_block_sse(const BlockQ3_K &b, int sb) {
    const int n = sb / 8, jj = (sb % 8) / 2, half = sb % 2;
    const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i *>(b.qs + n * 32 + half * 16));
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i *>(b.hmask + half * 16));
    const __m128i low2 = _mm_and_si128(_mm_srl_epi16(q, _mm_cvtsi32_si128(2 * jj)), _mm_set1_epi8(3));
    const __m128i bit = _mm_and_si128(_mm_srl_epi16(h, _mm_cvtsi32_si128(4 * n + jj)), _mm_set1_epi8(1));
    return _mm_sub_epi8(_mm_add_epi8(low2, _mm_slli_epi16(bit, 2)), _mm_set1_epi8(4));
}

}  // namespace mole::cpu
