// The op table: every op of the backend interface (runtime/src/backend/backend.h) on every backend
// and variant this build has, as ggml's test-backend-ops does. Each row of the table is (op,
// shapes, types, tolerance); each result is checked against a double-precision reference written
// here, against the reference backend's result (the CPU with its portable kernels), and against
// itself with another worker count (results must not depend on it).
// Adding a backend: one line in kVariants. Exit code 0 = all passed; the last line is
// "N passed, M failed".
#include <unistd.h>

#include <cstdlib>
#include <memory>

#include "backend/backend.h"
#ifdef MOLE_SIMT
#include "simt.h"
#endif
#include "backend/cpu/kernels.h"
#include "lut_reader.h"
#include "mmap.h"
#include "op_ref.h"
#include "plan.h"

using namespace mole;
using namespace opref;

namespace {

// ---- where the table runs ----------------------------------------------------------------------

struct Variant {
    int32_t device;     // enum mole_device
    const char *name;
    bool (*setup)();    // false: this variant cannot run on this machine
};

bool cpu_at(cpu::Isa isa, bool repack) {
    if (repack)
        unsetenv("MOLE_CPU_REPACK");
    else
        setenv("MOLE_CPU_REPACK", "0", 1);
    return cpu::set_isa(isa) == isa;
}

// The first line is the reference every other result is compared with.
const Variant kVariants[] = {
    {MOLE_DEVICE_CPU, "cpu-portable", [] { return cpu_at(cpu::Isa::Portable, true); }},
    {MOLE_DEVICE_CPU, "cpu-avx2", [] { return cpu_at(cpu::Isa::Avx2, true); }},   // q8x16 with vpmaddubsw
    {MOLE_DEVICE_CPU, "cpu-avx2-rows", [] { return cpu_at(cpu::Isa::Avx2, false); }},
    {MOLE_DEVICE_CPU, "cpu-avxvnni", [] { return cpu_at(cpu::Isa::AvxVnni, true); }},   // q8x16 with ymm vpdpbusd
    {MOLE_DEVICE_CPU, "cpu-avx512", [] { return cpu_at(cpu::Isa::Avx512, true); }},   // Q8_0 repacked to q8x16
    {MOLE_DEVICE_CPU, "cpu-avx512-rows", [] { return cpu_at(cpu::Isa::Avx512, false); }},
    {MOLE_DEVICE_CUDA, "cuda", [] { return cpu_at(cpu::best_isa(), true); }},   // a GPU, or the SIMT executor
};

// ---- one case's inputs, made once and given to every variant ---------------------------------

struct Problem {
    std::vector<std::vector<uint8_t>> bytes;   // weight data, one vector per weight
    std::vector<Weight> w;                     // over bytes; id = index
    std::vector<std::vector<float>> f;         // float inputs
    // the step's plan: entries appended to sequences with seq_len positions already held
    std::vector<int32_t> tokens, seq_ids, seq_len;
    std::vector<int8_t> want;
    int32_t n_vocab = 1;
    std::string lut_path;                      // LUT rows in a file (lut_* ops)
    ~Problem() {
        if (!lut_path.empty()) unlink(lut_path.c_str());
    }

    int add_weight(Type t, const std::vector<float> &vals, int64_t ne0, int64_t ne1, WeightUse use) {
        bytes.push_back(ref_quantize(t, vals.data(), ne1, ne0));
        Weight x;
        x.type = t;
        x.ne0 = ne0;
        x.ne1 = ne1;
        x.nbytes = bytes.back().size();
        x.use = use;
        x.id = int32_t(w.size());
        w.push_back(x);
        for (size_t i = 0; i < w.size(); ++i) w[i].data = bytes[i].data();
        return int(w.size()) - 1;
    }
    const Weight &weight(int i) const { return w[size_t(i)]; }
};

// One backend for one run: its copy of the problem's weights, and memory as the op asks.
struct Dev {
    std::unique_ptr<WeightStore> ws;
    std::unique_ptr<Backend> be;
    Planner planner;

    Status make(const BackendInfo &info, const Problem &p, int n_threads) {
        std::vector<const Weight *> ptrs;
        for (const Weight &x : p.w) ptrs.push_back(&x);
        if (Status s = info.load_weights(ptrs.data(), int32_t(ptrs.size()), nullptr, 0, &ws)) return s;
        BackendParams bp;
        bp.n_threads = n_threads;
        return info.create(*ws, bp, &be);
    }
    float *in(const std::vector<float> &h) {
        void *d = nullptr;
        check(be->alloc(h.size() * 4, "test input", &d) == MOLE_STATUS_OK, "alloc");
        be->upload(d, h.data(), h.size() * 4);
        return static_cast<float *>(d);
    }
    float *out(size_t n) { return in(std::vector<float>(n, NAN)); }
    std::vector<float> get(const float *d, size_t n) {
        std::vector<float> h(n);
        be->download(h.data(), d, n * 4);
        return h;
    }
    const StepPlan &plan(const Problem &p) {
        const int32_t n = int32_t(p.tokens.size()), n_seq = int32_t(p.seq_len.size());
        check(planner.init(n, n_seq, p.n_vocab, true) == MOLE_STATUS_OK, "planner");
        const StepPlan &s = planner.plan(n, p.tokens.data(), p.seq_ids.data(), p.want.empty() ? nullptr : p.want.data(),
                                         p.seq_len.data());
        be->begin_step(s);
        return s;
    }
};

// ---- the table ---------------------------------------------------------------------------------

struct Case;
// The reference of one output: the exact value and how far a result may be from it.
struct Ref {
    std::vector<double> value, bound;
    const char *what = "vs double reference";
};

struct Op {
    const char *name;
    void (*make)(const Case &, Rng &, Problem &);
    std::vector<float> (*run)(Dev &, const Case &, const Problem &);   // the outputs, downloaded
    std::vector<Ref> (*ref)(const Case &, const Problem &);            // first: the main one
};

struct Case {
    const Op *op;
    Type type = Type::F32;          // weight / LUT type; attention: the KV cache's
    int64_t n = 1, k = 1, S = 1;    // matmul: W [k, n] (n rows of k), X [S, k]; else S rows of n
    int64_t H = 1, Hkv = 1, hd = 2; // attention, rope
    int64_t N = 1, L = 1, il = 0;   // LUT: N experts, L layers, mix of layer il (d = k)
    int32_t n_seq = 1;
    int64_t pos0 = 0;               // positions each sequence holds before the step
    float scale = 1.0f;             // input magnitude
    double tol = 1e-5;
    std::string label() const {
        return fmt("%s %s n=%lld k=%lld S=%lld H=%lld/%lld hd=%lld N=%lld L=%lld il=%lld seqs=%d pos0=%lld", op->name,
                   type_name(type), (long long)n, (long long)k, (long long)S, (long long)H, (long long)Hkv,
                   (long long)hd, (long long)N, (long long)L, (long long)il, n_seq, (long long)pos0);
    }
};

// Sequence i of n_seq holds pos0 + i positions; row r of S goes to sequence r % n_seq.
void make_plan(const Case &c, Rng &rng, Problem &p, int32_t n_vocab) {
    p.n_vocab = n_vocab;
    p.seq_len.assign(size_t(c.n_seq), 0);
    for (int32_t i = 0; i < c.n_seq; ++i) p.seq_len[size_t(i)] = int32_t(c.pos0 + i);
    for (int64_t r = 0; r < c.S; ++r) {
        p.tokens.push_back(int32_t(rng.next() % uint64_t(n_vocab)));
        p.seq_ids.push_back(int32_t(r % c.n_seq));
    }
}

// The plan's rows in grouped order (as Planner lays them out): row -> (entry, position).
struct Rows {
    std::vector<int64_t> entry, pos;
};
Rows plan_rows(const Problem &p) {
    Rows rows;
    std::vector<int32_t> len(p.seq_len);
    for (size_t sq = 0; sq < p.seq_len.size(); ++sq)
        for (size_t i = 0; i < p.tokens.size(); ++i)
            if (p.seq_ids[i] == int32_t(sq)) {
                rows.entry.push_back(int64_t(i));
                rows.pos.push_back(len[sq]++);
            }
    return rows;
}

// ---- embed: x[S, d] = E[ids] -------------------------------------------------------------------

void embed_make(const Case &c, Rng &rng, Problem &p) {
    const int64_t V = 50;
    p.add_weight(c.type, rng.vec(size_t(V * c.k), -3.0f, 3.0f), c.k, V, WeightUse::Rows);
    make_plan(c, rng, p, int32_t(V));
}
std::vector<float> embed_run(Dev &dv, const Case &c, const Problem &p) {
    dv.plan(p);
    float *x = dv.out(size_t(c.S * c.k));
    dv.be->embed(p.weight(0), x);
    return dv.get(x, size_t(c.S * c.k));
}
std::vector<Ref> embed_ref(const Case &c, const Problem &p) {
    Ref r;
    const Rows rows = plan_rows(p);
    const Weight &e = p.weight(0);
    for (int64_t s = 0; s < c.S; ++s) {
        const auto v =
            ref_dequantize(c.type, e.data + uint64_t(p.tokens[size_t(rows.entry[size_t(s)])]) * e.row_bytes(), c.k);
        for (double x : v) {
            r.value.push_back(double(float(x)));   // exact: the f32 value of the decoded element
            r.bound.push_back(0.0);
        }
    }
    return {r};
}
const Op kEmbed{"embed", embed_make, embed_run, embed_ref};

// ---- rmsnorm -------------------------------------------------------------------------------------

void rmsnorm_make(const Case &c, Rng &rng, Problem &p) {
    p.f.push_back(rng.vec(size_t(c.S * c.n), -4.0f, 4.0f));
    p.add_weight(Type::F32, rng.vec(size_t(c.n), 0.5f, 1.5f), c.n, 1, WeightUse::Vector);
}
std::vector<float> rmsnorm_run(Dev &dv, const Case &c, const Problem &p) {
    float *x = dv.in(p.f[0]), *o = dv.out(p.f[0].size());
    dv.be->rmsnorm(x, p.weight(0), c.S, 1e-5f, o);
    return dv.get(o, p.f[0].size());
}
std::vector<Ref> rmsnorm_ref(const Case &c, const Problem &p) {
    Ref r;
    const float *x = p.f[0].data(), *w = reinterpret_cast<const float *>(p.weight(0).data);
    for (int64_t s = 0; s < c.S; ++s) {
        double ss = 0;
        for (int64_t i = 0; i < c.n; ++i) ss += double(x[s * c.n + i]) * x[s * c.n + i];
        const double rs = 1.0 / std::sqrt(ss / double(c.n) + 1e-5);
        for (int64_t i = 0; i < c.n; ++i) {
            r.value.push_back(double(w[i]) * x[s * c.n + i] * rs);
            r.bound.push_back(c.tol * std::fabs(r.value.back()) + 1e-30);
        }
    }
    return {r};
}
const Op kRmsnorm{"rmsnorm", rmsnorm_make, rmsnorm_run, rmsnorm_ref};

// ---- matmul: Y[S, n] = X[S, k] W^T (one output), and the output head -----------------------------

void matmul_make(const Case &c, Rng &rng, Problem &p) {
    p.add_weight(c.type, rng.vec(size_t(c.n * c.k), -1.0f, 1.0f), c.k, c.n, WeightUse::Matrix);
    p.f.push_back(rng.vec(size_t(c.S * c.k), -2.0f, 2.0f));
}
std::vector<float> matmul_run(Dev &dv, const Case &c, const Problem &p) {
    float *X = dv.in(p.f[0]), *Y = dv.out(size_t(c.S * c.n));
    const MatOut o{&p.weight(0), Y};
    dv.be->matmul(&o, 1, X, c.S);
    return dv.get(Y, size_t(c.S * c.n));
}
std::vector<float> logits_run(Dev &dv, const Case &c, const Problem &p) {
    float *X = dv.in(p.f[0]);
    std::vector<float> Y(size_t(c.S * c.n), NAN);   // host memory
    dv.be->logits(p.weight(0), X, c.S, Y.data());
    check(dv.be->synchronize() == MOLE_STATUS_OK, "synchronize after logits");
    return Y;
}

// Y[S, n] of weight wi over X: tight (dequantized W times the q8-quantized X the quantized types
// multiply, 1e-5 of sum |w x|) and, for quantized types, loose (exact X: each activation is off
// by at most half a quantization step, so |error| <= sum |w| d/2 + the float term).
void matmul_refs(const Weight &W, const float *X, int64_t S, double tol, Ref &tight, Ref &loose) {
    const int64_t n = W.ne1, k = W.ne0;
    const bool quant = is_quantized(W.type);
    std::vector<std::vector<double>> w(static_cast<size_t>(n));
    for (int64_t r = 0; r < n; ++r) w[size_t(r)] = ref_dequantize(W.type, W.data + uint64_t(r) * W.row_bytes(), k);
    for (int64_t s = 0; s < S; ++s) {
        const float *x = X + s * k;
        std::vector<int8_t> xq;
        std::vector<float> xd;
        if (quant) ref_quantize_act(x, k, xq, xd);
        for (int64_t r = 0; r < n; ++r) {
            double exact = 0, mag = 0, q = 0, qmag = 0, step = 0;
            for (int64_t i = 0; i < k; ++i) {
                const double wi = w[size_t(r)][size_t(i)];
                exact += wi * x[i];
                mag += std::fabs(wi * x[i]);
                if (!quant) continue;
                const double xv = double(xq[size_t(i)]) * xd[size_t(i / 32)];
                q += wi * xv;
                qmag += std::fabs(wi * xv);
                step += std::fabs(wi) * 0.5 * xd[size_t(i / 32)];
            }
            tight.value.push_back(quant ? q : exact);
            tight.bound.push_back(tol * (quant ? qmag : mag) + 1e-30);
            if (!quant) continue;
            loose.value.push_back(exact);
            loose.bound.push_back(step * 1.0001 + tol * mag + 1e-30);
        }
    }
}
std::vector<Ref> matmul_ref(const Case &c, const Problem &p) {
    Ref tight, loose;
    loose.what = "vs f32 activations, within half a quantization step";
    matmul_refs(p.weight(0), p.f[0].data(), c.S, c.tol, tight, loose);
    if (loose.value.empty()) return {tight};
    return {tight, loose};
}
const Op kMatmul{"matmul", matmul_make, matmul_run, matmul_ref};
const Op kLogits{"logits", matmul_make, logits_run, matmul_ref};

// A Q8_0 row of -128 and 127 (legal in a file, never made by the quantizer): 0.5 * 32 * 1.
void extreme_make(const Case &c, Rng &, Problem &p) {
    p.add_weight(Type::Q8_0, std::vector<float>(size_t(c.k), 0.0f), c.k, 1, WeightUse::Matrix);
    uint8_t *b = p.bytes[0].data();
    for (int64_t blk = 0; blk < c.k / 32; ++blk) {
        const uint16_t d = f32_to_f16(0.5f);
        std::memcpy(b + blk * 34, &d, 2);
        for (int j = 0; j < 32; ++j) b[blk * 34 + 2 + j] = uint8_t(int8_t(j % 2 ? -128 : 127));
    }
    p.f.push_back(std::vector<float>(size_t(c.k), -1.0f));
}
std::vector<Ref> extreme_ref(const Case &c, const Problem &p) {
    Ref r;
    r.value.push_back(0.5 * double(c.k) / 2.0);   // k/2 pairs of (127 - 128) * -1, times d
    r.bound.push_back(1e-4);
    return {r};
}
const Op kMatmulExtreme{"matmul_q8_extreme", extreme_make, matmul_run, extreme_ref};

// Quantized weights, X rows 0 and 1 holding an Inf and a NaN (a model whose activations
// overflow): those rows' outputs are NaN on every backend (their q8 blocks are d = NaN), the other
// rows are exact as usual. fuzz_model found the Inf row undefined in the CPU's q8 quantizer.
void nonfinite_make(const Case &c, Rng &rng, Problem &p) {
    matmul_make(c, rng, p);
    p.f[0][5] = INFINITY;
    p.f[0][size_t(c.k + 40)] = NAN;
}
std::vector<Ref> nonfinite_ref(const Case &c, const Problem &p) {
    Ref tight, loose;
    matmul_refs(p.weight(0), p.f[0].data() + 2 * c.k, c.S - 2, c.tol, tight, loose);
    Ref r;
    r.value.assign(size_t(2 * c.n), NAN);   // worst(): a NaN reference wants NaN
    r.bound.assign(size_t(2 * c.n), 0.0);
    r.value.insert(r.value.end(), tight.value.begin(), tight.value.end());
    r.bound.insert(r.bound.end(), tight.bound.begin(), tight.bound.end());
    return {r};
}
const Op kMatmulNonFinite{"matmul_nonfinite_rows", nonfinite_make, matmul_run, nonfinite_ref};

// Four weights of mixed types in one call, k shared: the same bits as four separate calls.
const Type kGroupTypes[4] = {Type::Q8_0, Type::F32, Type::Q4_0, Type::F16};
const int64_t kGroupN[4] = {37, 4, 130, 16};
void group_make(const Case &c, Rng &rng, Problem &p) {
    for (int i = 0; i < 4; ++i)
        p.add_weight(kGroupTypes[i], rng.vec(size_t(kGroupN[i] * c.k), -1.0f, 1.0f), c.k, kGroupN[i],
                     WeightUse::Matrix);
    p.f.push_back(rng.vec(size_t(c.S * c.k), -2.0f, 2.0f));
}
std::vector<float> group_run(Dev &dv, const Case &c, const Problem &p) {
    float *X = dv.in(p.f[0]);
    MatOut outs[4], one[4];
    for (int i = 0; i < 4; ++i) {
        outs[i] = MatOut{&p.weight(i), dv.out(size_t(c.S * kGroupN[i]))};
        one[i] = MatOut{&p.weight(i), dv.out(size_t(c.S * kGroupN[i]))};
    }
    dv.be->matmul(outs, 4, X, c.S);
    for (int i = 0; i < 4; ++i) dv.be->matmul(&one[i], 1, X, c.S);
    std::vector<float> all;
    bool same = true;
    for (int i = 0; i < 4; ++i) {
        const auto a = dv.get(outs[i].Y, size_t(c.S * kGroupN[i])), b = dv.get(one[i].Y, size_t(c.S * kGroupN[i]));
        same &= std::memcmp(a.data(), b.data(), a.size() * 4) == 0;
        all.insert(all.end(), a.begin(), a.end());
    }
    check(same, fmt("%s [%s]: grouped outputs equal separate calls", c.label().c_str(), dv.be->name()));
    return all;
}
std::vector<Ref> group_ref(const Case &c, const Problem &p) {
    Ref tight, loose;
    for (int i = 0; i < 4; ++i) matmul_refs(p.weight(i), p.f[0].data(), c.S, c.tol, tight, loose);
    return {tight};
}
const Op kMatmulGroup{"matmul_group", group_make, group_run, group_ref};

// ---- rope: rotate-half at the plan's positions ---------------------------------------------------

// Two calls in one step, as a layer's Q and K: x [S, H, hd], then y [S, 1, hd] (a step computes
// its angles once); the outputs are x then y.
void rope_make(const Case &c, Rng &rng, Problem &p) {
    make_plan(c, rng, p, 8);
    if (c.n_seq == c.S) p.seq_len = {0, 1, 17, 2047, 65000};   // one row per sequence: these are the positions
    p.f.push_back(rng.vec(size_t(c.S * c.H * c.hd)));
    p.f.push_back(rng.vec(size_t(c.S * c.hd)));
}
std::vector<float> rope_run(Dev &dv, const Case &c, const Problem &p) {
    dv.plan(p);
    float *x = dv.in(p.f[0]), *y = dv.in(p.f[1]);
    dv.be->rope(x, c.H, c.hd, 10000.0f, c.scale);
    dv.be->rope(y, 1, c.hd, 10000.0f, c.scale);
    std::vector<float> out = dv.get(x, p.f[0].size()), yo = dv.get(y, p.f[1].size());
    out.insert(out.end(), yo.begin(), yo.end());
    return out;
}
std::vector<Ref> rope_ref(const Case &c, const Problem &p) {
    Ref r;
    const Rows rows = plan_rows(p);
    const int64_t half = c.hd / 2;
    for (int t = 0; t < 2; ++t) {
        const std::vector<float> &x = p.f[size_t(t)];
        const int64_t H = t == 0 ? c.H : 1;
        const size_t base = r.value.size();
        r.value.resize(base + x.size());
        r.bound.resize(base + x.size());
        for (int64_t s = 0; s < c.S; ++s)
            for (int64_t h = 0; h < H; ++h)
                for (int64_t i = 0; i < half; ++i) {
                    const size_t o = size_t((s * H + h) * c.hd);
                    const double ang =
                        double(rows.pos[size_t(s)]) * c.scale * std::pow(10000.0, -2.0 * double(i) / double(c.hd));
                    const double a = x[o + size_t(i)], b = x[o + size_t(i + half)];
                    r.value[base + o + size_t(i)] = a * std::cos(ang) - b * std::sin(ang);
                    r.value[base + o + size_t(i + half)] = a * std::sin(ang) + b * std::cos(ang);
                    r.bound[base + o + size_t(i)] = r.bound[base + o + size_t(i + half)] =
                        c.tol * (std::fabs(a) + std::fabs(b)) + 1e-30;
                }
    }
    return {r};
}
const Op kRope{"rope", rope_make, rope_run, rope_ref};

// ---- attention with KV append --------------------------------------------------------------------

// c.type: the KV cache's element type (F32 or F16). f[0] q [S, H, hd], f[1] k and f[2] v [S, kvd]
// of the new rows; f[3], f[4] the cached K, V [n_seq, n_ctx, kvd] (positions before the step; the
// rest is overwritten), f16 values when the cache is; f[5], f[6] the new rows as the cache keeps them.
// The backend's cache is head-major (backend.h): [n_seq, L, Hkv, n_ctx, hd].
int64_t attn_ctx(const Case &c) { return c.pos0 + c.n_seq + c.S; }
void attn_make(const Case &c, Rng &rng, Problem &p) {
    make_plan(c, rng, p, 8);
    const int64_t kvd = c.Hkv * c.hd, T = attn_ctx(c);
    p.f.push_back(rng.vec(size_t(c.S * c.H * c.hd), -c.scale, c.scale));
    p.f.push_back(rng.vec(size_t(c.S * kvd)));
    p.f.push_back(rng.vec(size_t(c.S * kvd), -2.0f, 2.0f));
    p.f.push_back(rng.vec(size_t(c.n_seq * T * kvd)));
    p.f.push_back(rng.vec(size_t(c.n_seq * T * kvd), -2.0f, 2.0f));
    p.f.push_back(p.f[1]);
    p.f.push_back(p.f[2]);
    if (c.type == Type::F16)
        for (int i : {3, 4, 5, 6})
            for (float &x : p.f[size_t(i)]) x = f16_to_f32(f32_to_f16(x));
}
// The cache's bytes of floats x (f32, or rounded to f16).
std::vector<uint8_t> kv_bytes(Type t, const std::vector<float> &x) {
    std::vector<uint8_t> b(x.size() * (t == Type::F16 ? 2 : 4));
    if (t == Type::F16)
        for (size_t i = 0; i < x.size(); ++i) reinterpret_cast<uint16_t *>(b.data())[i] = f32_to_f16(x[i]);
    else
        std::memcpy(b.data(), x.data(), b.size());
    return b;
}
std::vector<float> attn_run(Dev &dv, const Case &c, const Problem &p) {
    dv.plan(p);
    const int64_t kvd = c.Hkv * c.hd, T = attn_ctx(c), layer = 1;
    KvCache kv;
    kv.n_ctx = int32_t(T);
    kv.n_seq = c.n_seq;
    kv.n_layer = 2;
    kv.kv_dim = kvd;
    kv.type = c.type;
    // the cache holds layer 0 (never touched) and layer 1 (the step's) of each sequence;
    // at(sq, t, e): element e of position t's [kvd] in it
    auto at = [&](int64_t sq, int64_t t, int64_t e) {
        return size_t((((sq * 2 + layer) * c.Hkv + e / c.hd) * T + t) * c.hd + e % c.hd);
    };
    std::vector<float> kc(size_t(c.n_seq * 2 * T * kvd), 7.0f), vc(kc.size(), 7.0f);
    for (int32_t sq = 0; sq < c.n_seq; ++sq)
        for (int64_t t = 0; t < T; ++t)
            for (int64_t e = 0; e < kvd; ++e) {
                kc[at(sq, t, e)] = p.f[3][size_t((sq * T + t) * kvd + e)];
                vc[at(sq, t, e)] = p.f[4][size_t((sq * T + t) * kvd + e)];
            }
    std::vector<uint8_t> kb = kv_bytes(c.type, kc), vb = kv_bytes(c.type, vc);
    check(
        dv.be->alloc(kb.size(), "K", &kv.k) == MOLE_STATUS_OK && dv.be->alloc(vb.size(), "V", &kv.v) == MOLE_STATUS_OK,
        "alloc");
    dv.be->upload(kv.k, kb.data(), kb.size());
    dv.be->upload(kv.v, vb.data(), vb.size());
    float *q = dv.in(p.f[0]), *k = dv.in(p.f[1]), *v = dv.in(p.f[2]), *out = dv.out(size_t(c.S * c.H * c.hd));
    dv.be->attention(kv, int32_t(layer), q, k, v, c.H, c.Hkv, c.hd, out);
    // the new rows' K and V went to their positions (rounded to the nearest f16 in an f16 cache),
    // and nothing else of the cache changed
    std::vector<uint8_t> kg(kb.size()), vg(vb.size());
    dv.be->download(kg.data(), kv.k, kg.size());
    dv.be->download(vg.data(), kv.v, vg.size());
    const Rows rows = plan_rows(p);
    for (int64_t s = 0; s < c.S; ++s) {
        const int64_t sq = p.seq_ids[size_t(rows.entry[size_t(s)])], t = rows.pos[size_t(s)];
        for (int64_t e = 0; e < kvd; ++e) {
            kc[at(sq, t, e)] = p.f[5][size_t(s * kvd + e)];
            vc[at(sq, t, e)] = p.f[6][size_t(s * kvd + e)];
        }
    }
    check(kg == kv_bytes(c.type, kc) && vg == kv_bytes(c.type, vc),
          fmt("%s [%s]: K/V appended at the planned positions, the rest unchanged", c.label().c_str(), dv.be->name()));
    return dv.get(out, size_t(c.S * c.H * c.hd));
}
std::vector<Ref> attn_ref(const Case &c, const Problem &p) {
    Ref r;
    const Rows rows = plan_rows(p);
    const int64_t kvd = c.Hkv * c.hd, T = attn_ctx(c);
    for (int64_t s = 0; s < c.S; ++s) {
        const int64_t sq = p.seq_ids[size_t(rows.entry[size_t(s)])], pos = rows.pos[size_t(s)];
        // the sequence's keys: cached ones before the step, then this step's rows of the sequence
        std::vector<const float *> keys(size_t(pos + 1)), vals(size_t(pos + 1));
        for (int64_t t = 0; t <= pos; ++t) {
            keys[size_t(t)] = &p.f[3][size_t((sq * T + t) * kvd)];
            vals[size_t(t)] = &p.f[4][size_t((sq * T + t) * kvd)];
        }
        for (int64_t s2 = 0; s2 < c.S; ++s2)
            if (p.seq_ids[size_t(rows.entry[size_t(s2)])] == sq && rows.pos[size_t(s2)] <= pos) {
                keys[size_t(rows.pos[size_t(s2)])] = &p.f[5][size_t(s2 * kvd)];
                vals[size_t(rows.pos[size_t(s2)])] = &p.f[6][size_t(s2 * kvd)];
            }
        for (int64_t h = 0; h < c.H; ++h) {
            const int64_t kvh = h / (c.H / c.Hkv);
            const float *qv = &p.f[0][size_t((s * c.H + h) * c.hd)];
            std::vector<double> sc(size_t(pos + 1));
            double mx = -1e300, sum = 0, vmax = 0;
            for (int64_t t = 0; t <= pos; ++t) {
                double dot = 0;
                for (int64_t i = 0; i < c.hd; ++i) dot += double(qv[i]) * keys[size_t(t)][kvh * c.hd + i];
                sc[size_t(t)] = dot / std::sqrt(double(c.hd));
                mx = std::max(mx, sc[size_t(t)]);
            }
            for (auto &e : sc) sum += (e = std::exp(e - mx));
            for (int64_t i = 0; i < c.hd; ++i) {
                double ref = 0;
                for (int64_t t = 0; t <= pos; ++t) {
                    ref += sc[size_t(t)] / sum * vals[size_t(t)][kvh * c.hd + i];
                    vmax = std::max(vmax, std::fabs(double(vals[size_t(t)][kvh * c.hd + i])));
                }
                // a convex combination of v: tolerance relative to max |v|
                r.value.push_back(ref);
                r.bound.push_back(c.tol * vmax + 1e-30);
            }
        }
    }
    return {r};
}
const Op kAttention{"attention", attn_make, attn_run, attn_ref};

// ---- softmax, gelu, add, gather --------------------------------------------------------------------

void softmax_make(const Case &c, Rng &rng, Problem &p) {
    p.f.push_back(rng.vec(size_t(c.S * c.n), -10.0f, 10.0f));
    for (int64_t i = 0; i < c.n && c.S > 1; ++i) p.f[0][size_t(c.n + i)] += 1000.0f;   // row 1: stability
}
std::vector<float> softmax_run(Dev &dv, const Case &c, const Problem &p) {
    float *x = dv.in(p.f[0]);
    dv.be->softmax(x, c.S, c.n);
    return dv.get(x, p.f[0].size());
}
std::vector<Ref> softmax_ref(const Case &c, const Problem &p) {
    Ref r;
    const float *x = p.f[0].data();
    for (int64_t s = 0; s < c.S; ++s) {
        double mx = -1e300, sum = 0;
        for (int64_t i = 0; i < c.n; ++i) mx = std::max(mx, double(x[s * c.n + i]));
        for (int64_t i = 0; i < c.n; ++i) sum += std::exp(double(x[s * c.n + i]) - mx);
        for (int64_t i = 0; i < c.n; ++i) {
            r.value.push_back(std::exp(double(x[s * c.n + i]) - mx) / sum);
            r.bound.push_back(c.tol * r.value.back() + 1e-30);
        }
    }
    return {r};
}
const Op kSoftmax{"softmax", softmax_make, softmax_run, softmax_ref};

void gelu_make(const Case &c, Rng &rng, Problem &p) {
    p.f.push_back(rng.vec(size_t(c.n), -c.scale, c.scale));
    const float extra[] = {0.0f, -0.0f, 1e-30f, -1e-30f, 1.0f, -1.0f, -5.0f, -8.5f, 30.0f, -30.0f, 3e38f};
    p.f[0].insert(p.f[0].end(), std::begin(extra), std::end(extra));
}
std::vector<float> gelu_run(Dev &dv, const Case &, const Problem &p) {
    float *x = dv.in(p.f[0]);
    dv.be->gelu(x, int64_t(p.f[0].size()));
    return dv.get(x, p.f[0].size());
}
std::vector<Ref> gelu_ref(const Case &c, const Problem &p) {
    Ref r;
    for (float x : p.f[0]) {
        const double v = x;
        r.value.push_back(0.5 * v * std::erfc(-v / std::sqrt(2.0)));
        r.bound.push_back(c.tol * std::fabs(r.value.back()) + 1e-38);
    }
    return {r};
}
const Op kGelu{"gelu", gelu_make, gelu_run, gelu_ref};

void add_make(const Case &c, Rng &rng, Problem &p) {
    p.f.push_back(rng.vec(size_t(c.n), -5.0f, 5.0f));
    p.f.push_back(rng.vec(size_t(c.n), -5.0f, 5.0f));
}
std::vector<float> add_run(Dev &dv, const Case &c, const Problem &p) {
    float *x = dv.in(p.f[0]), *y = dv.in(p.f[1]);
    dv.be->add(x, y, c.n);
    return dv.get(x, size_t(c.n));
}
std::vector<Ref> add_ref(const Case &c, const Problem &p) {
    Ref r;
    for (int64_t i = 0; i < c.n; ++i) {
        r.value.push_back(double(p.f[0][size_t(i)] + p.f[1][size_t(i)]));   // one f32 rounding, exactly
        r.bound.push_back(0.0);
    }
    return {r};
}
const Op kAdd{"add", add_make, add_run, add_ref};

void gather_make(const Case &c, Rng &rng, Problem &p) {
    make_plan(c, rng, p, 8);
    for (int64_t i = 0; i < c.S; ++i) p.want.push_back(int8_t(i % 3 != 1));
    p.f.push_back(rng.vec(size_t(c.S * c.n)));
}
int64_t n_wanted(const Problem &p) { return int64_t(std::count(p.want.begin(), p.want.end(), int8_t(1))); }
std::vector<float> gather_run(Dev &dv, const Case &c, const Problem &p) {
    dv.plan(p);
    float *x = dv.in(p.f[0]), *o = dv.out(size_t(n_wanted(p) * c.n));
    dv.be->gather_out_rows(x, c.n, o);
    return dv.get(o, size_t(n_wanted(p) * c.n));
}
std::vector<Ref> gather_ref(const Case &c, const Problem &p) {
    Ref r;
    const Rows rows = plan_rows(p);
    for (size_t e = 0; e < p.tokens.size(); ++e) {   // wanted entries in entry order -> their rows
        if (!p.want[e]) continue;
        const int64_t row = std::find(rows.entry.begin(), rows.entry.end(), int64_t(e)) - rows.entry.begin();
        for (int64_t i = 0; i < c.n; ++i) {
            r.value.push_back(p.f[0][size_t(row * c.n + i)]);
            r.bound.push_back(0.0);
        }
    }
    return {r};
}
const Op kGather{"gather_out_rows", gather_make, gather_run, gather_ref};

// ---- LUT: slot fill and mix ---------------------------------------------------------------------

// A LUT of V rows [L, N, d] in a file; f[0] the gates [S, N]; f[1] x [S, d]. Of the step's
// distinct ids, the even ones are read from slots (filled whole, or one layer slice at a time)
// and the odd ones in place from the mapping.
constexpr int32_t kLutVocab = 12;   // (c.n, where above 1: a larger one)
void lut_make(const Case &c, Rng &rng, Problem &p) {
    const int32_t V = c.n > 1 ? int32_t(c.n) : kLutVocab;
    make_plan(c, rng, p, V);
    const int64_t row = c.L * c.N * c.k;
    const auto vals = rng.vec(size_t(V * row), -3.0f, 3.0f);
    // rows padded to whole blocks, as the converter writes them (L*N*d is a block multiple there)
    const auto bytes = ref_quantize(c.type, vals.data(), V, row);
    char path[] = "/tmp/mole-test-lut-XXXXXX";
    const int fd = mkstemp(path);
    check(fd >= 0 && write(fd, bytes.data(), bytes.size()) == ssize_t(bytes.size()), "write the LUT file");
    close(fd);
    p.lut_path = path;
    p.f.push_back(rng.vec(size_t(c.S * c.N), 0.0f, 1.0f));
    p.f.push_back(rng.vec(size_t(c.S * c.k)));
}
// Two steps over the same plan, as the LUT path (lut.h) drives a backend of its feed: the first
// fills the rows (with a slot: some whole at the start, others a slice per layer; without one:
// mixed in place, or staged when the feed is by layer); the second finds the slotted rows as hits,
// so the slots' bytes are checked too. Returns x after the first step's mix, then after the second.
std::vector<float> lut_run(Dev &dv, const Case &c, const Problem &p) {
    std::unique_ptr<MappedFile> file;
    check(MappedFile::open(p.lut_path, &file) == MOLE_STATUS_OK, "map the LUT file");
    const uint64_t rb = uint64_t(row_bytes(c.type, c.L * c.N * c.k));
    LutReader reader;
    reader.init(*file, 0, rb);
    const LutFeed feed = dv.be->lut_feed();
    const StepPlan &plan = dv.plan(p);
    LutShape shape;
    shape.n_slots = plan.n_uniq;
    shape.row_bytes = rb;
    shape.max_rows = plan.n_uniq;
    shape.n_layer = int32_t(c.L);
    for (int32_t il = 0; il < c.L; ++il)
        shape.slice_bytes = std::max(shape.slice_bytes, lut_layer_slice(c.type, il, c.N, c.k).bytes);
    check(dv.be->alloc_lut(shape) == MOLE_STATUS_OK, "alloc_lut");
    std::vector<LutRow> rows(size_t(plan.n_uniq)), hits(size_t(plan.n_uniq));
    std::vector<LutFill> whole, sliced, again;
    for (int32_t u = 0; u < plan.n_uniq; ++u) {
        const uint64_t src = reader.row_offset(plan.uniq[u]);
        const int32_t slot = u % 2 ? -1 : plan.n_uniq - 1 - u;   // slots in another order than the ids
        rows[size_t(u)] = LutRow{slot, slot < 0 ? reader.mapped(src) : nullptr};
        hits[size_t(u)] = rows[size_t(u)];
        const LutFill f{slot, src, u};
        if (slot < 0) {
            if (feed.by_layer) sliced.push_back(f), again.push_back(f);
        } else {
            (u % 4 || feed.by_layer ? sliced : whole).push_back(f);
        }
    }
    const BlockRange mixed = lut_layer_slice(c.type, int32_t(c.il), c.N, c.k);
    float *g = dv.in(p.f[0]), *x = dv.in(p.f[1]);
    dv.be->lut_fill(reader, whole.data(), int32_t(whole.size()), -1, BlockRange{0, rb, 0});
    for (int32_t il = 0; il < c.L; ++il)   // every layer's slice, as a step fills them
        dv.be->lut_fill(reader, sliced.data(), int32_t(sliced.size()), il, lut_layer_slice(c.type, il, c.N, c.k));
    dv.be->lut_mix(int32_t(c.il), rows.data(), c.type, mixed, g, c.N, c.k, x);
    std::vector<float> out = dv.get(x, size_t(c.S * c.k));
    dv.plan(p);   // the next step: rows with a slot are hits now
    float *x2 = dv.in(p.f[1]);
    for (int32_t il = 0; il < c.L; ++il)
        dv.be->lut_fill(reader, again.data(), int32_t(again.size()), il, lut_layer_slice(c.type, il, c.N, c.k));
    dv.be->lut_mix(int32_t(c.il), hits.data(), c.type, mixed, g, c.N, c.k, x2);
    const std::vector<float> second = dv.get(x2, size_t(c.S * c.k));
    out.insert(out.end(), second.begin(), second.end());
    return out;
}
std::vector<Ref> lut_ref(const Case &c, const Problem &p) {
    Ref r;
    const Rows rows = plan_rows(p);
    const int64_t row = c.L * c.N * c.k;
    const uint64_t rb = uint64_t(row_bytes(c.type, row));
    std::unique_ptr<MappedFile> file;
    MappedFile::open(p.lut_path, &file);
    for (int64_t s = 0; s < c.S; ++s) {
        const int32_t tok = p.tokens[size_t(rows.entry[size_t(s)])];
        const auto v = ref_dequantize(c.type, file->data() + uint64_t(tok) * rb, row);
        for (int64_t i = 0; i < c.k; ++i) {
            double ref = p.f[1][size_t(s * c.k + i)], mag = std::fabs(ref);
            for (int64_t j = 0; j < c.N; ++j) {
                const double t = double(p.f[0][size_t(s * c.N + j)]) * v[size_t((c.il * c.N + j) * c.k + i)];
                ref += t;
                mag += std::fabs(t);
            }
            r.value.push_back(ref);
            r.bound.push_back(c.tol * mag + 1e-30);
        }
    }
    const size_t n = r.value.size();   // the second step mixes the same rows into the same x
    for (size_t i = 0; i < n; ++i) r.value.push_back(r.value[i]), r.bound.push_back(r.bound[i]);
    return {r};
}
const Op kLut{"lut_fill+lut_mix", lut_make, lut_run, lut_ref};

// The rows of the table, family by family.
std::vector<Case> table() {
    std::vector<Case> t;
    const Type all[] = {Type::F32, Type::F16, Type::BF16, Type::Q8_0, Type::Q4_0};
    for (Type ty : {Type::F32, Type::F16, Type::BF16, Type::Q8_0})
        for (int64_t d : {64, 96}) {
            Case c{&kEmbed, ty};
            c.k = d, c.S = 7, c.n_seq = 2, c.tol = 0;
            t.push_back(c);
        }
    for (int64_t d : {1, 7, 64, 771}) {
        Case c{&kRmsnorm};
        c.n = d, c.S = 3;
        t.push_back(c);
    }
    for (int64_t S : {64, 70}) {   // a prompt's rows: split over the workers in chunks
        Case c{&kRmsnorm};
        c.n = 96, c.S = S;
        t.push_back(c);
    }
    struct Shape {
        int64_t n, k;
    };
    const std::vector<Shape> quant_shapes = {{1, 32}, {7, 64}, {37, 96}, {130, 256}, {48, 768}};
    const std::vector<Shape> float_shapes = {{1, 1}, {5, 13}, {37, 37}, {19, 100}, {130, 256}};
    for (Type ty : all)
        for (const Shape &sh : is_quantized(ty) ? quant_shapes : float_shapes)
            for (int64_t S : {1, 3, 7, 17, 64, 70, 300}) {
                if (S == 300 && sh.n > 48) continue;   // S = 300 on the smaller shapes (tile edges in both directions)
                Case c{&kMatmul, ty};
                c.n = sh.n, c.k = sh.k, c.S = S;
                t.push_back(c);
            }
    for (Type ty : all)   // every row count of the matrix-vector kernels (S <= 8)
        for (int64_t S : {2, 4, 5, 6, 8}) {
            Case c{&kMatmul, ty};
            c.n = 37, c.k = is_quantized(ty) ? 96 : 100, c.S = S;
            t.push_back(c);
        }
    for (int64_t S : {1, 5, 70}) {
        Case c{&kMatmulGroup};
        c.k = 96, c.S = S;
        t.push_back(c);
    }
    {
        Case c{&kMatmulExtreme, Type::Q8_0};
        c.n = 1, c.k = 64, c.S = 1;
        t.push_back(c);
    }
    for (Type ty : {Type::Q8_0, Type::Q4_0})   // (float types give +-Inf for the Inf row)
        for (int64_t S : {3, 17}) {   // the matrix-vector kernels and the prompt tiles
            Case c{&kMatmulNonFinite, ty};
            c.n = 37, c.k = is_quantized(ty) ? 96 : 100, c.S = S;
            t.push_back(c);
        }
    for (Type ty : {Type::Q8_0, Type::F16})
        for (int64_t S : {1, 4}) {
            Case c{&kLogits, ty};
            c.n = 130, c.k = 64, c.S = S;
            t.push_back(c);
        }
    for (int64_t hd : {2, 6, 64, 128})
        for (float fs : {1.0f, 0.25f}) {
            Case c{&kRope};
            c.S = 5, c.n_seq = 5, c.H = 3, c.hd = hd, c.scale = fs;
            t.push_back(c);
        }
    for (int64_t hd : {6, 64}) {   // a prompt's rows of 3 sequences (positions 100 ..): split over the workers
        Case c{&kRope};
        c.S = 70, c.n_seq = 3, c.pos0 = 100, c.H = 2, c.hd = hd;
        t.push_back(c);
    }
    for (Type kv : {Type::F32, Type::F16})   // the KV cache's element type
        for (int64_t n_kv : {4, 2, 1})   // GQA ratios 1, 2, 4 with 4 query heads
            for (int64_t hd : {8, 13, 64, 80})
                for (int64_t S : {1, 3, 17, 40})   // 40: blocks of 16, 16 and 8 queries
                    for (int64_t pos0 : {0, 5}) {
                        if (kv == Type::F16 && (n_kv == 2 || S == 3)) continue;
                        Case c{&kAttention};
                        c.type = kv;
                        c.H = 4, c.Hkv = n_kv, c.hd = hd, c.S = S, c.pos0 = pos0;
                        c.scale = hd == 13 ? 30.0f : 1.0f;   // large scores carry the q.k sums' rounding
                        c.tol = hd == 13 ? 1e-4 : 1e-5;
                        t.push_back(c);
                    }
    for (Type kv : {Type::F32, Type::F16})
        for (int64_t S : {1, 7}) {   // a 2048-position context: decode splits the keys over blocks
            Case c{&kAttention};
            c.type = kv;
            c.H = 8, c.Hkv = 2, c.hd = 64, c.S = S, c.pos0 = 2048 - S;
            t.push_back(c);
        }
    for (Type kv : {Type::F32, Type::F16})
        for (int32_t seqs : {2, 3})   // several sequences in one step, interleaved entries
            for (int64_t S : {11, 70}) {   // 70: a prompt's rows, the K and V stores split over the workers
                Case c{&kAttention};
                c.type = kv;
                c.H = 4, c.Hkv = 2, c.hd = 64, c.S = S, c.n_seq = seqs, c.pos0 = 3;
                t.push_back(c);
            }
    for (int64_t n : {1, 7, 50, 1000}) {
        Case c{&kSoftmax};
        c.n = n, c.S = 3;
        t.push_back(c);
    }
    for (int64_t n : {10001, 40000}) {   // 40000: split over the workers in chunks
        Case c{&kGelu};
        c.n = n, c.scale = n > 20000 ? 6.0f : 12.0f, c.tol = 1e-6;
        t.push_back(c);
    }
    for (int64_t n : {1000, 40000}) {   // 40000: split over the workers in chunks
        Case c{&kAdd};
        c.n = n, c.tol = 0;
        t.push_back(c);
    }
    {
        Case g{&kGather};
        g.n = 33, g.S = 7, g.n_seq = 2, g.tol = 0;
        t.push_back(g);
    }
    for (Type ty : {Type::F32, Type::F16, Type::BF16, Type::Q8_0, Type::Q4_0, Type::IQ4_NL, Type::Q3_K})
        for (int64_t N : {1, 4, 16})
            for (int64_t d : {32, 768, 33, 48, 256}) {   // 33, 48: slices that start inside a block
                const int64_t L = d == 48 ? 2 : 3;
                int64_t be = 1;
                type_traits(uint32_t(ty), &be, nullptr);
                if ((L * N * d) % be) continue;   // the converter writes whole blocks
                for (int64_t il : {int64_t(0), L - 1}) {
                    Case c{&kLut, ty};
                    c.N = N, c.k = d, c.L = L, c.il = il, c.S = 9, c.n_seq = 2;
                    t.push_back(c);
                }
            }
    for (Type ty : {Type::F32, Type::Q8_0}) {   // a prompt's many whole rows: their reads split over the workers
        Case c{&kLut, ty};
        c.N = 16, c.k = 768, c.L = 3, c.il = 1, c.S = 40, c.n_seq = 2, c.n = 64;
        t.push_back(c);
    }
    for (Type ty : {Type::IQ4_NL, Type::Q3_K})   // Q3_K slices that start inside a super-block
        for (int64_t d : {32, 64, 96}) {
            Case c{&kLut, ty};
            c.N = 4, c.k = d, c.L = 2, c.il = 1, c.S = 5, c.n_seq = 1;   // slice 1 starts at N*d = 128, 256, 384
            t.push_back(c);
        }
    return t;
}

// Worst |got - ref| / bound over the outputs (0 when within every bound; inf on a size mismatch).
double worst(const std::vector<float> &got, const std::vector<double> &ref, const std::vector<double> &bound) {
    if (got.size() != ref.size()) return INFINITY;
    double w = 0;
    for (size_t i = 0; i < got.size(); ++i) {
        if (std::isnan(ref[i])) {
            if (!std::isnan(got[i])) return INFINITY;
            continue;
        }
        const double e = std::fabs(double(got[i]) - ref[i]);
        if (std::isnan(e)) return INFINITY;
        if (e > bound[i]) w = std::max(w, bound[i] > 0 ? e / bound[i] : INFINITY);
    }
    return w <= 1.0 ? 0.0 : w;
}

}   // namespace

int main() {
    int32_t n_backends = 0;
    const BackendInfo *const *backends = all_backends(&n_backends);
    std::printf("backends in this build:");
    for (int32_t i = 0; i < n_backends; ++i) std::printf(" %s", backends[i]->name);
    std::printf("\n");
    std::vector<const Variant *> live;
    for (const Variant &v : kVariants) {
        const BackendInfo *info = find_backend(v.device);
        if (!info) {
            std::printf("skip %s: not in this build\n", v.name);
            continue;
        }
        if (!v.setup() || info->probe(0) != MOLE_STATUS_OK) {
            std::printf("skip %s: cannot run here (%s)\n", v.name, last_error());
            continue;
        }
        live.push_back(&v);
    }
    check(!live.empty() && live[0] == &kVariants[0], "the reference variant runs");
    const std::vector<Case> cases = table();
    int n_case = 0;
    for (const Case &c : cases) {
        Rng rng(uint64_t(++n_case) * 7919);
        Problem p;
        c.op->make(c, rng, p);
        const std::vector<Ref> refs = c.op->ref(c, p);
        std::vector<float> reference;   // the reference variant's result
        for (const Variant *v : live) {
            v->setup();
            const BackendInfo &info = *find_backend(v->device);
            if (c.op == &kAttention && !(info.kv_types >> uint32_t(c.type) & 1u)) continue;   // a KV type it lacks
            std::vector<float> first;
            // CPU results must not depend on the worker count; other backends have no workers to vary
            for (int threads : v->device == MOLE_DEVICE_CPU ? std::vector<int>{1, 3} : std::vector<int>{1}) {
                Dev dv;
                if (dv.make(info, p, threads) != MOLE_STATUS_OK) {
                    check(false, fmt("%s [%s]: backend: %s", c.label().c_str(), v->name, last_error()));
                    continue;
                }
                const std::vector<float> got = c.op->run(dv, c, p);
                check(dv.be->synchronize() == MOLE_STATUS_OK && dv.be->status() == MOLE_STATUS_OK,
                      fmt("%s [%s]: no backend error", c.label().c_str(), v->name));
                if (!first.empty()) {
                    check(got.size() == first.size() && std::memcmp(got.data(), first.data(), got.size() * 4) == 0,
                          fmt("%s [%s]: %d workers give the bits of 1", c.label().c_str(), v->name, threads));
                    continue;
                }
                first = got;
                for (const Ref &r : refs) {
                    const double w = worst(got, r.value, r.bound);
                    check(w == 0.0, fmt("%s [%s] %s: err/tol = %.3g", c.label().c_str(), v->name, r.what, w));
                }
                if (v == live[0]) {
                    reference = got;
                } else {   // against the reference backend: twice the bound each must meet
                    std::vector<double> ref(reference.begin(), reference.end()), bound(refs[0].bound);
                    for (double &b : bound) b *= 2;
                    const double w = worst(got, ref, bound);
                    check(w == 0.0, fmt("%s [%s] vs %s: err/tol = %.3g", c.label().c_str(), v->name, live[0]->name, w));
                }
            }
        }
    }
    cpu::set_isa(cpu::best_isa());
#ifdef MOLE_SIMT   // what the executor ran: every CUDA kernel the table reached
    uint64_t launches = 0;
    const auto kernels = mole_simt::kernel_counts();
    for (const auto &k : kernels) launches += k.launches;
    std::printf("SIMT executor (%s order): %zu kernel instantiations, %llu launches; %llu executor reports\n",
                std::getenv("MOLE_SIMT_ORDER") ? std::getenv("MOLE_SIMT_ORDER") : "forward", kernels.size(),
                (unsigned long long)launches, (unsigned long long)mole_simt_failures());
    check(mole_simt_failures() == 0, "the SIMT executor reported no kernel error");
#endif
    std::printf("%zu cases on %zu variants: %d passed, %d failed\n", cases.size(), live.size(), g_pass, g_fail);
    return g_fail == 0 ? 0 : 1;
}
