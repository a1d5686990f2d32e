// AVX-512 VNNI matmul over q8x16-packed Q8_0 weights (layout in repack.h); called only after the
// run-time check. A tile is G groups (16 rows each) x C activation rows: per 4-byte group c of a
// block, G weight loads and C broadcasts feed G*C vpdpbusd into integer block sums, which become
// float once per block. Same arithmetic as matmul_q8x16_portable, so the results are identical.
#include <algorithm>
#include <cstring>
#include <utility>

#include "backend/cpu/avx512_common.h"
#include "backend/cpu/repack.h"

namespace mole::cpu {

namespace {

inline int32_t load_i32(const int8_t *p) {
    int32_t v;
    std::memcpy(&v, p, 4);
    return v;
}

// Where groups g0 .. g0+G keep their scales and qs.
template <int G> struct Groups {
    const uint8_t *scales[G], *qs[G];
    Groups(const Q8x16Args &a, int64_t g0) {
        for (int i = 0; i < G; ++i) {
            scales[i] = a.W + (g0 + i) * q8x16_group_bytes(a.k);
            qs[i] = scales[i] + q8x16_scale_bytes(a.k);
        }
    }
};

// Prefetches block b of the G groups at qs (the tile's streams) into L1 two blocks ahead and, where
// the tensor goes on past the tile (next = q8x16_next_tile_bytes), the same block of the next tile's
// groups into L2, so twice the bytes are in flight (as on AVX2, q8x16_ymm.h). On a Zen 4 at 2
// threads, where the L1 prefetch alone left the weight stream at 65-85% of the read bandwidth:
// 5-18% less time for one row, 3-13% for 4, none lost at 8 and 16 (bench_ops, 6 rounds).
template <int G> inline void prefetch_blocks(const uint8_t *const *qs, int64_t b, int64_t next) {
    for (int i = 0; i < G; ++i) {
        const char *p = reinterpret_cast<const char *>(qs[i] + b * 512);
        for (int l = 0; l < 512; l += 64) _mm_prefetch(p + 2 * 512 + l, _MM_HINT_T0);
        if (next)
            for (int l = 0; l < 512; l += 64) _mm_prefetch(p + next + l, _MM_HINT_T1);
    }
}

// Y[s .. s+C, rows of groups g0 .. g0+G) = acc (rows past r_end are not stored).
template <int G, int C>
void store(const Q8x16Args &a, int64_t g0, int64_t s, int64_t r_end, const __m512 (&acc)[G][C]) {
    for (int i = 0; i < G; ++i) {
        const int64_t r = (g0 + i) * kQ8x16Rows;
        if (r + kQ8x16Rows <= r_end) {
            for (int j = 0; j < C; ++j) _mm512_storeu_ps(a.Y + (s + j) * a.n + r, acc[i][j]);
        } else {
            const __mmask16 m = __mmask16((1u << (r_end - r)) - 1);
            for (int j = 0; j < C; ++j) _mm512_mask_storeu_ps(a.Y + (s + j) * a.n + r, m, acc[i][j]);
        }
    }
}

// Y[s .. s+C, rows of groups g0 .. g0+G) (rows past r_end are not stored).
template <int G, int C> void tile(const Q8x16Args &a, int64_t g0, int64_t s, int64_t r_end) {
    const int64_t nb = a.k / QK;
    const Groups<G> gr(a, g0);
    const uint8_t *const *scales = gr.scales, *const *qs = gr.qs;
    const Q8x16XRows<C> xr(a, s);
    __m512 acc[G][C];
    for (int i = 0; i < G; ++i)
        for (int j = 0; j < C; ++j) acc[i][j] = _mm512_setzero_ps();
    [[maybe_unused]] const int64_t next = C == 1 ? q8x16_next_tile_bytes(a.n, a.k, g0, G) : 0;
    for (int64_t b = 0; b < nb; ++b) {
        __m512i dot[G][C];
        for (int j = 0; j < C; ++j) {
            const __m512i init = _mm512_set1_epi32(-128 * xr.sum[j][b]);   // removes the +128 of the weights
            for (int i = 0; i < G; ++i) dot[i][j] = init;
        }
        if constexpr (C == 1) prefetch_blocks<G>(qs, b, next);   // decode streams the weights
        for (int c = 0; c < 8; ++c) {
            __m512i w[G];
            for (int i = 0; i < G; ++i) w[i] = _mm512_load_si512(qs[i] + b * 512 + c * 64);
            for (int j = 0; j < C; ++j) {
                const __m512i x = _mm512_set1_epi32(load_i32(xr.q[j] + b * QK + 4 * c));
                for (int i = 0; i < G; ++i) dot[i][j] = _mm512_dpbusd_epi32(dot[i][j], w[i], x);
            }
        }
        for (int i = 0; i < G; ++i) {
            const __m512 dw = _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i *>(scales[i] + b * 32)));
            for (int j = 0; j < C; ++j)
                acc[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[i][j]),
                                            _mm512_mul_ps(dw, _mm512_set1_ps(xr.d[j][b])), acc[i][j]);
        }
    }
    store<G, C>(a, g0, s, r_end, acc);
}

// Decode of a batch: one group x C <= 8 activation rows (sequences of one step), every sum in
// registers (C integer and C float), each 64-byte line of weights loaded once for the C rows, with
// the decode tile's prefetch (next: the next group's block, into L2). One group at a time, where a
// tile of 2 groups x 4 rows kept 16 float sums and spilled the broadcasts of X it shared between the
// groups: 8 rows through this tile took 0.60-0.80 of that one's time on the FFN up and output matrices
// at 2 threads on a Zen 4, 4 rows 0.63-0.81 (bench/ab_ops.sh); the FFN down matrix 0.96-1.21.
template <int C> void batch_group(const Q8x16Args &a, int64_t g, int64_t s, int64_t r_end) {
    const int64_t nb = a.k / QK;
    const Groups<1> gr(a, g);
    const Q8x16XRows<C> xr(a, s);
    const int64_t next = q8x16_next_tile_bytes(a.n, a.k, g, 1);
    __m512 acc[1][C];
    for (int j = 0; j < C; ++j) acc[0][j] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        prefetch_blocks<1>(gr.qs, b, next);
        __m512i dot[C];
#pragma GCC unroll 8
        for (int j = 0; j < C; ++j) dot[j] = _mm512_set1_epi32(-128 * xr.sum[j][b]);   // removes the weights' +128
#pragma GCC unroll 8
        for (int c = 0; c < 8; ++c) {
            const __m512i w = _mm512_load_si512(gr.qs[0] + b * 512 + c * 64);
#pragma GCC unroll 8
            for (int j = 0; j < C; ++j)
                dot[j] = _mm512_dpbusd_epi32(dot[j], w, _mm512_set1_epi32(load_i32(xr.q[j] + b * QK + 4 * c)));
        }
        const __m512 dw = _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i *>(gr.scales[0] + b * 32)));
#pragma GCC unroll 8
        for (int j = 0; j < C; ++j)
            acc[0][j] =
                _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[j]), _mm512_mul_ps(dw, _mm512_set1_ps(xr.d[j][b])), acc[0][j]);
    }
    store<1, C>(a, g, s, r_end, acc);
}

// Groups g0 .. g0+4 against X rows s0 .. s1 (at most kQ8x16BatchRows), each group in passes of up to
// 8 rows (the first streams it from memory, a second finds it in L1 or L2).
template <int... Cs>
void batch_rows(const Q8x16Args &a, int64_t g, int64_t s, int64_t n, int64_t r_end, std::integer_sequence<int, Cs...>) {
    ((n == Cs + 1 ? batch_group<Cs + 1>(a, g, s, r_end) : void()), ...);
}
void batch_groups(const Q8x16Args &a, int64_t g0, int64_t s0, int64_t s1, int64_t r_end) {
    for (int64_t g = g0; g < g0 + 4; ++g)
        for (int64_t s = s0; s < s1; s += 8)
            batch_rows(a, g, s, std::min<int64_t>(8, s1 - s), r_end, std::make_integer_sequence<int, 8>{});
}

// Groups g0 .. g1 against X rows s0 .. s1 in tiles of G groups x up to 6 rows.
template <int G> void groups(const Q8x16Args &a, int64_t g0, int64_t s0, int64_t s1, int64_t r_end) {
    int64_t s = s0;
    for (; s + 6 <= s1; s += 6) tile<G, 6>(a, g0, s, r_end);
    switch (s1 - s) {
    case 1: tile<G, 1>(a, g0, s, r_end); break;
    case 2: tile<G, 2>(a, g0, s, r_end); break;
    case 3: tile<G, 3>(a, g0, s, r_end); break;
    case 4: tile<G, 4>(a, g0, s, r_end); break;
    case 5: tile<G, 5>(a, g0, s, r_end); break;
    default: break;
    }
}

}  // namespace

void matmul_q8x16_avx512(const Q8x16Args &a, int64_t r0, int64_t r1, int64_t s0, int64_t s1) {
    int64_t g = r0 / kQ8x16Rows;
    const int64_t g1 = (r1 + kQ8x16Rows - 1) / kQ8x16Rows;
    if (s1 - s0 == 1) {   // decode: 4 weight streams per tile
        for (; g + 4 <= g1; g += 4) tile<4, 1>(a, g, s0, r1);
    } else if (s1 - s0 <= kQ8x16BatchRows) {   // decode of a batch of sequences: the same 4 streams
        for (; g + 4 <= g1; g += 4) batch_groups(a, g, s0, s1, r1);
    }
    for (; g + 2 <= g1; g += 2) groups<2>(a, g, s0, s1, r1);
    for (; g < g1; ++g) groups<1>(a, g, s0, s1, r1);
}

}  // namespace mole::cpu
