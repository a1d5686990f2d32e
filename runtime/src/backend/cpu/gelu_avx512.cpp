// AVX-512 GELU (erf form), 16 lanes at a time, branch-free:
//   gelu(x) = 0.5 x phi,  phi = 1 + erf(x / sqrt 2) = erfc(a) (x < 0) or 2 - erfc(a) (x >= 0),
//   a = |x| / sqrt 2,  erfc(a) = t exp(-a^2 + P(t)),  t = 1 / (1 + a/2)
// with P the degree-9 Chebyshev fit of Numerical Recipes' erfcc (fractional error < 1.2e-7 for
// every a >= 0). a^2 = x^2 / 2 is carried as an exact float pair (hi + lo, via FMA) into the
// exp's range reduction, so large |x| keep full relative precision (no double fallback).
#include "backend/cpu/avx512_common.h"
#include "backend/cpu/kernels.h"

namespace mole::cpu {

void gelu_avx512(float *x, int64_t n) {
    static const float P[10] = {-1.26551223f, 1.00002368f,  0.37409196f, 0.09678418f,  -0.18628806f,
                                0.27886807f,  -1.13520398f, 1.48851587f, -0.82215223f, 0.17087277f};
    const __m512 half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.0f), two = _mm512_set1_ps(2.0f);
    const __m512 rsqrt2 = _mm512_set1_ps(0.70710678118654752f);
    const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    const __m512 log2e = _mm512_set1_ps(1.44269504088896341f);
    const __m512 ln2_hi = _mm512_set1_ps(0.693359375f), ln2_lo = _mm512_set1_ps(-2.12194440e-4f);
    const __m512 lowest = _mm512_set1_ps(-104.0f);   // exp below: 0 (after the t factor, < 2^-150)
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - i)) - 1);
        const __m512 v = _mm512_maskz_loadu_ps(m, x + i);
        // |x| clamped to 16 (erfc(16 / sqrt 2) underflows): keeps x^2 and its FMA residual finite
        const __m512 xa = _mm512_min_ps(_mm512_and_ps(v, absmask), _mm512_set1_ps(16.0f));
        const __m512 a = _mm512_mul_ps(xa, rsqrt2);
        const __m512 t = _mm512_div_ps(one, _mm512_fmadd_ps(half, a, one));
        __m512 p = _mm512_set1_ps(P[9]);
        for (int j = 8; j >= 0; --j) p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(P[j]));
        // -a^2 = -(hi + lo) / 2 exactly; y = -hi/2 + (P - lo/2)
        const __m512 hi = _mm512_mul_ps(xa, xa);
        const __m512 lo = _mm512_fmsub_ps(xa, xa, hi);
        const __m512 yh = _mm512_max_ps(_mm512_mul_ps(hi, _mm512_set1_ps(-0.5f)), lowest);
        const __m512 yl = _mm512_fnmadd_ps(half, lo, p);
        // exp(yh + yl): k = round((yh + yl) log2e), r = yh - k ln2 + yl (Cody-Waite with FMA)
        const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(_mm512_add_ps(yh, yl), log2e),
                                              _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        __m512 r = _mm512_fnmadd_ps(k, ln2_hi, yh);
        r = _mm512_fnmadd_ps(k, ln2_lo, r);
        r = _mm512_add_ps(r, yl);
        const __m512 c = _mm512_mul_ps(t, exp_reduced_avx512(r, k));   // erfc(a)
        const __mmask16 pos = _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_GE_OQ);
        const __m512 phi = _mm512_mask_sub_ps(c, pos, two, c);
        // NaN stays NaN through the products
        _mm512_mask_storeu_ps(x + i, m, _mm512_mul_ps(_mm512_mul_ps(half, v), phi));
    }
}

}  // namespace mole::cpu
