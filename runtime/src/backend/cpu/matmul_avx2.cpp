// AVX2 matmul tiles and q8 activation quantization (compiled with -mavx2 -mfma -mf16c; called
// only after the run-time check). Q8_0 uses maddubs with the sign trick (|w| as the unsigned
// operand, x * sign(w) as the signed one); Q4_0 feeds the raw nibbles.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "backend/cpu/avx2_common.h"
#include "backend/cpu/kernels.h"

namespace mole::cpu {

namespace {

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
            for (int i = 0; i < R; ++i)
                _mm_prefetch(reinterpret_cast<const char *>(w[i] + R * a.wrow + e * esize), _MM_HINT_T0);
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
            for (int i = 0; i < R; ++i)
                _mm_prefetch(reinterpret_cast<const char *>(w[i] + R * a.wrow + b * bb), _MM_HINT_T0);
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
    if constexpr (T == Type::Q8_0 || T == Type::Q4_0)
        tile_quant<T, R, C>(a, r, s);
    else
        tile_float<T, R, C>(a, r, s);
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
    case Type::IQ4_NL:
    case Type::Q3_K: break;   // LUT-only types: never a matrix (model.cpp)
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
            __m256 mx = _mm256_setzero_ps(), bad = _mm256_setzero_ps();
            for (int h = 0; h < 4; ++h) {
                v[h] = _mm256_loadu_ps(x + 8 * h);
                const __m256 a = _mm256_and_ps(v[h], absmask);
                mx = _mm256_max_ps(mx, a);
                bad = _mm256_or_ps(bad, _mm256_cmp_ps(a, _mm256_set1_ps(INFINITY), _CMP_NLT_UQ));   // Inf, NaN
            }
            if (_mm256_movemask_ps(bad)) {
                q8_block_not_finite(out, s, b);
                continue;
            }
            __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
            m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
            const float amax = _mm_cvtss_f32(m4);
            const float d = amax / 127.0f, id = q8_inverse_scale(d);
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

}  // namespace mole::cpu
