// Shared by the *_avx2.cpp kernels only (compiled with -mavx2 -mfma -mf16c): horizontal sum and
// the loads of one weight row's elements as floats.
#pragma once

#include <immintrin.h>

#include "types.h"

namespace mole::cpu {

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

}  // namespace mole::cpu
