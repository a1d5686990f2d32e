// Shared by the *_avx512.cpp kernels only (compiled with -mavx512*): the intrinsics include, the
// warning GCC 12 raises inside its own headers, and the e^r polynomial of the exp-based kernels.
#pragma once

#include <immintrin.h>

// GCC 12 reports its own _mm512_undefined_* helpers inside the intrinsic headers as uninitialized.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace mole::cpu {

// e^r * 2^k for |r| <= ~0.35 (after a Cody-Waite reduction x = k ln2 + r): Taylor to r^7
// (truncation < 1e-8 relative); scalef underflows gracefully to 0 for very negative k.
inline __m512 exp_reduced_avx512(__m512 r, __m512 k) {
    __m512 e = _mm512_set1_ps(1.0f / 5040.0f);
    e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(1.0f / 720.0f));
    e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(1.0f / 120.0f));
    e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(1.0f / 24.0f));
    e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(1.0f / 6.0f));
    e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(0.5f));
    e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(1.0f));
    e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(e, k);
}

}  // namespace mole::cpu
