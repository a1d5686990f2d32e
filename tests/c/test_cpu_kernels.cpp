// Tests of the CPU backend's internals that no other backend shares, against the double-precision
// references of op_ref.h on every instruction-set path this machine supports: row dequantization,
// q8 activation quantization (bit-exact), the q8x16 repacked matmul (bit-identical on every path
// and split), the thread pool and the run-time ISA choice. The ops themselves are tested through
// the backend interface in test_backend_ops.cpp.
// Exit code 0 = all passed; the last line is "N passed, M failed".
#include <atomic>
#include <cfloat>
#include <cmath>
#include <cstdlib>
#include <thread>

#include "backend/cpu/kernels.h"
#include "backend/cpu/ops.h"
#include "backend/cpu/quant.h"
#include "backend/cpu/repack.h"
#include "backend/cpu/threadpool.h"
#include "op_ref.h"

using namespace mole;
using namespace mole::cpu;
using namespace opref;

namespace {

// Every level this machine can run (AVXVNNI only where the CPU has AVX-VNNI).
std::vector<Isa> isas() {
    const Isa now = active_isa();
    std::vector<Isa> v;
    for (Isa i : {Isa::Portable, Isa::Avx2, Isa::AvxVnni, Isa::Avx512})
        if (set_isa(i) == i) v.push_back(i);
    set_isa(now);
    return v;
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
        check(std::all_of(out.begin(), out.end(), [](float v) { return v == 0.0f; }),
              fmt("%s zero block", type_name(t)));
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
    // Blocks holding Inf, -Inf or NaN (a model whose activations overflow) give d = NaN, q = 0,
    // sum = 0 on every path (NaN to int8 is undefined; an INT_MIN sum overflowed -128 * sum in the
    // VNNI matmul: fuzz_model found it); a block of subnormal scale gives q = 0. The last block is
    // ordinary.
    const int64_t kb = 5 * 32;
    std::vector<float> y(size_t(kb), 0.5f);
    y[3] = INFINITY;
    y[32 + 31] = -INFINITY;
    y[64 + 16] = NAN;
    for (int j = 96; j < 128; ++j) y[size_t(j)] = (j % 2 ? 1e-38f : -3e-39f);
    for (Isa isa : isas()) {
        set_isa(isa);
        std::vector<int8_t> q(size_t(kb), 99);
        std::vector<float> d(5, 1.0f);
        std::vector<int32_t> sum(5, 99);
        quantize_rows_q8(y.data(), 1, kb, Q8Rows{q.data(), d.data(), sum.data(), kb});
        bool ok = true;
        for (int b = 0; b < 4; ++b) {
            for (int j = 0; j < 32; ++j) ok &= q[size_t(b * 32 + j)] == 0;
            ok &= sum[size_t(b)] == 0 && (b < 3 ? std::isnan(d[size_t(b)]) : d[size_t(b)] < FLT_MIN);
        }
        ok &= q[128] == 127 && sum[4] == 32 * 127 && d[4] == 0.5f / 127.0f;
        check(ok, fmt("q8 blocks with Inf / NaN or a subnormal scale [%s]", isa_name(isa)));
    }
}

// The LUT mix from file bytes (lut_mix_raw) for each LUT type: the fused AVX2 and AVX-512 kernels
// give identical sums (one fma per value in expert order), and every path is within rounding of
// the dequantize-then-mix reference; a slice that starts inside a block takes the unfused path.
void test_lut_mix_raw() {
    Rng rng(55);
    for (Type t : {Type::Q8_0, Type::IQ4_NL, Type::Q3_K}) {
        const int64_t N = 5, d = 512;
        auto vals = rng.vec(size_t(N * d), -2.0f, 2.0f);
        auto bytes = ref_quantize(t, vals.data(), 1, N * d);
        auto deq = ref_dequantize(t, bytes.data(), N * d);
        auto g = rng.vec(size_t(N), -1.0f, 1.0f);
        auto base = rng.vec(size_t(d), -1.0f, 1.0f);
        std::vector<float> scratch(size_t(N * d + 2 * 256));
        std::vector<float> fused;   // the first SIMD level's result
        for (Isa isa : isas()) {
            set_isa(isa);
            std::vector<float> out = base;
            lut_mix_raw(t, g.data(), bytes.data(), 0, N, d, scratch.data(), out.data());
            double worst = 0;
            for (int64_t i = 0; i < d; ++i) {
                double ref = base[size_t(i)], mag = std::fabs(ref);
                for (int64_t j = 0; j < N; ++j) {
                    ref += double(g[size_t(j)]) * deq[size_t(j * d + i)];
                    mag += std::fabs(double(g[size_t(j)]) * deq[size_t(j * d + i)]);
                }
                worst = std::max(worst, std::fabs(out[size_t(i)] - ref) / (1e-6 * mag + 1e-30));
            }
            check(worst <= 1.0, fmt("lut_mix_raw %s [%s]: err/tol = %.3g", type_name(t), isa_name(isa), worst));
            if (isa == Isa::Portable) continue;
            if (fused.empty())
                fused = out;
            else
                check(std::memcmp(out.data(), fused.data(), size_t(d) * 4) == 0,
                      fmt("lut_mix_raw %s [%s]: identical to the other fused levels", type_name(t), isa_name(isa)));
        }
    }
    set_isa(best_isa());
}

// q8x16-packed Q8_0 weights: the same products as the row layout (tight reference), results
// bit-identical on every ISA path, for every S and split, and the padding rows of the last group
// never written.
void test_matmul_q8x16() {
    Rng rng(44);
    ThreadPool pool(2);
    struct Shape {
        int64_t n, k;
    };
    const Shape shapes[] = {{1, 32}, {7, 64}, {37, 96}, {130, 256}, {48, 768}, {200, 128}, {120, 64}};
    const int64_t Ss[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 15, 16, 17, 64, 70};
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
                    check(guard,
                          fmt("q8x16 n=%lld S=%lld [%s]: nothing written past Y", (long long)n, (long long)s_count,
                              isa_name(isa)));
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
                                worst =
                                    std::max(worst, std::fabs(first[size_t(s * n + r)] - ref) / (1e-5 * mag + 1e-30));
                            }
                        }
                        check(worst <= 1.0,
                              fmt("q8x16 matmul n=%lld k=%lld [%s]: err/tol = %.3g", (long long)n, (long long)k,
                                  isa_name(isa), worst));
                    }
                    if (!first.empty())
                        check(
                            std::memcmp(Y.data(), first.data(), size_t(s_count * n) * 4) == 0,
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
    check(bad.load() == 0,
          fmt("contended pools: every task of every job ran exactly once before parallel_for returned (%d wrong)",
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
    const Isa vnni = set_isa(Isa::AvxVnni);
    check(vnni ==
              (cpu_features().avxvnni && int(best) >= int(Isa::AvxVnni) ? Isa::AvxVnni
                   : int(best) >= int(Isa::Avx2)                        ? Isa::Avx2
                                                                        : Isa::Portable),
          fmt("set_isa(avxvnni) gives avxvnni only with AVX-VNNI, else the level below (got %s)", isa_name(vnni)));
    set_isa(best);
}

}  // namespace

int main() {
    std::string paths;
    for (Isa i : isas()) paths += std::string(" ") + isa_name(i);
    const char *env = std::getenv("MOLE_CPU_ISA");
    std::printf("ISA paths tested:%s (best on this machine: %s; default now: %s, MOLE_CPU_ISA=%s)\n", paths.c_str(),
                isa_name(best_isa()), isa_name(active_isa()), env ? env : "unset");
    if (env && (!std::strcmp(env, "portable") || !std::strcmp(env, "avx2") || !std::strcmp(env, "avxvnni")))
        check(int(active_isa()) <= int(env[0] == 'p'       ? Isa::Portable
                                           : env[3] == '2' ? Isa::Avx2
                                                           : Isa::AvxVnni),
              "MOLE_CPU_ISA lowers the default level");
    test_dequantize();
    test_quantize_act();
    test_matmul_q8x16();
    test_lut_mix_raw();
    test_threadpool();
    test_isa_select();
    std::printf("%d passed, %d failed\n", g_pass, g_fail);
    return g_fail == 0 ? 0 : 1;
}
