// AVX-512 causal attention for a block of up to 16 consecutive queries of one head (prompt
// processing), queries in the 16 lanes: no horizontal sum per key. Scores of 8 keys per pass over
// the head dimension (a broadcast key element times the queries' column), softmax down the key
// axis with double sums, then out_j = sum_t p[t][j] v_t for 4 queries per pass over the values.
// The KV cache is f32 or IEEE half (uint16_t, converted as it is loaded).
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "backend/cpu/avx512_common.h"
#include "backend/cpu/kernels.h"

namespace mole::cpu {

namespace {

// e^x for x <= 0 (x >= -104 after the clamp; below, the result underflows to ~0), ~1e-7 relative:
// x = k ln2 + r (Cody-Waite).
inline __m512 exp_neg(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-104.0f));
    const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(k, _mm512_set1_ps(-2.12194440e-4f), r);
    return exp_reduced_avx512(r, k);
}

// Lanes (queries) that see key t: query j sees keys 0 .. n0 + j - 1.
inline __mmask16 visible(int64_t t, int64_t n0) {
    return t < n0 ? __mmask16(0xffff) : t - n0 + 1 >= 16 ? __mmask16(0) : __mmask16(0xffffu << (t - n0 + 1));
}

// A KV cache's elements as floats: 16 at p; the `tail` lanes of 16 (zero elsewhere).
inline __m512 load16_kv(const float *p) { return _mm512_loadu_ps(p); }
inline __m512 load16_kv(const uint16_t *p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(p)));
}
inline __m512 load16_kv(const float *p, __mmask16 tail) { return _mm512_maskz_loadu_ps(tail, p); }
inline __m512 load16_kv(const uint16_t *p, __mmask16 tail) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(tail, p));
}

// scores[t][16] for keys t0 .. t0+KB of QT[hd][16], key t0 + i at k + i * stride (f32); masked
// lanes -inf; returns the running max.
template <int KB> inline __m512 score_keys(const float *QT, const float *k, int64_t stride, int64_t hd, int64_t t0,
                                           int64_t n0, float scale, float *scores, __m512 mx) {
    __m512 acc[KB];
    for (int i = 0; i < KB; ++i) acc[i] = _mm512_setzero_ps();
    for (int64_t e = 0; e < hd; ++e) {
        const __m512 qv = _mm512_loadu_ps(QT + e * 16);
        for (int i = 0; i < KB; ++i) acc[i] = _mm512_fmadd_ps(qv, _mm512_set1_ps(k[i * stride + e]), acc[i]);
    }
    const __m512 ninf = _mm512_set1_ps(-INFINITY), sv = _mm512_set1_ps(scale);
    for (int i = 0; i < KB; ++i) {
        const __m512 s = _mm512_mask_blend_ps(visible(t0 + i, n0), ninf, _mm512_mul_ps(acc[i], sv));
        _mm512_storeu_ps(scores + (t0 + i) * 16, s);
        mx = _mm512_max_ps(mx, s);
    }
    return mx;
}

// score_keys of the cache's keys t0 .. t0+KB; half keys go through kf [KB][hd] as floats first, so
// that each broadcast stays one load.
template <int KB, class KV> inline __m512 score_cached(const float *QT, const KV *k, int64_t kv_stride, int64_t hd,
                                                       int64_t t0, int64_t n0, float scale, float *scores, __m512 mx,
                                                       float *kf) {
    if constexpr (std::is_same_v<KV, float>) {
        return score_keys<KB>(QT, k + t0 * kv_stride, kv_stride, hd, t0, n0, scale, scores, mx);
    } else {
        for (int i = 0; i < KB; ++i) {
            const KV *row = k + (t0 + i) * kv_stride;
            for (int64_t e = 0; e < hd; e += 16) {
                const __mmask16 m = hd - e >= 16 ? __mmask16(0xffff) : __mmask16((1u << (hd - e)) - 1);
                _mm512_mask_storeu_ps(kf + i * hd + e, m, load16_kv(row + e, m));
            }
        }
        return score_keys<KB>(QT, kf, hd, hd, t0, n0, scale, scores, mx);
    }
}

// out_j[e0 .. e0 + 16 NV) for queries j0 .. j0+QJ: sum_t p[t][j] v_t, times inv[j]; the last of
// the NV vectors is masked to the head's end.
template <int QJ, int NV, class KV> void accumulate(const float *p, const KV *v, int64_t kv_stride, int64_t hd,
                                                    int64_t n0, int j0, int64_t e0, const float *inv, float *out,
                                                    int64_t out_stride) {
    const int64_t n_keys = n0 + j0 + QJ - 1;   // the group's last query sees the most keys
    const int64_t left = hd - e0 - 16 * (NV - 1);
    const __mmask16 tail = left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1);
    __m512 acc[QJ][NV];
    for (int j = 0; j < QJ; ++j)
        for (int c = 0; c < NV; ++c) acc[j][c] = _mm512_setzero_ps();
    const KV *vt = v + e0;
    for (int64_t t = 0; t < n_keys; ++t, vt += kv_stride) {
        __m512 vv[NV];
        for (int c = 0; c + 1 < NV; ++c) vv[c] = load16_kv(vt + 16 * c);
        vv[NV - 1] = load16_kv(vt + 16 * (NV - 1), tail);
        for (int j = 0; j < QJ; ++j) {
            const __m512 pj = _mm512_set1_ps(p[t * 16 + j0 + j]);
            for (int c = 0; c < NV; ++c) acc[j][c] = _mm512_fmadd_ps(pj, vv[c], acc[j][c]);
        }
    }
    for (int j = 0; j < QJ; ++j) {
        const __m512 iv = _mm512_set1_ps(inv[j0 + j]);
        float *o = out + (j0 + j) * out_stride + e0;
        for (int c = 0; c + 1 < NV; ++c) _mm512_storeu_ps(o + 16 * c, _mm512_mul_ps(acc[j][c], iv));
        _mm512_mask_storeu_ps(o + 16 * (NV - 1), tail, _mm512_mul_ps(acc[j][NV - 1], iv));
    }
}

template <int QJ, class KV> void accumulate_all(const float *p, const KV *v, int64_t kv_stride, int64_t hd, int64_t n0,
                                                int j0, const float *inv, float *out, int64_t out_stride) {
    for (int64_t e0 = 0; e0 < hd; e0 += 64) {
        switch (std::min<int64_t>(4, (hd - e0 + 15) / 16)) {
        case 1: accumulate<QJ, 1>(p, v, kv_stride, hd, n0, j0, e0, inv, out, out_stride); break;
        case 2: accumulate<QJ, 2>(p, v, kv_stride, hd, n0, j0, e0, inv, out, out_stride); break;
        case 3: accumulate<QJ, 3>(p, v, kv_stride, hd, n0, j0, e0, inv, out, out_stride); break;
        default: accumulate<QJ, 4>(p, v, kv_stride, hd, n0, j0, e0, inv, out, out_stride); break;
        }
    }
}

template <class KV> void attention_block(const float *q, int64_t q_stride, int nq, const KV *k, const KV *v,
                                         int64_t kv_stride, int64_t n0, int64_t hd, float scale, float *out,
                                         int64_t out_stride, float *buf) {
    const int64_t T = n0 + nq - 1;        // keys the block's last query sees
    float *QT = buf;                      // [hd][16] the queries' columns (lanes past nq: 0)
    float *p = buf + hd * 16;             // [T][16] scores, then exp(score - max)
    float *kf = p + T * 16;               // [8][hd] half keys as floats
    for (int64_t e = 0; e < hd; ++e)
        for (int j = 0; j < 16; ++j) QT[e * 16 + j] = j < nq ? q[j * q_stride + e] : 0.0f;
    __m512 mx = _mm512_set1_ps(-INFINITY);
    int64_t t = 0;
    for (; t + 8 <= T; t += 8) mx = score_cached<8>(QT, k, kv_stride, hd, t, n0, scale, p, mx, kf);
    for (; t < T; ++t) mx = score_cached<1>(QT, k, kv_stride, hd, t, n0, scale, p, mx, kf);
    // p = exp(s - max) (0 where masked), sums in double per lane
    __m512d sum_lo = _mm512_setzero_pd(), sum_hi = _mm512_setzero_pd();
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    for (t = 0; t < T; ++t) {
        const __m512 s = _mm512_loadu_ps(p + t * 16);
        const __mmask16 live = _mm512_cmp_ps_mask(s, ninf, _CMP_NEQ_OQ);
        const __m512 e = _mm512_maskz_mov_ps(live, exp_neg(_mm512_sub_ps(s, mx)));
        _mm512_storeu_ps(p + t * 16, e);
        sum_lo = _mm512_add_pd(sum_lo, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
        sum_hi = _mm512_add_pd(sum_hi, _mm512_cvtps_pd(_mm512_extractf32x8_ps(e, 1)));
    }
    alignas(64) double sums[16];
    _mm512_store_pd(sums, sum_lo);
    _mm512_store_pd(sums + 8, sum_hi);
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

void attention_block_avx512(const float *q, int64_t q_stride, int nq, const float *k, const float *v, int64_t kv_stride,
                            int64_t n0, int64_t hd, float scale, float *out, int64_t out_stride, float *buf) {
    attention_block(q, q_stride, nq, k, v, kv_stride, n0, hd, scale, out, out_stride, buf);
}
void attention_block_avx512(const float *q, int64_t q_stride, int nq, const uint16_t *k, const uint16_t *v,
                            int64_t kv_stride, int64_t n0, int64_t hd, float scale, float *out, int64_t out_stride,
                            float *buf) {
    attention_block(q, q_stride, nq, k, v, kv_stride, n0, hd, scale, out, out_stride, buf);
}

}  // namespace mole::cpu
