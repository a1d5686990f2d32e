// ThreadPool: persistent workers; tasks are claimed from one atomic word (job generation, next
// task) and a job ends when all its tasks are done, so the caller never waits for an idle worker.
#include "backend/cpu/threadpool.h"

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define MOLE_PAUSE() _mm_pause()
#else
#define MOLE_PAUSE() std::this_thread::yield()
#endif

namespace mole::cpu {

namespace {
// Pause iterations before a waiting thread sleeps (~0.1-0.5 ms): a decode step issues its ops
// closer together than that, so awake workers catch the next op without a futex wake.
constexpr int kSpin = 4096;

constexpr uint64_t pack(uint32_t gen, uint32_t task) { return (uint64_t(gen) << 32) | task; }
constexpr uint32_t gen_of(uint64_t w) { return uint32_t(w >> 32); }
constexpr uint32_t task_of(uint64_t w) { return uint32_t(w); }
}  // namespace

// Why a job word instead of "wake n workers, wait for n acknowledgements": on a loaded machine a
// worker may be descheduled for milliseconds. Here the caller claims every task that no awake
// thread has claimed and returns as soon as the last task is done; a late worker finds the job's
// generation gone and claims nothing. Only a task already running on a preempted worker is waited on.
//
// A job's task count travels with its generation (job = [generation | n_tasks], stored before the
// word): a worker holding a stale word from the previous job, which the caller has not replaced
// yet while it writes the next job's fields, must not pair that word with the next job's count.
// It did once (n_tasks on its own): a stale claim ran a task twice and counted it in the next
// job's `done`, so a later job returned early or waited forever (two processes sharing 2 cores
// hit it within seconds).
struct ThreadPool::Impl {
    std::vector<std::thread> workers;
    std::mutex m;
    std::condition_variable cv_start, cv_done;
    std::atomic<uint64_t> word{0};                   // [generation:32 | next task:32]
    std::atomic<uint64_t> job{0};                    // [generation:32 | n_tasks:32] of the current job
    std::atomic<int64_t> done{0};                    // tasks of the current job finished
    std::atomic<const std::function<void(int64_t, int)> *> fn{nullptr};
    std::atomic<int> sleepers{0};                    // workers blocked on cv_start
    std::atomic<bool> caller_sleeping{false};
    std::atomic<bool> stop{false};

    // Claims and runs tasks of job `gen` until none is left (or a newer job started).
    void run_tasks(uint32_t gen, int thread) {
        uint64_t w = word.load(std::memory_order_acquire);
        for (;;) {
            if (gen_of(w) != gen) return;
            // The count is this generation's (or the word is stale and the exchange below
            // fails); fn is this job's whenever the exchange succeeds.
            const uint64_t j = job.load(std::memory_order_acquire);
            if (gen_of(j) != gen) return;
            const int64_t n = int64_t(task_of(j));
            if (int64_t(task_of(w)) >= n) return;
            if (!word.compare_exchange_weak(w, w + 1, std::memory_order_acq_rel, std::memory_order_acquire)) continue;
            (*fn.load(std::memory_order_relaxed))(int64_t(task_of(w)), thread);
            if (done.fetch_add(1) + 1 == n && caller_sleeping.load()) {   // seq_cst: see parallel_for
                std::lock_guard<std::mutex> lk(m);
                cv_done.notify_one();
            }
            w = word.load(std::memory_order_acquire);
        }
    }

    void worker(int thread) {
        uint32_t seen = 0;
        for (;;) {
            uint64_t w = word.load(std::memory_order_acquire);
            for (int i = 0; i < kSpin && gen_of(w) == seen && !stop.load(std::memory_order_relaxed); ++i) {
                MOLE_PAUSE();
                w = word.load(std::memory_order_acquire);
            }
            if (gen_of(w) == seen && !stop.load()) {
                std::unique_lock<std::mutex> lk(m);
                sleepers.fetch_add(1);   // seq_cst: pairs with the caller's word store + sleepers load
                cv_start.wait(lk, [&] { return stop.load() || gen_of(word.load()) != seen; });
                sleepers.fetch_sub(1);
                w = word.load(std::memory_order_acquire);
            }
            if (stop.load()) return;
            seen = gen_of(w);
            run_tasks(seen, thread);
        }
    }
};

ThreadPool::ThreadPool(int n_threads) : impl_(new Impl), n_threads_(n_threads < 1 ? 1 : n_threads) {
    try {
        impl_->workers.reserve(size_t(n_threads_ - 1));
        for (int i = 1; i < n_threads_; ++i) impl_->workers.emplace_back([this, i] { impl_->worker(i); });
    } catch (...) {   // the system refused a thread (std::system_error) or the vector: stop those started
        shutdown();
        throw;
    }
}

ThreadPool::~ThreadPool() { shutdown(); }

void ThreadPool::shutdown() {
    {
        std::lock_guard<std::mutex> lk(impl_->m);
        impl_->stop.store(true);
    }
    impl_->cv_start.notify_all();
    for (auto &t : impl_->workers) t.join();
    delete impl_;
}

void ThreadPool::parallel_for(int64_t n_tasks, const std::function<void(int64_t task, int thread)> &fn) {
    if (n_tasks <= 0) return;
    if (n_threads_ == 1 || n_tasks == 1 || n_tasks > int64_t(UINT32_MAX)) {   // (no job holds 2^32 tasks)
        for (int64_t t = 0; t < n_tasks; ++t) fn(t, 0);
        return;
    }
    Impl &p = *impl_;
    // The previous job is complete (all its tasks done), so no thread reads these until the new
    // generation is published below.
    const uint32_t gen = gen_of(p.word.load(std::memory_order_relaxed)) + 1;
    p.job.store(pack(gen, uint32_t(n_tasks)), std::memory_order_release);
    p.fn.store(&fn, std::memory_order_relaxed);
    p.done.store(0, std::memory_order_relaxed);
    p.word.store(pack(gen, 0));   // seq_cst: a worker about to sleep either sees it or is counted
    if (p.sleepers.load() > 0) {
        { std::lock_guard<std::mutex> lk(p.m); }
        p.cv_start.notify_all();
    }
    p.run_tasks(gen, 0);
    for (int i = 0; i < kSpin && p.done.load(std::memory_order_acquire) != n_tasks; ++i) MOLE_PAUSE();
    if (p.done.load(std::memory_order_acquire) != n_tasks) {
        std::unique_lock<std::mutex> lk(p.m);
        p.caller_sleeping.store(true);   // seq_cst: pairs with the last worker's done increment
        p.cv_done.wait(lk, [&] { return p.done.load() == n_tasks; });
        p.caller_sleeping.store(false);
    }
}

}  // namespace mole::cpu
