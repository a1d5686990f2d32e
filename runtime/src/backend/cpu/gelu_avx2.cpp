// AVX2 GELU (erf form), 8 lanes at a time, branch-free: the same erfc as gelu_avx512.cpp (see
// there: Numerical Recipes' Chebyshev fit, a^2 carried as an exact float pair into the exp).
#include "backend/cpu/avx2_common.h"
#include "backend/cpu/kernels.h"

namespace mole::cpu {

namespace {

inline __m256 gelu8(__m256 v) {
    static const float P[10] = {-1.26551223f, 1.00002368f,  0.37409196f, 0.09678418f,  -0.18628806f,
                                0.27886807f,  -1.13520398f, 1.48851587f, -0.82215223f, 0.17087277f};
    const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f);
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    // |x| clamped to 16 (erfc(16 / sqrt 2) underflows): keeps x^2 and its FMA residual finite
    const __m256 xa = _mm256_min_ps(_mm256_and_ps(v, absmask), _mm256_set1_ps(16.0f));
    const __m256 a = _mm256_mul_ps(xa, _mm256_set1_ps(0.70710678118654752f));
    const __m256 t = _mm256_div_ps(one, _mm256_fmadd_ps(half, a, one));
    __m256 p = _mm256_set1_ps(P[9]);
    for (int j = 8; j >= 0; --j) p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(P[j]));
    // -a^2 = -(hi + lo) / 2 exactly; y = -hi/2 + (P - lo/2)
    const __m256 hi = _mm256_mul_ps(xa, xa);
    const __m256 lo = _mm256_fmsub_ps(xa, xa, hi);
    const __m256 yh = _mm256_max_ps(_mm256_mul_ps(hi, _mm256_set1_ps(-0.5f)), _mm256_set1_ps(-104.0f));
    const __m256 yl = _mm256_fnmadd_ps(half, lo, p);
    // exp(yh + yl): k = round((yh + yl) log2e), r = yh - k ln2 + yl (Cody-Waite with FMA)
    const __m256 k = _mm256_round_ps(_mm256_mul_ps(_mm256_add_ps(yh, yl), _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693359375f), yh);
    r = _mm256_fnmadd_ps(k, _mm256_set1_ps(-2.12194440e-4f), r);
    r = _mm256_add_ps(r, yl);
    const __m256 c = _mm256_mul_ps(t, exp_reduced_avx2(r, k));   // erfc(a)
    const __m256 pos = _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_GE_OQ);
    const __m256 phi = _mm256_blendv_ps(c, _mm256_sub_ps(_mm256_set1_ps(2.0f), c), pos);
    return _mm256_mul_ps(_mm256_mul_ps(half, v), phi);   // NaN stays NaN through the products
}

}  // namespace

void gelu_avx2(float *x, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, gelu8(_mm256_loadu_ps(x + i)));
    if (i < n) {   // the tail through a zero-padded copy
        alignas(32) float tail[8] = {};
        for (int64_t j = i; j < n; ++j) tail[j - i] = x[j];
        _mm256_store_ps(tail, gelu8(_mm256_load_ps(tail)));
        for (int64_t j = i; j < n; ++j) x[j] = tail[j - i];
    }
}

}  // namespace mole::cpu
