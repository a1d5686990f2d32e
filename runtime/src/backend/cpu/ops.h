// CPU backend: the reference kernels every other backend is tested against.
// Activations are f32, row-major. Weights keep their file type (ggml block layouts) and are never
// expanded to f32 as a whole. SIMD paths (AVX2, AVX-VNNI, AVX-512) are chosen at run time (cpu_features()).
#pragma once

#include <cstddef>
#include <cstdint>

#include "backend/cpu/threadpool.h"
#include "types.h"

namespace mole::cpu {

struct Features {
    bool avx2 = false, fma = false, f16c = false, avxvnni = false, avx512f = false, avx512bw = false,
         avx512vnni = false, avx512bf16 = false, avx512vl = false, avx512dq = false;
};
const Features &cpu_features();   // detected once (cpuid + xgetbv), thread-safe

// dst[0..n) = dequantized row; n a multiple of the block size. Same values as dequantize_row_ref.
void dequantize_row(Type type, const void *src, float *dst, int64_t n);

// Y[S, n] = X[S, k] @ W^T.  W: n rows of k elements each, stored as rows of `type`
// (ggml: a tensor with ne0 = k, ne1 = n). Quantized types quantize X to the matching dot format
// internally (q8 blocks of 32; k must then be a multiple of 32). Work is split over pool (may be
// null: run on the caller). Results do not depend on the pool's size.
void matmul(Type type, const void *W, int64_t n, int64_t k, const float *X, int64_t S, float *Y, ThreadPool *pool);

// Several matmuls over the same X[S, k] in one dispatch (X quantized once): Y_i[S, n_i] = X W_i^T
// for each entry. Same results as separate matmul calls.
struct MatmulOut {
    Type type;
    const void *W;        // n rows of k elements, stored as rows of `type`
    int64_t n;
    float *Y;             // [S, n]
    bool packed = false;  // W is Q8_0 in the q8x16 layout (repack.h) instead of rows
};
void matmul_multi(const MatmulOut *outs, int n_outs, int64_t k, const float *X, int64_t S, ThreadPool *pool);

// out[S, d] = w * (x * rsqrt(mean(x^2) + eps)), fp32.
void rmsnorm(const float *x, const float *w, int64_t S, int64_t d, float eps, float *out);

// Rotate-half RoPE in place on x[S, n_head, head_dim]: for pair (i, i + head_dim/2),
// angle = pos[s] * freq_scale * theta^(-2i/head_dim). In two parts, so that a step computes its
// angles once for every layer's Q and K: cs[S, head_dim] = cos of row s's pair i at [s][i], its
// sin at [s][head_dim/2 + i] (computed in double, rounded to float); then rows s0 .. s1 of x.
void rope_table(const int32_t *pos, int64_t S, int64_t head_dim, float theta, float freq_scale, float *cs);
void rope_apply(float *x, int64_t s0, int64_t s1, int64_t n_head, int64_t head_dim, const float *cs);

// x = 0.5 x (1 + erf(x / sqrt 2)) in place, n elements (relative error < 1e-6); large n is split
// over pool (may be null).
void gelu(float *x, int64_t n, ThreadPool *pool = nullptr);

// Row-wise softmax in place, x[S, n].
void softmax(float *x, int64_t S, int64_t n);

// Writes n floats to a KV cache of `type` (F32: a copy; F16: rounded to nearest even, the same
// on every ISA).
void kv_store(const float *src, Type type, void *dst, int64_t n);
// Appends src [S, n_head_kv, hd] at positions pos0 .. pos0+S-1 of one sequence and layer of a
// head-major cache, dst [n_head_kv, n_ctx, hd] of `type` (as kv_store writes); kv heads j0 .. j1
// only (j1 < 0: to the last).
void kv_store_heads(const float *src, int64_t S, int64_t n_head_kv, int64_t hd, Type type, void *dst, int64_t n_ctx,
                    int64_t pos0, int64_t j0 = 0, int64_t j1 = -1);

// Causal attention for several sequences in one dispatch over pool (a decode step of n sequences
// is then one fork and join per layer, not n). For sequence i, with seqs[i]'s fields:
//   q     [S, n_head, hd]                 queries of the S new tokens at positions pos0 .. pos0+S-1
//   k, v  of kv_type (F32 or F16): kv head j's position t at j * head_stride + t * kv_stride
//         elements, hd of them (T = pos0 + S positions; head-major caches: kv_stride = hd)
//   out   [S, n_head, hd]
// Head h reads kv head h / (n_head / n_head_kv) (GQA). Scale 1/sqrt(hd). Token s sees
// positions 0 .. pos0+s.
struct AttnSeq {
    const float *q;
    const void *k, *v;
    float *out;
    int64_t S, pos0;
};
void attention_seqs(const AttnSeq *seqs, int n_seqs, Type kv_type, int64_t kv_stride, int64_t head_stride,
                    int64_t n_head, int64_t n_head_kv, int64_t hd, ThreadPool *pool);

// MoLE mix: out[d] += sum_j g[j] * rows[j, d], rows = the token's N expert outputs for one layer.
void lut_mix(const float *g, const float *rows, int64_t N, int64_t d, float *out);
// The same from the row's file bytes: rows = N*d elements of `type` that start `skip` elements
// into the blocks at src. Q8_0 / IQ4_NL (d a multiple of 32) and Q3_K (d a multiple of 256) with
// skip 0 are fused on AVX2 and AVX-512 (no f32 copy; the same results on both); otherwise the
// slice is dequantized into scratch (>= N*d + 2 * kMaxBlockElems floats) first.
void lut_mix_raw(Type type, const float *g, const uint8_t *src, int64_t skip, int64_t N, int64_t d, float *scratch,
                 float *out);

}  // namespace mole::cpu
