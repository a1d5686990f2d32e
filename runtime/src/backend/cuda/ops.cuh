// Launchers of the CUDA kernels, one group per kernel file; the CUDA backend (backend_cuda.cu)
// calls them. Every pointer is device memory; shapes as in backend/backend.h. Each launcher
// queues its kernels on `st` and returns at once (errors: cudaGetLastError after the call).
#pragma once

#include <cstdint>

#include "backend/cuda/common.cuh"
#include "types.h"

namespace mole::cuda {

// quantize.cu: X [S, k] (k a multiple of 32) -> q8 blocks, bit-identical to the CPU's.
void quantize_q8(const float *X, int64_t S, int64_t k, Q8Act out, cudaStream_t st);

// matmul.cu: Y [S, n] = X [S, k] W^T for W n rows of k elements of `type` (the file's bytes).
// Quantized types read xq (X quantized, quantize_q8), the others X. S <= 8: matrix-vector kernels
// (one warp per row, __dp4a for Q8_0 / Q4_0); larger S: tiled kernels.
void matmul(Type type, const uint8_t *W, int64_t n, int64_t k, const float *X, const Q8Act &xq, int64_t S, float *Y,
            cudaStream_t st);

// norm.cu: out [S, d] = w * (x * rsqrt(mean(x^2) + eps)).
void rmsnorm(const float *x, const float *w, int64_t S, int64_t d, float eps, float *out, cudaStream_t st);

// rope.cu: rotate-half in place on x [S, n_head, hd] at pos [S].
void rope(float *x, int64_t S, int64_t n_head, int64_t hd, const int32_t *pos, float theta, float freq_scale,
          cudaStream_t st);

// elementwise.cu
void gelu(float *x, int64_t n, cudaStream_t st);                 // erf form
void add(float *x, const float *y, int64_t n, cudaStream_t st);  // x += y
void softmax(float *x, int64_t S, int64_t n, cudaStream_t st);   // row-wise, in place
// out [n, d] = x [rows[i]]
void gather_rows(const float *x, const int32_t *rows, int64_t n, int64_t d, float *out, cudaStream_t st);

// embed.cu: x [S, d] = E [ids] (rows of d elements of `type`), dequantized.
void embed(Type type, const uint8_t *E, int64_t d, const int32_t *ids, int64_t S, float *x, cudaStream_t st);

// attention.cu. A tile is up to kAttnQ consecutive rows of one sequence.
constexpr int kAttnQ = 8;
struct AttnTile {
    int32_t row0, n_rows, seq, max_pos;   // rows [row0, row0 + n_rows); the last row's position
};
// K, V of the step's rows [S, kvd = Hkv * hd] to their positions in the head-major cache
// [n_seq, L, Hkv, n_ctx, hd]: kv head j of row r at ((row_seq[r] * L + layer) * Hkv + j) * n_ctx + pos[r].
void kv_append(const float *k, const float *v, int64_t S, int64_t kvd, int64_t hd, const int32_t *row_seq,
               const int32_t *pos, float *k_cache, float *v_cache, int64_t n_layer, int64_t layer, int64_t n_ctx,
               cudaStream_t st);
// out [S, H, hd] = causal attention of q [S, H, hd] over each row's sequence (keys 0 .. pos[r]) in
// layer `layer` of the cache; kv head h / (H / Hkv). Keys are split over n_split blocks per tile
// and head (flash-decoding) when n_split > 1; partial needs attention_partial_floats(...) floats.
struct AttnArgs {
    const float *q;
    const float *k_cache, *v_cache;
    float *out;
    const int32_t *pos;
    const AttnTile *tiles;
    int32_t n_tiles, n_split, H, Hkv, hd;
    int64_t S, n_layer, layer, n_ctx;
    float *partial;
};
int64_t attention_partial_floats(int64_t S, int64_t H, int64_t hd, int32_t n_split);
// The split count the launcher would choose for a step whose longest sequence holds max_keys keys.
int32_t attention_splits(int64_t S, int64_t max_keys);
bool attention_supported(int64_t hd);   // hd <= 256
void attention(const AttnArgs &a, cudaStream_t st);

// lut_mix.cu: x [r] += sum_j gate [r, j] slice_j, slice = N*d values of `type` from rows[uniq_slot[r]]
// (a device pointer to the slice's first block, `skip` elements before the first value).
void lut_mix(Type type, const uint8_t *const *rows, const int32_t *uniq_slot, int64_t skip, const float *gate,
             int64_t S, int64_t N, int64_t d, float *x, cudaStream_t st);

}  // namespace mole::cuda
