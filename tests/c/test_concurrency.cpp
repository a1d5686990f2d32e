// Several contexts on one model, each driven by its own thread, give bit for bit the logits that
// the same work gives one context after another; mole_context_cancel from another thread stops a
// long prompt between layers, leaves the sequence as it was, and the context works on afterwards.
// Runs on the bundled demo model (MOLE_DEMO_MODEL, else the source tree's). Plain and under
// ThreadSanitizer (tests/test_sanitizers.py).
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "check.h"
#include "mole.h"

#ifndef MOLE_SOURCE_DIR
#define MOLE_SOURCE_DIR "."
#endif

namespace {

const char *demo_path() {
    const char *e = std::getenv("MOLE_DEMO_MODEL");
    return e && *e ? e : MOLE_SOURCE_DIR "/python/mole/data/demo.gguf";
}

mole_context *new_context(const mole_model *m, int32_t n_ctx, int32_t n_batch) {
    mole_context_params p;
    mole_context_default_params(&p);
    p.n_ctx = n_ctx;
    p.n_threads = 2;   // each context has workers of its own
    p.n_batch = n_batch;
    p.lut_cache_mb = 1;
    mole_context *c = nullptr;
    CHECK(mole_context_new(m, &p, &c) == MOLE_STATUS_OK);
    return c;
}

// The logits of every position of `ids`, fed in chunks of `step` tokens.
std::vector<float> run(const mole_model *m, const std::vector<int32_t> &ids, int32_t step, int32_t V) {
    mole_context *c = new_context(m, 256, 64);
    std::vector<float> out(ids.size() * size_t(V));
    for (size_t at = 0; at < ids.size(); at += size_t(step)) {
        const int32_t n = int32_t(std::min(ids.size() - at, size_t(step)));
        CHECK(mole_decode(c, n, ids.data() + at, nullptr, nullptr, out.data() + at * size_t(V), size_t(n) * V) ==
              MOLE_STATUS_OK);
    }
    mole_context_free(c);
    return out;
}

}  // namespace

int main() {
    mole_model *m = nullptr;
    if (mole_model_load(demo_path(), nullptr, &m) != MOLE_STATUS_OK) {
        std::fprintf(stderr, "test_concurrency: %s\n", mole_last_error());
        return 1;
    }
    mole_model_info info;
    CHECK(mole_model_get_info(m, &info) == MOLE_STATUS_OK);
    const int32_t V = info.n_vocab;
    constexpr int kThreads = 4;
    std::vector<std::vector<int32_t>> seqs(kThreads);
    for (int t = 0; t < kThreads; ++t)
        for (int i = 0; i < 48; ++i) seqs[size_t(t)].push_back(int32_t((i * 131 + t * 977 + 7) % V));
    // one after another: the reference
    std::vector<std::vector<float>> ref;
    for (int t = 0; t < kThreads; ++t) ref.push_back(run(m, seqs[size_t(t)], 48, V));
    // the same at once, each thread on its own context of the shared model, a prompt and then
    // token by token (the LUT rows of each context's own cache)
    std::vector<std::vector<float>> got(kThreads), got_steps(kThreads);
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t)
        threads.emplace_back([&, t] {
            got[size_t(t)] = run(m, seqs[size_t(t)], 48, V);
            got_steps[size_t(t)] = run(m, seqs[size_t(t)], 1, V);
        });
    for (auto &th : threads) th.join();
    for (int t = 0; t < kThreads; ++t) {
        CHECK(got[size_t(t)] == ref[size_t(t)]);   // bit for bit
        const std::vector<float> steps_ref = run(m, seqs[size_t(t)], 1, V);
        CHECK(got_steps[size_t(t)] == steps_ref);
    }

    // cancel from another thread: a prompt of 1500 tokens in one step, cancelled while it runs
    mole_context *c = new_context(m, 2048, 2048);
    std::vector<int32_t> prompt(1500);
    for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = int32_t((i * 37 + 11) % V);
    std::vector<float> last(V);
    std::vector<int8_t> want(prompt.size(), 0);
    want.back() = 1;
    std::atomic<bool> done{false};
    std::thread canceller([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
        while (!done.load()) {
            mole_context_cancel(c);
            std::this_thread::sleep_for(std::chrono::microseconds(200));
        }
    });
    const mole_status st =
        mole_decode(c, int32_t(prompt.size()), prompt.data(), nullptr, want.data(), last.data(), last.size());
    done = true;
    canceller.join();
    CHECK(st == MOLE_STATUS_CANCELLED);
    CHECK(std::strstr(mole_last_error(), "cancelled") != nullptr);
    std::printf("cancelled: %s\n", mole_last_error());
    int32_t len = -1;
    CHECK(mole_seq_length(c, 0, &len) == MOLE_STATUS_OK && len == 0);   // the interrupted step left nothing
    // the context works on: the same prompt now gives what a fresh context gives (a cancel the
    // canceller sent after the decode returned stays for the next decode, as mole.h says: that
    // one stops at once, before any token, and the one after runs)
    mole_status again =
        mole_decode(c, int32_t(prompt.size()), prompt.data(), nullptr, want.data(), last.data(), last.size());
    if (again == MOLE_STATUS_CANCELLED) {
        CHECK(mole_seq_length(c, 0, &len) == MOLE_STATUS_OK && len == 0);
        again = mole_decode(c, int32_t(prompt.size()), prompt.data(), nullptr, want.data(), last.data(), last.size());
    }
    CHECK(again == MOLE_STATUS_OK);
    mole_context *fresh = new_context(m, 2048, 2048);
    std::vector<float> last_fresh(V);
    CHECK(mole_decode(fresh, int32_t(prompt.size()), prompt.data(), nullptr, want.data(), last_fresh.data(),
                      last_fresh.size()) == MOLE_STATUS_OK);
    CHECK(last == last_fresh);
    mole_context_free(fresh);
    mole_context_free(c);
    mole_model_free(m);
    if (g_failures == 0) std::printf("test_concurrency: all passed\n");
    return g_failures == 0 ? 0 : 1;
}
