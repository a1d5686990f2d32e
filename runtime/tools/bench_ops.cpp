// bench_ops: times the CPU matmul on the 160M model's shapes for every weight type, ISA path and
// thread count (median of repeats), and a plain stream-read loop for the machine's memory bandwidth.
// q8x16 is Q8_0 repacked (repack.h), as models load on AVX2, AVX-VNNI and AVX-512 machines.
// Usage: bench_ops [--types f32,q8_0,q8x16] [--isa portable,avx2,avxvnni,avx512] [--threads 1,2] [--S 1,512]
//                  [--reps 5] [--cold-mb 600] [--max-s 3] [--shapes attn,up,down,output]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string>
#include <vector>

#include "backend/cpu/kernels.h"
#include "backend/cpu/ops.h"
#include "backend/cpu/quant.h"
#include "backend/cpu/repack.h"
#include "backend/cpu/threadpool.h"
#include "mmap.h"

using namespace mole;
using namespace mole::cpu;

namespace {

// Process CPU seconds (all threads): with wall time it shows whether other load stole the cores.
double cpu_now() {
    timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

std::vector<std::string> split(const char *s) {
    std::vector<std::string> out;
    std::string cur;
    for (; *s; ++s) {
        if (*s == ',') {
            out.push_back(cur);
            cur.clear();
        } else
            cur += *s;
    }
    if (!cur.empty()) out.push_back(cur);
    return out;
}

struct Rng {
    uint64_t s = 0x243F6A8885A308D3ull;
    uint64_t next() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        return s;
    }
    float uniform() { return float(int64_t(next() >> 40) - (1 << 23)) / float(1 << 23); }
};

// Fills `bytes` of valid `type` rows (finite weights, no denormals) with random content.
void fill(Type t, uint8_t *p, int64_t bytes, Rng &rng) {
    switch (t) {
    case Type::F32:
        for (int64_t i = 0; i + 4 <= bytes; i += 4) {
            float f = rng.uniform();
            std::memcpy(p + i, &f, 4);
        }
        break;
    case Type::F16:
    case Type::BF16:
        for (int64_t i = 0; i + 2 <= bytes; i += 2) {
            const uint16_t h = t == Type::F16 ? f32_to_f16(rng.uniform()) : f32_to_bf16(rng.uniform());
            std::memcpy(p + i, &h, 2);
        }
        break;
    case Type::Q8_0:
    case Type::Q4_0: {
        const int64_t bb = t == Type::Q8_0 ? 34 : 18;
        const uint16_t d = f32_to_f16(0.01f);
        for (int64_t i = 0; i + bb <= bytes; i += bb) {
            std::memcpy(p + i, &d, 2);
            for (int64_t j = 2; j < bb; ++j) p[i + j] = uint8_t(rng.next() >> 56);
        }
        break;
    }
    }
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

// Read bandwidth (GB/s): each thread sums its share of a buffer larger than the caches, four
// sequential streams at a time (the decode matmuls read 4 weight groups at once; one stream per
// core leaves DRAM bandwidth unused on this kind of machine).
double stream_read(const uint8_t *buf, int64_t bytes, ThreadPool &pool, int reps) {
    const int64_t chunk = 1 << 20, n_chunks = bytes / chunk, quarter = chunk / 4 / 8;   // uint64 per stream
    std::vector<double> times;
    std::vector<uint64_t> sink(64 * 8, 0);
    for (int r = 0; r < reps; ++r) {
        const double t0 = now();
        pool.parallel_for(n_chunks, [&](int64_t c, int th) {
            const uint64_t *p = reinterpret_cast<const uint64_t *>(buf + c * chunk);
            uint64_t a[4][4] = {};
            for (int64_t i = 0; i < quarter; i += 8)
                for (int q = 0; q < 4; ++q) {
                    const uint64_t *l = p + q * quarter + i;   // one 64-byte line of stream q
                    __builtin_prefetch(l + 128);               // 1 KB ahead, as the decode kernels do
                    a[q][0] += l[0] ^ l[4];
                    a[q][1] += l[1] ^ l[5];
                    a[q][2] += l[2] ^ l[6];
                    a[q][3] += l[3] ^ l[7];
                }
            uint64_t x = 0;
            for (auto &q : a) x ^= q[0] + q[1] + q[2] + q[3];
            sink[size_t(th) * 8] += x;
        });
        times.push_back(now() - t0);
    }
    if (sink[0] == 42) std::printf(" ");
    return double(n_chunks * chunk) / median(times) / 1e9;
}

}  // namespace

int main(int argc, char **argv) {
    std::vector<std::string> types{"f32", "f16", "bf16", "q8_0", "q8x16", "q4_0"}, isa_list, thread_list{"1", "2"},
        s_list{"1", "512"}, shape_list{"attn", "up", "down", "output"};
    int reps = 5;
    double cold_mb = 600.0, max_s = 3.0;
    for (Isa i = Isa::Portable; int(i) <= int(best_isa()); i = Isa(int(i) + 1)) isa_list.push_back(isa_name(i));
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : nullptr;
        if (!v) {
            std::fprintf(stderr, "bench_ops: option %s needs a value\n", a.c_str());
            return 2;
        }
        if (a == "--types")
            types = split(v);
        else if (a == "--isa")
            isa_list = split(v);
        else if (a == "--threads")
            thread_list = split(v);
        else if (a == "--S")
            s_list = split(v);
        else if (a == "--reps")
            reps = std::max(1, std::atoi(v));
        else if (a == "--cold-mb")
            cold_mb = std::atof(v);
        else if (a == "--max-s")
            max_s = std::atof(v);
        else if (a == "--shapes")
            shape_list = split(v);
        else {
            std::fprintf(stderr, "bench_ops: unknown option %s\n", a.c_str());
            return 2;
        }
        ++i;
    }
    struct Shape {
        int64_t k, n;
        const char *what;
    };   // W is [n rows, k]: k inputs -> n outputs
    const Shape shapes[] = {{768, 768, "attn"}, {768, 3072, "up"}, {3072, 768, "down"}, {768, 50304, "output"}};
    for (auto &name : shape_list)
        if (std::none_of(std::begin(shapes), std::end(shapes), [&](const Shape &sh) { return name == sh.what; })) {
            std::fprintf(stderr, "bench_ops: unknown shape '%s' (attn, up, down, output)\n", name.c_str());
            return 2;
        }

    int max_threads = 1;
    for (auto &t : thread_list) max_threads = std::max(max_threads, std::atoi(t.c_str()));
    std::vector<ThreadPool *> pools(size_t(max_threads + 1), nullptr);
    for (auto &t : thread_list) {
        const int n = std::atoi(t.c_str());
        if (n < 1) {
            std::fprintf(stderr, "bench_ops: bad thread count '%s'\n", t.c_str());
            return 2;
        }
        if (!pools[size_t(n)]) pools[size_t(n)] = new ThreadPool(n);
    }

    // One pool of bytes larger than the last-level cache: decode runs (S <= 16) rotate through copies
    // of the weights in it so every matmul streams from memory, as decoding a real model does. It is
    // allocated as the model's repacked weights are (LargeBuffer with the huge-page hint), so the
    // kernels stream from the same kind of pages (transparent huge pages where the OS gives them).
    const int64_t pool_bytes = int64_t(cold_mb * 1e6);
    std::unique_ptr<LargeBuffer> storage;
    if (LargeBuffer::allocate(uint64_t(pool_bytes), true, "the cold working set", &storage)) {
        std::fprintf(stderr, "bench_ops: %s\n", last_error());
        return 1;
    }
    uint8_t *buf = storage->data();   // page-aligned (q8x16 needs 64)
    Rng rng;
    fill(Type::Q8_0, buf, pool_bytes, rng);

    std::printf(
        "# best ISA: %s; cold working set %.0f MB; median of %d; cpu%% = process CPU time / (wall x threads):\n"
        "# well under 100 means other load shared the cores during that row\n",
        isa_name(best_isa()), cold_mb, reps);
    std::vector<double> bw(size_t(max_threads + 1), 0.0);
    for (auto &t : thread_list) {
        const int n = std::atoi(t.c_str());
        bw[size_t(n)] = stream_read(buf, pool_bytes, *pools[size_t(n)], reps);
        std::printf("stream-read %d thread(s): %.1f GB/s\n", n, bw[size_t(n)]);
    }
    std::printf("\n%-8s %-5s %-11s %5s %3s %10s %8s %9s %5s %7s\n", "isa", "type", "k x n", "S", "thr", "ms/matmul",
                "GB/s", "GFLOP/s", "cpu%", "%bw");

    for (const Shape &sh : shapes) {
        if (std::find(shape_list.begin(), shape_list.end(), std::string(sh.what)) == shape_list.end()) continue;
        for (const std::string &tn : types) {
            Type t;
            if (tn == "f32")
                t = Type::F32;
            else if (tn == "f16")
                t = Type::F16;
            else if (tn == "bf16")
                t = Type::BF16;
            else if (tn == "q8_0" || tn == "q8x16")
                t = Type::Q8_0;
            else if (tn == "q4_0")
                t = Type::Q4_0;
            else {
                std::fprintf(stderr, "bench_ops: unknown type '%s'\n", tn.c_str());
                return 2;
            }
            const bool packed = tn == "q8x16";
            const int64_t wbytes = packed ? q8x16_bytes(sh.n, sh.k) : sh.n * row_bytes(t, sh.k);
            if (wbytes > pool_bytes) {
                std::fprintf(stderr, "bench_ops: --cold-mb is below one weight\n");
                return 2;
            }
            const int64_t copies = std::max<int64_t>(1, pool_bytes / wbytes);
            if (packed) {   // random q8_0 rows packed once, then copied
                std::vector<uint8_t> rows(size_t(sh.n * row_bytes(t, sh.k)));
                fill(t, rows.data(), int64_t(rows.size()), rng);
                std::memset(buf, 0, size_t(wbytes));
                pack_q8x16(reinterpret_cast<const BlockQ8_0 *>(rows.data()), 0, sh.n, sh.k, buf);
                for (int64_t c = 1; c < copies; ++c) std::memcpy(buf + c * wbytes, buf, size_t(wbytes));
            } else {
                fill(t, buf, copies * wbytes, rng);
            }
            auto mm = [&](const uint8_t *w, const float *X, int64_t S, float *Y, ThreadPool *pool) {
                const MatmulOut out{t, w, sh.n, Y, packed};
                matmul_multi(&out, 1, sh.k, X, S, pool);
            };
            for (const std::string &S_s : s_list) {
                const int64_t S = std::atoll(S_s.c_str());
                std::vector<float> X(size_t(S * sh.k)), Y(size_t(S * sh.n));
                for (auto &x : X) x = rng.uniform();
                for (const std::string &isn : isa_list) {
                    Isa want = isn == "portable" ? Isa::Portable
                        : isn == "avx2"          ? Isa::Avx2
                        : isn == "avxvnni"       ? Isa::AvxVnni
                                                 : Isa::Avx512;
                    if (set_isa(want) != want) continue;   // not supported here
                    for (const std::string &th : thread_list) {
                        const int nt = std::atoi(th.c_str());
                        ThreadPool *pool = pools[size_t(nt)];
                        // Decode steps (S = 1, or a batch of up to 16 sequences): one sample = one pass over
                        // all copies, weights from memory; larger S (prompts): one matmul, weights warm.
                        const bool cold = S <= 16;
                        const int64_t per_sample = cold ? copies : 1;
                        std::vector<double> times;
                        mm(buf, X.data(), S, Y.data(), pool);   // warm-up
                        const double start = now(), cpu0 = cpu_now();
                        for (int r = 0; r < reps; ++r) {
                            const double t0 = now();
                            for (int64_t c = 0; c < per_sample; ++c) mm(buf + c * wbytes, X.data(), S, Y.data(), pool);
                            times.push_back((now() - t0) / double(per_sample));
                            if (now() - start > max_s) break;
                        }
                        const double cpu_frac = (cpu_now() - cpu0) / ((now() - start) * nt);
                        const double sec = median(times);
                        const double gbs = double(wbytes) / sec / 1e9,
                                     gflops = 2.0 * double(S * sh.n * sh.k) / sec / 1e9;
                        char ks[32];
                        std::snprintf(ks, sizeof ks, "%lldx%lld", (long long)sh.k, (long long)sh.n);
                        std::printf("%-8s %-5s %-11s %5lld %3d %10.3f %8.1f %9.1f %5.0f", isa_name(want), tn.c_str(),
                                    ks, (long long)S, nt, sec * 1e3, gbs, gflops, 100.0 * cpu_frac);
                        if (cold && bw[size_t(nt)] > 0) std::printf(" %6.0f%%", 100.0 * gbs / bw[size_t(nt)]);
                        std::printf("\n");
                        std::fflush(stdout);
                    }
                }
            }
        }
    }
    for (auto *p : pools) delete p;
    return 0;
}
