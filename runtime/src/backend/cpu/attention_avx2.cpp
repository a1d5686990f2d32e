// AVX2 attention (compiled with -mavx2 -mfma -mf16c; called only after the run-time check): the
// row-at-a-time helpers (q.k scores, the softmax numerator, the weighted sum of values) and, for
// prompts, blocks of 16 queries in SIMD lanes as on AVX-512. Each reads a KV cache of f32 or of
// IEEE half (uint16_t), converted to f32 as it is loaded (F16C).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "backend/cpu/avx2_common.h"
#include "backend/cpu/exp_poly.h"
#include "backend/cpu/kernels.h"

namespace mole::cpu {

namespace {

// A KV cache's elements as floats: 8 at p; one; the first `left` (1..8) of 8, zero above.
inline __m256 load8_kv(const float *p) { return _mm256_loadu_ps(p); }
inline __m256 load8_kv(const uint16_t *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i *>(p)));
}
inline float kv_at(const float *p) { return *p; }
inline float kv_at(const uint16_t *p) { return _cvtsh_ss(*p); }

// Lanes below `left` of 8 (all for left >= 8), for masked loads and stores of a head's tail.
inline __m256i tail_mask(int64_t left) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(int(std::min<int64_t>(left, 8))), lane);
}
inline __m256 load8_kv_tail(const float *p, int64_t left) { return _mm256_maskload_ps(p, tail_mask(left)); }
inline __m256 load8_kv_tail(const uint16_t *p, int64_t left) {
    alignas(16) uint16_t h[8] = {};
    std::memcpy(h, p, sizeof(uint16_t) * size_t(std::min<int64_t>(left, 8)));
    return _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i *>(h)));
}

template <class KV> float dot_kv(const float *a, const KV *b, int64_t n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), load8_kv(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), load8_kv(b + i + 8), s1);
    }
    for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), load8_kv(b + i), s0);
    float sum = hsum256(_mm256_add_ps(s0, s1));
    for (; i < n; ++i) sum += a[i] * kv_at(b + i);
    return sum;
}

template <class KV> void attn_scores(const float *q, const KV *k, int64_t kv_stride, int64_t n_keys, int64_t hd,
                                     float scale, float *scores) {
    int64_t t = 0;
    if (hd % 8 == 0) {
        // 4 keys at a time: 4 independent FMA chains, one combined horizontal reduction
        const __m128 sc = _mm_set1_ps(scale);
        for (; t + 4 <= n_keys; t += 4) {
            const KV *k0 = k + t * kv_stride, *k1 = k0 + kv_stride, *k2 = k1 + kv_stride, *k3 = k2 + kv_stride;
            __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(),
                   a3 = _mm256_setzero_ps();
            for (int64_t e = 0; e < hd; e += 8) {
                const __m256 qv = _mm256_loadu_ps(q + e);
                a0 = _mm256_fmadd_ps(qv, load8_kv(k0 + e), a0);
                a1 = _mm256_fmadd_ps(qv, load8_kv(k1 + e), a1);
                a2 = _mm256_fmadd_ps(qv, load8_kv(k2 + e), a2);
                a3 = _mm256_fmadd_ps(qv, load8_kv(k3 + e), a3);
            }
            const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
            const __m128 r = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
            _mm_storeu_ps(scores + t, _mm_mul_ps(r, sc));
        }
    }
    for (; t < n_keys; ++t) scores[t] = dot_kv(q, k + t * kv_stride, hd) * scale;
}

template <class KV>
void attn_accum(const float *p, const KV *v, int64_t kv_stride, int64_t n_keys, int64_t hd, float *out) {
    int64_t e = 0;
    // 64 output elements at a time stay in 8 registers across all keys
    for (; e + 64 <= hd; e += 64) {
        __m256 acc[8];
        for (int i = 0; i < 8; ++i) acc[i] = _mm256_setzero_ps();
        for (int64_t t = 0; t < n_keys; ++t) {
            const __m256 pt = _mm256_set1_ps(p[t]);
            const KV *vt = v + t * kv_stride + e;
            for (int i = 0; i < 8; ++i) acc[i] = _mm256_fmadd_ps(pt, load8_kv(vt + 8 * i), acc[i]);
        }
        for (int i = 0; i < 8; ++i) _mm256_storeu_ps(out + e + 8 * i, acc[i]);
    }
    for (; e + 8 <= hd; e += 8) {
        __m256 acc = _mm256_setzero_ps();
        for (int64_t t = 0; t < n_keys; ++t)
            acc = _mm256_fmadd_ps(_mm256_set1_ps(p[t]), load8_kv(v + t * kv_stride + e), acc);
        _mm256_storeu_ps(out + e, acc);
    }
    for (; e < hd; ++e) {
        float acc = 0.0f;
        for (int64_t t = 0; t < n_keys; ++t) acc += p[t] * kv_at(v + t * kv_stride + e);
        out[e] = acc;
    }
}

}  // namespace

float dot_f32_avx2(const float *a, const float *b, int64_t n) { return dot_kv(a, b, n); }

void attn_scores_avx2(const float *q, const float *k, int64_t kv_stride, int64_t n_keys, int64_t hd, float scale,
                      float *scores) {
    attn_scores(q, k, kv_stride, n_keys, hd, scale, scores);
}
void attn_scores_avx2(const float *q, const uint16_t *k, int64_t kv_stride, int64_t n_keys, int64_t hd, float scale,
                      float *scores) {
    attn_scores(q, k, kv_stride, n_keys, hd, scale, scores);
}
void attn_accum_avx2(const float *p, const float *v, int64_t kv_stride, int64_t n_keys, int64_t hd, float *out) {
    attn_accum(p, v, kv_stride, n_keys, hd, out);
}
void attn_accum_avx2(const float *p, const uint16_t *v, int64_t kv_stride, int64_t n_keys, int64_t hd, float *out) {
    attn_accum(p, v, kv_stride, n_keys, hd, out);
}

void kv_store_f16_avx2(const float *x, uint16_t *out, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128(reinterpret_cast<__m128i *>(out + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    for (; i < n; ++i) out[i] = f32_to_f16(x[i]);
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

// ---------------------------------------------------------------------------------------------
// Prompt attention: a block of up to 16 consecutive queries of one head in two 8-lane registers
// (lanes 0-7 and 8-15), the same steps as attention_avx512.cpp.

namespace {

// e^x for x <= 0 (clamped at -104, below which the result is ~0), ~1e-7 relative.
inline __m256 exp_neg(__m256 x) {
    x = _mm256_max_ps(x, _mm256_set1_ps(-104.0f));
    const __m256 k = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(k, _mm256_set1_ps(-2.12194440e-4f), r);
    return exp_reduced_avx2(r, k);
}

// Lanes (queries j0 .. j0+8) that see key t: query j sees keys 0 .. n0 + j - 1, i.e. j > t - n0.
inline __m256 visible(int64_t t, int64_t n0, int j0) {
    const __m256i lane = _mm256_setr_epi32(j0, j0 + 1, j0 + 2, j0 + 3, j0 + 4, j0 + 5, j0 + 6, j0 + 7);
    const int64_t lim = std::max<int64_t>(std::min<int64_t>(t - n0, 16), -1);
    return _mm256_castsi256_ps(_mm256_cmpgt_epi32(lane, _mm256_set1_epi32(int(lim))));
}

// scores[t][16] for keys t0 .. t0+KB of QT[hd][16], key t0 + i at k + i * stride (f32); masked
// lanes -inf; updates the running max.
template <int KB> inline void score_keys(const float *QT, const float *k, int64_t stride, int64_t hd, int64_t t0,
                                         int64_t n0, float scale, float *scores, __m256 mx[2]) {
    __m256 acc[KB][2];
    for (int i = 0; i < KB; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    for (int64_t e = 0; e < hd; ++e) {
        const __m256 q0 = _mm256_loadu_ps(QT + e * 16), q1 = _mm256_loadu_ps(QT + e * 16 + 8);
        for (int i = 0; i < KB; ++i) {
            const __m256 kv = _mm256_set1_ps(k[i * stride + e]);
            acc[i][0] = _mm256_fmadd_ps(q0, kv, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(q1, kv, acc[i][1]);
        }
    }
    const __m256 ninf = _mm256_set1_ps(-INFINITY), sv = _mm256_set1_ps(scale);
    for (int i = 0; i < KB; ++i)
        for (int h = 0; h < 2; ++h) {
            const __m256 s = _mm256_blendv_ps(ninf, _mm256_mul_ps(acc[i][h], sv), visible(t0 + i, n0, 8 * h));
            _mm256_storeu_ps(scores + (t0 + i) * 16 + 8 * h, s);
            mx[h] = _mm256_max_ps(mx[h], s);
        }
}

// score_keys of the cache's keys t0 .. t0+KB; half keys go through kf [KB][hd] as floats first, so
// that each broadcast stays one load.
template <int KB, class KV> inline void score_cached(const float *QT, const KV *k, int64_t kv_stride, int64_t hd,
                                                     int64_t t0, int64_t n0, float scale, float *scores, __m256 mx[2],
                                                     float *kf) {
    if constexpr (std::is_same_v<KV, float>) {
        score_keys<KB>(QT, k + t0 * kv_stride, kv_stride, hd, t0, n0, scale, scores, mx);
    } else {
        for (int i = 0; i < KB; ++i) {
            const KV *row = k + (t0 + i) * kv_stride;
            int64_t e = 0;
            for (; e + 8 <= hd; e += 8) _mm256_storeu_ps(kf + i * hd + e, load8_kv(row + e));
            for (; e < hd; ++e) kf[i * hd + e] = kv_at(row + e);
        }
        score_keys<KB>(QT, kf, hd, hd, t0, n0, scale, scores, mx);
    }
}

// out_j[e0 .. e0 + 8 NV) for queries j0 .. j0+QJ: sum_t p[t][j] v_t, times inv[j]; the last of
// the NV vectors is masked to the head's end.
template <int QJ, int NV, class KV> void accumulate(const float *p, const KV *v, int64_t kv_stride, int64_t hd,
                                                    int64_t n0, int j0, int64_t e0, const float *inv, float *out,
                                                    int64_t out_stride) {
    const int64_t n_keys = n0 + j0 + QJ - 1;   // the group's last query sees the most keys
    const int64_t left = hd - e0 - 8 * (NV - 1);
    const __m256i tail = tail_mask(left);
    __m256 acc[QJ][NV];
    for (int j = 0; j < QJ; ++j)
        for (int c = 0; c < NV; ++c) acc[j][c] = _mm256_setzero_ps();
    const KV *vt = v + e0;
    for (int64_t t = 0; t < n_keys; ++t, vt += kv_stride) {
        __m256 vv[NV];
        for (int c = 0; c + 1 < NV; ++c) vv[c] = load8_kv(vt + 8 * c);
        vv[NV - 1] = left >= 8 ? load8_kv(vt + 8 * (NV - 1)) : load8_kv_tail(vt + 8 * (NV - 1), left);
        for (int j = 0; j < QJ; ++j) {
            const __m256 pj = _mm256_set1_ps(p[t * 16 + j0 + j]);
            for (int c = 0; c < NV; ++c) acc[j][c] = _mm256_fmadd_ps(pj, vv[c], acc[j][c]);
        }
    }
    for (int j = 0; j < QJ; ++j) {
        const __m256 iv = _mm256_set1_ps(inv[j0 + j]);
        float *o = out + (j0 + j) * out_stride + e0;
        for (int c = 0; c + 1 < NV; ++c) _mm256_storeu_ps(o + 8 * c, _mm256_mul_ps(acc[j][c], iv));
        _mm256_maskstore_ps(o + 8 * (NV - 1), tail, _mm256_mul_ps(acc[j][NV - 1], iv));
    }
}

template <int QJ, class KV> void accumulate_all(const float *p, const KV *v, int64_t kv_stride, int64_t hd, int64_t n0,
                                                int j0, const float *inv, float *out, int64_t out_stride) {
    for (int64_t e0 = 0; e0 < hd; e0 += 16) {
        if (hd - e0 > 8)
            accumulate<QJ, 2>(p, v, kv_stride, hd, n0, j0, e0, inv, out, out_stride);
        else
            accumulate<QJ, 1>(p, v, kv_stride, hd, n0, j0, e0, inv, out, out_stride);
    }
}

template <class KV> void attention_block(const float *q, int64_t q_stride, int nq, const KV *k, const KV *v,
                                         int64_t kv_stride, int64_t n0, int64_t hd, float scale, float *out,
                                         int64_t out_stride, float *buf) {
    const int64_t T = n0 + nq - 1;        // keys the block's last query sees
    float *QT = buf;                      // [hd][16] the queries' columns (lanes past nq: 0)
    float *p = buf + hd * 16;             // [T][16] scores, then exp(score - max)
    float *kf = p + T * 16;               // [6][hd] half keys as floats
    for (int64_t e = 0; e < hd; ++e)
        for (int j = 0; j < 16; ++j) QT[e * 16 + j] = j < nq ? q[j * q_stride + e] : 0.0f;
    __m256 mx[2] = {_mm256_set1_ps(-INFINITY), _mm256_set1_ps(-INFINITY)};
    int64_t t = 0;
    for (; t + 6 <= T; t += 6) score_cached<6>(QT, k, kv_stride, hd, t, n0, scale, p, mx, kf);
    for (; t < T; ++t) score_cached<1>(QT, k, kv_stride, hd, t, n0, scale, p, mx, kf);
    // p = exp(s - max) (0 where masked), sums in double per lane
    __m256d sum[4] = {_mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd()};
    const __m256 ninf = _mm256_set1_ps(-INFINITY);
    for (t = 0; t < T; ++t)
        for (int h = 0; h < 2; ++h) {
            const __m256 s = _mm256_loadu_ps(p + t * 16 + 8 * h);
            const __m256 live = _mm256_cmp_ps(s, ninf, _CMP_NEQ_OQ);
            const __m256 e = _mm256_and_ps(live, exp_neg(_mm256_sub_ps(s, mx[h])));
            _mm256_storeu_ps(p + t * 16 + 8 * h, e);
            sum[2 * h] = _mm256_add_pd(sum[2 * h], _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
            sum[2 * h + 1] = _mm256_add_pd(sum[2 * h + 1], _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
        }
    alignas(32) double sums[16];
    for (int i = 0; i < 4; ++i) _mm256_store_pd(sums + 4 * i, sum[i]);
    float inv[16];
    for (int j = 0; j < 16; ++j) inv[j] = float(1.0 / sums[j]);
    int j = 0;
    for (; j + 4 <= nq; j += 4) accumulate_all<4>(p, v, kv_stride, hd, n0, j, inv, out, out_stride);
    switch (nq - j) {
    case 1: accumulate_all<1>(p, v, kv_stride, hd, n0, j, inv, out, out_stride); break;
    case 2: accumulate_all<2>(p, v, kv_stride, hd, n0, j, inv, out, out_stride); break;
    case 3: accumulate_all<3>(p, v, kv_stride, hd, n0, j, inv, out, out_stride); break;
    default: break;
    }
}

}  // namespace

void attention_block_avx2(const float *q, int64_t q_stride, int nq, const float *k, const float *v, int64_t kv_stride,
                          int64_t n0, int64_t hd, float scale, float *out, int64_t out_stride, float *buf) {
    attention_block(q, q_stride, nq, k, v, kv_stride, n0, hd, scale, out, out_stride, buf);
}
void attention_block_avx2(const float *q, int64_t q_stride, int nq, const uint16_t *k, const uint16_t *v,
                          int64_t kv_stride, int64_t n0, int64_t hd, float scale, float *out, int64_t out_stride,
                          float *buf) {
    attention_block(q, q_stride, nq, k, v, kv_stride, n0, hd, scale, out, out_stride, buf);
}

}  // namespace mole::cpu
