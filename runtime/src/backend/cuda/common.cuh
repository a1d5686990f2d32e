// Device helpers shared by the CUDA kernel files: file-type element loads (f16, bf16, and 32-bit
// words of Q8_0 / Q4_0 blocks, which are only 2-byte aligned), warp reductions, and the q8
// activation layout the quantized kernels read.
#pragma once

#include <cstdint>

#include "backend/cuda/compat.cuh"
#include "types.h"

namespace mole::cuda {

constexpr int kWarp = 32;
constexpr int kQK = 32;            // elements per Q8_0 / Q4_0 block
constexpr int kQ8Bytes = 34;       // f16 scale + 32 int8
constexpr int kQ4Bytes = 18;       // f16 scale + 16 bytes of nibbles (Q4_0, IQ4_NL)
constexpr int kQK_K = 256;         // elements per Q3_K super-block
constexpr int kQ3KBytes = 110;     // hmask [32], qs [64], scales [12], f16 scale (types.h)
constexpr unsigned kFull = 0xffffffffu;

MOLE_DEV float f16_bits(uint16_t h) { return __half2float(__ushort_as_half(h)); }
MOLE_DEV float bf16_bits(uint16_t h) { return __int_as_float(int(uint32_t(h) << 16)); }

// 32-bit word i of bytes p that are only 2-byte aligned (a block's quants): two 16-bit loads, so
// no misaligned access on the GPU.
MOLE_DEV int load_i32_a2(const uint8_t *p, int i) {
    const uint16_t *h = reinterpret_cast<const uint16_t *>(p) + 2 * i;
    return int(uint32_t(h[0]) | (uint32_t(h[1]) << 16));
}
MOLE_DEV uint16_t load_u16(const uint8_t *p) { return *reinterpret_cast<const uint16_t *>(p); }

MOLE_DEV float warp_sum(float v) {
    for (int o = kWarp / 2; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
    return v;
}
MOLE_DEV float warp_max(float v) {
    for (int o = kWarp / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFull, v, o));
    return v;
}

// IQ4_NL codebook entry i (kIq4nlValues), from two 64-bit immediates: no table in memory.
MOLE_DEV int iq4nl_value(int i) {
    const unsigned long long lo = 0xF6EADDCFBFAD9881ull, hi = 0x7159453526190D01ull;
    return int(int8_t(uint8_t(((i < 8 ? lo : hi) >> (8 * (i & 7))) & 0xff)));
}

// Element e of a row of `type` (any type this runtime stores), decoded exactly.
MOLE_DEV float load_element(Type type, const uint8_t *row, int64_t e) {
    switch (type) {
    case Type::F32: return reinterpret_cast<const float *>(row)[e];
    case Type::F16: return f16_bits(reinterpret_cast<const uint16_t *>(row)[e]);
    case Type::BF16: return bf16_bits(reinterpret_cast<const uint16_t *>(row)[e]);
    case Type::Q8_0: {
        const uint8_t *blk = row + (e / kQK) * kQ8Bytes;
        return float(int8_t(blk[2 + e % kQK])) * f16_bits(load_u16(blk));
    }
    case Type::Q4_0: {
        const uint8_t *blk = row + (e / kQK) * kQ4Bytes;
        const int j = int(e % kQK);
        const int nib = j < 16 ? (blk[2 + j] & 0x0f) : (blk[2 + j - 16] >> 4);
        return float(nib - 8) * f16_bits(load_u16(blk));
    }
    case Type::IQ4_NL: {
        const uint8_t *blk = row + (e / kQK) * kQ4Bytes;
        const int j = int(e % kQK);
        const int nib = j < 16 ? (blk[2 + j] & 0x0f) : (blk[2 + j - 16] >> 4);
        return float(iq4nl_value(nib)) * f16_bits(load_u16(blk));
    }
    case Type::Q3_K: {   // element k = n*128 + jj*32 + l of its super-block (types.h)
        const uint8_t *blk = row + (e / kQK_K) * kQ3KBytes;
        const int k = int(e % kQK_K), n = k / 128, jj = (k % 128) / 32, l = k % 32, s = k / 16;
        const int q = ((blk[32 + n * 32 + l] >> (2 * jj)) & 3) - ((blk[l] >> (4 * n + jj)) & 1 ? 0 : 4);
        const uint8_t *sc = blk + 96;
        const int lo = (s < 8 ? sc[s] : sc[s - 8] >> 4) & 15, hi = (sc[8 + s % 4] >> (2 * (s / 4))) & 3;
        return float(q) * (f16_bits(load_u16(blk + 108)) * float((lo | (hi << 4)) - 32));
    }
    }
    return 0.0f;
}

// Activations quantized to q8 blocks, as the CPU's (ggml q8_0 rounding): per row q [k] int8,
// d [k/32] f32 scale, sum [k/32] int32 (the block's sum of q, for Q4_0's -8 offset).
struct Q8Act {
    int8_t *q;      // [S, k]
    float *d;       // [S, k/32]
    int32_t *sum;   // [S, k/32]
    int64_t k;
};

}  // namespace mole::cuda
