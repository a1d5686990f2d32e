// AVX-512 matmul tiles (compiled with -mavx512*; called only after the run-time check).
// Float types: 16-wide FMA over R W rows x C X rows. Q8_0/Q4_0: VNNI vpdpbusd, two blocks per
// 512-bit register, weights as the unsigned operand (q8: w + 128, q4: the raw nibble), the offset
// removed exactly in integers with the block's activation sum: sum (u - o) x = sum u x - o sum x.
#include <cmath>

#include "backend/cpu/avx512_common.h"
#include "backend/cpu/kernels.h"

namespace mole::cpu {

namespace {

inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

template <Type T> inline __m512 load_w(const uint8_t *row, int64_t i) {
    if constexpr (T == Type::F32) {
        return _mm512_loadu_ps(reinterpret_cast<const float *>(row) + i);
    } else {
        const __m256i h =
            _mm256_loadu_si256(reinterpret_cast<const __m256i *>(reinterpret_cast<const uint16_t *>(row) + i));
        if constexpr (T == Type::F16)
            return _mm512_cvtph_ps(h);
        else
            return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
}

template <Type T> inline __m512 load_w_mask(const uint8_t *row, int64_t i, __mmask16 m) {
    if constexpr (T == Type::F32) {
        return _mm512_maskz_loadu_ps(m, reinterpret_cast<const float *>(row) + i);
    } else {
        const __m256i h = _mm256_maskz_loadu_epi16(m, reinterpret_cast<const uint16_t *>(row) + i);
        if constexpr (T == Type::F16)
            return _mm512_cvtph_ps(h);
        else
            return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
}

// Y[s .. s+C, r .. r+R] for float weight types.
template <Type T, int R, int C> void tile_float(const MatmulArgs &a, int64_t r, int64_t s) {
    const int64_t k = a.k;
    const uint8_t *w[R];
    const float *x[C];
    for (int i = 0; i < R; ++i) w[i] = a.W + (r + i) * a.wrow;
    for (int j = 0; j < C; ++j) x[j] = a.X + (s + j) * k;
    __m512 acc[R][C];
    for (int i = 0; i < R; ++i)
        for (int j = 0; j < C; ++j) acc[i][j] = _mm512_setzero_ps();
    constexpr int64_t esize = T == Type::F32 ? 4 : 2;
    int64_t e = 0;
    for (; e + 16 <= k; e += 16) {
        if constexpr (C == 1) {   // decode: fetch the next tile's rows early (see tile_quant)
            for (int i = 0; i < R; ++i)
                _mm_prefetch(reinterpret_cast<const char *>(w[i] + R * a.wrow + e * esize), _MM_HINT_T0);
        }
        __m512 wv[R];
        for (int i = 0; i < R; ++i) wv[i] = load_w<T>(w[i], e);
        for (int j = 0; j < C; ++j) {
            const __m512 xv = _mm512_loadu_ps(x[j] + e);
            for (int i = 0; i < R; ++i) acc[i][j] = _mm512_fmadd_ps(wv[i], xv, acc[i][j]);
        }
    }
    if (e < k) {
        const __mmask16 m = __mmask16((1u << (k - e)) - 1);
        __m512 wv[R];
        for (int i = 0; i < R; ++i) wv[i] = load_w_mask<T>(w[i], e, m);
        for (int j = 0; j < C; ++j) {
            const __m512 xv = _mm512_maskz_loadu_ps(m, x[j] + e);
            for (int i = 0; i < R; ++i) acc[i][j] = _mm512_fmadd_ps(wv[i], xv, acc[i][j]);
        }
    }
    for (int j = 0; j < C; ++j)
        for (int i = 0; i < R; ++i) a.Y[(s + j) * a.n + r + i] = _mm512_reduce_add_ps(acc[i][j]);
}

// Y[s .. s+C, r .. r+R] for Q8_0 / Q4_0 weights against q8 activations.
template <Type T, int R, int C> void tile_quant(const MatmulArgs &a, int64_t r, int64_t s) {
    const int64_t k = a.k, nb = k / QK;
    constexpr int32_t off = T == Type::Q8_0 ? 128 : 8;
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
    // Pairs of blocks in 512-bit registers: lanes 0-7 hold block b, lanes 8-15 block b + 1.
    __m512 acc2[R][C];
    for (int i = 0; i < R; ++i)
        for (int j = 0; j < C; ++j) acc2[i][j] = _mm512_setzero_ps();
    const __m512i flip2 = _mm512_set1_epi8(char(0x80));
    const __m512i spread = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    const __m128i low4 = _mm_set1_epi8(0x0f);
    int64_t b = 0;
    constexpr int64_t bb = T == Type::Q8_0 ? int64_t(sizeof(BlockQ8_0)) : int64_t(sizeof(BlockQ4_0));
    for (; b + 2 <= nb; b += 2) {
        if constexpr (C == 1) {
            // decode streams weights from memory: fetch the next tile's rows (R rows on) early
            for (int i = 0; i < R; ++i)
                _mm_prefetch(reinterpret_cast<const char *>(w[i] + R * a.wrow + b * bb), _MM_HINT_T0);
        }
        __m512i wu[R];
        __m512 dw[R];
        for (int i = 0; i < R; ++i) {
            uint32_t d01;   // the two blocks' f16 scales, converted together
            if constexpr (T == Type::Q8_0) {
                const BlockQ8_0 *blk = reinterpret_cast<const BlockQ8_0 *>(w[i]) + b;
                const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(blk[0].qs));
                const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(blk[1].qs));
                wu[i] = _mm512_xor_si512(_mm512_inserti64x4(_mm512_castsi256_si512(w0), w1, 1), flip2);
                d01 = uint32_t(blk[0].d) | (uint32_t(blk[1].d) << 16);
            } else {
                const BlockQ4_0 *blk = reinterpret_cast<const BlockQ4_0 *>(w[i]) + b;
                const __m128i q0 = _mm_loadu_si128(reinterpret_cast<const __m128i *>(blk[0].qs));
                const __m128i q1 = _mm_loadu_si128(reinterpret_cast<const __m128i *>(blk[1].qs));
                const __m256i n0 =
                    _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(q0, 4), low4), _mm_and_si128(q0, low4));
                const __m256i n1 =
                    _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(q1, 4), low4), _mm_and_si128(q1, low4));
                wu[i] = _mm512_inserti64x4(_mm512_castsi256_si512(n0), n1, 1);
                d01 = uint32_t(blk[0].d) | (uint32_t(blk[1].d) << 16);
            }
            // [d0, d1, ..] -> [d0 x 8, d1 x 8]
            dw[i] = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(_mm_cvtph_ps(_mm_cvtsi32_si128(int(d01)))));
        }
        for (int j = 0; j < C; ++j) {
            const __m512i xv = _mm512_loadu_si512(xq[j] + b * QK);
            const __m512i init =
                _mm512_mask_set1_epi32(_mm512_maskz_set1_epi32(0x0001, -off * xs[j][b]), 0x0100, -off * xs[j][b + 1]);
            const __m512 dx = _mm512_permutexvar_ps(spread,
                                                    _mm512_castps128_ps512(_mm_castsi128_ps(_mm_loadl_epi64(
                                                        reinterpret_cast<const __m128i *>(xd[j] + b)))));
            for (int i = 0; i < R; ++i) {
                const __m512i dot = _mm512_dpbusd_epi32(init, wu[i], xv);
                acc2[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(dw[i], dx), acc2[i][j]);
            }
        }
    }
    __m256 acc[R][C];
    for (int i = 0; i < R; ++i)
        for (int j = 0; j < C; ++j)
            acc[i][j] = _mm256_add_ps(_mm512_castps512_ps256(acc2[i][j]), _mm512_extractf32x8_ps(acc2[i][j], 1));
    const __m256i flip = _mm256_set1_epi8(char(0x80));
    for (; b < nb; ++b) {   // odd last block
        __m256i wu[R];
        __m256 dw[R];
        for (int i = 0; i < R; ++i) {
            if constexpr (T == Type::Q8_0) {
                const BlockQ8_0 *blk = reinterpret_cast<const BlockQ8_0 *>(w[i]) + b;
                wu[i] = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(blk->qs)), flip);
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
            const __m256i init = _mm256_setr_epi32(-off * xs[j][b], 0, 0, 0, 0, 0, 0, 0);
            const __m256 dx = _mm256_set1_ps(xd[j][b]);
            for (int i = 0; i < R; ++i) {
                const __m256i dot = _mm256_dpbusd_epi32(init, wu[i], xv);
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

// Float tiles: 6 W rows x 4 X rows = 24 accumulators (+ 6 W + 1 X of the 32 zmm registers), so
// each X load from L2 feeds 6 FMAs. Quant tiles: 4 x 4 (their scales need registers too).
constexpr int kC = 4;
template <Type T> constexpr int rows_per_tile() { return (T == Type::Q8_0 || T == Type::Q4_0) ? 4 : 6; }

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
    constexpr int R = rows_per_tile<T>();
    int64_t r = r0;
    if (s1 - s0 == 1) {
        for (; r + 4 <= r1; r += 4) kern<T, 4, 1>(a, r, s0);   // decode: 4 weight streams
    } else {
        for (; r + R <= r1; r += R) rows<T, R>(a, r, s0, s1);
        if (R > 4 && r + 4 <= r1) {
            rows<T, 4>(a, r, s0, s1);
            r += 4;
        }
        if (r + 2 <= r1) {
            rows<T, 2>(a, r, s0, s1);
            r += 2;
        }
    }
    for (; r < r1; ++r) rows<T, 1>(a, r, s0, s1);
}

}  // namespace

void matmul_tile_avx512(const MatmulArgs &a, int64_t r0, int64_t r1, int64_t s0, int64_t s1) {
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

void quantize_rows_q8_avx512(const float *X, int64_t s0, int64_t s1, const Q8Rows &out) {
    const int64_t k = out.k, nb = k / QK;
    const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    const __m512 signmask = _mm512_castsi512_ps(_mm512_set1_epi32(int(0x80000000u)));
    const __m512 one = _mm512_set1_ps(1.0f), half = _mm512_set1_ps(0.5f), inf = _mm512_set1_ps(INFINITY);
    for (int64_t s = s0; s < s1; ++s) {
        for (int64_t b = 0; b < nb; ++b) {
            const float *x = X + s * k + b * QK;
            const __m512 v0 = _mm512_loadu_ps(x), v1 = _mm512_loadu_ps(x + 16);
            const __m512 a0 = _mm512_and_ps(v0, absmask), a1 = _mm512_and_ps(v1, absmask);
            if (_mm512_cmp_ps_mask(a0, inf, _CMP_NLT_UQ) | _mm512_cmp_ps_mask(a1, inf, _CMP_NLT_UQ)) {   // Inf, NaN
                q8_block_not_finite(out, s, b);
                continue;
            }
            const float amax = _mm512_reduce_max_ps(_mm512_max_ps(a0, a1));
            const float d = amax / 127.0f, id = q8_inverse_scale(d);
            const __m512 idv = _mm512_set1_ps(id);
            __m512i qi[2];
            const __m512 vs[2] = {v0, v1};
            for (int h = 0; h < 2; ++h) {
                // roundf: truncate, then step away from zero when the dropped fraction is >= 0.5
                const __m512 v = _mm512_mul_ps(vs[h], idv);
                const __m512 t = _mm512_roundscale_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
                const __m512 frac = _mm512_and_ps(_mm512_sub_ps(v, t), absmask);
                const __mmask16 up = _mm512_cmp_ps_mask(frac, half, _CMP_GE_OQ);
                const __m512 step = _mm512_or_ps(one, _mm512_and_ps(v, signmask));
                qi[h] = _mm512_cvttps_epi32(_mm512_mask_add_ps(t, up, t, step));
            }
            int8_t *q = out.q + s * k + b * QK;
            _mm_storeu_si128(reinterpret_cast<__m128i *>(q), _mm512_cvtepi32_epi8(qi[0]));
            _mm_storeu_si128(reinterpret_cast<__m128i *>(q + 16), _mm512_cvtepi32_epi8(qi[1]));
            out.d[s * nb + b] = d;
            out.sum[s * nb + b] = _mm512_reduce_add_epi32(_mm512_add_epi32(qi[0], qi[1]));
        }
    }
}

}  // namespace mole::cpu
