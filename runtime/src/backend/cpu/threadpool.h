// A fixed pool of worker threads; parallel_for publishes one job per call (no allocation per call)
// and returns when its tasks are done, without waiting for workers that are asleep or preempted.
#pragma once

#include <cstdint>
#include <functional>

namespace mole::cpu {

class ThreadPool {
public:
    // n_threads counts the calling thread: n_threads = 1 runs everything on the caller. Throws
    // std::system_error when the system refuses a thread (those already started are joined).
    explicit ThreadPool(int n_threads);
    ~ThreadPool();
    ThreadPool(const ThreadPool &) = delete;
    ThreadPool &operator=(const ThreadPool &) = delete;

    int size() const { return n_threads_; }
    // Runs fn(task, thread) for task in [0, n_tasks), spread over the threads; returns when all
    // are done. thread is in [0, size()). Not reentrant. Pass a lambda as std::ref(lambda) so the
    // std::function does not allocate on every call.
    void parallel_for(int64_t n_tasks, const std::function<void(int64_t task, int thread)> &fn);

private:
    void shutdown();   // stops and joins the workers, frees impl_
    struct Impl;
    Impl *impl_;
    int n_threads_;
};

}  // namespace mole::cpu
