// ThreadPool: persistent workers woken once per parallel_for (spin briefly, then sleep on a
// condition variable); tasks are handed out by an atomic counter; the caller works too.
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
constexpr int kSpin = 4096;  // pause iterations (~0.1-0.5 ms) before a waiting thread sleeps
}

struct ThreadPool::Impl {
    std::vector<std::thread> workers;
    std::mutex m;
    std::condition_variable cv_start, cv_done;
    std::atomic<uint64_t> generation{0};
    std::atomic<int64_t> next{0};
    std::atomic<int> pending{0};   // workers that have not finished the current job
    int64_t n_tasks = 0;
    const std::function<void(int64_t, int)> *fn = nullptr;
    bool stop = false;

    void run_tasks(int thread) {
        for (;;) {
            int64_t t = next.fetch_add(1, std::memory_order_relaxed);
            if (t >= n_tasks) return;
            (*fn)(t, thread);
        }
    }

    void worker(int thread) {
        uint64_t seen = 0;
        for (;;) {
            uint64_t g = generation.load(std::memory_order_acquire);
            for (int i = 0; i < kSpin && g == seen; ++i) {
                MOLE_PAUSE();
                g = generation.load(std::memory_order_acquire);
            }
            if (g == seen) {
                std::unique_lock<std::mutex> lk(m);
                cv_start.wait(lk, [&] { return generation.load(std::memory_order_acquire) != seen; });
                g = generation.load(std::memory_order_acquire);
            }
            seen = g;
            if (stop) return;   // written before the generation bump that woke us
            run_tasks(thread);
            if (pending.fetch_sub(1, std::memory_order_acq_rel) == 1) {
                std::lock_guard<std::mutex> lk(m);
                cv_done.notify_one();
            }
        }
    }
};

ThreadPool::ThreadPool(int n_threads) : impl_(new Impl), n_threads_(n_threads < 1 ? 1 : n_threads) {
    impl_->workers.reserve(size_t(n_threads_ - 1));
    for (int i = 1; i < n_threads_; ++i) impl_->workers.emplace_back([this, i] { impl_->worker(i); });
}

ThreadPool::~ThreadPool() {
    {
        std::lock_guard<std::mutex> lk(impl_->m);
        impl_->stop = true;
        impl_->generation.fetch_add(1, std::memory_order_release);
    }
    impl_->cv_start.notify_all();
    for (auto &t : impl_->workers) t.join();
    delete impl_;
}

void ThreadPool::parallel_for(int64_t n_tasks, const std::function<void(int64_t task, int thread)> &fn) {
    if (n_tasks <= 0) return;
    if (n_threads_ == 1 || n_tasks == 1) {
        for (int64_t t = 0; t < n_tasks; ++t) fn(t, 0);
        return;
    }
    Impl &p = *impl_;
    p.fn = &fn;
    p.n_tasks = n_tasks;
    p.next.store(0, std::memory_order_relaxed);
    p.pending.store(n_threads_ - 1, std::memory_order_relaxed);
    {
        std::lock_guard<std::mutex> lk(p.m);
        p.generation.fetch_add(1, std::memory_order_release);
    }
    p.cv_start.notify_all();
    p.run_tasks(0);
    for (int i = 0; i < kSpin && p.pending.load(std::memory_order_acquire) != 0; ++i) MOLE_PAUSE();
    if (p.pending.load(std::memory_order_acquire) != 0) {
        std::unique_lock<std::mutex> lk(p.m);
        p.cv_done.wait(lk, [&] { return p.pending.load(std::memory_order_acquire) == 0; });
    }
}

}  // namespace mole::cpu
