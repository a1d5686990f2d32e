// AVX-512 causal attention for a block of up to 16 consecutive queries of one head (prompt
// processing), queries in the 16 lanes: no horizontal sum per key. Scores of 8 keys per pass over
// the head dimension (a broadcast key element times the queries' column), softmax down the key
// axis with double sums, then out_j = sum_t p[t][j] v_t for 4 queries per pass over the values.
#include <algorithm>
#include <cmath>

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

// scores[t][16] for keys t0 .. t0+KB of QT[hd][16]; masked lanes -inf; returns the running max.
template <int KB> inline __m512 score_keys(const float *QT, const float *k, int64_t kv_stride, int64_t hd, int64_t t0,
                                           int64_t n0, float scale, float *scores, __m512 mx) {
    __m512 acc[KB];
    for (int i = 0; i < KB; ++i) acc[i] = _mm512_setzero_ps();
    for (int64_t e = 0; e < hd; ++e) {
        const __m512 qv = _mm512_loadu_ps(QT + e * 16);
        for (int i = 0; i < KB; ++i) acc[i] = _mm512_fmadd_ps(qv, _mm512_set1_ps(k[(t0 + i) * kv_stride + e]), acc[i]);
    }
    const __m512 ninf = _mm512_set1_ps(-INFINITY), sv = _mm512_set1_ps(scale);
    for (int i = 0; i < KB; ++i) {
        const __m512 s = _mm512_mask_blend_ps(visible(t0 + i, n0), ninf, _mm512_mul_ps(acc[i], sv));
        _mm512_storeu_ps(scores + (t0 + i) * 16, s);
        mx = _mm512_max_ps(mx, s);
    }
    return mx;
}

// out_j[e0 .. e0 + 16 NV) for queries j0 .. j0+QJ: sum_t p[t][j] v_t, times inv[j]; the last of
// the NV vectors is masked to the head's end.
template <int QJ, int NV> void accumulate(const float *p, const float *v, int64_t kv_stride, int64_t hd, int64_t n0,
                                          int j0, int64_t e0, const float *inv, float *out, int64_t out_stride) {
    const int64_t n_keys = n0 + j0 + QJ - 1;   // the group's last query sees the most keys
    const int64_t left = hd - e0 - 16 * (NV - 1);
    const __mmask16 tail = left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1);
    __m512 acc[QJ][NV];
    for (int j = 0; j < QJ; ++j)
        for (int c = 0; c < NV; ++c) acc[j][c] = _mm512_setzero_ps();
    const float *vt = v + e0;
    for (int64_t t = 0; t < n_keys; ++t, vt += kv_stride) {
        __m512 vv[NV];
        for (int c = 0; c + 1 < NV; ++c) vv[c] = _mm512_loadu_ps(vt + 16 * c);
        vv[NV - 1] = _mm512_maskz_loadu_ps(tail, vt + 16 * (NV - 1));
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

template <int QJ> void accumulate_all(const float *p, const float *v, int64_t kv_stride, int64_t hd, int64_t n0, int j0,
                                      const float *inv, float *out, int64_t out_stride) {
    for (int64_t e0 = 0; e0 < hd; e0 += 64) {
        switch (std::min<int64_t>(4, (hd - e0 + 15) / 16)) {
        case 1: accumulate<QJ, 1>(p, v, kv_stride, hd, n0, j0, e0, inv, out, out_stride); break;
        case 2: accumulate<QJ, 2>(p, v, kv_stride, hd, n0, j0, e0, inv, out, out_stride); break;
        case 3: accumulate<QJ, 3>(p, v, kv_stride, hd, n0, j0, e0, inv, out, out_stride); break;
        default: accumulate<QJ, 4>(p, v, kv_stride, hd, n0, j0, e0, inv, out, out_stride); break;
        }
    }
}

}  // namespace

void attention_block_avx512(const float *q, int64_t q_stride, int nq, const float *k, const float *v, int64_t kv_stride,
                            int64_t n0, int64_t hd, float scale, float *out, int64_t out_stride, float *buf) {
    float *QT = buf;                      // [hd][16] the queries' columns (lanes past nq: 0)
    float *p = buf + hd * 16;             // [T][16] scores, then exp(score - max)
    const int64_t T = n0 + nq - 1;        // keys the block's last query sees
    for (int64_t e = 0; e < hd; ++e)
        for (int j = 0; j < 16; ++j) QT[e * 16 + j] = j < nq ? q[j * q_stride + e] : 0.0f;
    __m512 mx = _mm512_set1_ps(-INFINITY);
    int64_t t = 0;
    for (; t + 8 <= T; t += 8) mx = score_keys<8>(QT, k, kv_stride, hd, t, n0, scale, p, mx);
    for (; t < T; ++t) mx = score_keys<1>(QT, k, kv_stride, hd, t, n0, scale, p, mx);
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

}  // namespace mole::cpu
