// Shared by the *_avx512.cpp kernels only (compiled with -mavx512*): the intrinsics include, the
// warning GCC 12 raises inside its own headers, and the e^r polynomial of the exp-based kernels.
#pragma once

#include <immintrin.h>

#include "backend/cpu/exp_poly.h"

// GCC 12 reports its own _mm512_undefined_* helpers inside the intrinsic headers as uninitialized.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace mole::cpu {

// e^r * 2^k for |r| <= ~0.35 (after a Cody-Waite reduction x = k ln2 + r; exp_poly.h); scalef
// underflows gracefully to 0 for very negative k.
inline __m512 exp_reduced_avx512(__m512 r, __m512 k) {
    const __m512 e = exp_taylor(
        r, [](__m512 a, __m512 b, __m512 c) { return _mm512_fmadd_ps(a, b, c); },
        [](float c) { return _mm512_set1_ps(c); });
    return _mm512_scalef_ps(e, k);
}

}  // namespace mole::cpu
