// The q8x16 matmul (layout in repack.h) on 256-bit registers, written once for its two integer
// dot steps: included by matmul_q8x16_avx2.cpp (vpmaddubsw + vpmaddwd) and
// matmul_q8x16_avxvnni.cpp (vpdpbusd on ymm), each compiled with its own flags. A ymm holds half of
// a 64-byte line of a group: 4 consecutive k-values of 8 rows ("a half": rows 16g + 8h .. + 8).
// Same arithmetic as matmul_q8x16_portable (an exact integer sum per 32-block, then one fma in
// block order), so every path gives identical results.
#pragma once

#include <immintrin.h>

#include <cstring>

#include "backend/cpu/repack.h"

namespace mole::cpu::q8x16_ymm {

inline int32_t load_i32(const int8_t *p) {
    int32_t v;
    std::memcpy(&v, p, 4);
    return v;
}

// Prefetches the 512 bytes of one block of a group (its 8 lines) with the given hint.
template <auto Hint> inline void prefetch_block(const uint8_t *p) {
    for (int l = 0; l < 512; l += 64) _mm_prefetch(reinterpret_cast<const char *>(p + l), Hint);
}

// The decode tile streams 4 groups; besides the block after next (into L1) it fetches the same
// block of the next tile's groups into L2 (q8x16_next_tile_bytes), the way the row kernels fetch the
// next rows, so twice the bytes are in flight: 13-19% less time on the FFN and output matrices at 2
// threads on a Zen 3, where the L1 prefetch alone left the weight stream at 60-70% of the machine's
// read bandwidth. (The batch tile, more compute per byte, was 8-11% slower with it on the FFN down
// matrix there, so it goes without.)

// Where half h of the packed tensor keeps block b's scales (8 f16) and its 8 lines of 32 bytes.
struct Half {
    const uint8_t *scales = nullptr, *qs = nullptr;
    Half() = default;
    Half(const Q8x16Args &a, int64_t h) {
        const uint8_t *g = a.W + h / 2 * q8x16_group_bytes(a.k);
        scales = g + (h % 2) * 16;
        qs = g + q8x16_scale_bytes(a.k) + (h % 2) * 32;
    }
    __m256i line(int64_t b, int c) const {
        return _mm256_load_si256(reinterpret_cast<const __m256i *>(qs + b * 512 + c * 64));
    }
    __m256 scale(int64_t b) const {
        return _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i *>(scales + b * 32)));
    }
};

// Stores the 8 rows of half h for X row s, the lanes at or past r_end left alone.
inline void store_rows(const Q8x16Args &a, int64_t h, int64_t s, int64_t r_end, __m256 v) {
    const int64_t r = h * 8;
    float *y = a.Y + s * a.n + r;
    if (r + 8 <= r_end) {
        _mm256_storeu_ps(y, v);
    } else if (r < r_end) {
        const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        _mm256_maskstore_ps(y, _mm256_cmpgt_epi32(_mm256_set1_epi32(int(r_end - r)), lane), v);
    }
}

// Y[s .. s+C, rows of halves h0 .. h0+H); rows past r_end are not stored. D is the dot step:
// D::W prep(line) is made once per weight register, D::step(acc, w, x) adds each row's sum of 4
// products to its lane, D::init(xsum) starts a block's sums.
template <class D, int H, int C> void tile(const Q8x16Args &a, int64_t h0, int64_t s, int64_t r_end) {
    const int64_t nb = a.k / QK;
    Half hs[H];
    for (int i = 0; i < H; ++i) hs[i] = Half(a, h0 + i);
    const Q8x16XRows<C> xr(a, s);
    __m256 acc[H][C];
    for (int i = 0; i < H; ++i)
        for (int j = 0; j < C; ++j) acc[i][j] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        __m256i dot[H][C];
        for (int j = 0; j < C; ++j) {
            const __m256i init = D::init(xr.sum[j][b]);
            for (int i = 0; i < H; ++i) dot[i][j] = init;
        }
        for (int c = 0; c < 8; ++c) {
            typename D::W w[H];
            for (int i = 0; i < H; ++i) w[i] = D::prep(hs[i].line(b, c));
            for (int j = 0; j < C; ++j) {
                const __m256i x = _mm256_set1_epi32(load_i32(xr.q[j] + b * QK + 4 * c));
                for (int i = 0; i < H; ++i) dot[i][j] = D::step(dot[i][j], w[i], x);
            }
        }
        for (int i = 0; i < H; ++i) {
            const __m256 dw = hs[i].scale(b);
            for (int j = 0; j < C; ++j)
                acc[i][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[i][j]),
                                            _mm256_mul_ps(dw, _mm256_set1_ps(xr.d[j][b])), acc[i][j]);
        }
    }
    for (int i = 0; i < H; ++i)
        for (int j = 0; j < C; ++j) store_rows(a, h0 + i, s + j, r_end, acc[i][j]);
}

// Decode (one X row): G whole groups, each a sequential stream of its blocks, read one group at a
// time per block so only two dot sums are live; the block after next is prefetched, and the
// scales 8 blocks ahead.
template <class D, int G> void decode(const Q8x16Args &a, int64_t g0, int64_t s, int64_t r_end) {
    const int64_t nb = a.k / QK;
    Half hs[2 * G];
    for (int i = 0; i < 2 * G; ++i) hs[i] = Half(a, 2 * g0 + i);
    const int8_t *xq = a.xq.q + s * a.k;
    const float *xd = a.xq.d + s * nb;
    const int32_t *xs = a.xq.sum + s * nb;
    __m256 acc[2 * G];
    for (int i = 0; i < 2 * G; ++i) acc[i] = _mm256_setzero_ps();
    const int64_t next = q8x16_next_tile_bytes(a.n, a.k, g0, G);
    for (int64_t b = 0; b < nb; ++b) {
        for (int g = 0; g < G; ++g) {
            prefetch_block<_MM_HINT_T0>(hs[2 * g].qs + (b + 2) * 512);
            if (next) prefetch_block<_MM_HINT_T1>(hs[2 * g].qs + next + b * 512);
            // the group's scales are a second, slow stream (a line per 2 blocks) that the hardware
            // prefetcher missed: 31% of decode samples sat on their loads, 16% with this (perf, AVX2, d512)
            _mm_prefetch(reinterpret_cast<const char *>(hs[2 * g].scales + (b + 8) * 32), _MM_HINT_T0);
        }
        const __m256i init = D::init(xs[b]);
        const __m256 dx = _mm256_set1_ps(xd[b]);
        for (int g = 0; g < G; ++g) {
            __m256i d0 = init, d1 = init;
            for (int c = 0; c < 8; ++c) {
                const __m256i x = _mm256_set1_epi32(load_i32(xq + b * QK + 4 * c));
                d0 = D::step(d0, D::prep(hs[2 * g].line(b, c)), x);
                d1 = D::step(d1, D::prep(hs[2 * g + 1].line(b, c)), x);
            }
            acc[2 * g] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d0), _mm256_mul_ps(hs[2 * g].scale(b), dx), acc[2 * g]);
            acc[2 * g + 1] =
                _mm256_fmadd_ps(_mm256_cvtepi32_ps(d1), _mm256_mul_ps(hs[2 * g + 1].scale(b), dx), acc[2 * g + 1]);
        }
    }
    for (int i = 0; i < 2 * G; ++i) store_rows(a, 2 * g0 + i, s, r_end, acc[i]);
}

// Decode of a batch: group g (its 2 halves, prefetched as in decode) against C <= 4 X rows, each
// block read once for the C rows: the 2 x C integer sums in registers (the loops unrolled by force,
// as on AVX-512), the 2 x C float sums in L1, touched once a block.
template <class D, int C> void batch(const Q8x16Args &a, int64_t g, int64_t s, int64_t r_end) {
    const int64_t nb = a.k / QK;
    const Half hs[2] = {Half(a, 2 * g), Half(a, 2 * g + 1)};
    const Q8x16XRows<C> xr(a, s);
    __m256 acc[2][C];
    for (int h = 0; h < 2; ++h)
        for (int j = 0; j < C; ++j) acc[h][j] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        prefetch_block<_MM_HINT_T0>(hs[0].qs + (b + 2) * 512);
        _mm_prefetch(reinterpret_cast<const char *>(hs[0].scales + (b + 8) * 32), _MM_HINT_T0);
        __m256i dot[2][C];
#pragma GCC unroll 4
        for (int j = 0; j < C; ++j) dot[0][j] = dot[1][j] = D::init(xr.sum[j][b]);
#pragma GCC unroll 8
        for (int c = 0; c < 8; ++c) {
            const typename D::W w0 = D::prep(hs[0].line(b, c)), w1 = D::prep(hs[1].line(b, c));
#pragma GCC unroll 4
            for (int j = 0; j < C; ++j) {
                const __m256i x = _mm256_set1_epi32(load_i32(xr.q[j] + b * QK + 4 * c));
                dot[0][j] = D::step(dot[0][j], w0, x);
                dot[1][j] = D::step(dot[1][j], w1, x);
            }
        }
#pragma GCC unroll 2
        for (int h = 0; h < 2; ++h) {
            const __m256 dw = hs[h].scale(b);
#pragma GCC unroll 4
            for (int j = 0; j < C; ++j)
                acc[h][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[h][j]),
                                            _mm256_mul_ps(dw, _mm256_set1_ps(xr.d[j][b])), acc[h][j]);
        }
    }
    for (int h = 0; h < 2; ++h)
        for (int j = 0; j < C; ++j) store_rows(a, 2 * g + h, s + j, r_end, acc[h][j]);
}

// Groups g0 .. g0+4 against X rows s0 .. s1, one group at a time in passes of up to 4 rows (the
// first streams the group from memory, the others find it in L1 or L2). Before, each pass ran over
// the 4 groups at once (4 streams, 8 x C float sums): one group at a time took 0.76-0.91 of that
// time at 2-16 rows on a Zen 4 at 2 threads under MOLE_CPU_ISA=avx2 (bench/ab_ops.sh), the output
// matrix at 8 rows the same.
template <class D> void batch_groups(const Q8x16Args &a, int64_t g0, int64_t s0, int64_t s1, int64_t r_end) {
    for (int64_t g = g0; g < g0 + 4; ++g)
        for (int64_t s = s0; s < s1; s += 4) {
            switch (s1 - s) {
            case 1: batch<D, 1>(a, g, s, r_end); break;
            case 2: batch<D, 2>(a, g, s, r_end); break;
            case 3: batch<D, 3>(a, g, s, r_end); break;
            default: batch<D, 4>(a, g, s, r_end); break;
            }
        }
}

// Halves h0 .. h0+H against X rows s0 .. s1 in tiles of H halves x up to C rows.
template <class D, int H, int C> void halves(const Q8x16Args &a, int64_t h0, int64_t s0, int64_t s1, int64_t r_end) {
    int64_t s = s0;
    for (; s + C <= s1; s += C) tile<D, H, C>(a, h0, s, r_end);
    const int64_t left = s1 - s;
    if constexpr (C > 1) {
        if (left > 0) {   // the remainder in tiles of one row fewer, recursively
            if (left == C - 1)
                tile<D, H, C - 1>(a, h0, s, r_end);
            else
                halves<D, H, C - 1>(a, h0, s, s1, r_end);
        }
    }
}

// The entry point: rows [r0, r1) (r0 a multiple of 16) against X rows [s0, s1).
template <class D> void matmul(const Q8x16Args &a, int64_t r0, int64_t r1, int64_t s0, int64_t s1) {
    int64_t g = r0 / kQ8x16Rows;
    const int64_t g1 = (r1 + kQ8x16Rows - 1) / kQ8x16Rows;
    if (s1 - s0 == 1) {
        for (; g + 4 <= g1; g += 4) decode<D, 4>(a, g, s0, r1);
        for (; g < g1; ++g) decode<D, 1>(a, g, s0, r1);
        return;
    }
    if (s1 - s0 <= kQ8x16BatchRows)   // decode of a batch of sequences: the same 4 streams
        for (; g + 4 <= g1; g += 4) batch_groups<D>(a, g, s0, s1, r1);
    const int64_t h1 = (r1 + 7) / 8;   // halves wholly past r1 are skipped
    int64_t h = 2 * g;
    for (; h + D::kH <= h1; h += D::kH) halves<D, D::kH, D::kC>(a, h, s0, s1, r1);
    for (; h < h1; ++h) halves<D, 1, D::kC>(a, h, s0, s1, r1);
}

}   // namespace mole::cpu::q8x16_ymm
