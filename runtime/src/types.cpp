// Type traits, row sizes, block ranges and the portable row decoder of types.h.
#include "types.h"

#include <algorithm>

namespace mole {

bool type_traits(uint32_t type, int64_t *block_elems, int64_t *block_bytes) {
    int64_t e = 0, b = 0;
    switch (type) {
    case uint32_t(Type::F32):
        e = 1;
        b = 4;
        break;
    case uint32_t(Type::F16):
        e = 1;
        b = 2;
        break;
    case uint32_t(Type::BF16):
        e = 1;
        b = 2;
        break;
    case uint32_t(Type::Q8_0):
        e = QK;
        b = sizeof(BlockQ8_0);
        break;
    case uint32_t(Type::Q4_0):
        e = QK;
        b = sizeof(BlockQ4_0);
        break;
    case uint32_t(Type::IQ4_NL):
        e = QK;
        b = sizeof(BlockIQ4_NL);
        break;
    case uint32_t(Type::Q3_K):
        e = QK_K;
        b = sizeof(BlockQ3_K);
        break;
    default: return false;
    }
    if (block_elems) *block_elems = e;
    if (block_bytes) *block_bytes = b;
    return true;
}

int64_t row_bytes(Type type, int64_t n) {
    int64_t e = 1, b = 0;
    if (!type_traits(uint32_t(type), &e, &b)) return 0;
    return n / e * b;
}

const char *type_name(Type type) {
    switch (type) {
    case Type::F32: return "f32";
    case Type::F16: return "f16";
    case Type::BF16: return "bf16";
    case Type::Q8_0: return "q8_0";
    case Type::Q4_0: return "q4_0";
    case Type::IQ4_NL: return "iq4_nl";
    case Type::Q3_K: return "q3_k";
    }
    return "unknown";
}

bool is_quantized(Type type) { return type == Type::Q8_0 || type == Type::Q4_0; }

BlockRange block_range(Type type, int64_t e0, int64_t e1) {
    int64_t be = 1, bb = 4;
    type_traits(uint32_t(type), &be, &bb);
    const int64_t b0 = e0 / be, b1 = (e1 + be - 1) / be;
    return BlockRange{uint64_t(b0 * bb), uint64_t((b1 - b0) * bb), e0 - b0 * be};
}

void dequantize_row_ref(Type type, const void *src, float *dst, int64_t n) {
    switch (type) {
    case Type::F32: std::copy_n(static_cast<const float *>(src), n, dst); break;
    case Type::F16: {
        const uint16_t *h = static_cast<const uint16_t *>(src);
        for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(h[i]);
        break;
    }
    case Type::BF16: {
        const uint16_t *h = static_cast<const uint16_t *>(src);
        for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(h[i]);
        break;
    }
    case Type::Q8_0: {
        const BlockQ8_0 *b = static_cast<const BlockQ8_0 *>(src);
        for (int64_t j = 0; j < n / QK; ++j) {
            const float d = f16_to_f32(b[j].d);
            for (int i = 0; i < QK; ++i) dst[j * QK + i] = float(b[j].qs[i]) * d;
        }
        break;
    }
    case Type::Q4_0: {
        const BlockQ4_0 *b = static_cast<const BlockQ4_0 *>(src);
        for (int64_t j = 0; j < n / QK; ++j) {
            const float d = f16_to_f32(b[j].d);
            for (int i = 0; i < QK / 2; ++i) {
                dst[j * QK + i] = float(int(b[j].qs[i] & 0x0f) - 8) * d;
                dst[j * QK + i + QK / 2] = float(int(b[j].qs[i] >> 4) - 8) * d;
            }
        }
        break;
    }
    case Type::IQ4_NL: {
        const BlockIQ4_NL *b = static_cast<const BlockIQ4_NL *>(src);
        for (int64_t j = 0; j < n / QK; ++j) {
            const float d = f16_to_f32(b[j].d);
            for (int i = 0; i < QK / 2; ++i) {
                dst[j * QK + i] = float(kIq4nlValues[b[j].qs[i] & 0x0f]) * d;
                dst[j * QK + i + QK / 2] = float(kIq4nlValues[b[j].qs[i] >> 4]) * d;
            }
        }
        break;
    }
    case Type::Q3_K: {
        const BlockQ3_K *b = static_cast<const BlockQ3_K *>(src);
        for (int64_t j = 0; j < n / QK_K; ++j) {
            const float d = f16_to_f32(b[j].d);
            for (int k = 0; k < QK_K; ++k) {
                const int n2 = k / 128, jj = (k % 128) / 32, l = k % 32;
                const int q = ((b[j].qs[n2 * 32 + l] >> (2 * jj)) & 3) - ((b[j].hmask[l] >> (4 * n2 + jj)) & 1 ? 0 : 4);
                dst[j * QK_K + k] = float(q) * (d * float(q3k_scale(b[j].scales, k / 16)));
            }
        }
        break;
    }
    }
}

}  // namespace mole
