// AVX2 matmul tiles (compiled with -mavx2 -mfma -mf16c; called only after the run-time check),
// plus the AVX2 vector helpers attention uses and row dequantization. Q8_0 uses maddubs with the sign trick
// (|w| as the unsigned operand, x * sign(w) as the signed one); Q4_0 feeds the raw nibbles.
#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include <cstring>

#include "backend/cpu/kernels.h"

namespace mole::cpu {

namespace {

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
        const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i *>(reinterpret_cast<const uint16_t *>(row) + i));
        if constexpr (T == Type::F16) return _mm256_cvtph_ps(h);
        else return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
}

template <Type T> inline float w_at(const uint8_t *row, int64_t i) {
    if constexpr (T == Type::F32) return reinterpret_cast<const float *>(row)[i];
    else if constexpr (T == Type::F16) return f16_to_f32(reinterpret_cast<const uint16_t *>(row)[i]);
    else return bf16_to_f32(reinterpret_cast<const uint16_t *>(row)[i]);
}

template <Type T, int R, int C> void tile_float(const MatmulArgs &a, int64_t r, int64_t s) {
    const int64_t k = a.k;
    const uint8_t *w[R];
    const float *x[C];
    for (int i = 0; i < R; ++i) w[i] = a.W + (r + i) * a.wrow;
    for (int j = 0; j < C; ++j) x[j] = a.X + (s + j) * k;
    __m256 acc[R][C];
    for (int i = 0; i < R; ++i)
        for (int j = 0; j < C; ++j) acc[i][j] = _mm256_setzero_ps();
    constexpr int64_t esize = T == Type::F32 ? 4 : 2;
    int64_t e = 0;
    for (; e + 8 <= k; e += 8) {
        if constexpr (C == 1) {   // decode streams weights from memory: fetch the next tile's rows early
            for (int i = 0; i < R; ++i) _mm_prefetch(reinterpret_cast<const char *>(w[i] + R * a.wrow + e * esize), _MM_HINT_T0);
        }
        __m256 wv[R];
        for (int i = 0; i < R; ++i) wv[i] = load_w<T>(w[i], e);
        for (int j = 0; j < C; ++j) {
            const __m256 xv = _mm256_loadu_ps(x[j] + e);
            for (int i = 0; i < R; ++i) acc[i][j] = _mm256_fmadd_ps(wv[i], xv, acc[i][j]);
        }
    }
    for (int j = 0; j < C; ++j)
        for (int i = 0; i < R; ++i) {
            float sum = hsum256(acc[i][j]);
            for (int64_t t = e; t < k; ++t) sum += w_at<T>(w[i], t) * x[j][t];
            a.Y[(s + j) * a.n + r + i] = sum;
        }
}

template <Type T, int R, int C> void tile_quant(const MatmulArgs &a, int64_t r, int64_t s) {
    const int64_t k = a.k, nb = k / QK;
    const uint8_t *w[R];
    const int8_t *xq[C];
    const float *xd[C];
    const int32_t *xs[C];
    for (int i = 0; i < R; ++i) w[i] = a.W + (r + i) * a.wrow;
    for (int j = 0; j < C; ++j) {
        xq[j] = a.xq.q + (s + j) * k;
        xd[j] = a.xq.d + (s + j) * nb;
        xs[j] = a.xq.sum + (s + j) * nb;
    }
    __m256 acc[R][C];
    for (int i = 0; i < R; ++i)
        for (int j = 0; j < C; ++j) acc[i][j] = _mm256_setzero_ps();
    const __m256i ones16 = _mm256_set1_epi16(1);
    const __m128i low4 = _mm_set1_epi8(0x0f);
    constexpr int64_t bb = T == Type::Q8_0 ? int64_t(sizeof(BlockQ8_0)) : int64_t(sizeof(BlockQ4_0));
    for (int64_t b = 0; b < nb; ++b) {
        if constexpr (C == 1) {
            for (int i = 0; i < R; ++i) _mm_prefetch(reinterpret_cast<const char *>(w[i] + R * a.wrow + b * bb), _MM_HINT_T0);
        }
        __m256i wq[R], wu[R];
        __m256 dw[R];
        for (int i = 0; i < R; ++i) {
            if constexpr (T == Type::Q8_0) {
                const BlockQ8_0 *blk = reinterpret_cast<const BlockQ8_0 *>(w[i]) + b;
                wq[i] = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(blk->qs));
                wu[i] = _mm256_sign_epi8(wq[i], wq[i]);   // |w| (-128 -> 128 as unsigned)
                dw[i] = _mm256_set1_ps(_cvtsh_ss(blk->d));
            } else {
                const BlockQ4_0 *blk = reinterpret_cast<const BlockQ4_0 *>(w[i]) + b;
                const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i *>(blk->qs));
                wu[i] = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(q, 4), low4), _mm_and_si128(q, low4));
                dw[i] = _mm256_set1_ps(_cvtsh_ss(blk->d));
            }
        }
        for (int j = 0; j < C; ++j) {
            const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(xq[j] + b * QK));
            const __m256 dx = _mm256_set1_ps(xd[j][b]);
            for (int i = 0; i < R; ++i) {
                __m256i dot;
                if constexpr (T == Type::Q8_0) {
                    // |w| * (x * sign w): pairs stay within int16 (2 * 128 * 127)
                    dot = _mm256_madd_epi16(_mm256_maddubs_epi16(wu[i], _mm256_sign_epi8(xv, wq[i])), ones16);
                } else {
                    dot = _mm256_madd_epi16(_mm256_maddubs_epi16(wu[i], xv), ones16);
                    dot = _mm256_add_epi32(dot, _mm256_setr_epi32(-8 * xs[j][b], 0, 0, 0, 0, 0, 0, 0));
                }
                acc[i][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(dw[i], dx), acc[i][j]);
            }
        }
    }
    for (int j = 0; j < C; ++j)
        for (int i = 0; i < R; ++i) a.Y[(s + j) * a.n + r + i] = hsum256(acc[i][j]);
}

template <Type T, int R, int C> inline void kern(const MatmulArgs &a, int64_t r, int64_t s) {
    if constexpr (T == Type::Q8_0 || T == Type::Q4_0) tile_quant<T, R, C>(a, r, s);
    else tile_float<T, R, C>(a, r, s);
}

// 16 ymm registers: 3 W rows x 4 X rows of accumulators (float types) or 2 x 4 (quant types,
// which need registers for |w| and scales); 4 W rows when there is one X row.
constexpr int kC = 4;

template <Type T, int R> void rows(const MatmulArgs &a, int64_t r, int64_t s0, int64_t s1) {
    int64_t s = s0;
    for (; s + kC <= s1; s += kC) kern<T, R, kC>(a, r, s);
    switch (s1 - s) {
    case 1: kern<T, R, 1>(a, r, s); break;
    case 2: kern<T, R, 2>(a, r, s); break;
    case 3: kern<T, R, 3>(a, r, s); break;
    default: break;
    }
}

template <Type T> void run(const MatmulArgs &a, int64_t r0, int64_t r1, int64_t s0, int64_t s1) {
    constexpr int kR = (T == Type::Q8_0 || T == Type::Q4_0) ? 2 : 3;
    int64_t r = r0;
    if (s1 - s0 == 1) {
        for (; r + 4 <= r1; r += 4) kern<T, 4, 1>(a, r, s0);
    } else {
        for (; r + kR <= r1; r += kR) rows<T, kR>(a, r, s0, s1);
    }
    for (; r < r1; ++r) rows<T, 1>(a, r, s0, s1);
}

}  // namespace

void matmul_tile_avx2(const MatmulArgs &a, int64_t r0, int64_t r1, int64_t s0, int64_t s1) {
    switch (a.type) {
    case Type::F32: run<Type::F32>(a, r0, r1, s0, s1); break;
    case Type::F16: run<Type::F16>(a, r0, r1, s0, s1); break;
    case Type::BF16: run<Type::BF16>(a, r0, r1, s0, s1); break;
    case Type::Q8_0: run<Type::Q8_0>(a, r0, r1, s0, s1); break;
    case Type::Q4_0: run<Type::Q4_0>(a, r0, r1, s0, s1); break;
    }
}

void quantize_rows_q8_avx2(const float *X, int64_t s0, int64_t s1, const Q8Rows &out) {
    const int64_t k = out.k, nb = k / QK;
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256 signmask = _mm256_castsi256_ps(_mm256_set1_epi32(int(0x80000000u)));
    const __m256 one = _mm256_set1_ps(1.0f), half = _mm256_set1_ps(0.5f);
    for (int64_t s = s0; s < s1; ++s) {
        for (int64_t b = 0; b < nb; ++b) {
            const float *x = X + s * k + b * QK;
            __m256 v[4];
            __m256 mx = _mm256_setzero_ps();
            for (int h = 0; h < 4; ++h) {
                v[h] = _mm256_loadu_ps(x + 8 * h);
                mx = _mm256_max_ps(mx, _mm256_and_ps(v[h], absmask));
            }
            __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
            m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
            const float amax = _mm_cvtss_f32(m4);
            const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
            const __m256 idv = _mm256_set1_ps(id);
            __m256i qi[4];
            for (int h = 0; h < 4; ++h) {
                // roundf: truncate, then step away from zero when the dropped fraction is >= 0.5
                const __m256 y = _mm256_mul_ps(v[h], idv);
                const __m256 t = _mm256_round_ps(y, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
                const __m256 frac = _mm256_and_ps(_mm256_sub_ps(y, t), absmask);
                const __m256 up = _mm256_cmp_ps(frac, half, _CMP_GE_OQ);
                const __m256 step = _mm256_and_ps(up, _mm256_or_ps(one, _mm256_and_ps(y, signmask)));
                qi[h] = _mm256_cvttps_epi32(_mm256_add_ps(t, step));
            }
            const __m256i sum32 = _mm256_add_epi32(_mm256_add_epi32(qi[0], qi[1]), _mm256_add_epi32(qi[2], qi[3]));
            __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum32), _mm256_extracti128_si256(sum32, 1));
            s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
            s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
            // int32 -> int8 with the lane shuffle that packs leave behind undone
            const __m256i p16a = _mm256_packs_epi32(qi[0], qi[1]), p16b = _mm256_packs_epi32(qi[2], qi[3]);
            __m256i p8 = _mm256_packs_epi16(p16a, p16b);
            p8 = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256(reinterpret_cast<__m256i *>(out.q + s * k + b * QK), p8);
            out.d[s * nb + b] = d;
            out.sum[s * nb + b] = _mm_cvtsi128_si32(s4);
        }
    }
}

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


}  // namespace mole::cpu

namespace mole::cpu {

void dequantize_row_avx2(Type type, const void *src, float *dst, int64_t n) {
    const uint8_t *p = static_cast<const uint8_t *>(src);
    switch (type) {
    case Type::F32:
        std::memcpy(dst, src, size_t(n) * 4);
        return;
    case Type::F16:
    case Type::BF16: {
        int64_t i = 0;
        for (; i + 8 <= n; i += 8) {
            const __m256 v = type == Type::F16 ? load_w<Type::F16>(p, i) : load_w<Type::BF16>(p, i);
            _mm256_storeu_ps(dst + i, v);
        }
        for (; i < n; ++i) dst[i] = type == Type::F16 ? w_at<Type::F16>(p, i) : w_at<Type::BF16>(p, i);
        return;
    }
    case Type::Q8_0: {
        const BlockQ8_0 *b = static_cast<const BlockQ8_0 *>(src);
        for (int64_t j = 0; j < n / QK; ++j) {
            const __m256 d = _mm256_set1_ps(_cvtsh_ss(b[j].d));
            for (int h = 0; h < 4; ++h) {
                const __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i *>(b[j].qs + 8 * h));
                _mm256_storeu_ps(dst + j * QK + 8 * h, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), d));
            }
        }
        return;
    }
    case Type::Q4_0: {
        const BlockQ4_0 *b = static_cast<const BlockQ4_0 *>(src);
        const __m128i low4 = _mm_set1_epi8(0x0f), eight = _mm_set1_epi8(8);
        for (int64_t j = 0; j < n / QK; ++j) {
            const __m256 d = _mm256_set1_ps(_cvtsh_ss(b[j].d));
            const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i *>(b[j].qs));
            const __m128i lo = _mm_sub_epi8(_mm_and_si128(q, low4), eight);
            const __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(q, 4), low4), eight);
            const __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
            for (int h = 0; h < 4; ++h)
                _mm256_storeu_ps(dst + j * QK + 8 * h, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(parts[h])), d));
        }
        return;
    }
    }
}

}  // namespace mole::cpu

namespace mole::cpu {

void attn_scores_avx2(const float *q, const float *k, int64_t kv_stride, int64_t n_keys, int64_t hd, float scale,
                      float *scores) {
    int64_t t = 0;
    if (hd % 8 == 0) {
        // 4 keys at a time: 4 independent FMA chains, one combined horizontal reduction
        const __m128 sc = _mm_set1_ps(scale);
        for (; t + 4 <= n_keys; t += 4) {
            const float *k0 = k + t * kv_stride, *k1 = k0 + kv_stride, *k2 = k1 + kv_stride, *k3 = k2 + kv_stride;
            __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
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
        for (int64_t t = 0; t < n_keys; ++t) acc = _mm256_fmadd_ps(_mm256_set1_ps(p[t]), _mm256_loadu_ps(v + t * kv_stride + e), acc);
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
// 0.35: < 1e-8 relative), times 2^k built in the exponent bits; y is clamped at -87 (e^-87 is
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
    const __m256 vmx = _mm256_set1_ps(mx), lowest = _mm256_set1_ps(-87.0f), log2e = _mm256_set1_ps(1.44269504088896341f);
    const __m256 ln2_hi = _mm256_set1_ps(0.693359375f), ln2_lo = _mm256_set1_ps(-2.12194440e-4f), one = _mm256_set1_ps(1.0f);
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    for (i = 0; i + 8 <= n; i += 8) {
        const __m256 y = _mm256_max_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vmx), lowest);
        const __m256 k = _mm256_round_ps(_mm256_mul_ps(y, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        __m256 r = _mm256_fnmadd_ps(k, ln2_hi, y);
        r = _mm256_fnmadd_ps(k, ln2_lo, r);
        __m256 e = _mm256_set1_ps(1.0f / 5040.0f);
        e = _mm256_fmadd_ps(e, r, _mm256_set1_ps(1.0f / 720.0f));
        e = _mm256_fmadd_ps(e, r, _mm256_set1_ps(1.0f / 120.0f));
        e = _mm256_fmadd_ps(e, r, _mm256_set1_ps(1.0f / 24.0f));
        e = _mm256_fmadd_ps(e, r, _mm256_set1_ps(1.0f / 6.0f));
        e = _mm256_fmadd_ps(e, r, _mm256_set1_ps(0.5f));
        e = _mm256_fmadd_ps(e, r, one);
        e = _mm256_fmadd_ps(e, r, one);
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
