// The q8x16 repacking of Q8_0 weights (layout in repack.h) and its portable matmul, the reference
// the AVX-512 kernel must match bit for bit.
#include "backend/cpu/repack.h"

#include <cmath>
#include <cstring>

namespace mole::cpu {

void pack_q8x16(const BlockQ8_0 *src, int64_t r0, int64_t r1, int64_t k, uint8_t *dst) {
    const int64_t nb = k / QK, gbytes = q8x16_group_bytes(k), sbytes = q8x16_scale_bytes(k);
    for (int64_t r = r0; r < r1; ++r) {
        const BlockQ8_0 *row = src + (r - r0) * nb;
        uint8_t *g = dst + r / kQ8x16Rows * gbytes;
        const int64_t ri = r % kQ8x16Rows;
        uint16_t *scales = reinterpret_cast<uint16_t *>(g);
        uint8_t *qs = g + sbytes;
        for (int64_t b = 0; b < nb; ++b) {
            scales[b * kQ8x16Rows + ri] = row[b].d;
            for (int c = 0; c < 8; ++c) {   // 4 values at a time; w + 128 = w ^ 0x80 per byte
                uint32_t w;
                std::memcpy(&w, row[b].qs + 4 * c, 4);
                w ^= 0x80808080u;
                std::memcpy(qs + ((b * 8 + c) * kQ8x16Rows + ri) * 4, &w, 4);
            }
        }
    }
}

void matmul_q8x16_portable(const Q8x16Args &a, int64_t r0, int64_t r1, int64_t s0, int64_t s1) {
    const int64_t nb = a.k / QK, gbytes = q8x16_group_bytes(a.k), sbytes = q8x16_scale_bytes(a.k);
    for (int64_t r = r0; r < r1; ++r) {
        const uint8_t *g = a.W + r / kQ8x16Rows * gbytes;
        const int64_t ri = r % kQ8x16Rows;
        const uint16_t *scales = reinterpret_cast<const uint16_t *>(g);
        const uint8_t *qs = g + sbytes;
        for (int64_t s = s0; s < s1; ++s) {
            const int8_t *xq = a.xq.q + s * a.k;
            const float *xd = a.xq.d + s * nb;
            float acc = 0.0f;
            for (int64_t b = 0; b < nb; ++b) {
                int32_t dot = 0;   // sum (w + 128) x, then the offset removed with the block's sum of x
                for (int c = 0; c < 8; ++c)
                    for (int t = 0; t < 4; ++t)
                        dot += int32_t(qs[((b * 8 + c) * kQ8x16Rows + ri) * 4 + t]) * xq[b * QK + 4 * c + t];
                dot -= 128 * a.xq.sum[s * nb + b];
                const float scale = f16_to_f32(scales[b * kQ8x16Rows + ri]) * xd[b];
                acc = std::fma(float(dot), scale, acc);
            }
            a.Y[s * a.n + r] = acc;
        }
    }
}

}  // namespace mole::cpu
