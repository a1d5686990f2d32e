// The LUT staging pipeline's host logic (runtime/src/lut_pipeline.h) against a fake asynchronous
// device: each stream is a worker thread that runs its queue with random delays, events complete
// when a worker reaches them, "device memory" is host memory. Over many steps with changing ids,
// random cancels and a small cache, checks that:
//   - every row a mix reads (from staging or a cache slot) holds the file's bytes of that row and
//     layer (the right rows reach the mix, and a cancelled step leaves no half-filled slot served);
//   - no pinned ring slot is rewritten before the copy that reads it has run (each copy's source
//     bytes are hashed when it is queued and again when it runs);
//   - the counters equal the distinct uncached rows times the row bytes.
// Built and run as is (tests/test_c.py) and under ThreadSanitizer (tests/test_sanitizers.py).
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <functional>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "check.h"
#include "lut_index.h"
#include "lut_pipeline.h"
#include "lut_reader.h"
#include "mmap.h"
#include "types.h"

using namespace mole;

namespace {

uint64_t hash_bytes(const uint8_t *p, uint64_t n) {
    uint64_t h = 1469598103934665603ull;
    for (uint64_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

class FakeDevice : public CopyEngine {
public:
    explicit FakeDevice(uint64_t seed) {
        for (int s = 0; s < 2; ++s) {
            queues_[s].rng.seed(seed * 2 + uint64_t(s));
            queues_[s].worker = std::thread([this, s] { run(s); });
        }
    }
    ~FakeDevice() override {
        for (Queue &q : queues_) {
            {
                std::lock_guard<std::mutex> l(q.m);
                q.stop = true;
            }
            q.cv.notify_all();
            q.worker.join();
        }
        for (uint8_t *p : mem_) delete[] p;
    }
    void *alloc_pinned(uint64_t bytes) override { return alloc(bytes); }
    void *alloc_device(uint64_t bytes) override { return alloc(bytes); }
    Status make_events(int32_t n) override {
        std::lock_guard<std::mutex> l(em_);
        recorded_.assign(size_t(n), 0);
        done_.assign(size_t(n), 0);
        return MOLE_STATUS_OK;
    }
    void copy_h2d(void *dev, const void *pinned, uint64_t bytes, Stream s) override {
        const uint8_t *src = static_cast<const uint8_t *>(pinned);
        const uint64_t h = hash_bytes(src, bytes);
        enqueue(s, [this, dev, src, bytes, h] {
            if (hash_bytes(src, bytes) != h) ++rewritten_;   // the host wrote it before this copy ran
            std::memcpy(dev, src, bytes);
        });
    }
    void scatter(const uint8_t *const *pairs, int32_t n, uint64_t len, Stream s) override {
        enqueue(s, [pairs, n, len] {
            for (int32_t i = 0; i < n; ++i) std::memcpy(const_cast<uint8_t *>(pairs[2 * i + 1]), pairs[2 * i], len);
        });
    }
    void record(int32_t event, Stream s) override {
        uint64_t seq;
        {
            std::lock_guard<std::mutex> l(em_);
            seq = ++recorded_[size_t(event)];
        }
        enqueue(s, [this, event, seq] {
            {
                std::lock_guard<std::mutex> l(em_);
                done_[size_t(event)] = std::max(done_[size_t(event)], seq);
            }
            ecv_.notify_all();
        });
    }
    void wait(Stream s, int32_t event) override {
        uint64_t seq;
        {
            std::lock_guard<std::mutex> l(em_);
            seq = recorded_[size_t(event)];
        }
        enqueue(s, [this, event, seq] { wait_done(event, seq); });
    }
    void host_wait(int32_t event) override {
        uint64_t seq;
        {
            std::lock_guard<std::mutex> l(em_);
            seq = recorded_[size_t(event)];
        }
        wait_done(event, seq);
    }
    Status status() const override { return MOLE_STATUS_OK; }

    // Test hooks: any host function on a stream, and a wait until both streams are idle.
    void enqueue(Stream s, std::function<void()> fn) {
        Queue &q = queues_[s];
        {
            std::lock_guard<std::mutex> l(q.m);
            q.ops.push_back(std::move(fn));
            ++q.queued;
        }
        q.cv.notify_all();
    }
    void drain() {
        for (Queue &q : queues_) {
            std::unique_lock<std::mutex> l(q.m);
            q.idle.wait(l, [&] { return q.ran == q.queued; });
        }
    }
    int rewritten() const { return rewritten_.load(); }

private:
    struct Queue {
        std::thread worker;
        std::mutex m;
        std::condition_variable cv, idle;
        std::deque<std::function<void()>> ops;
        uint64_t queued = 0, ran = 0;
        bool stop = false;
        std::mt19937_64 rng;
    };
    void *alloc(uint64_t bytes) {
        uint8_t *p = new uint8_t[bytes];
        std::memset(p, 0xcd, bytes);
        std::lock_guard<std::mutex> l(mm_);
        mem_.push_back(p);
        return p;
    }
    void wait_done(int32_t event, uint64_t seq) {
        std::unique_lock<std::mutex> l(em_);
        ecv_.wait(l, [&] { return done_[size_t(event)] >= seq; });
    }
    void run(int s) {
        Queue &q = queues_[s];
        for (;;) {
            std::function<void()> fn;
            {
                std::unique_lock<std::mutex> l(q.m);
                q.cv.wait(l, [&] { return q.stop || !q.ops.empty(); });
                if (q.ops.empty()) return;
                fn = std::move(q.ops.front());
                q.ops.pop_front();
            }
            // a device that takes its time: the compute stream slower than the copy stream, and
            // now and then a long stall on either, so copies run far ahead of the mixes
            const uint64_t us = q.rng() % 20 == 0 ? 3000 : q.rng() % (s == kCompute ? 1200 : 200);
            const auto delay = std::chrono::microseconds(us);
            std::this_thread::sleep_for(delay);
            fn();
            {
                std::lock_guard<std::mutex> l(q.m);
                ++q.ran;
            }
            q.idle.notify_all();
        }
    }
    Queue queues_[2];
    std::mutex em_, mm_;
    std::condition_variable ecv_;
    std::vector<uint64_t> recorded_, done_;
    std::vector<uint8_t *> mem_;
    std::atomic<int> rewritten_{0};
};

}  // namespace

int main() {
    // A LUT of V rows [L, N, d] in F16: layer slices of 3 * 41 * 2 = 246 bytes (padded to 256).
    const int32_t V = 64, L = 5, N = 3, d = 41, cap = 10, max_uniq = 12, ring = 4, lookahead = ring - 1;
    const Type type = Type::F16;
    const uint64_t rb = uint64_t(row_bytes(type, int64_t(L) * N * d));
    std::vector<uint8_t> lut(size_t(V) * rb);
    std::mt19937_64 rng(7);
    for (auto &b : lut) b = uint8_t(rng());
    char path[] = "/tmp/mole-test-pipeline-XXXXXX";
    const int fd = mkstemp(path);
    CHECK(fd >= 0 && write(fd, lut.data(), lut.size()) == ssize_t(lut.size()));
    close(fd);
    std::unique_ptr<MappedFile> file;
    CHECK(MappedFile::open(path, &file) == MOLE_STATUS_OK);
    unlink(path);
    LutReader reader;
    reader.init(*file, 0, rb);

    FakeDevice dev(11);
    LutIndex index;
    CHECK(index.init(V, cap, max_uniq, rb) == MOLE_STATUS_OK);
    uint8_t *slots = static_cast<uint8_t *>(dev.alloc_device(uint64_t(cap) * rb));
    uint64_t slice_max = 0;
    for (int32_t il = 0; il < L; ++il) slice_max = std::max(slice_max, lut_layer_slice(type, il, N, d).bytes);
    LutPipeline pipe;
    CHECK(pipe.init(dev, ring, max_uniq, slice_max, slots, rb) == MOLE_STATUS_OK);
    CHECK(pipe.init(dev, 2, max_uniq, slice_max, slots, rb) != MOLE_STATUS_OK);   // fewer than 3 slots: refused
    CHECK(pipe.init(dev, ring, max_uniq, slice_max, slots, rb) == MOLE_STATUS_OK);

    std::atomic<int> wrong{0}, reads{0};
    uint64_t misses = 0, staged_bytes = 0, completed_miss_bytes = 0, hits_before = 0;
    int cancelled = 0;
    const int kSteps = 300;
    for (int step = 0; step < kSteps; ++step) {
        // distinct ids, skewed toward small ids (Zipf-like), 1 .. max_uniq of them
        std::vector<int32_t> uniq;
        const int U = 1 + int(rng() % max_uniq);
        while (int(uniq.size()) < U) {
            const int32_t v = int32_t((rng() % V) * (rng() % V) / V);
            if (std::find(uniq.begin(), uniq.end(), v) == uniq.end()) uniq.push_back(v);
        }
        std::vector<int32_t> slot_of(static_cast<size_t>(U));
        dev.drain();   // a new step starts with the device idle (the backend's begin_step)
        index.prepare(uniq.data(), U, slot_of.data());
        pipe.begin_step(U);
        std::vector<LutFill> fills;
        for (int32_t i = 0; i < index.n_misses(); ++i) {
            const LutMiss &m = index.misses()[i];
            fills.push_back(LutFill{m.slot, reader.row_offset(m.token), m.u});
        }
        misses += fills.size();
        const bool cancel = rng() % 10 == 0;
        const int32_t last = cancel ? int32_t(rng() % L) : L - 1;   // a cancelled step stops after layer `last`
        int32_t next = 0;
        auto stage_until = [&](int32_t l) {
            for (; next <= std::min(l, L - 1); ++next) {
                const BlockRange r = lut_layer_slice(type, next, N, d);
                pipe.stage(reader, fills.data(), int32_t(fills.size()), next, r);
                staged_bytes += fills.size() * r.bytes;
            }
        };
        stage_until(lookahead - 1);
        for (int32_t il = 0; il <= last; ++il) {
            stage_until(il + lookahead);
            pipe.before_mix(il);
            const BlockRange r = lut_layer_slice(type, il, N, d);
            // where the mix reads each id: staging if staged this step, else its cache slot
            std::vector<const uint8_t *> src(static_cast<size_t>(U));
            for (int32_t u = 0; u < U; ++u) {
                const uint8_t *p = pipe.staged(il, u);
                src[size_t(u)] = p            ? p
                    : slot_of[size_t(u)] >= 0 ? slots + uint64_t(slot_of[size_t(u)]) * rb + r.offset
                                              : nullptr;
            }
            const uint8_t *base = lut.data();
            dev.enqueue(CopyEngine::kCompute, [&wrong, &reads, src, uniq, base, rb, r] {
                for (size_t u = 0; u < src.size(); ++u) {
                    ++reads;
                    if (!src[u] || std::memcmp(src[u], base + uint64_t(uniq[u]) * rb + r.offset, r.bytes) != 0) ++wrong;
                }
            });
            pipe.after_mix(il);
        }
        dev.drain();
        if (cancel) {
            ++cancelled;
            continue;   // no commit: the step's reserved slots are never found
        }
        index.commit();
        completed_miss_bytes += fills.size() * rb;
        if (step == kSteps / 2) hits_before = index.counters.cache_hits;
    }
    dev.drain();
    std::printf("steps %d (cancelled %d), rows read by mixes %d, misses %llu, hits %llu, host wait %.1f ms\n", kSteps,
                cancelled, reads.load(), (unsigned long long)misses, (unsigned long long)index.counters.cache_hits,
                pipe.counters.host_wait_ms);
    CHECK(wrong.load() == 0);          // every mix saw the file's bytes of its row and layer
    CHECK(dev.rewritten() == 0);       // no ring slot rewritten under a pending copy
    CHECK(cancelled > 0 && index.counters.cache_hits > hits_before && hits_before > 0);
    CHECK(index.counters.rows_fetched == misses && index.counters.bytes_fetched == misses * rb);
    CHECK(pipe.counters.bytes_h2d == staged_bytes);
    // Slices tile an F16 row exactly, so a completed step moves exactly its misses' row bytes.
    uint64_t per_row = 0;
    for (int32_t il = 0; il < L; ++il) per_row += lut_layer_slice(type, il, N, d).bytes;
    CHECK(per_row == rb && completed_miss_bytes <= pipe.counters.bytes_h2d);

    // Pinned frequent ids: ids below 4 of an 8-slot cache survive a scan of 100 other ids, and a
    // cancelled step's pinned reservation is not lost (its slot goes back to the LRU).
    LutIndex pin;
    CHECK(pin.init(V * 8, 8, max_uniq, rb) == MOLE_STATUS_OK);
    pin.set_pinned(100);   // clamped to half the slots
    CHECK(pin.pinned() == 4);
    std::vector<int32_t> got(12);
    const int32_t first[4] = {0, 1, 2, 3};
    pin.prepare(first, 4, got.data());
    pin.commit();
    for (int32_t base = 100; base < 200; base += 4) {
        const int32_t scan[4] = {base, base + 1, base + 2, base + 3};
        pin.prepare(scan, 4, got.data());
        pin.commit();
    }
    const uint64_t hits = pin.counters.cache_hits;
    pin.prepare(first, 4, got.data());
    pin.commit();
    CHECK(pin.counters.cache_hits == hits + 4);
    for (int32_t base = 300; base < 400; base += 4) {   // a hit leaves them pinned: another scan
        const int32_t scan[4] = {base, base + 1, base + 2, base + 3};
        pin.prepare(scan, 4, got.data());
        pin.commit();
    }
    pin.prepare(first, 4, got.data());
    pin.commit();
    CHECK(pin.counters.cache_hits == hits + 8);
    const int32_t cancelled_pin[1] = {3};   // already cached: a hit, nothing reserved
    pin.prepare(cancelled_pin, 1, got.data());
    CHECK(got[0] >= 0 && pin.counters.cache_hits == hits + 9);
    LutIndex lru;   // the same without pinning: the scan evicts them
    CHECK(lru.init(V * 4, 8, max_uniq, rb) == MOLE_STATUS_OK);
    lru.prepare(first, 4, got.data());
    lru.commit();
    for (int32_t base = 100; base < 200; base += 4) {
        const int32_t scan[4] = {base, base + 1, base + 2, base + 3};
        lru.prepare(scan, 4, got.data());
        lru.commit();
    }
    const uint64_t lru_hits = lru.counters.cache_hits;
    lru.prepare(first, 4, got.data());
    CHECK(lru.counters.cache_hits == lru_hits);
    // A pinned id missed in a step that never commits leaves its slot to the LRU, not leaked:
    // 8 slots, 4 pinned; miss pinned ids 4.. (clamped set: 0..3 pinned) and cancel, many times.
    LutIndex leak;
    CHECK(leak.init(V * 4, 8, max_uniq, rb) == MOLE_STATUS_OK);
    leak.set_pinned(4);
    for (int rep = 0; rep < 20; ++rep) {
        const int32_t ids[2] = {int32_t(rep % 4), int32_t(50 + rep)};
        leak.prepare(ids, 2, got.data());   // no commit: cancelled
        CHECK(got[0] >= 0 || rep >= 8);
    }
    const int32_t again[4] = {0, 1, 2, 3};
    leak.prepare(again, 4, got.data());
    CHECK(got[0] >= 0 && got[1] >= 0 && got[2] >= 0 && got[3] >= 0);   // every miss still finds a slot
    if (g_failures == 0) std::printf("test_lut_pipeline: all passed\n");
    return g_failures == 0 ? 0 : 1;
}
