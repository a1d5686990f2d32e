// Tests of the CPU kernels (runtime/src/backend/cpu) against plain double-precision references
// written here, for every weight type and every instruction-set path this machine supports.
// Exit code 0 = all passed; the last line is "N passed, M failed".
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "backend/cpu/kernels.h"
#include "backend/cpu/ops.h"
#include "backend/cpu/quant.h"
#include "backend/cpu/repack.h"
#include "backend/cpu/threadpool.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

using namespace mole::cpu;

namespace {

int g_pass = 0, g_fail = 0;

void check(bool ok, const std::string &what) {
    if (ok) {
        ++g_pass;
    } else {
        ++g_fail;
        std::printf("FAIL: %s\n", what.c_str());
    }
}

template <class... A> std::string fmt(const char *f, A... a) {
    char buf[512];
    std::snprintf(buf, sizeof buf, f, a...);
    return buf;
}

struct Rng {
    uint64_t s;
    explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
    uint64_t next() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        return s;
    }
    float uniform(float lo, float hi) { return lo + (hi - lo) * float(double(next() >> 11) / 9007199254740992.0); }
    std::vector<float> vec(size_t n, float lo = -1.0f, float hi = 1.0f) {
        std::vector<float> v(n);
        for (auto &x : v) x = uniform(lo, hi);
        return v;
    }
};

std::vector<Isa> isas() {
    std::vector<Isa> v{Isa::Portable};
    if (int(best_isa()) >= int(Isa::Avx2)) v.push_back(Isa::Avx2);
    if (int(best_isa()) >= int(Isa::Avx512)) v.push_back(Isa::Avx512);
    return v;
}

// ---- reference quantizers and decoders (ggml rounding) --------------------------------------

// Quantizes rows x[rows, k] to the file layout of `t`.
std::vector<uint8_t> ref_quantize(Type t, const float *x, int64_t rows, int64_t k) {
    std::vector<uint8_t> out(size_t(rows * row_bytes(t, k)));
    uint8_t *p = out.data();
    for (int64_t r = 0; r < rows; ++r) {
        const float *xr = x + r * k;
        for (int64_t i = 0; i < k; ) {
            switch (t) {
            case Type::F32: std::memcpy(p, &xr[i], 4); p += 4; ++i; break;
            case Type::F16: { uint16_t h = f32_to_f16(xr[i]); std::memcpy(p, &h, 2); p += 2; ++i; break; }
            case Type::BF16: { uint16_t h = f32_to_bf16(xr[i]); std::memcpy(p, &h, 2); p += 2; ++i; break; }
            case Type::Q8_0: {
                float amax = 0;
                for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(xr[i + j]));
                const float d = amax / 127.0f, id = d != 0 ? 1.0f / d : 0.0f;
                uint16_t dh = f32_to_f16(d);
                std::memcpy(p, &dh, 2);
                for (int j = 0; j < 32; ++j) p[2 + j] = uint8_t(int8_t(std::roundf(xr[i + j] * id)));
                p += 34; i += 32;
                break;
            }
            case Type::Q4_0: {
                float amax = 0, mx = 0;
                for (int j = 0; j < 32; ++j)
                    if (std::fabs(xr[i + j]) > amax) { amax = std::fabs(xr[i + j]); mx = xr[i + j]; }
                const float d = mx / -8.0f, id = d != 0 ? 1.0f / d : 0.0f;
                uint16_t dh = f32_to_f16(d);
                std::memcpy(p, &dh, 2);
                for (int j = 0; j < 16; ++j) {
                    const uint8_t lo = uint8_t(std::min(15, int(int8_t(xr[i + j] * id + 8.5f))));
                    const uint8_t hi = uint8_t(std::min(15, int(int8_t(xr[i + 16 + j] * id + 8.5f))));
                    p[2 + j] = uint8_t(lo | (hi << 4));
                }
                p += 18; i += 32;
                break;
            }
            }
        }
    }
    return out;
}

double half_to_double(const uint8_t *p) {
    uint16_t h;
    std::memcpy(&h, p, 2);
    const int e = (h >> 10) & 31, m = h & 1023;
    const double sign = (h & 0x8000) ? -1.0 : 1.0;
    if (e == 0) return sign * std::ldexp(double(m), -24);
    if (e == 31) return m ? NAN : sign * INFINITY;
    return sign * std::ldexp(double(1024 + m), e - 25);
}

// Decodes one row of `t` (k elements) to double, independently of the library.
std::vector<double> ref_dequantize(Type t, const uint8_t *p, int64_t k) {
    std::vector<double> v(static_cast<size_t>(k));
    for (int64_t i = 0; i < k; ) {
        switch (t) {
        case Type::F32: { float f; std::memcpy(&f, p, 4); v[size_t(i++)] = f; p += 4; break; }
        case Type::F16: v[size_t(i++)] = half_to_double(p); p += 2; break;
        case Type::BF16: { uint32_t b = uint32_t(p[0] | (p[1] << 8)) << 16; float f; std::memcpy(&f, &b, 4); v[size_t(i++)] = f; p += 2; break; }
        case Type::Q8_0: {
            const double d = half_to_double(p);
            for (int j = 0; j < 32; ++j) v[size_t(i + j)] = d * double(int8_t(p[2 + j]));
            p += 34; i += 32;
            break;
        }
        case Type::Q4_0: {
            const double d = half_to_double(p);
            for (int j = 0; j < 16; ++j) {
                v[size_t(i + j)] = d * double(int(p[2 + j] & 15) - 8);
                v[size_t(i + 16 + j)] = d * double(int(p[2 + j] >> 4) - 8);
            }
            p += 18; i += 32;
            break;
        }
        }
    }
    return v;
}

// Reference q8 activation quantization: d = amax / 127, q = roundf(x * (1/d)).
void ref_quantize_act(const float *x, int64_t k, std::vector<int8_t> &q, std::vector<float> &d) {
    q.assign(size_t(k), 0);
    d.assign(size_t(k / 32), 0.0f);
    for (int64_t b = 0; b < k / 32; ++b) {
        float amax = 0;
        for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[b * 32 + j]));
        const float db = amax / 127.0f, id = db != 0 ? 1.0f / db : 0.0f;
        d[size_t(b)] = db;
        for (int j = 0; j < 32; ++j) q[size_t(b * 32 + j)] = int8_t(std::roundf(x[b * 32 + j] * id));
    }
}

// ---- conversions -----------------------------------------------------------------------------

#if defined(__x86_64__)
__attribute__((target("f16c"))) float hw_h2f(uint16_t h) { return _cvtsh_ss(h); }
__attribute__((target("f16c"))) uint16_t hw_f2h(float f) { return uint16_t(_cvtss_sh(f, 0)); }
#endif

void test_conversions() {
    int bad = 0;
    for (uint32_t h = 0; h < 65536; ++h) {
        const double ref = half_to_double(reinterpret_cast<const uint8_t *>(&h));
        const float got = f16_to_f32(uint16_t(h));
        if (std::isnan(ref) ? !std::isnan(got) : double(got) != ref) ++bad;
        if (!std::isnan(ref) && f32_to_f16(got) != uint16_t(h)) ++bad;   // round trip
        const float bf = bf16_to_f32(uint16_t(h));
        if (!std::isnan(bf) && f32_to_bf16(bf) != uint16_t(h)) ++bad;
    }
    check(bad == 0, fmt("f16/bf16 exhaustive decode + round trip (%d bad)", bad));
#if defined(__x86_64__)
    if (cpu_features().f16c) {
        Rng rng(7);
        bad = 0;
        for (int i = 0; i < 200000; ++i) {
            uint32_t bits = uint32_t(rng.next());
            if (i % 2) bits = (bits & 0x80000000u) | (uint32_t(0x33000000u + (bits % 0x15000000u)));  // half range
            float f;
            std::memcpy(&f, &bits, 4);
            if (std::isnan(f)) continue;
            if (f32_to_f16(f) != hw_f2h(f)) ++bad;
        }
        for (uint32_t h = 0; h < 65536; ++h) {
            const float a = f16_to_f32(uint16_t(h)), b = hw_h2f(uint16_t(h));
            if (!(std::isnan(a) && std::isnan(b)) && std::memcmp(&a, &b, 4) != 0) ++bad;
        }
        check(bad == 0, fmt("f32<->f16 matches F16C hardware (%d bad)", bad));
    }
#endif
    // bf16 rounding: nearest, ties to even
    const float one_plus_half_ulp = 1.0f + 1.0f / 256.0f;   // exactly halfway between 1 and 1+2^-7
    check(f32_to_bf16(one_plus_half_ulp) == 0x3f80, "bf16 tie rounds to even (down)");
    const float tie_up = 1.0f + 3.0f / 256.0f;               // halfway between 1+2^-7 and 1+2^-6
    check(f32_to_bf16(tie_up) == 0x3f82, "bf16 tie rounds to even (up)");
}

void test_type_traits() {
    int64_t e = 0, b = 0;
    check(type_traits(8, &e, &b) && e == 32 && b == 34, "q8_0 traits 32/34");
    check(type_traits(2, &e, &b) && e == 32 && b == 18, "q4_0 traits 32/18");
    check(type_traits(30, &e, &b) && e == 1 && b == 2, "bf16 traits");
    check(type_traits(0, &e, &b) && e == 1 && b == 4, "f32 traits");
    check(!type_traits(3, &e, &b) && !type_traits(12345, nullptr, nullptr), "unknown types rejected");
    check(row_bytes(Type::Q8_0, 768) == 24 * 34 && row_bytes(Type::Q4_0, 64) == 36 &&
          row_bytes(Type::F16, 7) == 14, "row_bytes");
    check(std::string(type_name(Type::Q4_0)) == "q4_0" && std::string(type_name(Type::BF16)) == "bf16", "type_name");
}

const Type kTypes[] = {Type::F32, Type::F16, Type::BF16, Type::Q8_0, Type::Q4_0};

void test_dequantize() {
    Rng rng(11);
    for (Isa isa : isas()) {
        set_isa(isa);
        for (Type t : kTypes) {
            const int64_t k = (t == Type::Q8_0 || t == Type::Q4_0) ? 96 : 101;
            auto x = rng.vec(size_t(k), -3.0f, 3.0f);
            x[5] = 0.0f;
            auto w = ref_quantize(t, x.data(), 1, k);
            auto ref = ref_dequantize(t, w.data(), k);
            std::vector<float> got(static_cast<size_t>(k));
            dequantize_row(t, w.data(), got.data(), k);
            bool ok = true;
            for (int64_t i = 0; i < k; ++i) ok &= double(got[size_t(i)]) == double(float(ref[size_t(i)]));
            check(ok, fmt("dequantize_row %s exact [%s]", type_name(t), isa_name(isa)));
        }
    }
    // An all-zero block quantizes to d = 0 and decodes to zeros.
    std::vector<float> z(32, 0.0f), out(32, 1.0f);
    for (Type t : {Type::Q8_0, Type::Q4_0}) {
        auto w = ref_quantize(t, z.data(), 1, 32);
        dequantize_row(t, w.data(), out.data(), 32);
        check(std::all_of(out.begin(), out.end(), [](float v) { return v == 0.0f; }), fmt("%s zero block", type_name(t)));
    }
}

void test_quantize_act() {
    Rng rng(3);
    const int64_t S = 5, k = 128;
    auto x = rng.vec(size_t(S * k), -2.0f, 2.0f);
    // exact ties: amax 127 gives d = 1, so these land on .5 and must round away from zero
    for (int j = 0; j < 32; ++j) x[size_t(j)] = float(j % 2 ? 2.5 + j : -0.5 - j);
    x[0] = 127.0f;
    for (int j = 32; j < 64; ++j) x[size_t(j)] = 0.0f;   // zero block
    for (Isa isa : isas()) {
        set_isa(isa);
        std::vector<int8_t> q(size_t(S * k));
        std::vector<float> d(size_t(S * k / 32));
        std::vector<int32_t> sum(size_t(S * k / 32));
        quantize_rows_q8(x.data(), S, k, Q8Rows{q.data(), d.data(), sum.data(), k});
        bool ok = true;
        for (int64_t s = 0; s < S; ++s) {
            std::vector<int8_t> rq;
            std::vector<float> rd;
            ref_quantize_act(x.data() + s * k, k, rq, rd);
            for (int64_t i = 0; i < k; ++i) ok &= q[size_t(s * k + i)] == rq[size_t(i)];
            for (int64_t b = 0; b < k / 32; ++b) {
                int32_t rs = 0;
                for (int j = 0; j < 32; ++j) rs += rq[size_t(b * 32 + j)];
                ok &= d[size_t(s * k / 32 + b)] == rd[size_t(b)] && sum[size_t(s * k / 32 + b)] == rs;
            }
        }
        check(ok, fmt("q8 activation quantization bit-exact vs reference [%s]", isa_name(isa)));
        check(q[1] == 4 && q[2] == -3 && q[0] == 127, fmt("q8 ties round half away from zero [%s]", isa_name(isa)));
    }
}

// ---- matmul ----------------------------------------------------------------------------------

void test_matmul_case(Type t, int64_t n, int64_t k, int64_t S, Isa isa, ThreadPool *pool, Rng &rng) {
    auto wf = rng.vec(size_t(n * k), -1.0f, 1.0f);
    auto X = rng.vec(size_t(S * k), -2.0f, 2.0f);
    auto W = ref_quantize(t, wf.data(), n, k);
    const int64_t rb = row_bytes(t, k);
    std::vector<float> Y(size_t(S * n), NAN), Y1(size_t(S * n), NAN);
    matmul(t, W.data(), n, k, X.data(), S, Y.data(), pool);
    matmul(t, W.data(), n, k, X.data(), S, Y1.data(), nullptr);
    const bool quant = t == Type::Q8_0 || t == Type::Q4_0;
    double worst = 0, worst_loose = 0;
    for (int64_t r = 0; r < n; ++r) {
        const auto w = ref_dequantize(t, W.data() + r * rb, k);
        for (int64_t s = 0; s < S; ++s) {
            const float *x = X.data() + s * k;
            const double got = Y[size_t(s * n + r)];
            double exact = 0, mag = 0;
            for (int64_t i = 0; i < k; ++i) {
                exact += w[size_t(i)] * x[i];
                mag += std::fabs(w[size_t(i)] * x[i]);
            }
            if (!quant) {
                // f32/f16/bf16: relative 1e-5 of sum |w x|
                worst = std::max(worst, std::fabs(got - exact) / (1e-5 * mag + 1e-30));
                continue;
            }
            // tight: against dequantized weights and q8-quantized activations, rel 1e-5
            std::vector<int8_t> xq;
            std::vector<float> xd;
            ref_quantize_act(x, k, xq, xd);
            double ref = 0, qmag = 0, step_bound = 0;
            for (int64_t i = 0; i < k; ++i) {
                const double xv = double(xq[size_t(i)]) * xd[size_t(i / 32)];
                ref += w[size_t(i)] * xv;
                qmag += std::fabs(w[size_t(i)] * xv);
                step_bound += std::fabs(w[size_t(i)]) * 0.5 * xd[size_t(i / 32)];
            }
            worst = std::max(worst, std::fabs(got - ref) / (1e-5 * qmag + 1e-30));
            // looser: against exact f32 activations, each activation is off by at most half a
            // quantization step (d/2), so |error| <= sum |w| d/2 (+ the 1e-5 float term)
            worst_loose = std::max(worst_loose, std::fabs(got - exact) / (step_bound * 1.0001 + 1e-5 * mag + 1e-30));
        }
    }
    const char *pn = pool ? "pool" : "caller";
    check(worst <= 1.0, fmt("matmul %s n=%lld k=%lld S=%lld [%s, %s]: err/tol = %.3g", type_name(t), (long long)n,
                            (long long)k, (long long)S, isa_name(isa), pn, worst));
    if (quant)
        check(worst_loose <= 1.0, fmt("matmul %s vs f32 activations n=%lld k=%lld S=%lld [%s]: err/bound = %.3g",
                                      type_name(t), (long long)n, (long long)k, (long long)S, isa_name(isa), worst_loose));
    check(std::memcmp(Y.data(), Y1.data(), Y.size() * 4) == 0,
          fmt("matmul %s n=%lld S=%lld [%s]: threaded result identical to single-thread", type_name(t), (long long)n,
              (long long)S, isa_name(isa)));
}

void test_matmul() {
    Rng rng(42);
    ThreadPool pool2(2), pool3(3);
    struct Shape { int64_t n, k; };
    const Shape quant_shapes[] = {{1, 32}, {7, 64}, {37, 96}, {130, 256}};
    const Shape float_shapes[] = {{1, 1}, {5, 13}, {37, 37}, {19, 100}, {130, 256}};
    const int64_t Ss[] = {1, 3, 17, 64, 70};
    for (Isa isa : isas()) {
        set_isa(isa);
        for (Type t : kTypes) {
            const bool quant = t == Type::Q8_0 || t == Type::Q4_0;
            const Shape *shapes = quant ? quant_shapes : float_shapes;
            const int ns = quant ? 4 : 5;
            for (int i = 0; i < ns; ++i)
                for (int64_t S : Ss) test_matmul_case(t, shapes[i].n, shapes[i].k, S, isa, (i + S) % 2 ? &pool2 : &pool3, rng);
        }
        // extreme weights: q8 -128 (not produced by the quantizer, legal in a file)
        {
            const int64_t k = 64;
            std::vector<uint8_t> W(size_t(row_bytes(Type::Q8_0, k)));
            for (size_t b = 0; b < 2; ++b) {
                uint16_t d = f32_to_f16(0.5f);
                std::memcpy(&W[b * 34], &d, 2);
                for (int j = 0; j < 32; ++j) W[b * 34 + 2 + size_t(j)] = uint8_t(int8_t(j % 2 ? -128 : 127));
            }
            std::vector<float> X(size_t(k), -1.0f), Y(1);
            matmul(Type::Q8_0, W.data(), 1, k, X.data(), 1, Y.data(), nullptr);
            const double ref = 0.5 * 32 * (128 - 127);   // 32 pairs of (127 - 128) * -1
            check(std::fabs(Y[0] - ref) < 1e-4, fmt("q8_0 with -128 weights [%s]: %g vs %g", isa_name(isa), Y[0], ref));
        }
    }
}

// matmul_multi: several weights (mixed types, one dispatch) give exactly the separate results.
void test_matmul_multi() {
    Rng rng(43);
    ThreadPool pool(2);
    const int64_t k = 96;
    const Type types[] = {Type::Q8_0, Type::F32, Type::Q4_0, Type::F16};
    const int64_t ns[] = {37, 4, 130, 16};
    for (Isa isa : isas()) {
        set_isa(isa);
        for (int64_t S : {1, 5, 70}) {
            auto X = rng.vec(size_t(S * k), -2.0f, 2.0f);
            std::vector<std::vector<uint8_t>> W;
            std::vector<std::vector<float>> Y, Yref;
            MatmulOut outs[4];
            for (int i = 0; i < 4; ++i) {
                auto wf = rng.vec(size_t(ns[i] * k), -1.0f, 1.0f);
                W.push_back(ref_quantize(types[i], wf.data(), ns[i], k));
                Y.emplace_back(size_t(S * ns[i]), NAN);
                Yref.emplace_back(size_t(S * ns[i]), NAN);
            }
            bool same = true;
            for (int i = 0; i < 4; ++i) {
                outs[i] = MatmulOut{types[i], W[size_t(i)].data(), ns[i], Y[size_t(i)].data()};
                matmul(types[i], W[size_t(i)].data(), ns[i], k, X.data(), S, Yref[size_t(i)].data(), nullptr);
            }
            matmul_multi(outs, 4, k, X.data(), S, &pool);
            for (int i = 0; i < 4; ++i) same &= std::memcmp(Y[size_t(i)].data(), Yref[size_t(i)].data(), Y[size_t(i)].size() * 4) == 0;
            check(same, fmt("matmul_multi (q8_0, f32, q4_0, f16) S=%lld equals separate matmuls [%s]", (long long)S, isa_name(isa)));
        }
    }
}

// q8x16-packed Q8_0 weights: the same products as the row layout (tight reference), results
// bit-identical on every ISA path, for every S and split, and the padding rows of the last group
// never written.
void test_matmul_q8x16() {
    Rng rng(44);
    ThreadPool pool(2);
    struct Shape { int64_t n, k; };
    const Shape shapes[] = {{1, 32}, {7, 64}, {37, 96}, {130, 256}, {48, 768}};
    const int64_t Ss[] = {1, 3, 7, 17, 64, 70};
    for (const Shape &sh : shapes) {
        const int64_t n = sh.n, k = sh.k, nb = k / 32;
        auto wf = rng.vec(size_t(n * k), -1.0f, 1.0f);
        auto W = ref_quantize(Type::Q8_0, wf.data(), n, k);
        std::vector<uint8_t> P(size_t(q8x16_bytes(n, k)) + 64, 0);
        uint8_t *pw = P.data() + (64 - reinterpret_cast<uintptr_t>(P.data()) % 64) % 64;   // 64-byte aligned
        pack_q8x16(reinterpret_cast<const BlockQ8_0 *>(W.data()), 0, n, k, pw);
        const int64_t S = 70;
        auto X = rng.vec(size_t(S * k), -2.0f, 2.0f);
        std::vector<float> first;   // the first ISA's result for S rows at once
        for (Isa isa : isas()) {
            set_isa(isa);
            for (int64_t s_count : Ss) {
                for (ThreadPool *pl : {static_cast<ThreadPool *>(nullptr), &pool}) {
                    std::vector<float> Y(size_t(s_count * n) + 16, NAN);
                    const float sentinel = 12345.0f;
                    std::fill(Y.end() - 16, Y.end(), sentinel);
                    MatmulOut out{Type::Q8_0, pw, n, Y.data(), true};
                    matmul_multi(&out, 1, k, X.data(), s_count, pl);
                    bool guard = true;
                    for (size_t i = Y.size() - 16; i < Y.size(); ++i) guard &= Y[i] == sentinel;
                    check(guard, fmt("q8x16 n=%lld S=%lld [%s]: nothing written past Y", (long long)n, (long long)s_count, isa_name(isa)));
                    if (first.empty() && s_count == S) {
                        first.assign(Y.begin(), Y.begin() + S * n);
                        double worst = 0;   // tight reference: dequantized weights x q8 activations
                        for (int64_t r = 0; r < n; ++r) {
                            const auto w = ref_dequantize(Type::Q8_0, W.data() + r * nb * 34, k);
                            for (int64_t s = 0; s < S; ++s) {
                                std::vector<int8_t> xq;
                                std::vector<float> xd;
                                ref_quantize_act(X.data() + s * k, k, xq, xd);
                                double ref = 0, mag = 0;
                                for (int64_t i = 0; i < k; ++i) {
                                    const double t = w[size_t(i)] * double(xq[size_t(i)]) * xd[size_t(i / 32)];
                                    ref += t;
                                    mag += std::fabs(t);
                                }
                                worst = std::max(worst, std::fabs(first[size_t(s * n + r)] - ref) / (1e-5 * mag + 1e-30));
                            }
                        }
                        check(worst <= 1.0, fmt("q8x16 matmul n=%lld k=%lld [%s]: err/tol = %.3g", (long long)n, (long long)k,
                                                isa_name(isa), worst));
                    }
                    if (!first.empty())
                        check(std::memcmp(Y.data(), first.data(), size_t(s_count * n) * 4) == 0,
                              fmt("q8x16 n=%lld k=%lld S=%lld [%s, %s]: bit-identical to the S=%lld result", (long long)n,
                                  (long long)k, (long long)s_count, isa_name(isa), pl ? "pool" : "caller", (long long)S));
                }
            }
        }
    }
    // extreme weights (-128 and 127) survive the +128 offset
    for (Isa isa : isas()) {
        set_isa(isa);
        const int64_t k = 64;
        std::vector<uint8_t> W(size_t(row_bytes(Type::Q8_0, k)));
        for (size_t b = 0; b < 2; ++b) {
            const uint16_t d = f32_to_f16(0.5f);
            std::memcpy(&W[b * 34], &d, 2);
            for (int j = 0; j < 32; ++j) W[b * 34 + 2 + size_t(j)] = uint8_t(int8_t(j % 2 ? -128 : 127));
        }
        alignas(64) uint8_t P[1088] = {};   // q8x16_bytes(1, 64)
        pack_q8x16(reinterpret_cast<const BlockQ8_0 *>(W.data()), 0, 1, k, P);
        std::vector<float> X(size_t(k), -1.0f), Y(1);
        MatmulOut out{Type::Q8_0, P, 1, Y.data(), true};
        matmul_multi(&out, 1, k, X.data(), 1, nullptr);
        check(std::fabs(Y[0] - 16.0) < 1e-4, fmt("q8x16 with -128 weights [%s]: %g vs 16", isa_name(isa), Y[0]));
    }
    set_isa(best_isa());
}

// ---- element-wise ops ----------------------------------------------------------------------

void test_rmsnorm() {
    Rng rng(5);
    for (int64_t d : {1, 7, 64, 771}) {
        const int64_t S = 3;
        auto x = rng.vec(size_t(S * d), -4.0f, 4.0f);
        auto w = rng.vec(size_t(d), 0.5f, 1.5f);
        std::vector<float> out(size_t(S * d));
        rmsnorm(x.data(), w.data(), S, d, 1e-5f, out.data());
        double worst = 0;
        for (int64_t s = 0; s < S; ++s) {
            double ss = 0;
            for (int64_t i = 0; i < d; ++i) ss += double(x[size_t(s * d + i)]) * x[size_t(s * d + i)];
            const double r = 1.0 / std::sqrt(ss / double(d) + 1e-5);
            for (int64_t i = 0; i < d; ++i) {
                const double ref = double(w[size_t(i)]) * x[size_t(s * d + i)] * r;
                worst = std::max(worst, std::fabs(out[size_t(s * d + i)] - ref) / (1e-5 * std::fabs(ref) + 1e-30));
            }
        }
        check(worst <= 1.0, fmt("rmsnorm d=%lld rel 1e-5: err/tol = %.3g", (long long)d, worst));
    }
}

void test_rope() {
    Rng rng(6);
    for (int64_t hd : {2, 6, 64, 128}) {
        for (float fs : {1.0f, 0.25f}) {
            const int64_t S = 5, H = 3;
            const int32_t pos[S] = {0, 1, 17, 2047, 65000};
            auto x = rng.vec(size_t(S * H * hd));
            auto y = x;
            rope(y.data(), S, H, hd, pos, 10000.0f, fs);
            double worst = 0;
            const int64_t half = hd / 2;
            for (int64_t s = 0; s < S; ++s)
                for (int64_t h = 0; h < H; ++h)
                    for (int64_t i = 0; i < half; ++i) {
                        const size_t o = size_t((s * H + h) * hd);
                        const double ang = double(pos[s]) * fs * std::pow(10000.0, -2.0 * double(i) / double(hd));
                        const double a = x[o + size_t(i)], b = x[o + size_t(i + half)];
                        const double r0 = a * std::cos(ang) - b * std::sin(ang), r1 = a * std::sin(ang) + b * std::cos(ang);
                        const double tol = 1e-5 * (std::fabs(a) + std::fabs(b)) + 1e-30;
                        worst = std::max(worst, std::max(std::fabs(y[o + size_t(i)] - r0), std::fabs(y[o + size_t(i + half)] - r1)) / tol);
                    }
            check(worst <= 1.0, fmt("rope hd=%lld freq_scale=%g: err/tol = %.3g", (long long)hd, fs, worst));
        }
    }
}

void test_gelu() {
    Rng rng(8);
    auto x = rng.vec(10001, -12.0f, 12.0f);
    const float extra[] = {0.0f, -0.0f, 1e-30f, -1e-30f, 1.0f, -1.0f, -5.0f, -8.5f, 30.0f, -30.0f, 3e38f};
    x.insert(x.end(), std::begin(extra), std::end(extra));
    ThreadPool pool(2);
    for (Isa isa : isas()) {
        set_isa(isa);
        for (ThreadPool *pp : {static_cast<ThreadPool *>(nullptr), &pool}) {
            auto y = x;
            gelu(y.data(), int64_t(y.size()), pp);
            double worst = 0;
            for (size_t i = 0; i < x.size(); ++i) {
                const double v = x[i], ref = 0.5 * v * std::erfc(-v / std::sqrt(2.0));
                worst = std::max(worst, std::fabs(y[i] - ref) / (1e-6 * std::fabs(ref) + 1e-38));
            }
            check(worst <= 1.0, fmt("gelu (erf) rel 1e-6 over [-12, 12] and extremes [%s, %s]: err/tol = %.3g",
                                    isa_name(isa), pp ? "pool" : "caller", worst));
        }
    }
    // many elements, split over the pool in chunks: same values as on the caller
    auto big = rng.vec(40000, -6.0f, 6.0f);
    auto b1 = big, b2 = big;
    gelu(b1.data(), int64_t(b1.size()), nullptr);
    gelu(b2.data(), int64_t(b2.size()), &pool);
    check(std::memcmp(b1.data(), b2.data(), b1.size() * 4) == 0, "gelu over the pool equals gelu on the caller");
}

void test_softmax() {
    Rng rng(9);
    for (int64_t n : {1, 7, 50, 1000}) {
        const int64_t S = 3;
        auto x = rng.vec(size_t(S * n), -10.0f, 10.0f);
        for (int64_t i = 0; i < n; ++i) x[size_t(n + i)] += 1000.0f;   // row 1: large offset (stability)
        auto y = x;
        softmax(y.data(), S, n);
        double worst = 0;
        for (int64_t s = 0; s < S; ++s) {
            double mx = -1e300, sum = 0;
            for (int64_t i = 0; i < n; ++i) mx = std::max(mx, double(x[size_t(s * n + i)]));
            for (int64_t i = 0; i < n; ++i) sum += std::exp(double(x[size_t(s * n + i)]) - mx);
            for (int64_t i = 0; i < n; ++i) {
                const double ref = std::exp(double(x[size_t(s * n + i)]) - mx) / sum;
                worst = std::max(worst, std::fabs(y[size_t(s * n + i)] - ref) / (1e-5 * ref + 1e-30));
            }
        }
        check(worst <= 1.0, fmt("softmax n=%lld rel 1e-5 (incl. +1000 offset row): err/tol = %.3g", (long long)n, worst));
    }
}

void test_lut_mix() {
    Rng rng(10);
    for (int64_t N : {1, 4, 16}) {
        for (int64_t d : {1, 33, 768}) {
            auto g = rng.vec(size_t(N), 0.0f, 1.0f);
            auto rows = rng.vec(size_t(N * d), -3.0f, 3.0f);
            auto out = rng.vec(size_t(d));
            auto ref_in = out;
            lut_mix(g.data(), rows.data(), N, d, out.data());
            double worst = 0;
            for (int64_t i = 0; i < d; ++i) {
                double ref = ref_in[size_t(i)], mag = std::fabs(ref_in[size_t(i)]);
                for (int64_t j = 0; j < N; ++j) {
                    ref += double(g[size_t(j)]) * rows[size_t(j * d + i)];
                    mag += std::fabs(double(g[size_t(j)]) * rows[size_t(j * d + i)]);
                }
                worst = std::max(worst, std::fabs(out[size_t(i)] - ref) / (1e-5 * mag + 1e-30));
            }
            check(worst <= 1.0, fmt("lut_mix N=%lld d=%lld: err/tol = %.3g", (long long)N, (long long)d, worst));
        }
    }
}

// lut_mix_raw: the mix straight from a row's file bytes (q8_0 fused on AVX-512, other types and a
// non-zero skip through a dequantized copy) against double references of the dequantized values.
void test_lut_mix_raw() {
    Rng rng(11);
    for (Isa isa : isas()) {
        set_isa(isa);
        for (Type t : {Type::Q8_0, Type::F16, Type::Q4_0}) {
            for (int64_t N : {1, 4, 16}) {
                for (int64_t d : {32, 768, 33}) {
                    const int64_t skip = d % 32 ? 7 : 0;   // a slice starting inside a block
                    const int64_t n = (skip + N * d + 31) / 32 * 32;
                    auto vals = rng.vec(size_t(n), -3.0f, 3.0f);
                    auto raw = ref_quantize(t, vals.data(), 1, n);
                    const auto deq = ref_dequantize(t, raw.data(), n);
                    auto g = rng.vec(size_t(N), 0.0f, 1.0f);
                    auto out = rng.vec(size_t(d));
                    const auto in = out;
                    std::vector<float> scratch(size_t(n + 32));
                    lut_mix_raw(t, g.data(), raw.data(), skip, N, d, scratch.data(), out.data());
                    double worst = 0;
                    for (int64_t i = 0; i < d; ++i) {
                        double ref = in[size_t(i)], mag = std::fabs(ref);
                        for (int64_t j = 0; j < N; ++j) {
                            ref += double(g[size_t(j)]) * deq[size_t(skip + j * d + i)];
                            mag += std::fabs(double(g[size_t(j)]) * deq[size_t(skip + j * d + i)]);
                        }
                        worst = std::max(worst, std::fabs(out[size_t(i)] - ref) / (1e-5 * mag + 1e-30));
                    }
                    check(worst <= 1.0, fmt("lut_mix_raw %s N=%lld d=%lld skip=%lld [%s]: err/tol = %.3g", type_name(t),
                                            (long long)N, (long long)d, (long long)skip, isa_name(isa), worst));
                }
            }
        }
    }
    set_isa(best_isa());
}

void test_attention() {
    Rng rng(12);
    ThreadPool pool(2);
    for (Isa isa : isas()) {
        set_isa(isa);
        for (int64_t n_kv : {4, 2, 1}) {              // GQA ratios 1, 2, 4 with 4 query heads
            for (int64_t hd : {8, 13, 64, 80}) {
                for (int64_t S : {1, 3, 17, 40}) {   // 40: blocks of 16, 16 and 8 queries
                    for (int64_t pos0 : {0, 5}) {
                        const int64_t H = 4, T = pos0 + S, kv_stride = n_kv * hd + 3;   // padded rows
                        const float qs = hd == 13 ? 30.0f : 1.0f;                         // large scores
                        auto q = rng.vec(size_t(S * H * hd), -qs, qs);
                        auto k = rng.vec(size_t(T * kv_stride));
                        auto v = rng.vec(size_t(T * kv_stride), -2.0f, 2.0f);
                        std::vector<float> out(size_t(S * H * hd), NAN), out1(size_t(S * H * hd), NAN);
                        attention(q.data(), k.data(), v.data(), kv_stride, out.data(), S, pos0, H, n_kv, hd, &pool);
                        attention(q.data(), k.data(), v.data(), kv_stride, out1.data(), S, pos0, H, n_kv, hd, nullptr);
                        double worst = 0;
                        for (int64_t s = 0; s < S; ++s)
                            for (int64_t h = 0; h < H; ++h) {
                                const int64_t kvh = h / (H / n_kv), nk = pos0 + s + 1;
                                std::vector<double> sc(static_cast<size_t>(nk));
                                double mx = -1e300, sum = 0, vmax = 0;
                                for (int64_t t = 0; t < nk; ++t) {
                                    double dot = 0;
                                    for (int64_t i = 0; i < hd; ++i)
                                        dot += double(q[size_t((s * H + h) * hd + i)]) * k[size_t(t * kv_stride + kvh * hd + i)];
                                    sc[size_t(t)] = dot / std::sqrt(double(hd));
                                    mx = std::max(mx, sc[size_t(t)]);
                                }
                                for (auto &e : sc) sum += (e = std::exp(e - mx));
                                for (int64_t i = 0; i < hd; ++i) {
                                    double ref = 0;
                                    for (int64_t t = 0; t < nk; ++t) {
                                        ref += sc[size_t(t)] / sum * v[size_t(t * kv_stride + kvh * hd + i)];
                                        vmax = std::max(vmax, std::fabs(double(v[size_t(t * kv_stride + kvh * hd + i)])));
                                    }
                                    // output is a convex combination of v: tolerance 1e-5 * max |v|
                                    // (scores scaled x30 carry float rounding of the q.k sums: 1e-4)
                                    const double tol = (qs > 1 ? 1e-4 : 1e-5) * vmax + 1e-30;
                                    worst = std::max(worst, std::fabs(out[size_t((s * H + h) * hd + i)] - ref) / tol);
                                }
                            }
                        check(worst <= 1.0 && std::memcmp(out.data(), out1.data(), out.size() * 4) == 0,
                              fmt("attention H=4 kv=%lld hd=%lld S=%lld pos0=%lld [%s]: err/tol = %.3g", (long long)n_kv,
                                  (long long)hd, (long long)S, (long long)pos0, isa_name(isa), worst));
                    }
                }
            }
        }
    }
}

// More threads than cores: three pools of 2 driven from three threads, many small jobs. Workers
// are preempted between loading the job word and claiming from it, which once let a stale claim
// run a task twice and count it in the next job (that job then returned early or never).
void test_threadpool_contended() {
    constexpr int kCallers = 3, kJobs = 60000;
    std::atomic<int> bad{0};
    std::vector<std::thread> callers;
    for (int c = 0; c < kCallers; ++c)
        callers.emplace_back([&bad] {
            ThreadPool pool(2);
            std::atomic<int> hits[5];
            for (int rep = 0; rep < kJobs; ++rep) {
                const int n = rep % 5 + 1;
                for (int i = 0; i < n; ++i) hits[i].store(0);
                auto f = [&](int64_t t, int) { hits[t].fetch_add(1); };
                pool.parallel_for(n, std::ref(f));
                for (int i = 0; i < n; ++i)
                    if (hits[i].load() != 1) bad.fetch_add(1);
            }
        });
    for (auto &t : callers) t.join();
    check(bad.load() == 0, fmt("contended pools: every task of every job ran exactly once before parallel_for returned (%d wrong)",
                               bad.load()));
}

void test_threadpool() {
    for (int nt : {1, 2, 3}) {
        ThreadPool pool(nt);
        check(pool.size() == nt, fmt("pool size %d", nt));
        bool ok = true;
        std::vector<std::atomic<int>> hits(1000);
        for (int rep = 0; rep < 500; ++rep) {
            const int64_t n = rep % 7 == 0 ? 0 : (rep * 37) % 1000 + 1;
            for (int64_t i = 0; i < n; ++i) hits[size_t(i)].store(0);
            std::atomic<int> bad_thread{0};
            pool.parallel_for(n, [&](int64_t t, int th) {
                hits[size_t(t)].fetch_add(1);
                if (th < 0 || th >= nt) bad_thread.store(1);
            });
            for (int64_t i = 0; i < n; ++i) ok &= hits[size_t(i)].load() == 1;
            ok &= bad_thread.load() == 0;
        }
        check(ok, fmt("parallel_for runs each task exactly once, thread ids in range (%d threads)", nt));
    }
    ThreadPool zero(0);
    check(zero.size() == 1, "ThreadPool(0) runs on the caller");
    test_threadpool_contended();
}

void test_isa_select() {
    const Isa best = best_isa();
    check(set_isa(Isa::Avx512) == best, "set_isa clamps to the best supported level");
    check(set_isa(Isa::Portable) == Isa::Portable, "set_isa lowers to portable");
    set_isa(best);
}

}  // namespace

int main() {
    std::string paths;
    for (Isa i : isas()) paths += std::string(" ") + isa_name(i);
    const char *env = std::getenv("MOLE_CPU_ISA");
    std::printf("ISA paths tested:%s (best on this machine: %s; default now: %s, MOLE_CPU_ISA=%s)\n", paths.c_str(),
                isa_name(best_isa()), isa_name(active_isa()), env ? env : "unset");
    if (env && (!std::strcmp(env, "portable") || !std::strcmp(env, "avx2")))
        check(int(active_isa()) <= int(env[0] == 'p' ? Isa::Portable : Isa::Avx2), "MOLE_CPU_ISA lowers the default level");
    test_conversions();
    test_type_traits();
    test_dequantize();
    test_quantize_act();
    test_matmul();
    test_matmul_multi();
    test_matmul_q8x16();
    test_rmsnorm();
    test_rope();
    test_gelu();
    test_softmax();
    test_lut_mix();
    test_lut_mix_raw();
    test_attention();
    test_threadpool();
    test_isa_select();
    std::printf("%d passed, %d failed\n", g_pass, g_fail);
    return g_fail == 0 ? 0 : 1;
}
