// AVX2 helpers of the row-at-a-time attention (compiled with -mavx2 -mfma -mf16c; called only
// after the run-time check): q.k scores, the softmax numerator, and the weighted sum of values.
#include <algorithm>
#include <cmath>

#include "backend/cpu/avx2_common.h"
#include "backend/cpu/exp_poly.h"
#include "backend/cpu/kernels.h"

namespace mole::cpu {

float dot_f32_avx2(const float *a, const float *b, int64_t n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    float sum = hsum256(_mm256_add_ps(s0, s1));
    for (; i < n; ++i) sum += a[i] * b[i];
    return sum;
}

void attn_scores_avx2(const float *q, const float *k, int64_t kv_stride, int64_t n_keys, int64_t hd, float scale,
                      float *scores) {
    int64_t t = 0;
    if (hd % 8 == 0) {
        // 4 keys at a time: 4 independent FMA chains, one combined horizontal reduction
        const __m128 sc = _mm_set1_ps(scale);
        for (; t + 4 <= n_keys; t += 4) {
            const float *k0 = k + t * kv_stride, *k1 = k0 + kv_stride, *k2 = k1 + kv_stride, *k3 = k2 + kv_stride;
            __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(),
                   a3 = _mm256_setzero_ps();
            for (int64_t e = 0; e < hd; e += 8) {
                const __m256 qv = _mm256_loadu_ps(q + e);
                a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + e), a0);
                a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k1 + e), a1);
                a2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k2 + e), a2);
                a3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k3 + e), a3);
            }
            const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
            const __m128 r = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
            _mm_storeu_ps(scores + t, _mm_mul_ps(r, sc));
        }
    }
    for (; t < n_keys; ++t) scores[t] = dot_f32_avx2(q, k + t * kv_stride, hd) * scale;
}

void attn_accum_avx2(const float *p, const float *v, int64_t kv_stride, int64_t n_keys, int64_t hd, float *out) {
    int64_t e = 0;
    // 64 output elements at a time stay in 8 registers across all keys
    for (; e + 64 <= hd; e += 64) {
        __m256 acc[8];
        for (int i = 0; i < 8; ++i) acc[i] = _mm256_setzero_ps();
        for (int64_t t = 0; t < n_keys; ++t) {
            const __m256 pt = _mm256_set1_ps(p[t]);
            const float *vt = v + t * kv_stride + e;
            for (int i = 0; i < 8; ++i) acc[i] = _mm256_fmadd_ps(pt, _mm256_loadu_ps(vt + 8 * i), acc[i]);
        }
        for (int i = 0; i < 8; ++i) _mm256_storeu_ps(out + e + 8 * i, acc[i]);
    }
    for (; e + 8 <= hd; e += 8) {
        __m256 acc = _mm256_setzero_ps();
        for (int64_t t = 0; t < n_keys; ++t)
            acc = _mm256_fmadd_ps(_mm256_set1_ps(p[t]), _mm256_loadu_ps(v + t * kv_stride + e), acc);
        _mm256_storeu_ps(out + e, acc);
    }
    for (; e < hd; ++e) {
        float acc = 0.0f;
        for (int64_t t = 0; t < n_keys; ++t) acc += p[t] * v[t * kv_stride + e];
        out[e] = acc;
    }
}

// Softmax numerator over one query's scores: x[t] = exp(x[t] - max_t x), returns sum_t x[t] in
// double. exp: k = round(y log2e), r = y - k ln2 (Cody-Waite, FMA), e^r by Taylor to r^7 (|r| <=
// 0.35: < 1e-8 relative; exp_poly.h), times 2^k built in the exponent bits; y is clamped at -87 (e^-87 is
// ~1e-38 of the largest term, so the clamp changes nothing measurable).
double softmax_exp_avx2(float *x, int64_t n) {
    __m256 mv = _mm256_set1_ps(-INFINITY);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(x + i));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mv), _mm256_extractf128_ps(mv, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    float mx = _mm_cvtss_f32(m4);
    for (; i < n; ++i) mx = std::max(mx, x[i]);
    const __m256 vmx = _mm256_set1_ps(mx), lowest = _mm256_set1_ps(-87.0f),
                 log2e = _mm256_set1_ps(1.44269504088896341f);
    const __m256 ln2_hi = _mm256_set1_ps(0.693359375f), ln2_lo = _mm256_set1_ps(-2.12194440e-4f);
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    for (i = 0; i + 8 <= n; i += 8) {
        const __m256 y = _mm256_max_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vmx), lowest);
        const __m256 k = _mm256_round_ps(_mm256_mul_ps(y, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        __m256 r = _mm256_fnmadd_ps(k, ln2_hi, y);
        r = _mm256_fnmadd_ps(k, ln2_lo, r);
        __m256 e = exp_taylor(
            r, [](__m256 a, __m256 b, __m256 c) { return _mm256_fmadd_ps(a, b, c); },
            [](float c) { return _mm256_set1_ps(c); });
        const __m256i pow2 = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
        e = _mm256_mul_ps(e, _mm256_castsi256_ps(pow2));
        _mm256_storeu_ps(x + i, e);
        s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
        s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
    }
    alignas(32) double part[4];
    _mm256_store_pd(part, _mm256_add_pd(s0, s1));
    double sum = (part[0] + part[1]) + (part[2] + part[3]);
    for (; i < n; ++i) {
        x[i] = std::exp(x[i] - mx);
        sum += x[i];
    }
    return sum;
}

}  // namespace mole::cpu
