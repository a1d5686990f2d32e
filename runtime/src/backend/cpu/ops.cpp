// CPU ops: portable reference code for every op and the run-time dispatch to the AVX2 / AVX-512
// kernels. matmul quantizes activations once, then splits tiles of (W rows x X rows) over the pool.
#include "backend/cpu/ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <vector>

#include "backend/cpu/kernels.h"
#include "backend/cpu/repack.h"

namespace mole::cpu {

void dequantize_row(Type type, const void *src, float *dst, int64_t n) {
    const bool simd = type == Type::F32 || type == Type::F16 || type == Type::BF16 || type == Type::Q8_0 ||
        type == Type::Q4_0 || type == Type::IQ4_NL || type == Type::Q3_K;   // others: the reference decoder
    if (simd && active_isa() != Isa::Portable) return dequantize_row_avx2(type, src, dst, n);
    dequantize_row_ref(type, src, dst, n);
}

// ---------------------------------------------------------------------------------------------
// matmul

namespace {

// Four independent partial sums: lets the compiler use SSE2 without -ffast-math, and keeps the
// result independent of how rows are split between threads.
float dot_portable(const float *a, const float *b, int64_t n) {
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += a[i] * b[i];
        s1 += a[i + 1] * b[i + 1];
        s2 += a[i + 2] * b[i + 2];
        s3 += a[i + 3] * b[i + 3];
    }
    for (; i < n; ++i) s0 += a[i] * b[i];
    return (s0 + s1) + (s2 + s3);
}

}  // namespace

void matmul_tile_portable(const MatmulArgs &a, int64_t r0, int64_t r1, int64_t s0, int64_t s1) {
    const int64_t k = a.k, nb = k / QK;
    static thread_local std::vector<float> wrow;   // [k] one f16/bf16 row converted, reused over S
    if ((a.type == Type::F16 || a.type == Type::BF16) && int64_t(wrow.size()) < k) wrow.resize(size_t(k));
    for (int64_t r = r0; r < r1; ++r) {
        const uint8_t *w = a.W + r * a.wrow;
        if (a.type == Type::F16 || a.type == Type::BF16) dequantize_row(a.type, w, wrow.data(), k);
        for (int64_t s = s0; s < s1; ++s) {
            float acc = 0.0f;
            switch (a.type) {
            case Type::F32: acc = dot_portable(reinterpret_cast<const float *>(w), a.X + s * k, k); break;
            case Type::F16:
            case Type::BF16: acc = dot_portable(wrow.data(), a.X + s * k, k); break;
            case Type::Q8_0: {
                const BlockQ8_0 *wb = reinterpret_cast<const BlockQ8_0 *>(w);
                const int8_t *xq = a.xq.q + s * k;
                const float *xd = a.xq.d + s * nb;
                for (int64_t b = 0; b < nb; ++b) {
                    int32_t dot = 0;
                    for (int i = 0; i < QK; ++i) dot += int32_t(wb[b].qs[i]) * xq[b * QK + i];
                    acc += float(dot) * (f16_to_f32(wb[b].d) * xd[b]);
                }
                break;
            }
            case Type::Q4_0: {
                const BlockQ4_0 *wb = reinterpret_cast<const BlockQ4_0 *>(w);
                const int8_t *xq = a.xq.q + s * k;
                const float *xd = a.xq.d + s * nb;
                const int32_t *xs = a.xq.sum + s * nb;
                for (int64_t b = 0; b < nb; ++b) {
                    int32_t dot = 0;
                    for (int i = 0; i < QK / 2; ++i)
                        dot += int32_t(wb[b].qs[i] & 0x0f) * xq[b * QK + i] +
                            int32_t(wb[b].qs[i] >> 4) * xq[b * QK + i + QK / 2];
                    dot -= 8 * xs[b];
                    acc += float(dot) * (f16_to_f32(wb[b].d) * xd[b]);
                }
                break;
            }
            case Type::IQ4_NL:
            case Type::Q3_K: break;   // LUT-only types: never a matrix (model.cpp)
            }
            a.Y[s * a.n + r] = acc;
        }
    }
}

namespace {

// Scratch for quantized activations; grows to the largest S*k seen by this thread, then stays.
struct Q8Scratch {
    std::vector<int8_t> q;
    std::vector<float> d;
    std::vector<int32_t> sum;
    Q8Rows rows(int64_t S, int64_t k) {
        const size_t nq = size_t(S * k), nb = size_t(S * (k / QK));
        if (q.size() < nq) q.resize(nq);
        if (d.size() < nb) {
            d.resize(nb);
            sum.resize(nb);
        }
        return Q8Rows{q.data(), d.data(), sum.data(), k};
    }
};

// The q8x16 matmul of each level (set_isa never selects AVXVNNI where the build lacks its kernel).
void (*packed_kernel(Isa isa))(const Q8x16Args &, int64_t, int64_t, int64_t, int64_t) {
    switch (isa) {
    case Isa::Avx512: return matmul_q8x16_avx512;
#ifdef MOLE_AVXVNNI_KERNELS
    case Isa::AvxVnni: return matmul_q8x16_avxvnni;
#else
    case Isa::AvxVnni:
#endif
    case Isa::Avx2: return matmul_q8x16_avx2;
    case Isa::Portable: break;
    }
    return matmul_q8x16_portable;
}

constexpr int64_t kRowAlign = 16;   // row chunks are multiples of 16 rows (whole SIMD tiles)
constexpr int64_t kSChunk = 64;     // X rows per task when S is large

}  // namespace

void matmul(Type type, const void *W, int64_t n, int64_t k, const float *X, int64_t S, float *Y, ThreadPool *pool) {
    const MatmulOut out{type, W, n, Y};
    matmul_multi(&out, 1, k, X, S, pool);
}

void matmul_multi(const MatmulOut *outs, int n_outs, int64_t k, const float *X, int64_t S, ThreadPool *pool) {
    if (S <= 0 || n_outs <= 0) return;
    const Isa isa = active_isa();
    const int nt = pool ? pool->size() : 1;
    constexpr int kMaxOuts = 8;
    if (n_outs > kMaxOuts) {   // more than one dispatch holds
        matmul_multi(outs, kMaxOuts, k, X, S, pool);
        matmul_multi(outs + kMaxOuts, n_outs - kMaxOuts, k, X, S, pool);
        return;
    }

    // Activations quantized once for every quantized weight of the call.
    Q8Rows xq{};
    bool need_q = false;
    for (int i = 0; i < n_outs; ++i) need_q |= outs[i].type == Type::Q8_0 || outs[i].type == Type::Q4_0;
    if (need_q) {
        static thread_local Q8Scratch scratch;
        xq = scratch.rows(S, k);
        auto quant = isa == Isa::Avx512 ? quantize_rows_q8_avx512
            : is_avx2_family(isa)       ? quantize_rows_q8_avx2
                                        : quantize_rows_q8_portable;
        if (nt > 1 && S >= 4) {
            const int64_t per = (S + nt - 1) / nt;
            auto qrun = [&](int64_t t, int) {
                const int64_t s0 = t * per, s1 = std::min(S, s0 + per);
                if (s0 < s1) quant(X, s0, s1, xq);
            };
            pool->parallel_for(nt, std::ref(qrun));
        } else {
            quant(X, 0, S, xq);
        }
    }

    auto tile = isa == Isa::Avx512 ? matmul_tile_avx512 : is_avx2_family(isa) ? matmul_tile_avx2 : matmul_tile_portable;
    auto packed_tile = packed_kernel(isa);

    // Per output: S in chunks of kSChunk rows; n in chunks of whole tiles, enough chunks per
    // thread that dynamic scheduling balances, but each at least ~16 KB of weights. The outputs'
    // task ranges are laid end to end: one dispatch for all of them.
    const int64_t s_chunks = (S + kSChunk - 1) / kSChunk;
    MatmulArgs args[kMaxOuts];
    int64_t r_chunk[kMaxOuts], r_chunks[kMaxOuts], first[kMaxOuts + 1];
    first[0] = 0;
    for (int i = 0; i < n_outs; ++i) {
        const MatmulOut &o = outs[i];
        args[i] = MatmulArgs{o.type, static_cast<const uint8_t *>(o.W), o.n, k, row_bytes(o.type, k), X, xq,
                             o.Y,    o.packed && o.type == Type::Q8_0};
        const int64_t n = std::max<int64_t>(o.n, 0);
        int64_t want = nt == 1 ? 1 : std::max<int64_t>(1, (int64_t(nt) * 8 + s_chunks - 1) / s_chunks);
        int64_t rc = (n + want - 1) / want;
        const int64_t min_rows =
            std::max<int64_t>(kRowAlign, (16384 / std::max<int64_t>(args[i].wrow, 1)) / kRowAlign * kRowAlign);
        if (S > kSChunk) rc = std::min<int64_t>(rc, 128);
        rc = std::max(rc, std::min(min_rows, n));
        // q8x16 decode and batch tiles are 4 groups of 16 rows
        const int64_t align = args[i].packed && S <= kQ8x16BatchRows ? 4 * kRowAlign : kRowAlign;
        rc = std::max<int64_t>(1, (rc + align - 1) / align * align);
        r_chunk[i] = rc;
        r_chunks[i] = (n + rc - 1) / rc;
        first[i + 1] = first[i] + r_chunks[i] * s_chunks;
    }
    const int64_t n_tasks = first[n_outs];

    auto run = [&](int64_t t, int) {
        int i = 0;
        while (t >= first[i + 1]) ++i;
        t -= first[i];
        const int64_t rc = t % r_chunks[i], sc = t / r_chunks[i];
        const int64_t r0 = rc * r_chunk[i], r1 = std::min(args[i].n, r0 + r_chunk[i]);
        const int64_t s0 = sc * kSChunk, s1 = std::min(S, s0 + kSChunk);
        if (args[i].packed)
            packed_tile(Q8x16Args{args[i].W, args[i].n, k, xq, args[i].Y}, r0, r1, s0, s1);
        else
            tile(args[i], r0, r1, s0, s1);
    };
    if (pool && nt > 1 && n_tasks > 1) {
        pool->parallel_for(n_tasks, std::ref(run));
    } else {
        for (int64_t t = 0; t < n_tasks; ++t) run(t, 0);
    }
}

// ---------------------------------------------------------------------------------------------
// Element-wise and normalization ops

void rmsnorm(const float *x, const float *w, int64_t S, int64_t d, float eps, float *out) {
    for (int64_t s = 0; s < S; ++s) {
        const float *xs = x + s * d;
        float *o = out + s * d;
        // the sum of squares in double, in four chains (one sequential chain waited on each add)
        double ss0 = 0.0, ss1 = 0.0, ss2 = 0.0, ss3 = 0.0;
        int64_t i = 0;
        for (; i + 4 <= d; i += 4) {
            ss0 += double(xs[i]) * xs[i];
            ss1 += double(xs[i + 1]) * xs[i + 1];
            ss2 += double(xs[i + 2]) * xs[i + 2];
            ss3 += double(xs[i + 3]) * xs[i + 3];
        }
        for (; i < d; ++i) ss0 += double(xs[i]) * xs[i];
        const double ss = (ss0 + ss1) + (ss2 + ss3);
        const float r = float(1.0 / std::sqrt(ss / double(d) + double(eps)));
        for (i = 0; i < d; ++i) o[i] = w[i] * (xs[i] * r);
    }
}

void rope_table(const int32_t *pos, int64_t S, int64_t head_dim, float theta, float freq_scale, float *cs) {
    const int64_t half = head_dim / 2;
    static thread_local std::vector<double> freq;   // [half] freq_scale * theta^(-2i/head_dim)
    if (int64_t(freq.size()) < half) freq.resize(size_t(half));
    for (int64_t i = 0; i < half; ++i)
        freq[size_t(i)] = double(freq_scale) * std::pow(double(theta), -2.0 * double(i) / double(head_dim));
    for (int64_t s = 0; s < S; ++s) {
        float *c = cs + s * head_dim;
        for (int64_t i = 0; i < half; ++i) {
            const double ang = double(pos[s]) * freq[size_t(i)];
            c[i] = float(std::cos(ang));
            c[half + i] = float(std::sin(ang));
        }
    }
}

void rope_apply(float *x, int64_t s0, int64_t s1, int64_t n_head, int64_t head_dim, const float *cs) {
    const int64_t half = head_dim / 2;
    for (int64_t s = s0; s < s1; ++s) {
        const float *c = cs + s * head_dim, *sn = c + half;
        for (int64_t h = 0; h < n_head; ++h) {
            float *v = x + (s * n_head + h) * head_dim;
            for (int64_t i = 0; i < half; ++i) {
                const float a = v[i], b = v[i + half];
                v[i] = a * c[i] - b * sn[i];
                v[i + half] = a * sn[i] + b * c[i];
            }
        }
    }
}

namespace {
void gelu_portable(float *x, int64_t n) {
    // 0.5 x (1 + erf(x / sqrt 2)) written with erfc so large negative x keeps full relative
    // precision. erfc(z) amplifies the relative rounding of its argument by 2 z^2 = x^2, so below
    // x = -2 the argument is formed in double (relative error < 5e-7 everywhere; at -4 in float
    // it reached 1.1e-6, found by test_backend_ops).
    for (int64_t i = 0; i < n; ++i) {
        const float v = x[i];
        x[i] = v >= -2.0f ? 0.5f * v * std::erfc(-v * 0.70710678118654752f)
                          : float(0.5 * double(v) * std::erfc(-double(v) * 0.70710678118654752440));
    }
}
}  // namespace

void gelu(float *x, int64_t n, ThreadPool *pool) {
    const Isa isa = active_isa();
    auto fn = isa == Isa::Avx512 ? gelu_avx512 : is_avx2_family(isa) ? gelu_avx2 : gelu_portable;
    constexpr int64_t kChunk = 16384;   // elements per task (a multiple of 16)
    const int64_t n_tasks = (n + kChunk - 1) / kChunk;
    if (!pool || pool->size() == 1 || n_tasks < 2) return fn(x, n);
    auto run = [&](int64_t t, int) { fn(x + t * kChunk, std::min(kChunk, n - t * kChunk)); };
    pool->parallel_for(n_tasks, std::ref(run));
}

void lut_mix(const float *g, const float *rows, int64_t N, int64_t d, float *out) {
    for (int64_t j = 0; j < N; ++j) {
        const float gj = g[j];
        const float *r = rows + j * d;
        for (int64_t i = 0; i < d; ++i) out[i] += gj * r[i];
    }
}

void lut_mix_raw(Type type, const float *g, const uint8_t *src, int64_t skip, int64_t N, int64_t d, float *scratch,
                 float *out) {
    const Isa isa = active_isa();
    if (skip == 0 && isa != Isa::Portable) {   // fused where each expert is whole blocks
        const bool wide = isa == Isa::Avx512;
        if (type == Type::Q8_0 && d % QK == 0)
            return (wide ? lut_mix_q8_0_avx512 : lut_mix_q8_0_avx2)(g, reinterpret_cast<const BlockQ8_0 *>(src), N, d,
                                                                    out);
        if (type == Type::IQ4_NL && d % QK == 0)
            return (wide ? lut_mix_iq4_nl_avx512 : lut_mix_iq4_nl_avx2)(g, reinterpret_cast<const BlockIQ4_NL *>(src),
                                                                        N, d, out);
        if (type == Type::Q3_K && d % QK_K == 0)
            return (wide ? lut_mix_q3_k_avx512 : lut_mix_q3_k_avx2)(g, reinterpret_cast<const BlockQ3_K *>(src), N, d,
                                                                    out);
    }
    int64_t be = 1;
    type_traits(uint32_t(type), &be, nullptr);
    dequantize_row(type, src, scratch, (skip + N * d + be - 1) / be * be);
    lut_mix(g, scratch + skip, N, d, out);
}

// ---------------------------------------------------------------------------------------------
// Attention

namespace {

inline float kv_f32(float x) { return x; }
inline float kv_f32(uint16_t h) { return f16_to_f32(h); }

// dot_portable's four partial sums, over a KV row of f32 or f16
template <class KV> float dot_kv_portable(const float *a, const KV *b, int64_t n) {
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += a[i] * kv_f32(b[i]);
        s1 += a[i + 1] * kv_f32(b[i + 1]);
        s2 += a[i + 2] * kv_f32(b[i + 2]);
        s3 += a[i + 3] * kv_f32(b[i + 3]);
    }
    for (; i < n; ++i) s0 += a[i] * kv_f32(b[i]);
    return (s0 + s1) + (s2 + s3);
}

template <class KV> void attn_scores_portable(const float *q, const KV *k, int64_t kv_stride, int64_t n_keys,
                                              int64_t hd, float scale, float *scores) {
    for (int64_t t = 0; t < n_keys; ++t) scores[t] = dot_kv_portable(q, k + t * kv_stride, hd) * scale;
}

double softmax_exp_portable(float *x, int64_t n) {
    float mx = -INFINITY;
    for (int64_t t = 0; t < n; ++t) mx = std::max(mx, x[t]);
    double sum = 0.0;
    for (int64_t t = 0; t < n; ++t) {
        x[t] = std::exp(x[t] - mx);
        sum += x[t];
    }
    return sum;
}

template <class KV>
void attn_accum_portable(const float *p, const KV *v, int64_t kv_stride, int64_t n_keys, int64_t hd, float *out) {
    std::fill_n(out, hd, 0.0f);
    for (int64_t t = 0; t < n_keys; ++t)
        for (int64_t e = 0; e < hd; ++e) out[e] += p[t] * kv_f32(v[t * kv_stride + e]);
}

template <class KV> void attention_seqs_of(const AttnSeq *seqs, int n_seqs, int64_t kv_stride, int64_t head_stride,
                                           int64_t n_head, int64_t n_head_kv, int64_t hd, ThreadPool *pool) {
    const Isa isa = active_isa();
    const bool simd = isa != Isa::Portable;
    using ScoresFn = void (*)(const float *, const KV *, int64_t, int64_t, int64_t, float, float *);
    using AccumFn = void (*)(const float *, const KV *, int64_t, int64_t, int64_t, float *);
    using BlockFn = void (*)(const float *, int64_t, int, const KV *, const KV *, int64_t, int64_t, int64_t, float,
                             float *, int64_t, float *);
    ScoresFn scores_fn = attn_scores_portable<KV>;
    AccumFn accum_fn = attn_accum_portable<KV>;
    BlockFn block_fn = attention_block_avx2;
    if (simd) {
        scores_fn = attn_scores_avx2;
        accum_fn = attn_accum_avx2;
    }
    if (isa == Isa::Avx512) block_fn = attention_block_avx512;
    auto exp_fn = simd ? softmax_exp_avx2 : softmax_exp_portable;
    const int64_t group = n_head / n_head_kv;
    const float scale = float(1.0 / std::sqrt(double(hd)));
    constexpr int64_t kQChunk = 16;   // queries per task
    // tasks of sequence i: first[i] .. first[i + 1], n_head per chunk of queries
    static thread_local std::vector<int64_t> first;
    first.assign(size_t(n_seqs) + 1, 0);
    for (int i = 0; i < n_seqs; ++i)
        first[size_t(i) + 1] = first[size_t(i)] + n_head * ((std::max<int64_t>(seqs[i].S, 0) + kQChunk - 1) / kQChunk);
    const int64_t *firsts = first.data();   // (the workers' thread_local is another vector)

    auto run = [&](int64_t task, int) {
        int i = 0;
        while (task >= firsts[i + 1]) ++i;
        const AttnSeq &sq = seqs[i];
        task -= firsts[i];
        const int64_t q_chunks = (sq.S + kQChunk - 1) / kQChunk;
        const int64_t h = task % n_head, qc = q_chunks - 1 - task / n_head;   // longest rows first
        const int64_t kvh = h / group, pos0 = sq.pos0;
        static thread_local std::vector<float> scores;   // [T], or the blocked path's scratch
        const int64_t T = pos0 + sq.S, s0 = qc * kQChunk, nq = std::min(sq.S, s0 + kQChunk) - s0;
        const KV *k = static_cast<const KV *>(sq.k) + kvh * head_stride,
                 *v = static_cast<const KV *>(sq.v) + kvh * head_stride;
        const float *q = sq.q;
        float *out = sq.out;
        if (simd && nq >= 4) {   // queries in SIMD lanes: no horizontal sum per key
            const size_t need = size_t((T + hd) * kQChunk + 8 * hd);   // + a block of keys as floats
            if (scores.size() < need) scores.resize(need);
            block_fn(q + (s0 * n_head + h) * hd, n_head * hd, int(nq), k, v, kv_stride, pos0 + s0 + 1, hd, scale,
                     out + (s0 * n_head + h) * hd, n_head * hd, scores.data());
            return;
        }
        if (int64_t(scores.size()) < T) scores.resize(size_t(T));
        for (int64_t s = s0; s < s0 + nq; ++s) {
            const float *qv = q + (s * n_head + h) * hd;
            const int64_t n_keys = pos0 + s + 1;
            float *sc = scores.data();
            scores_fn(qv, k, kv_stride, n_keys, hd, scale, sc);
            const double sum = exp_fn(sc, n_keys);
            float *o = out + (s * n_head + h) * hd;
            accum_fn(sc, v, kv_stride, n_keys, hd, o);
            const float inv = float(1.0 / sum);
            for (int64_t e = 0; e < hd; ++e) o[e] *= inv;
        }
    };
    const int64_t n_tasks = firsts[n_seqs];
    if (pool && pool->size() > 1 && n_tasks > 1)
        pool->parallel_for(n_tasks, std::ref(run));
    else
        for (int64_t t = 0; t < n_tasks; ++t) run(t, 0);
}

}  // namespace

void softmax(float *x, int64_t S, int64_t n) {
    for (int64_t s = 0; s < S; ++s) {
        float *r = x + s * n;
        const float inv = float(1.0 / softmax_exp_portable(r, n));
        for (int64_t i = 0; i < n; ++i) r[i] *= inv;
    }
}

void kv_store_heads(const float *src, int64_t S, int64_t n_head_kv, int64_t hd, Type type, void *dst, int64_t n_ctx,
                    int64_t pos0, int64_t j0, int64_t j1) {
    const size_t eb = type == Type::F16 ? 2 : 4;
    if (j1 < 0) j1 = n_head_kv;
    for (int64_t j = j0; j < j1; ++j) {
        char *head = static_cast<char *>(dst) + size_t((j * n_ctx + pos0) * hd) * eb;
        for (int64_t s = 0; s < S; ++s) kv_store(src + (s * n_head_kv + j) * hd, type, head + size_t(s * hd) * eb, hd);
    }
}

void kv_store(const float *src, Type type, void *dst, int64_t n) {
    if (type != Type::F16) {
        std::memcpy(dst, src, sizeof(float) * size_t(n));
        return;
    }
    uint16_t *h = static_cast<uint16_t *>(dst);
    if (active_isa() != Isa::Portable) return kv_store_f16_avx2(src, h, n);
    for (int64_t i = 0; i < n; ++i) h[i] = f32_to_f16(src[i]);
}

void attention_seqs(const AttnSeq *seqs, int n_seqs, Type kv_type, int64_t kv_stride, int64_t head_stride,
                    int64_t n_head, int64_t n_head_kv, int64_t hd, ThreadPool *pool) {
    if (n_seqs <= 0 || n_head <= 0 || n_head_kv <= 0) return;
    if (kv_type == Type::F16)
        attention_seqs_of<uint16_t>(seqs, n_seqs, kv_stride, head_stride, n_head, n_head_kv, hd, pool);
    else
        attention_seqs_of<float>(seqs, n_seqs, kv_stride, head_stride, n_head, n_head_kv, hd, pool);
}

}  // namespace mole::cpu
