// Sampler tests: pinned RNG stream, determinism, greedy and ties, each filter's effect on a known
// distribution, empirical frequencies vs softmax, repetition penalty window, errors, and no heap
// allocation per sample (global operator new is counted).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <numeric>
#include <random>
#include <vector>

#include "sampler.h"

#include "check.h"
using namespace mole;

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"  // the replaced new/delete pair is malloc/free
#endif
static std::atomic<long> g_allocs{0};
void *operator new(std::size_t n) {
    g_allocs++;
    if (void *p = std::malloc(n ? n : 1)) return p;
    throw std::bad_alloc();
}
void operator delete(void *p) noexcept { std::free(p); }
void operator delete(void *p, std::size_t) noexcept { std::free(p); }

static mole_sampler_params params(float temp, int32_t top_k = 0, float top_p = 1.0f, float min_p = 0.0f,
                                  uint64_t seed = 1234) {
    mole_sampler_params p;
    p.temperature = temp;
    p.top_k = top_k;
    p.top_p = top_p;
    p.min_p = min_p;
    p.repeat_penalty = 1.0f;
    p.repeat_last_n = 64;
    p.seed = seed;
    return p;
}

static std::unique_ptr<Sampler> make(const mole_sampler_params &p) {
    std::unique_ptr<Sampler> s;
    CHECK(Sampler::create(p, &s) == MOLE_STATUS_OK);
    return s;
}

static int32_t draw(Sampler &s, const std::vector<float> &logits) {
    int32_t t = -1;
    CHECK(s.sample(logits.data(), (int32_t)logits.size(), &t) == MOLE_STATUS_OK);
    return t;
}

// Logits whose softmax is the given distribution.
static std::vector<float> from_probs(std::vector<double> p) {
    std::vector<float> l;
    for (double x : p) l.push_back(x > 0 ? (float)std::log(x) : -INFINITY);
    return l;
}

static std::vector<double> frequencies(Sampler &s, const std::vector<float> &logits, int n) {
    std::vector<long> count(logits.size(), 0);
    for (int i = 0; i < n; i++) count[(size_t)draw(s, logits)]++;
    std::vector<double> f;
    for (long c : count) f.push_back((double)c / n);
    return f;
}

static void test_rng() {
    // xoshiro256** seeded by splitmix64, pinned so every platform gives the same stream.
    Rng r0(0), r42(42);
    CHECK(r0.next() == 0x99ec5f36cb75f2b4ull);
    CHECK(r0.next() == 0xbf6e1f784956452aull);
    CHECK(r0.next() == 0x1a5f849d4933e6e0ull);
    CHECK(r42.next() == 0x15780b2e0c2ec716ull);
    CHECK(r42.next() == 0x6104d9866d113a7eull);
    Rng r(7);
    for (int i = 0; i < 1000; i++) {
        double u = r.uniform();
        CHECK(u >= 0.0 && u < 1.0);
    }
}

static void test_determinism() {
    std::vector<float> logits(1000);
    for (size_t i = 0; i < logits.size(); i++) logits[i] = (float)std::sin((double)i * 0.37) * 3.0f;
    auto a = make(params(0.9f, 50, 0.9f, 0.01f, 99)), b = make(params(0.9f, 50, 0.9f, 0.01f, 99)),
         c = make(params(0.9f, 50, 0.9f, 0.01f, 100));
    std::vector<int32_t> sa, sb, sc;
    for (int i = 0; i < 200; i++) {
        sa.push_back(draw(*a, logits));
        sb.push_back(draw(*b, logits));
        sc.push_back(draw(*c, logits));
    }
    CHECK(sa == sb);
    CHECK(sa != sc);
    a->reset();
    std::vector<int32_t> again;
    for (int i = 0; i < 200; i++) again.push_back(draw(*a, logits));
    CHECK(again == sa);
}

static void test_greedy() {
    auto s = make(params(0.0f));
    CHECK(draw(*s, {0.1f, 2.5f, -1.0f, 2.4f}) == 1);
    CHECK(draw(*s, {3.0f, 1.0f, 3.0f}) == 0);                     // tie -> lowest id
    CHECK(draw(*s, {-INFINITY, -5.0f, -INFINITY}) == 1);
    auto k1 = make(params(1.0f, 1));                                // top-k = 1 is greedy
    std::vector<float> l = {0.5f, 0.7f, 0.7f, 0.1f};
    for (int i = 0; i < 50; i++) CHECK(draw(*k1, l) == 1);
    // the one-pass greedy path (temperature 0, no penalty) against the candidate path (top-k = 1) on
    // coarse random logits: many ties, -inf entries, vocabularies of every small size
    std::mt19937 rng(7);
    for (int trial = 0; trial < 300; trial++) {
        std::vector<float> v(size_t(1 + trial % 97));
        for (float &x : v) x = (rng() % 9 == 0) ? -INFINITY : float(int(rng() % 7) - 3);
        if (std::all_of(v.begin(), v.end(), [](float x) { return x == -INFINITY; })) v[v.size() / 2] = 0.0f;
        CHECK(draw(*s, v) == draw(*k1, v));
    }
    // its errors: the first bad logit named, as on the candidate path
    int32_t t;
    float bad[4] = {0.0f, 1.0f, INFINITY, NAN};
    CHECK(s->sample(bad, 4, &t) == MOLE_STATUS_INVALID_ARGUMENT && std::strstr(last_error(), "logit 2 is +inf"));
    bad[2] = 0.5f;
    CHECK(s->sample(bad, 4, &t) == MOLE_STATUS_INVALID_ARGUMENT && std::strstr(last_error(), "logit 3 is NaN"));
    float ninf[3] = {-INFINITY, -INFINITY, -INFINITY};
    CHECK(s->sample(ninf, 3, &t) == MOLE_STATUS_INVALID_ARGUMENT && std::strstr(last_error(), "every logit is -inf"));
    std::vector<float> wide(70, 1.0f);   // past the first block of 32
    wide[50] = INFINITY;
    wide[40] = NAN;
    CHECK(s->sample(wide.data(), 70, &t) == MOLE_STATUS_INVALID_ARGUMENT &&
          std::strstr(last_error(), "logit 40 is NaN"));
    std::vector<float> all_ninf(100, -INFINITY);
    CHECK(s->sample(all_ninf.data(), 100, &t) == MOLE_STATUS_INVALID_ARGUMENT && std::strstr(last_error(), "-inf"));
    wide.assign(70, 1.0f);
    wide[33] = wide[65] = 2.0f;   // the first of two equal maxima, in different blocks
    CHECK(draw(*s, wide) == 33);
}

static void test_filters() {
    const std::vector<double> p = {0.5, 0.3, 0.15, 0.05};
    const auto logits = from_probs(p);
    // top-k = 2: only ids 0 and 1, in ratio 5:3
    auto k2 = make(params(1.0f, 2));
    auto f = frequencies(*k2, logits, 20000);
    CHECK(f[2] == 0.0 && f[3] == 0.0);
    CHECK(std::fabs(f[0] - 0.625) < 0.02);
    // top-p = 0.75: the smallest prefix reaching 0.75 is {0, 1}
    auto tp = make(params(1.0f, 0, 0.75f));
    f = frequencies(*tp, logits, 20000);
    CHECK(f[2] == 0.0 && f[3] == 0.0);
    CHECK(std::fabs(f[0] - 0.625) < 0.02 && std::fabs(f[1] - 0.375) < 0.02);
    // top-p = 0.9: {0, 1, 2}; top-p = 0.4: {0}
    f = frequencies(*make(params(1.0f, 0, 0.9f)), logits, 5000);
    CHECK(f[2] > 0.0 && f[3] == 0.0);
    f = frequencies(*make(params(1.0f, 0, 0.4f)), logits, 500);
    CHECK(f[0] == 1.0);
    // min-p = 0.2: keep p >= 0.1 -> {0, 1, 2}, renormalized
    f = frequencies(*make(params(1.0f, 0, 1.0f, 0.2f)), logits, 20000);
    CHECK(f[3] == 0.0);
    CHECK(std::fabs(f[2] - 0.15 / 0.95) < 0.02);
    // top-p is measured on the top-k softmax (llama.cpp order): with top_k = 3 the kept mass is
    // 0.5/0.95 + 0.3/0.95 = 0.842 >= 0.8, so top_p = 0.8 keeps {0, 1}
    f = frequencies(*make(params(1.0f, 3, 0.8f)), logits, 5000);
    CHECK(f[2] == 0.0 && f[1] > 0.0);
}

static void test_softmax_frequencies() {
    // All filters off: frequencies match softmax(logits / T).
    const std::vector<float> logits = {1.0f, 0.0f, -0.5f, 2.0f, 0.3f};
    const float T = 0.7f;
    std::vector<double> want(logits.size());
    double z = 0;
    for (size_t i = 0; i < logits.size(); i++) z += want[i] = std::exp(logits[i] / T);
    auto s = make(params(T, 0, 1.0f, 0.0f, 5));
    auto f = frequencies(*s, logits, 50000);
    for (size_t i = 0; i < logits.size(); i++) {
        double sd = std::sqrt(want[i] / z * (1 - want[i] / z) / 50000);
        if (std::fabs(f[i] - want[i] / z) > 5 * sd + 1e-3) {
            std::fprintf(stderr, "token %zu: frequency %.4f, softmax %.4f\n", i, f[i], want[i] / z);
            g_failures++;
        }
    }
    // high temperature flattens, low sharpens
    auto hot = frequencies(*make(params(100.0f)), logits, 20000);
    for (double x : hot) CHECK(std::fabs(x - 0.2) < 0.02);
    auto cold = frequencies(*make(params(0.01f)), logits, 1000);
    CHECK(cold[3] == 1.0);
}

static void test_repetition_penalty() {
    mole_sampler_params p = params(0.0f);
    p.repeat_penalty = 1.5f;
    p.repeat_last_n = 2;
    auto s = make(p);
    const std::vector<float> l = {2.0f, 1.9f, -1.0f, -1.1f};
    CHECK(draw(*s, l) == 0);       // accepted: [0]
    CHECK(draw(*s, l) == 1);       // 2.0 / 1.5 < 1.9; accepted: [0, 1]
    s->accept(2);                  // window of 2: [1, 2]; 0 no longer penalized
    CHECK(draw(*s, l) == 0);
    // negative logits are multiplied: -1.0 * 1.5 < -1.1
    auto n = make(p);
    n->accept(2);
    CHECK(draw(*n, {-5.0f, -5.0f, -1.0f, -1.1f}) == 3);
    // a token repeated in the window is penalized once
    auto once = make(p);
    once->accept(0);
    once->accept(0);
    CHECK(draw(*once, {3.0f, 1.9f}) == 0);  // 3 / 1.5 = 2.0 > 1.9 (twice would be 1.33)
    // ids outside this call's vocabulary are ignored
    auto big = make(p);
    big->accept(1000);
    CHECK(draw(*big, {1.0f, 0.0f}) == 0);
}

static void expect_param_error(mole_sampler_params p, const char *needle) {
    std::unique_ptr<Sampler> s;
    CHECK(Sampler::create(p, &s) == MOLE_STATUS_INVALID_ARGUMENT);
    CHECK(s == nullptr);
    if (!std::strstr(last_error(), needle)) {
        std::fprintf(stderr, "error '%s' does not mention '%s'\n", last_error(), needle);
        g_failures++;
    }
}

static void test_errors() {
    auto p = params(1.0f);
    p.top_k = -1;
    expect_param_error(p, "top_k");
    p = params(1.0f);
    p.top_p = 1.5f;
    expect_param_error(p, "top_p");
    p = params(1.0f);
    p.min_p = -0.1f;
    expect_param_error(p, "min_p");
    p = params(1.0f);
    p.repeat_penalty = 0.0f;
    expect_param_error(p, "repeat_penalty");
    p = params(1.0f);
    p.repeat_last_n = -1;
    expect_param_error(p, "repeat_last_n");
    p = params(NAN);
    expect_param_error(p, "temperature");
    auto s = make(params(1.0f));
    int32_t t;
    float bad[3] = {0.0f, NAN, 1.0f};
    CHECK(s->sample(bad, 3, &t) == MOLE_STATUS_INVALID_ARGUMENT && std::strstr(last_error(), "logit 1 is NaN"));
    CHECK(s->sample(bad, 0, &t) == MOLE_STATUS_INVALID_ARGUMENT && std::strstr(last_error(), "n_vocab"));
    float ninf[2] = {-INFINITY, -INFINITY};
    CHECK(s->sample(ninf, 2, &t) == MOLE_STATUS_INVALID_ARGUMENT && std::strstr(last_error(), "-inf"));
}

static void test_no_allocation() {
    std::vector<float> logits(50304);
    for (size_t i = 0; i < logits.size(); i++) logits[i] = (float)std::cos((double)i * 0.01) * 4.0f;
    mole_sampler_params p = params(0.8f, 40, 0.95f, 0.05f);
    p.repeat_penalty = 1.1f;
    for (auto cfg : {p, params(0.8f), params(0.0f), params(1.0f, 0, 0.9f)}) {
        cfg.repeat_penalty = 1.1f;
        auto s = make(cfg);
        for (int i = 0; i < 80; i++) draw(*s, logits);  // warm: buffers and history reach full size
        long before = g_allocs.load();
        for (int i = 0; i < 50; i++) draw(*s, logits);
        CHECK(g_allocs.load() == before);
    }
}

// top-k over a large vocabulary (the one-pass heap selection when k <= V / 16, nth_element
// otherwise) keeps exactly the k best by (logit, then lower id): the same draws as a sampler
// without top-k on logits where every other candidate is -inf. Many ties, so the id order matters.
static void test_top_k_large_vocab() {
    const int32_t V = 8192;
    std::vector<float> logits((size_t)V);
    for (int32_t i = 0; i < V; i++) logits[(size_t)i] = (float)((i * 2654435761u >> 7) % 61) * 0.25f;
    for (int32_t k : {1, 40, 511, 512, 600}) {
        std::vector<int32_t> ids((size_t)V);
        std::iota(ids.begin(), ids.end(), 0);
        // by logit, ties by lower id (std::sort: stable_sort's buffer comes from the nothrow operator new,
        // which this file does not replace, and would be freed by the replaced delete)
        std::sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) {
            const float la = logits[(size_t)a], lb = logits[(size_t)b];
            return la > lb || (la == lb && a < b);
        });
        std::vector<float> masked((size_t)V, -INFINITY);
        for (int32_t j = 0; j < k; j++) masked[(size_t)ids[(size_t)j]] = logits[(size_t)ids[(size_t)j]];
        auto a = make(params(1.5f, k, 0.99f, 0.0f, 7)), b = make(params(1.5f, 0, 0.99f, 0.0f, 7));
        bool same = true;
        for (int i = 0; i < 300; i++) same &= draw(*a, logits) == draw(*b, masked);
        CHECK(same);
        // near-uniform over the kept set (temperature 1000): every draw is in it, and all of it is drawn
        auto u = make(params(1000.0f, k, 1.0f, 0.0f, 8));
        std::vector<int> seen((size_t)V, 0);
        for (int i = 0; i < 24 * k + 100; i++) seen[(size_t)draw(*u, logits)]++;
        int inside = 0, outside = 0;
        for (int32_t t = 0; t < V; t++) (masked[(size_t)t] == -INFINITY ? outside : inside) += seen[(size_t)t] > 0;
        CHECK(outside == 0 && inside == k);
    }
}

int main() {
    test_rng();
    test_determinism();
    test_greedy();
    test_filters();
    test_top_k_large_vocab();
    test_softmax_frequencies();
    test_repetition_penalty();
    test_errors();
    test_no_allocation();
    if (g_failures) {
        std::fprintf(stderr, "test_sampler: %d failures\n", g_failures);
        return 1;
    }
    std::printf("test_sampler: ok\n");
    return 0;
}
