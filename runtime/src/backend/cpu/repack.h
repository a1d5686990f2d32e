// Q8_0 weights repacked for VNNI (the "q8x16" layout): 16 output rows interleaved so that one
// 512-bit register holds 4 consecutive k-values of 16 rows, and vpdpbusd multiplies it by one
// broadcast 4-byte group of an activation row. On AVX2 a 256-bit register holds the same for 8
// rows (half a line; q8x16_ymm.h), multiplied with vpdpbusd (AVX-VNNI) or vpmaddubsw. The integer sum of a whole 32-block is formed
// before any float work (8 vpdpbusd, then one convert and one FMA per 16 outputs), where the
// row-major layout needs a convert, a scale multiply and an FMA per 64 products.
//
// Layout of a tensor of n rows x k columns (k a multiple of 32, nb = k / 32 blocks per row):
//   groups g = 0 .. ceil(n / 16) - 1, each group_bytes(k) long, 64-byte aligned:
//     scales  f16 [nb][16]           d of block b of row 16g + r at [b][r]; padded to 64 bytes
//     qs      u8  [nb][8][16][4]     w + 128 of element 32b + 4c + t of row 16g + r at [b][c][r][t]
//   rows past n (the last group's padding) are zero with scale 0.
// Same bytes as the q8_0 rows when nb is even (34 bytes per 32 values).
#pragma once

#include <cstdint>

#include "backend/cpu/quant.h"

namespace mole::cpu {

constexpr int64_t kQ8x16Rows = 16;
// Steps of up to this many activation rows (decode of one or a batch of sequences) take the decode
// tiles: one row streams 4 groups at a time, a batch one group at a time, each block read once for
// up to 8 rows (4 on 256-bit registers); larger S take the prompt tiles.
constexpr int64_t kQ8x16BatchRows = 16;

// Bytes of one group of 16 rows and where its qs start.
inline int64_t q8x16_scale_bytes(int64_t k) { return (k / QK * kQ8x16Rows * 2 + 63) / 64 * 64; }
inline int64_t q8x16_group_bytes(int64_t k) { return q8x16_scale_bytes(k) + k / QK * 512; }
inline int64_t q8x16_bytes(int64_t n, int64_t k) { return (n + kQ8x16Rows - 1) / kQ8x16Rows * q8x16_group_bytes(k); }
// How far the tile of groups g0 .. g0+G is from the next one, in bytes, for the decode tiles'
// L2 prefetch of the next tile; 0 for the last tile of the tensor (nothing past it is touched).
inline int64_t q8x16_next_tile_bytes(int64_t n, int64_t k, int64_t g0, int G) {
    return g0 + 2 * G <= (n + kQ8x16Rows - 1) / kQ8x16Rows ? G * q8x16_group_bytes(k) : 0;
}

// Writes rows [r0, r1) of a q8_0 tensor (src = row r0, rows of k/32 BlockQ8_0, contiguous) into
// their place in dst (the whole packed tensor). r0 must be a multiple of 16; rows of a group not
// written stay as they were (callers zero dst first).
void pack_q8x16(const BlockQ8_0 *src, int64_t r0, int64_t r1, int64_t k, uint8_t *dst);

// Y[s, r] = sum_b d_w[r, b] d_x[s, b] (sum_i w x) for rows r in [r0, r1) (r0 a multiple of 16),
// s in [s0, s1); X as q8 rows. Float accumulation in block order, one fma per block: every path
// and every split of r and s gives bit-identical results.
struct Q8x16Args {
    const uint8_t *W;   // packed tensor
    int64_t n, k;
    Q8Rows xq;   // [S, k]
    float *Y;   // [S, n]
};
// Where C consecutive q8 activation rows s .. s+C of a start: their values, block scales, block sums.
template <int C> struct Q8x16XRows {
    const int8_t *q[C];
    const float *d[C];
    const int32_t *sum[C];
    Q8x16XRows(const Q8x16Args &a, int64_t s) {
        const int64_t nb = a.k / QK;
        for (int j = 0; j < C; ++j) {
            q[j] = a.xq.q + (s + j) * a.k;
            d[j] = a.xq.d + (s + j) * nb;
            sum[j] = a.xq.sum + (s + j) * nb;
        }
    }
};
void matmul_q8x16_portable(const Q8x16Args &a, int64_t r0, int64_t r1, int64_t s0, int64_t s1);
void matmul_q8x16_avx512(const Q8x16Args &a, int64_t r0, int64_t r1, int64_t s0, int64_t s1);
void matmul_q8x16_avxvnni(const Q8x16Args &a, int64_t r0, int64_t r1, int64_t s0, int64_t s1);   // ymm vpdpbusd
void matmul_q8x16_avx2(const Q8x16Args &a, int64_t r0, int64_t r1, int64_t s0, int64_t s1);   // vpmaddubsw

}   // namespace mole::cpu
