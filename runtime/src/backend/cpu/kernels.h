// Internal CPU kernel table: instruction-set levels, the run-time choice between them, and the
// per-ISA matmul tile / vector helpers (defined in ops.cpp, matmul_avx2.cpp, matmul_avx512.cpp).
#pragma once

#include <cfloat>
#include <cstdint>
#include <limits>

#include "backend/cpu/ops.h"
#include "backend/cpu/quant.h"

namespace mole::cpu {

// AvxVnni is AVX2 plus vpdpbusd on ymm (the AVX-VNNI extension: Intel from Alder Lake, AMD from
// Zen 5); it only changes the q8x16 matmul, every other op runs its AVX2 kernel.
enum class Isa : int { Portable = 0, Avx2 = 1, AvxVnni = 2, Avx512 = 3 };

// Highest level this CPU and OS support (AVX2 = avx2+fma+f16c; AVXVNNI = that + avx-vnni;
// AVX512 = f+bw+vl+dq+vnni with AVX2).
Isa best_isa();
// Level the kernels use now: best_isa(), lowered by MOLE_CPU_ISA=portable|avx2|avxvnni|avx512
// (read once) or by set_isa(). A request above best_isa() is clamped to it, and AVXVNNI on a CPU
// without AVX-VNNI (an AVX-512 CPU can lack it) to AVX2.
Isa active_isa();
// Forces a level (tests, benchmarks); returns the level actually set (clamped as above).
Isa set_isa(Isa isa);
const char *isa_name(Isa isa);
// The AVX2 family (AVX2 and AVXVNNI): the levels that share the 256-bit kernels.
inline bool is_avx2_family(Isa isa) { return isa == Isa::Avx2 || isa == Isa::AvxVnni; }

// One matmul: Y[S, n] = X[S, k] W^T. X is f32 for F32/F16/BF16, xq (q8 rows) for Q8_0/Q4_0.
struct MatmulArgs {
    Type type;
    const uint8_t *W;   // n rows of wrow bytes
    int64_t n, k, wrow;
    const float *X;     // [S, k]
    Q8Rows xq;          // [S, k] quantized, when type is Q8_0 or Q4_0
    float *Y;           // [S, n]
    bool packed;        // W in the q8x16 layout (repack.h), type Q8_0
};

// Computes Y[s, r] for r in [r0, r1), s in [s0, s1).
void matmul_tile_portable(const MatmulArgs &a, int64_t r0, int64_t r1, int64_t s0, int64_t s1);
void matmul_tile_avx2(const MatmulArgs &a, int64_t r0, int64_t r1, int64_t s0, int64_t s1);
void matmul_tile_avx512(const MatmulArgs &a, int64_t r0, int64_t r1, int64_t s0, int64_t s1);

// Quantizes rows [s0, s1) of X[., k] into out; all three give bit-identical results. Blocks the
// reference quantizer cannot take get the same answer on every path: one holding an Inf or a NaN
// is d = NaN, q = 0, sum = 0 (its products are NaN, as the float ones would be; converting NaN to
// an integer is undefined, and its sum made -128 * sum overflow); one whose scale amax / 127 is
// below FLT_MIN (subnormal, where 1 / d may overflow) is q = 0.
inline void q8_block_not_finite(const Q8Rows &out, int64_t s, int64_t b) {
    for (int i = 0; i < QK; ++i) out.q[s * out.k + b * QK + i] = 0;
    out.d[s * (out.k / QK) + b] = std::numeric_limits<float>::quiet_NaN();
    out.sum[s * (out.k / QK) + b] = 0;
}
inline float q8_inverse_scale(float d) { return d >= FLT_MIN ? 1.0f / d : 0.0f; }
void quantize_rows_q8_portable(const float *X, int64_t s0, int64_t s1, const Q8Rows &out);
void quantize_rows_q8_avx2(const float *X, int64_t s0, int64_t s1, const Q8Rows &out);
void quantize_rows_q8_avx512(const float *X, int64_t s0, int64_t s1, const Q8Rows &out);

// dequantize_row with AVX2 (+F16C); same results as the portable code.
void dequantize_row_avx2(Type type, const void *src, float *dst, int64_t n);

// lut_mix over N*d Q8_0 values (d a multiple of 32): out[i] += sum_j (g[j] d_jb) q_ji, one FMA each.
void lut_mix_q8_0_avx512(const float *g, const BlockQ8_0 *blocks, int64_t N, int64_t d, float *out);
// The same over IQ4_NL values (d a multiple of 32) and Q3_K values (d a multiple of 256).
void lut_mix_iq4_nl_avx512(const float *g, const BlockIQ4_NL *blocks, int64_t N, int64_t d, float *out);
void lut_mix_q3_k_avx512(const float *g, const BlockQ3_K *blocks, int64_t N, int64_t d, float *out);
// The same three with AVX2 (identical results: the same fma per value in the same order).
void lut_mix_q8_0_avx2(const float *g, const BlockQ8_0 *blocks, int64_t N, int64_t d, float *out);
void lut_mix_iq4_nl_avx2(const float *g, const BlockIQ4_NL *blocks, int64_t N, int64_t d, float *out);
void lut_mix_q3_k_avx2(const float *g, const BlockQ3_K *blocks, int64_t N, int64_t d, float *out);

// gelu (erf form) in place with AVX-512 / AVX2; relative error ~1e-7 of the exact value for
// every x (the same branch-free erfc, 16 or 8 lanes at a time).
void gelu_avx512(float *x, int64_t n);
void gelu_avx2(float *x, int64_t n);

// Vector helpers for attention: dot(a, b) over n.
float dot_f32_avx2(const float *a, const float *b, int64_t n);
// The attention kernels read a KV cache of f32 or of IEEE half (uint16_t, converted with F16C).
// One query against keys 0 .. n_keys-1 (rows kv_stride elements apart):
//   scores[t] = scale * q . k_t;   out[hd] = sum_t p[t] v_t (overwrites out).
void attn_scores_avx2(const float *q, const float *k, int64_t kv_stride, int64_t n_keys, int64_t hd, float scale,
                      float *scores);
void attn_scores_avx2(const float *q, const uint16_t *k, int64_t kv_stride, int64_t n_keys, int64_t hd, float scale,
                      float *scores);
void attn_accum_avx2(const float *p, const float *v, int64_t kv_stride, int64_t n_keys, int64_t hd, float *out);
void attn_accum_avx2(const float *p, const uint16_t *v, int64_t kv_stride, int64_t n_keys, int64_t hd, float *out);
// x[t] = exp(x[t] - max x) for t < n; returns the sum (double). ~1e-7 relative per term.
double softmax_exp_avx2(float *x, int64_t n);
// Causal attention of nq <= 16 consecutive queries of one head (rows q_stride floats apart); query
// j sees keys 0 .. n0 + j - 1 and writes out + j * out_stride [hd]. buf: (n0 + nq - 1 + hd) * 16
// + 8 * hd floats of scratch. Per query, the same result as the row-at-a-time path to ~1e-7 relative.
void attention_block_avx512(const float *q, int64_t q_stride, int nq, const float *k, const float *v, int64_t kv_stride,
                            int64_t n0, int64_t hd, float scale, float *out, int64_t out_stride, float *buf);
void attention_block_avx512(const float *q, int64_t q_stride, int nq, const uint16_t *k, const uint16_t *v,
                            int64_t kv_stride, int64_t n0, int64_t hd, float scale, float *out, int64_t out_stride,
                            float *buf);
// The same with AVX2: the 16 queries in two 8-lane registers.
void attention_block_avx2(const float *q, int64_t q_stride, int nq, const float *k, const float *v, int64_t kv_stride,
                          int64_t n0, int64_t hd, float scale, float *out, int64_t out_stride, float *buf);
void attention_block_avx2(const float *q, int64_t q_stride, int nq, const uint16_t *k, const uint16_t *v,
                          int64_t kv_stride, int64_t n0, int64_t hd, float scale, float *out, int64_t out_stride,
                          float *buf);
// out[i] = the IEEE half nearest x[i] (ties to even, as f32_to_f16), with F16C.
void kv_store_f16_avx2(const float *x, uint16_t *out, int64_t n);

}  // namespace mole::cpu
