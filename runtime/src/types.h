// Tensor types of the file format, with no backend in them: the ggml type ids, the block layouts
// of the quantized types, scalar f16/bf16 conversion, row sizes, the byte range of an element
// range, and a portable row decoder (the reference every backend's dequantization must match).
#pragma once

#include <cstdint>
#include <cstring>

namespace mole {

// ggml type ids (same values as enum mole_type).
enum class Type : uint32_t { F32 = 0, F16 = 1, Q4_0 = 2, Q8_0 = 8, Q3_K = 11, IQ4_NL = 20, BF16 = 30 };

constexpr int QK = 32;        // elements per Q8_0 / Q4_0 / IQ4_NL block
constexpr int QK_K = 256;     // elements per Q3_K super-block
constexpr int kMaxBlockElems = QK_K;   // the largest block of any type (scratch sizes)

// IQ4_NL's non-linear codebook (ggml's kvalues_iq4nl): value = d * kIq4nlValues[nibble].
inline constexpr int8_t kIq4nlValues[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

#pragma pack(push, 1)
struct BlockQ8_0 {
    uint16_t d;
    int8_t qs[QK];
};        // 34 bytes: f16 scale, value = q * d
struct BlockQ4_0 {
    uint16_t d;
    uint8_t qs[QK / 2];
};   // 18 bytes: value = (nibble - 8) * d; low nibbles = elements 0..15, high 16..31
struct BlockIQ4_NL {
    uint16_t d;
    uint8_t qs[QK / 2];
};   // 18 bytes: value = kIq4nlValues[nibble] * d; nibbles as Q4_0
// Q3_K (ggml's layout): 256 elements in 16 sub-blocks of 16, sub-block s = elements [16s, 16s+16)
// with a signed 6-bit scale sc_s; element k = n*128 + j*32 + l (n < 2, j < 4, l < 32) is
//   d * sc_{k/16} * (((qs[n*32 + l] >> 2j) & 3) - (hmask[l] >> (4n + j) & 1 ? 0 : 4)).
// scales[12]: low 4 bits of sc_s + 32 in scales[s % 8] (s < 8: low nibble, else high nibble),
// high 2 bits in scales[8 + s % 4] at bit 2 * (s / 4).
struct BlockQ3_K {
    uint8_t hmask[QK_K / 8];
    uint8_t qs[QK_K / 4];
    uint8_t scales[12];
    uint16_t d;
};   // 110 bytes: 3.4375 bits per value
#pragma pack(pop)
static_assert(sizeof(BlockQ8_0) == 34, "q8_0 block");
static_assert(sizeof(BlockQ4_0) == 18, "q4_0 block");
static_assert(sizeof(BlockIQ4_NL) == 18, "iq4_nl block");
static_assert(sizeof(BlockQ3_K) == 110, "q3_k block");

// Sub-block s's signed scale (-32..31) of a Q3_K block.
inline int q3k_scale(const uint8_t *scales, int s) {
    const int lo = (s < 8 ? scales[s] : scales[s - 8] >> 4) & 15, hi = (scales[8 + s % 4] >> (2 * (s / 4))) & 3;
    return (lo | (hi << 4)) - 32;
}

// Elements per block and bytes per block of a type (F32: 1 and 4). False for unknown types.
bool type_traits(uint32_t type, int64_t *block_elems, int64_t *block_bytes);
// Bytes of a row of n elements (n must be a multiple of the block size).
int64_t row_bytes(Type type, int64_t n);
const char *type_name(Type type);
bool is_quantized(Type type);   // Q8_0, Q4_0: matmuls take q8-quantized activations (LUT-only types: false)

// The whole blocks covering elements [e0, e1) of a row of `type`: bytes [offset, offset + bytes)
// of the row, the range's first element `skip` elements into them. A LUT row's layer slice is
// one such range (lut_layer_slice): the mix and the row reads both use it.
struct BlockRange {
    uint64_t offset = 0, bytes = 0;
    int64_t skip = 0;
};
BlockRange block_range(Type type, int64_t e0, int64_t e1);
// Layer il's part of a LUT row [L, N, d]: elements [il*N*d, (il+1)*N*d).
inline BlockRange lut_layer_slice(Type type, int32_t il, int64_t N, int64_t d) {
    return block_range(type, int64_t(il) * N * d, (int64_t(il) + 1) * N * d);
}

// dst[0..n) = the row decoded to f32 (n a multiple of the block size); exact, portable.
void dequantize_row_ref(Type type, const void *src, float *dst, int64_t n);

// IEEE half -> float, exact for every input (subnormals, inf, nan); no F16C needed. Branchless
// (compilers vectorize loops of it): normals and inf/nan rebias the exponent by a float multiply
// by 2^-112; subnormals are formed as (0.5 + man * 2^-24) - 0.5 in float arithmetic.
inline float f16_to_f32(uint16_t h) {
    const uint32_t w = uint32_t(h) << 16, sign = w & 0x80000000u, two_w = w + w;
    uint32_t nb = (two_w >> 4) + (0xe0u << 23), db = (two_w >> 17) | (126u << 23);
    float normal, denormal;
    std::memcpy(&normal, &nb, 4);
    std::memcpy(&denormal, &db, 4);
    normal *= 0x1.0p-112f;
    denormal -= 0.5f;
    uint32_t nbits, dbits;
    std::memcpy(&nbits, &normal, 4);
    std::memcpy(&dbits, &denormal, 4);
    const uint32_t bits = sign | (two_w < (1u << 27) ? dbits : nbits);
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

// float -> IEEE half, round to nearest even (as F16C / numpy).
inline uint16_t f32_to_f16(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000, ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return uint16_t(sign | 0x7c00 | (ax > 0x7f800000u ? 0x200 | ((ax >> 13) & 0x3ff) : 0));
    if (ax >= 0x477ff000u) return uint16_t(sign | 0x7c00);  // rounds to >= 65520: inf
    if (ax < 0x38800000u) {                                 // result subnormal or zero
        float a;
        std::memcpy(&a, &ax, 4);
        // a * 2^24 rounded to nearest even integer = half mantissa (the float add rounds for us)
        float r = a * 16777216.0f + 8388608.0f;
        uint32_t rb;
        std::memcpy(&rb, &r, 4);
        return uint16_t(sign | (rb - 0x4b000000u));
    }
    uint32_t mant_odd = (ax >> 13) & 1;
    ax += 0xc8000fffu + mant_odd;  // rebias exponent (-112 << 23) and round to nearest even
    return uint16_t(sign | (ax >> 13));
}

inline float bf16_to_f32(uint16_t h) {
    uint32_t bits = uint32_t(h) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

// float -> bf16, round to nearest even; NaN stays NaN.
inline uint16_t f32_to_bf16(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return uint16_t((x >> 16) | 0x40);
    return uint16_t((x + 0x7fff + ((x >> 16) & 1)) >> 16);
}

}  // namespace mole
