// The q8 activation format the CPU's quantized matmuls use (per row: int8 q[k], float d[k/32],
// int32 sum[k/32]); the weights' block layouts are in types.h.
#pragma once

#include <cstdint>

#include "types.h"

namespace mole::cpu {

// Activation rows quantized to q8 blocks (ggml's q8_0 rounding: d = amax / 127, q = round(x / d)),
// stored structure-of-arrays so SIMD loads of q are contiguous. sum[b] = sum of the block's q
// (used by Q4_0: sum (nib - 8) q = sum nib q - 8 sum q).
struct Q8Rows {
    int8_t *q;    // [S, k]
    float *d;     // [S, k/32]
    int32_t *sum; // [S, k/32]
    int64_t k;
};

// Quantizes X[S, k] (k a multiple of 32) into out (buffers of the sizes above).
void quantize_rows_q8(const float *X, int64_t S, int64_t k, const Q8Rows &out);

}  // namespace mole::cpu
