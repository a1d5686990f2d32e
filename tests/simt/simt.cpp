// The SIMT executor behind simt.h: each CUDA thread a fiber (an x86-64 register switch; ucontext
// elsewhere), blocks run one after another, threads in forward or reverse order until each
// blocks; barriers and warp ops checked when no thread can run. And the CUDA runtime calls, over
// a registry of allocations that remember their size and kind.
#include "simt.h"

#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>

#if defined(__SANITIZE_ADDRESS__)
#define MOLE_SIMT_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MOLE_SIMT_ASAN 1
#endif
#endif
#ifdef MOLE_SIMT_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#if defined(__x86_64__) && !defined(MOLE_SIMT_UCONTEXT)
#define MOLE_SIMT_ASM_SWITCH 1
#else
#include <ucontext.h>
#endif

namespace mole_simt::detail {

// ---------------------------------------------------------------------------------------------
// Device limits (an sm_90-like device).
constexpr size_t kStaticSmem = 48 * 1024;    // static shared memory a block may declare
constexpr size_t kDefaultDynSmem = 48 * 1024;   // dynamic shared memory without the opt-in
constexpr size_t kOptinSmem = 227 * 1024;    // cudaFuncAttributeMaxDynamicSharedMemorySize's ceiling
constexpr uint32_t kPoison32 = 0xffcdffcdu;  // uninitialized memory: NaN as f32, f16 and bf16
constexpr uint64_t kPoison64 = 0xffcdffcdffcdffcdull;

void poison(void *p, size_t n) {
    unsigned char *b = static_cast<unsigned char *>(p);
    size_t i = 0;
    for (; i + 4 <= n; i += 4) std::memcpy(b + i, &kPoison32, 4);
    for (; i < n; ++i) b[i] = (unsigned char)(kPoison32 >> (8 * (i % 4)));
}

// ---------------------------------------------------------------------------------------------
// Reports: every loud failure goes through here.
struct Reports {
    std::mutex mu;
    std::string last;
    std::atomic<uint64_t> count{0};
    std::atomic<bool> quiet{false};
};
Reports &reports() {
    static Reports *r = new Reports;   // never destroyed: usable from other objects' destructors
    return *r;
}
bool env_is(const char *name, const char *value) {
    const char *v = std::getenv(name);
    return v && std::strcmp(v, value) == 0;
}
__attribute__((format(printf, 1, 2))) void report(const char *fmt, ...) {
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    Reports &r = reports();
    {
        std::lock_guard<std::mutex> lock(r.mu);
        r.last = buf;
    }
    r.count.fetch_add(1);
    if (!r.quiet.load()) std::fprintf(stderr, "mole-simt: %s\n", buf);
    if (env_is("MOLE_SIMT_ABORT", "1")) {
        std::fprintf(stderr, "mole-simt: MOLE_SIMT_ABORT=1: aborting\n");
        std::abort();
    }
}

// The last error of the runtime calls, per host thread (as CUDA's): cudaGetLastError returns and
// clears it. A failed launch is also pending: the next synchronize returns it once.
thread_local cudaError_t tl_last_error = cudaSuccess;
thread_local cudaError_t tl_pending = cudaSuccess;
cudaError_t fail(cudaError_t e) {
    if (e != cudaSuccess) tl_last_error = e;
    return e;
}
cudaError_t take_pending() {
    const cudaError_t e = tl_pending;
    tl_pending = cudaSuccess;
    return fail(e);
}

std::atomic<int> g_order{-1};   // -1: not read from the environment yet
std::atomic<unsigned> g_stack_kb{0};
bool no_device() { return env_is("MOLE_SIMT_NO_DEVICE", "1"); }   // read at every call: tests may set it

mole_simt_order order() {
    int o = g_order.load();
    if (o < 0) {
        const char *v = std::getenv("MOLE_SIMT_ORDER");
        o = MOLE_SIMT_FORWARD;
        if (v && std::strcmp(v, "reverse") == 0)
            o = MOLE_SIMT_REVERSE;
        else if (v && *v && std::strcmp(v, "forward") != 0)
            std::fprintf(stderr, "mole-simt: MOLE_SIMT_ORDER=%s: expected forward or reverse; using forward\n", v);
        g_order.store(o);
    }
    return mole_simt_order(o);
}
size_t stack_bytes() {
    unsigned kb = g_stack_kb.load();
    if (kb == 0) {
        const char *v = std::getenv("MOLE_SIMT_STACK_KB");
        kb = v ? unsigned(std::strtoul(v, nullptr, 10)) : 0;
#ifdef MOLE_SIMT_ASAN
        if (kb == 0) kb = 256;   // ASan's redzones make frames bigger
#else
        if (kb == 0) kb = 64;
#endif
        if (kb < 16) kb = 16;
        g_stack_kb.store(kb);
    }
    return size_t(kb) * 1024;
}

// ---------------------------------------------------------------------------------------------
// Allocations: device (cudaMalloc), pinned (cudaMallocHost / cudaHostAlloc), registered.
enum class Kind { Device, Pinned, Registered };
const char *kind_name(Kind k) {
    return k == Kind::Device ? "device allocation"
        : k == Kind::Pinned  ? "pinned host allocation"
                             : "registered host range";
}
struct Alloc {
    size_t size;
    Kind kind;
    unsigned flags;
};
struct Registry {
    std::mutex mu;
    std::map<uintptr_t, Alloc> map;
    size_t device_bytes = 0;
    std::map<const void *, int> max_dyn_smem;   // cudaFuncSetAttribute
    std::set<const void *> streams, events;
    std::map<const void *, size_t> kernel_index;
    std::vector<KernelCount> kernels;
};
Registry &registry() {
    static Registry *r = new Registry;
    return *r;
}
size_t total_global() {
    static const size_t t = [] {
        const char *v = std::getenv("MOLE_SIMT_DEVICE_MB");
        const size_t mb = v ? size_t(std::strtoull(v, nullptr, 10)) : 0;
        return (mb ? mb : 16384) << 20;
    }();
    return t;
}

// The allocation holding p (end inclusive: p may be one past the end), or null. Caller holds mu.
const Alloc *find(Registry &r, const void *p, size_t *offset, bool end_ok = false) {
    const uintptr_t a = uintptr_t(p);
    auto it = r.map.upper_bound(a);
    if (it == r.map.begin()) return nullptr;
    --it;
    const uintptr_t off = a - it->first;
    if (off < it->second.size || (end_ok && off == it->second.size)) {
        if (offset) *offset = size_t(off);
        return &it->second;
    }
    return nullptr;
}

// ---------------------------------------------------------------------------------------------
// Fiber contexts.
struct Thread;
void fiber_main(Thread *t);

#ifdef MOLE_SIMT_ASM_SWITCH
// mole_simt_switch(save, load): push the callee-saved registers and the SSE / x87 control words,
// store rsp in *save, load rsp from `load`, pop the other fiber's and return into it. No signal
// mask is touched (glibc's swapcontext makes two system calls per switch).
extern "C" void mole_simt_switch(void **save_sp, void *load_sp);
extern "C" void mole_simt_fiber_entry();
asm(R"(
    .pushsection .text
    .p2align 4
    .globl mole_simt_switch
    .hidden mole_simt_switch
    .type mole_simt_switch, @function
mole_simt_switch:
    .cfi_startproc
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .cfi_endproc
    .size mole_simt_switch, .-mole_simt_switch

    .p2align 4
    .globl mole_simt_fiber_entry
    .hidden mole_simt_fiber_entry
    .type mole_simt_fiber_entry, @function
mole_simt_fiber_entry:
    .cfi_startproc
    .cfi_undefined rip
    movq %r12, %rdi
    callq *%r13
    ud2
    .cfi_endproc
    .size mole_simt_fiber_entry, .-mole_simt_fiber_entry
    .popsection
)");
struct Context {
    void *sp = nullptr;
};
void ctx_make(Context *c, char *lo, size_t size, Thread *t) {
    uint64_t *s = reinterpret_cast<uint64_t *>((uintptr_t(lo) + size) & ~uintptr_t(15));
    s[-1] = 0;
    s[-2] = 0;   // rsp after the ret below: 16-aligned, as before a call
    s[-3] = uint64_t(uintptr_t(&mole_simt_fiber_entry));
    s[-4] = 0;   // rbp: the end of the frame chain
    s[-5] = 0;   // rbx
    s[-6] = uint64_t(uintptr_t(t));           // r12: the entry's argument
    s[-7] = uint64_t(uintptr_t(&fiber_main));   // r13: the entry's callee
    s[-8] = 0;
    s[-9] = 0;
    s[-10] = 0x1f80ull | (0x037full << 32);   // default MXCSR and x87 control word
    c->sp = &s[-10];
}
inline void ctx_switch(Context *from, Context *to) { mole_simt_switch(&from->sp, to->sp); }
#else
struct Context {
    ucontext_t uc;
};
void ucontext_entry(unsigned hi, unsigned lo) { fiber_main(reinterpret_cast<Thread *>((uintptr_t(hi) << 32) | lo)); }
void ctx_make(Context *c, char *lo, size_t size, Thread *t) {
    getcontext(&c->uc);
    c->uc.uc_stack.ss_sp = lo;
    c->uc.uc_stack.ss_size = size;
    c->uc.uc_link = nullptr;
    const uint64_t v = uint64_t(uintptr_t(t));
    makecontext(&c->uc, reinterpret_cast<void (*)()>(&ucontext_entry), 2, unsigned(v >> 32), unsigned(v));
}
inline void ctx_switch(Context *from, Context *to) { swapcontext(&from->uc, &to->uc); }
#endif

// ---------------------------------------------------------------------------------------------
// Threads, blocks, the scheduler.
enum class State : uint8_t { Ready, Barrier, Warp, Done };

struct Thread : ThreadView {
    Context ctx;
    State state = State::Done;
    bool dirty = false;   // abandoned mid-kernel: its stack holds stale ASan poison
    unsigned linear = 0, lane = 0;
    char *stack_lo = nullptr;
    size_t stack_size = 0;
    void *asan_fake = nullptr;
    const char *file = "";   // where it waits
    int line = 0;
    int bar_kind = 0, bar_pred = 0;
    int *bar_result = nullptr;
    WarpOp op = WarpOp::Sync;
    unsigned mask = 0;
    int arg = 0, width = 32;
    uint64_t value = 0, result = 0;
};

const char *op_name(WarpOp op) {
    static const char *const names[] = {
        "__syncwarp", "__shfl_sync", "__shfl_up_sync",    "__shfl_down_sync",  "__shfl_xor_sync",  "__ballot_sync",
        "__any_sync", "__all_sync",  "__reduce_add_sync", "__reduce_min_sync", "__reduce_max_sync"};
    return names[int(op)];
}
const char *base_name(const char *path) {
    const char *s = std::strrchr(path, '/');
    return s ? s + 1 : path;
}

struct Worker {
    std::vector<Thread> threads;
    char *stacks = nullptr;
    size_t map_bytes = 0, stride = 0;
    Context sched;
    const void *sched_lo = nullptr;
    size_t sched_size = 0;
    const Launch *launch = nullptr;
    Thread *running = nullptr;
    unsigned n = 0;   // threads in the block
    bool failed = false;
    struct Shared {
        const void *key;
        void *ptr;
        size_t bytes;
    };
    std::vector<Shared> shared;
    size_t static_smem = 0;
    void *dyn = nullptr;

    ~Worker() {
        if (stacks) munmap(stacks, map_bytes);
    }

    // Fibers for n threads, each stack with a guard page below it.
    void reserve(unsigned count) {
        const size_t page = size_t(sysconf(_SC_PAGESIZE)), size = (stack_bytes() + page - 1) / page * page;
        if (count <= threads.size() && size + page == stride) return;
        if (count < 32) count = 32;
        if (stacks) munmap(stacks, map_bytes);
        stride = size + page;
        map_bytes = stride * count;
        void *m = mmap(nullptr, map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) {
            std::fprintf(stderr, "mole-simt: cannot map %zu bytes of fiber stacks\n", map_bytes);
            std::abort();
        }
        stacks = static_cast<char *>(m);
        threads.assign(count, Thread());
        for (unsigned i = 0; i < count; ++i) {
            mprotect(stacks + i * stride, page, PROT_NONE);
            threads[i].stack_lo = stacks + i * stride + page;
            threads[i].stack_size = size;
        }
    }

    std::string where(const Thread &t) const {
        char b[256];
        std::snprintf(b, sizeof b, "kernel '%s' block (%u,%u,%u) thread (%u,%u,%u) (warp %u, lane %u)", launch->name,
                      t.block_idx.x, t.block_idx.y, t.block_idx.z, t.thread_idx.x, t.thread_idx.y, t.thread_idx.z,
                      t.linear / 32, t.lane);
        return b;
    }
    std::string coords(unsigned linear) const {
        const Thread &t = threads[linear];
        char b[64];
        std::snprintf(b, sizeof b, "(%u,%u,%u)", t.thread_idx.x, t.thread_idx.y, t.thread_idx.z);
        return b;
    }

    void resume(Thread &t) {
        running = &t;
        tl_view = &t;
#ifdef MOLE_SIMT_ASAN
        void *fake = nullptr;
        __sanitizer_start_switch_fiber(&fake, t.stack_lo, t.stack_size);
#endif
        ctx_switch(&sched, &t.ctx);
#ifdef MOLE_SIMT_ASAN
        __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
        tl_view = nullptr;
        running = nullptr;
    }
    // From inside a fiber: back to the scheduler until it resumes this thread.
    void block(Thread &t) {
#ifdef MOLE_SIMT_ASAN
        __sanitizer_start_switch_fiber(&t.asan_fake, sched_lo, sched_size);
#endif
        ctx_switch(&t.ctx, &sched);
#ifdef MOLE_SIMT_ASAN
        __sanitizer_finish_switch_fiber(t.asan_fake, &sched_lo, &sched_size);
#endif
    }
    // From inside a fiber: leave for good (finished or faulted).
    [[noreturn]] void leave(Thread &t) {
#ifdef MOLE_SIMT_ASAN
        __sanitizer_start_switch_fiber(nullptr, sched_lo, sched_size);
#endif
        ctx_switch(&t.ctx, &sched);
        __builtin_unreachable();
    }
    // From inside a fiber: report and abandon the launch. `what` is a plain string: nothing on a
    // fiber's stack is destroyed when it is abandoned.
    [[noreturn]] void fault(Thread &t, const char *what) {
        report("%s: %s", where(t).c_str(), what);
        failed = true;
        t.state = State::Done;
        t.dirty = true;
        leave(t);
    }

    void free_shared() {
        for (Shared &s : shared) std::free(s.ptr);
        shared.clear();
        static_smem = 0;
        std::free(dyn);
        dyn = nullptr;
    }

    void run_block(const Launch &l, uint3 bidx);
    bool resolve_warps();
    void execute(unsigned base, const Thread &first);
    std::string warp_deadlock(Thread **culprit);
};
thread_local std::unique_ptr<Worker> tl_worker;
__thread ThreadView *tl_view = nullptr;

Worker &worker() {
    if (!tl_worker) tl_worker.reset(new Worker);
    return *tl_worker;
}
// The worker and thread of the running fiber; aborts when called outside a kernel.
Thread &current(const char *what) {
    Worker *w = tl_worker.get();
    if (!w || !w->running) outside_kernel(what);
    return *w->running;
}

void outside_kernel(const char *what) {
    std::fprintf(stderr, "mole-simt: %s used outside a kernel (host code reached device-only state)\n", what);
    std::abort();
}

void fiber_main(Thread *t) {
    Worker &w = *tl_worker;
#ifdef MOLE_SIMT_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &w.sched_lo, &w.sched_size);
#endif
    w.launch->invoke(w.launch->ctx);
    t->state = State::Done;
    w.leave(*t);
}

void Worker::run_block(const Launch &l, uint3 bidx) {
    const dim3 b = l.block;
    for (unsigned i = 0; i < n; ++i) {
        Thread &t = threads[i];
#ifdef MOLE_SIMT_ASAN
        if (t.dirty) __asan_unpoison_memory_region(t.stack_lo, t.stack_size);
#endif
        t.dirty = false;
        t.thread_idx = uint3{i % b.x, (i / b.x) % b.y, i / (b.x * b.y)};
        t.block_idx = bidx;
        t.block_dim = l.block;
        t.grid_dim = l.grid;
        t.linear = i;
        t.lane = i % 32;
        t.state = State::Ready;
        t.asan_fake = nullptr;
        ctx_make(&t.ctx, t.stack_lo, t.stack_size, &t);
    }
    dyn = nullptr;
    if (posix_memalign(&dyn, 16, l.shmem) != 0) dyn = nullptr;
    if (dyn) poison(dyn, l.shmem);
    const bool reverse = order() == MOLE_SIMT_REVERSE;
    for (;;) {
        unsigned done = 0;
        for (unsigned k = 0; k < n && !failed; ++k) {
            Thread &t = threads[reverse ? n - 1 - k : k];
            if (t.state == State::Ready) resume(t);
        }
        if (failed) break;
        bool warp_waiting = false;
        for (unsigned i = 0; i < n; ++i) {
            done += threads[i].state == State::Done;
            warp_waiting |= threads[i].state == State::Warp;
        }
        if (done == n) break;
        if (warp_waiting) {
            if (resolve_warps()) continue;
            Thread *culprit = nullptr;
            const std::string why = warp_deadlock(&culprit);
            report("%s: %s", where(*culprit).c_str(), why.c_str());
            failed = true;
            break;
        }
        // Every thread left waits at a barrier: all of the block must, at the same one.
        const Thread *first = nullptr, *exited = nullptr, *other = nullptr;
        for (unsigned i = 0; i < n; ++i) {
            const Thread &t = threads[i];
            if (t.state == State::Done) {
                if (!exited) exited = &t;
            } else if (!first) {
                first = &t;
            } else if (!other && (t.line != first->line || std::strcmp(t.file, first->file) != 0)) {
                other = &t;
            }
        }
        if (exited) {
            report(
                "%s: barrier divergence: this thread has returned, but %u thread(s) of the block wait at "
                "__syncthreads (%s:%d), which never completes",
                where(*exited).c_str(), n - done, base_name(first->file), first->line);
            failed = true;
            break;
        }
        if (other) {
            report(
                "%s: barrier divergence: this thread waits at __syncthreads (%s:%d) while thread %s waits at "
                "__syncthreads (%s:%d)",
                where(*other).c_str(), base_name(other->file), other->line, coords(first->linear).c_str(),
                base_name(first->file), first->line);
            failed = true;
            break;
        }
        int count = 0;
        for (unsigned i = 0; i < n; ++i) count += threads[i].bar_pred != 0;
        for (unsigned i = 0; i < n; ++i) {
            Thread &t = threads[i];
            if (t.bar_result)
                *t.bar_result = t.bar_kind == 1 ? count : t.bar_kind == 2 ? int(count == int(n)) : int(count > 0);
            t.state = State::Ready;
        }
    }
    if (failed)
        for (unsigned i = 0; i < n; ++i)
            if (threads[i].state != State::Done) threads[i].dirty = true;
    free_shared();
}

bool Worker::resolve_warps() {
    bool progress = false;
    for (unsigned base = 0; base < n; base += 32) {
        for (unsigned l = 0; l < 32 && base + l < n; ++l) {
            const Thread &t = threads[base + l];
            if (t.state != State::Warp) continue;
            bool complete = true;
            for (unsigned k = 0; k < 32 && complete; ++k) {
                if (!((t.mask >> k) & 1)) continue;
                const Thread &u = threads[base + k];   // lanes in the mask exist (checked at the call)
                complete = u.state == State::Warp && u.op == t.op && u.mask == t.mask && u.width == t.width;
            }
            if (!complete) continue;
            execute(base, t);
            progress = true;
        }
    }
    return progress;
}

void Worker::execute(unsigned base, const Thread &first) {
    const unsigned mask = first.mask;
    const WarpOp op = first.op;
    const int w = first.width;
    uint64_t reduce = op == WarpOp::ReduceMin ? 0xffffffffu : 0;
    for (unsigned k = 0; k < 32; ++k) {
        if (!((mask >> k) & 1)) continue;
        const uint64_t v = threads[base + k].value;
        switch (op) {
        case WarpOp::Ballot:
        case WarpOp::Any:
        case WarpOp::All: reduce |= uint64_t(v != 0) << k; break;
        case WarpOp::ReduceAdd: reduce = uint32_t(reduce + v); break;
        case WarpOp::ReduceMin: reduce = std::min<uint64_t>(reduce, uint32_t(v)); break;
        case WarpOp::ReduceMax: reduce = std::max<uint64_t>(reduce, uint32_t(v)); break;
        default: break;
        }
    }
    for (unsigned k = 0; k < 32; ++k) {
        if (!((mask >> k) & 1)) continue;
        Thread &u = threads[base + k];
        const int lane = int(k), seg = lane & ~(w - 1);
        int src = lane;
        switch (op) {
        case WarpOp::Shfl: src = seg + (u.arg & (w - 1)); break;
        case WarpOp::ShflUp: src = lane - seg >= u.arg ? lane - u.arg : lane; break;
        case WarpOp::ShflDown: src = lane - seg + u.arg < w ? lane + u.arg : lane; break;
        case WarpOp::ShflXor:
            src = lane ^ u.arg;
            if (src < 0 || src >= seg + w) src = lane;
            break;
        default: break;
        }
        switch (op) {
        case WarpOp::Sync: u.result = 0; break;
        case WarpOp::Ballot:
        case WarpOp::ReduceAdd:
        case WarpOp::ReduceMin:
        case WarpOp::ReduceMax: u.result = reduce; break;
        case WarpOp::Any: u.result = reduce != 0; break;
        case WarpOp::All: u.result = reduce == mask; break;
        default:   // a shuffle: a source lane outside the mask gives an undefined value: poison
            u.result = (src == lane || ((mask >> src) & 1)) ? threads[base + unsigned(src)].value : kPoison64;
            break;
        }
    }
    for (unsigned k = 0; k < 32; ++k)
        if ((mask >> k) & 1) threads[base + k].state = State::Ready;
}

// Why no warp op can complete: the first waiting lane whose mask names a lane that is not there.
std::string Worker::warp_deadlock(Thread **culprit) {
    char b[512];
    for (unsigned base = 0; base < n; base += 32) {
        for (unsigned l = 0; l < 32 && base + l < n; ++l) {
            Thread &t = threads[base + l];
            if (t.state != State::Warp) continue;
            for (unsigned k = 0; k < 32; ++k) {
                if (!((t.mask >> k) & 1)) continue;
                const Thread &u = threads[base + k];
                if (u.state == State::Warp && u.op == t.op && u.mask == t.mask && u.width == t.width) continue;
                const int m =
                    std::snprintf(b, sizeof b, "%s(mask 0x%08x) at %s:%d waits for lane %u (thread %s), ",
                                  op_name(t.op), t.mask, base_name(t.file), t.line, k, coords(base + k).c_str());
                char *r = b + m;
                const size_t left = sizeof b - size_t(m);
                if (u.state == State::Done)
                    std::snprintf(r, left, "which has exited: a mask must name only lanes that reach the op");
                else if (u.state == State::Barrier)
                    std::snprintf(r, left, "which waits at __syncthreads (%s:%d) instead", base_name(u.file), u.line);
                else
                    std::snprintf(r, left,
                                  "which waits at %s(mask 0x%08x, width %d) at %s:%d instead: lanes of a mask "
                                  "must reach the same op with the same mask and width",
                                  op_name(u.op), u.mask, u.width, base_name(u.file), u.line);
                *culprit = &t;
                return b;
            }
        }
    }
    *culprit = &threads[0];
    return "internal: warp ops waiting but none blocked";
}

// ---------------------------------------------------------------------------------------------
// Calls from kernels.
void syncthreads(const char *file, int line, int kind, int pred, int *result) {
    Thread &t = current("__syncthreads");
    t.file = file;
    t.line = line;
    t.bar_kind = kind;
    t.bar_pred = pred;
    t.bar_result = result;
    t.state = State::Barrier;
    tl_worker->block(t);
}

uint64_t warp_op(WarpOp op, unsigned mask, uint64_t value, int arg, int width, const char *file, int line) {
    Thread &t = current(op_name(op));
    Worker &w = *tl_worker;
    char b[256];
    const unsigned base = t.linear & ~31u, in_warp = std::min(32u, w.n - base);
    const unsigned exists = in_warp == 32 ? 0xffffffffu : (1u << in_warp) - 1;
    if (width < 1 || width > 32 || (width & (width - 1)) != 0) {
        std::snprintf(b, sizeof b, "%s at %s:%d: width %d is not a power of two in [1, 32]", op_name(op),
                      base_name(file), line, width);
        w.fault(t, b);
    }
    if (!((mask >> t.lane) & 1)) {
        std::snprintf(b, sizeof b, "%s(mask 0x%08x) at %s:%d: the calling lane %u is not in the mask", op_name(op),
                      mask, base_name(file), line, t.lane);
        w.fault(t, b);
    }
    if (mask & ~exists) {
        std::snprintf(b, sizeof b,
                      "%s(mask 0x%08x) at %s:%d names lanes that do not exist (the block has %u threads: "
                      "this warp has lanes 0..%u)",
                      op_name(op), mask, base_name(file), line, w.n, in_warp - 1);
        w.fault(t, b);
    }
    t.op = op;
    t.mask = mask;
    t.value = value;
    t.arg = arg;
    t.width = width;
    t.file = file;
    t.line = line;
    t.state = State::Warp;
    w.block(t);
    return t.result;
}

unsigned active_mask() {
    Thread &t = current("__activemask");
    Worker &w = *tl_worker;
    const unsigned base = t.linear & ~31u;
    unsigned m = 0;
    for (unsigned k = 0; k < 32 && base + k < w.n; ++k) m |= unsigned(w.threads[base + k].state != State::Done) << k;
    return m;
}

void trap(const char *file, int line) {
    Thread &t = current("__trap");
    char b[128];
    std::snprintf(b, sizeof b, "__trap() at %s:%d", base_name(file), line);
    tl_worker->fault(t, b);
}

void *shared_static(const void *key, size_t bytes, size_t align, const char *name) {
    Thread &t = current("MOLE_SHARED");
    Worker &w = *tl_worker;
    for (const Worker::Shared &s : w.shared) {
        if (s.key != key) continue;
        if (s.bytes != bytes) {
            char b[160];
            std::snprintf(b, sizeof b, "MOLE_SHARED(%s): %zu bytes here, %zu bytes where the block first declared it",
                          name, bytes, s.bytes);
            w.fault(t, b);
        }
        return s.ptr;
    }
    if (w.static_smem + bytes > kStaticSmem) {
        char b[200];
        std::snprintf(b, sizeof b,
                      "MOLE_SHARED(%s): %zu bytes bring the block's static shared memory to %zu bytes, "
                      "over the %zu a block may declare",
                      name, bytes, w.static_smem + bytes, kStaticSmem);
        w.fault(t, b);
    }
    if (w.static_smem + bytes + w.launch->shmem > kOptinSmem) {
        char b[200];
        std::snprintf(b, sizeof b,
                      "MOLE_SHARED(%s): %zu bytes of static and %zu of dynamic shared memory exceed the "
                      "device's %zu per block",
                      name, w.static_smem + bytes, w.launch->shmem, kOptinSmem);
        w.fault(t, b);
    }
    void *p = nullptr;
    if (posix_memalign(&p, align < 16 ? 16 : align, bytes) != 0 || (!p && bytes)) {
        std::fprintf(stderr, "mole-simt: out of host memory for shared memory\n");
        std::abort();
    }
    poison(p, bytes);
    w.shared.push_back(Worker::Shared{key, p, bytes});
    w.static_smem += bytes;
    return p;
}

void *shared_dynamic() {
    current("MOLE_DYNAMIC_SHARED");
    return tl_worker->dyn;
}

// ---------------------------------------------------------------------------------------------
// Launch.
bool device_accessible(Registry &r, const void *p) {
    size_t off;
    return find(r, p, &off, true) != nullptr;   // device, pinned and registered memory are mapped
}

void launch(const Launch &l) {
    Worker &w = worker();
    if (w.running) {
        report("kernel '%s' launched from inside kernel '%s': dynamic parallelism is not supported", l.name,
               w.launch->name);
        fail(cudaErrorNotSupported);
        return;
    }
    if (no_device()) {
        fail(cudaErrorInsufficientDriver);
        return;
    }
    const dim3 g = l.grid, b = l.block;
    const uint64_t threads = uint64_t(b.x) * b.y * b.z;
    if (b.x == 0 || b.y == 0 || b.z == 0 || b.x > 1024 || b.y > 1024 || b.z > 64 || threads > 1024 || g.x == 0 ||
        g.y == 0 || g.z == 0 || g.x > 0x7fffffffu || g.y > 65535 || g.z > 65535) {
        report(
            "kernel '%s': invalid launch configuration: grid (%u,%u,%u), block (%u,%u,%u) (%llu threads; at most "
            "1024, block z <= 64, grid y and z <= 65535)",
            l.name, g.x, g.y, g.z, b.x, b.y, b.z, (unsigned long long)threads);
        fail(cudaErrorInvalidConfiguration);
        return;
    }
    Registry &r = registry();
    {
        std::lock_guard<std::mutex> lock(r.mu);
        if (l.stream && l.stream != cudaStreamLegacy && l.stream != cudaStreamPerThread && !r.streams.count(l.stream)) {
            report("kernel '%s': launched on stream %p, which is not a live stream", l.name, (void *)l.stream);
            fail(cudaErrorInvalidResourceHandle);
            return;
        }
        auto a = r.max_dyn_smem.find(l.fn);
        const size_t limit = a == r.max_dyn_smem.end() ? kDefaultDynSmem : size_t(a->second);
        if (l.shmem > limit) {
            report(
                "kernel '%s': %zu bytes of dynamic shared memory, over its limit of %zu (raise it up to %zu with "
                "cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes))",
                l.name, l.shmem, limit, kOptinSmem);
            fail(cudaErrorInvalidValue);
            return;
        }
        for (int i = 0; i < l.n_ptr_args; ++i) {
            if (l.ptr_args[i] && !device_accessible(r, l.ptr_args[i])) {
                report(
                    "kernel '%s': argument %d (%p) is not device memory (not from cudaMalloc, cudaMallocHost / "
                    "cudaHostAlloc or cudaHostRegister, or already freed): a GPU would fault on it",
                    l.name, l.ptr_arg_index[i], l.ptr_args[i]);
                fail(cudaErrorIllegalAddress);
                tl_pending = cudaErrorIllegalAddress;
                return;
            }
        }
        auto k = r.kernel_index.find(l.fn);
        if (k == r.kernel_index.end()) {
            k = r.kernel_index.emplace(l.fn, r.kernels.size()).first;
            r.kernels.push_back(KernelCount{l.name, 0, 0, 0});
        }
        KernelCount &c = r.kernels[k->second];
        c.launches += 1;
        c.blocks += uint64_t(g.x) * g.y * g.z;
        c.threads += uint64_t(g.x) * g.y * g.z * threads;
    }
    w.reserve(unsigned(threads));
    w.launch = &l;
    w.n = unsigned(threads);
    w.failed = false;
    const uint64_t blocks = uint64_t(g.x) * g.y * g.z;
    const bool reverse = order() == MOLE_SIMT_REVERSE;
    for (uint64_t i = 0; i < blocks && !w.failed; ++i) {
        const uint64_t bl = reverse ? blocks - 1 - i : i;
        w.run_block(l, uint3{unsigned(bl % g.x), unsigned((bl / g.x) % g.y), unsigned(bl / (uint64_t(g.x) * g.y))});
    }
    w.launch = nullptr;
    if (w.failed) {
        fail(cudaErrorLaunchFailure);
        tl_pending = cudaErrorLaunchFailure;
    }
}

cudaError_t func_set_attribute(const void *fn, cudaFuncAttribute attr, int value) {
    if (no_device()) return fail(cudaErrorInsufficientDriver);
    if (attr == cudaFuncAttributePreferredSharedMemoryCarveout) {
        if (value < -1 || value > 100) {
            report("cudaFuncSetAttribute: carveout %d is not -1 or a percentage", value);
            return fail(cudaErrorInvalidValue);
        }
        return cudaSuccess;
    }
    if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) {
        report("cudaFuncSetAttribute: attribute %d is not supported by the executor", int(attr));
        return fail(cudaErrorInvalidValue);
    }
    if (value < 0 || size_t(value) > kOptinSmem) {
        report("cudaFuncSetAttribute: %d bytes of dynamic shared memory, over the device's %zu", value, kOptinSmem);
        return fail(cudaErrorInvalidValue);
    }
    Registry &r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    r.max_dyn_smem[fn] = value;
    return cudaSuccess;
}

// ---------------------------------------------------------------------------------------------
// Copies: the kind must match the pointers, and no copy may run past an allocation's end.
const char *memcpy_kind_name(cudaMemcpyKind k) {
    switch (k) {
    case cudaMemcpyHostToHost: return "HostToHost";
    case cudaMemcpyHostToDevice: return "HostToDevice";
    case cudaMemcpyDeviceToHost: return "DeviceToHost";
    case cudaMemcpyDeviceToDevice: return "DeviceToDevice";
    case cudaMemcpyDefault: return "Default";
    }
    return "?";
}

// One side of a copy: what p points into, and whether [p, p + n) stays inside it.
cudaError_t check_side(Registry &r, const char *api, const char *side, const void *p, size_t n, bool want_device,
                       bool any) {
    size_t off = 0;
    const Alloc *a = find(r, p, &off);
    const bool is_device = a && a->kind == Kind::Device;
    if (!any && want_device && !is_device) {
        report("%s: the %s %p is not a device allocation%s", api, side, p,
               a ? " (it is host memory the device can map; use the matching kind)" : "");
        return fail(cudaErrorInvalidValue);
    }
    if (!any && !want_device && is_device) {
        report("%s: the %s %p is a device allocation (offset %zu of %zu bytes), not host memory", api, side, p, off,
               a->size);
        return fail(cudaErrorInvalidValue);
    }
    if (a && (off > a->size || n > a->size - off)) {
        report("%s: %zu bytes %s offset %zu of a %s of %zu bytes run past its end", api, n,
               std::strcmp(side, "source") == 0 ? "from" : "to", off, kind_name(a->kind), a->size);
        return fail(cudaErrorInvalidValue);
    }
    return cudaSuccess;
}

cudaError_t check_copy(const char *name, void *dst, const void *src, size_t n, cudaMemcpyKind kind) {
    char api[64];
    std::snprintf(api, sizeof api, "%s (%s)", name, memcpy_kind_name(kind));
    if (int(kind) < 0 || int(kind) > 4) {
        report("%s: %d is not a cudaMemcpyKind", name, int(kind));
        return fail(cudaErrorInvalidMemcpyDirection);
    }
    if (n == 0) return cudaSuccess;
    if (!dst || !src) {
        report("%s: %zu bytes with a null %s", api, n, dst ? "source" : "destination");
        return fail(cudaErrorInvalidValue);
    }
    Registry &r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    const bool any = kind == cudaMemcpyDefault;
    const bool dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
    const bool src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
    cudaError_t e = check_side(r, api, "destination", dst, n, dst_dev, any);
    if (e == cudaSuccess) e = check_side(r, api, "source", src, n, src_dev, any);
    return e;
}

bool stream_ok(const char *api, cudaStream_t s) {
    if (!s || s == cudaStreamLegacy || s == cudaStreamPerThread) return true;
    Registry &r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    if (r.streams.count(s)) return true;
    report("%s: stream %p is not a live stream (destroyed, or never created)", api, (void *)s);
    fail(cudaErrorInvalidResourceHandle);
    return false;
}
CUevent_st *event_ok(const char *api, cudaEvent_t e);

}  // namespace mole_simt::detail

using namespace mole_simt::detail;

struct CUstream_st {
    unsigned flags;
};
struct CUevent_st {
    unsigned flags;
    bool recorded;
    double ms;
};

namespace mole_simt::detail {
CUevent_st *event_ok(const char *api, cudaEvent_t e) {
    Registry &r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    if (e && r.events.count(e)) return e;
    report("%s: event %p is not a live event (destroyed, or never created)", api, (void *)e);
    fail(cudaErrorInvalidResourceHandle);
    return nullptr;
}
}  // namespace mole_simt::detail

#define MOLE_SIMT_NEED_DEVICE() \
    if (no_device()) return fail(cudaErrorInsufficientDriver)

// ---------------------------------------------------------------------------------------------
// Errors and the device.
const char *cudaGetErrorName(cudaError_t e) {
#define MOLE_SIMT_ERROR_NAME(name, value, text) \
    if (e == name) return #name;
    MOLE_SIMT_ERRORS(MOLE_SIMT_ERROR_NAME)
#undef MOLE_SIMT_ERROR_NAME
    return "cudaErrorUnknown";
}
const char *cudaGetErrorString(cudaError_t e) {
#define MOLE_SIMT_ERROR_TEXT(name, value, text) \
    if (e == name) return text;
    MOLE_SIMT_ERRORS(MOLE_SIMT_ERROR_TEXT)
#undef MOLE_SIMT_ERROR_TEXT
    return "unrecognized error code";
}

cudaError_t cudaGetLastError() {
    const cudaError_t e = tl_last_error;
    tl_last_error = cudaSuccess;
    return e;
}
cudaError_t cudaPeekAtLastError() { return tl_last_error; }

cudaError_t cudaGetDeviceCount(int *count) {
    if (!count) return fail(cudaErrorInvalidValue);
    *count = 0;
    MOLE_SIMT_NEED_DEVICE();
    *count = 1;
    return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) {
    MOLE_SIMT_NEED_DEVICE();
    return device == 0 ? cudaSuccess : fail(cudaErrorInvalidDevice);
}
cudaError_t cudaGetDevice(int *device) {
    MOLE_SIMT_NEED_DEVICE();
    if (!device) return fail(cudaErrorInvalidValue);
    *device = 0;
    return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int device) {
    MOLE_SIMT_NEED_DEVICE();
    if (!p) return fail(cudaErrorInvalidValue);
    if (device != 0) return fail(cudaErrorInvalidDevice);
    std::memset(p, 0, sizeof *p);
    std::snprintf(p->name, sizeof p->name, "mole-simt");
    p->totalGlobalMem = total_global();
    p->sharedMemPerBlock = kStaticSmem;
    p->regsPerBlock = 65536;
    p->warpSize = 32;
    p->memPitch = size_t(1) << 31;
    p->maxThreadsPerBlock = 1024;
    p->maxThreadsDim[0] = 1024;
    p->maxThreadsDim[1] = 1024;
    p->maxThreadsDim[2] = 64;
    p->maxGridSize[0] = 0x7fffffff;
    p->maxGridSize[1] = 65535;
    p->maxGridSize[2] = 65535;
    p->totalConstMem = 65536;
    p->major = 9;
    p->minor = 0;
    p->textureAlignment = 512;
    p->multiProcessorCount = 16;
    p->canMapHostMemory = 1;
    p->concurrentKernels = 1;
    p->asyncEngineCount = 2;
    p->unifiedAddressing = 1;
    p->memoryBusWidth = 5120;
    p->l2CacheSize = 50 << 20;
    p->maxThreadsPerMultiProcessor = 2048;
    p->sharedMemPerMultiprocessor = 228 * 1024;
    p->regsPerMultiprocessor = 65536;
    p->managedMemory = 1;
    p->sharedMemPerBlockOptin = kOptinSmem;
    p->maxBlocksPerMultiProcessor = 32;
    p->reservedSharedMemPerBlock = 1024;
    p->hostRegisterSupported = 1;
    p->hostRegisterReadOnlySupported = 1;
    return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int *value, cudaDeviceAttr attr, int device) {
    MOLE_SIMT_NEED_DEVICE();
    if (!value) return fail(cudaErrorInvalidValue);
    if (device != 0) return fail(cudaErrorInvalidDevice);
    cudaDeviceProp p;
    cudaGetDeviceProperties(&p, 0);
    switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *value = p.maxThreadsPerBlock; break;
    case cudaDevAttrMaxBlockDimX: *value = p.maxThreadsDim[0]; break;
    case cudaDevAttrMaxBlockDimY: *value = p.maxThreadsDim[1]; break;
    case cudaDevAttrMaxBlockDimZ: *value = p.maxThreadsDim[2]; break;
    case cudaDevAttrMaxGridDimX: *value = p.maxGridSize[0]; break;
    case cudaDevAttrMaxGridDimY: *value = p.maxGridSize[1]; break;
    case cudaDevAttrMaxGridDimZ: *value = p.maxGridSize[2]; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = int(p.sharedMemPerBlock); break;
    case cudaDevAttrTotalConstantMemory: *value = int(p.totalConstMem); break;
    case cudaDevAttrWarpSize: *value = p.warpSize; break;
    case cudaDevAttrMaxRegistersPerBlock: *value = p.regsPerBlock; break;
    case cudaDevAttrMultiProcessorCount: *value = p.multiProcessorCount; break;
    case cudaDevAttrIntegrated: *value = 0; break;
    case cudaDevAttrCanMapHostMemory: *value = 1; break;
    case cudaDevAttrConcurrentKernels: *value = 1; break;
    case cudaDevAttrL2CacheSize: *value = p.l2CacheSize; break;
    case cudaDevAttrMaxThreadsPerMultiProcessor: *value = p.maxThreadsPerMultiProcessor; break;
    case cudaDevAttrAsyncEngineCount: *value = p.asyncEngineCount; break;
    case cudaDevAttrUnifiedAddressing: *value = 1; break;
    case cudaDevAttrComputeCapabilityMajor: *value = p.major; break;
    case cudaDevAttrComputeCapabilityMinor: *value = p.minor; break;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *value = int(p.sharedMemPerMultiprocessor); break;
    case cudaDevAttrManagedMemory: *value = 1; break;
    case cudaDevAttrPageableMemoryAccess: *value = 0; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = int(p.sharedMemPerBlockOptin); break;
    case cudaDevAttrMaxBlocksPerMultiprocessor: *value = p.maxBlocksPerMultiProcessor; break;
    case cudaDevAttrHostRegisterSupported: *value = 1; break;
    case cudaDevAttrHostRegisterReadOnlySupported: *value = 1; break;
    default:
        report("cudaDeviceGetAttribute: attribute %d is not known to the executor", int(attr));
        return fail(cudaErrorInvalidValue);
    }
    return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes) {
    MOLE_SIMT_NEED_DEVICE();
    if (!free_bytes || !total_bytes) return fail(cudaErrorInvalidValue);
    Registry &r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    *total_bytes = total_global();
    *free_bytes = total_global() - r.device_bytes;
    return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize() {
    MOLE_SIMT_NEED_DEVICE();
    return take_pending();
}
cudaError_t cudaDeviceReset() {
    MOLE_SIMT_NEED_DEVICE();
    tl_pending = cudaSuccess;
    return cudaSuccess;
}

// ---------------------------------------------------------------------------------------------
// Memory.
static cudaError_t host_alloc(const char *api, void **ptr, size_t size, Kind kind, unsigned flags) {
    MOLE_SIMT_NEED_DEVICE();
    if (!ptr) return fail(cudaErrorInvalidValue);
    *ptr = nullptr;
    if (size == 0) return cudaSuccess;
    Registry &r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    if (kind == Kind::Device && size > total_global() - r.device_bytes) return fail(cudaErrorMemoryAllocation);
    void *p = nullptr;
    if (posix_memalign(&p, 256, size) != 0 || !p) return fail(cudaErrorMemoryAllocation);
    poison(p, size);   // fresh device memory holds garbage: reading it before writing shows
    r.map[uintptr_t(p)] = Alloc{size, kind, flags};
    if (kind == Kind::Device) r.device_bytes += size;
    *ptr = p;
    (void)api;
    return cudaSuccess;
}
static cudaError_t host_free(const char *api, void *ptr, Kind kind) {
    MOLE_SIMT_NEED_DEVICE();
    if (!ptr) return cudaSuccess;
    Registry &r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    auto it = r.map.find(uintptr_t(ptr));
    if (it == r.map.end() || it->second.kind != kind) {
        size_t off = 0;
        const Alloc *a = find(r, ptr, &off);
        if (a && a->kind == kind)
            report("%s: %p points %zu bytes into a %s of %zu bytes, not at its start", api, ptr, off, kind_name(kind),
                   a->size);
        else if (a)
            report("%s: %p is a %s, not a %s", api, ptr, kind_name(a->kind), kind_name(kind));
        else
            report("%s: %p is not a live %s (never allocated, or freed already)", api, ptr, kind_name(kind));
        return fail(cudaErrorInvalidValue);
    }
    if (kind == Kind::Device) r.device_bytes -= it->second.size;
    r.map.erase(it);
    std::free(ptr);
    return cudaSuccess;
}
cudaError_t cudaMalloc(void **ptr, size_t size) { return host_alloc("cudaMalloc", ptr, size, Kind::Device, 0); }
cudaError_t cudaFree(void *ptr) { return host_free("cudaFree", ptr, Kind::Device); }
cudaError_t cudaMallocHost(void **ptr, size_t size) {
    return host_alloc("cudaMallocHost", ptr, size, Kind::Pinned, cudaHostAllocDefault);
}
cudaError_t cudaHostAlloc(void **ptr, size_t size, unsigned flags) {
    if (flags & ~0x7u) {
        report("cudaHostAlloc: unknown flags 0x%x", flags);
        return fail(cudaErrorInvalidValue);
    }
    return host_alloc("cudaHostAlloc", ptr, size, Kind::Pinned, flags);
}
cudaError_t cudaFreeHost(void *ptr) { return host_free("cudaFreeHost", ptr, Kind::Pinned); }

cudaError_t cudaHostRegister(void *ptr, size_t size, unsigned flags) {
    MOLE_SIMT_NEED_DEVICE();
    if (!ptr || size == 0 || (flags & ~0xfu)) {
        report("cudaHostRegister: %p, %zu bytes, flags 0x%x: a null pointer, no bytes or unknown flags", ptr, size,
               flags);
        return fail(cudaErrorInvalidValue);
    }
    Registry &r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    const uintptr_t a = uintptr_t(ptr);
    auto it = r.map.lower_bound(a);
    const bool hits_next = it != r.map.end() && it->first < a + size;
    bool hits_prev = false;
    if (it != r.map.begin()) {
        auto p = std::prev(it);
        hits_prev = p->first + p->second.size > a;
    }
    if (hits_next || hits_prev) {
        report("cudaHostRegister: [%p, +%zu) overlaps memory registered or allocated already", ptr, size);
        return fail(cudaErrorHostMemoryAlreadyRegistered);
    }
    r.map[a] = Alloc{size, Kind::Registered, flags};
    return cudaSuccess;
}
cudaError_t cudaHostUnregister(void *ptr) {
    MOLE_SIMT_NEED_DEVICE();
    Registry &r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    auto it = r.map.find(uintptr_t(ptr));
    if (it == r.map.end() || it->second.kind != Kind::Registered) {
        report("cudaHostUnregister: %p is not the start of a registered range", ptr);
        return fail(cudaErrorHostMemoryNotRegistered);
    }
    r.map.erase(it);
    return cudaSuccess;
}
cudaError_t cudaHostGetDevicePointer(void **device_ptr, void *host_ptr, unsigned flags) {
    MOLE_SIMT_NEED_DEVICE();
    Registry &r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    size_t off;
    const Alloc *a = find(r, host_ptr, &off);
    if (!device_ptr || flags != 0 || !a || a->kind == Kind::Device) {
        report("cudaHostGetDevicePointer: %p is not pinned or registered host memory", host_ptr);
        return fail(cudaErrorInvalidValue);
    }
    *device_ptr = host_ptr;   // unified addressing: the same address
    return cudaSuccess;
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t count, cudaMemcpyKind kind) {
    MOLE_SIMT_NEED_DEVICE();
    const cudaError_t e = check_copy("cudaMemcpy", dst, src, count, kind);
    if (e != cudaSuccess) return e;
    if (count) std::memmove(dst, src, count);
    return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t count, cudaMemcpyKind kind, cudaStream_t stream) {
    MOLE_SIMT_NEED_DEVICE();
    if (!stream_ok("cudaMemcpyAsync", stream)) return cudaErrorInvalidResourceHandle;
    const cudaError_t e = check_copy("cudaMemcpyAsync", dst, src, count, kind);
    if (e != cudaSuccess) return e;
    if (count) std::memmove(dst, src, count);
    return cudaSuccess;
}
static cudaError_t memset_checked(const char *api, void *ptr, int value, size_t count) {
    if (count == 0) return cudaSuccess;
    {
        Registry &r = registry();
        std::lock_guard<std::mutex> lock(r.mu);
        size_t off = 0;
        const Alloc *a = find(r, ptr, &off);
        if (!a || a->kind != Kind::Device) {
            report("%s: %p is not a device allocation", api, ptr);
            return fail(cudaErrorInvalidValue);
        }
        if (count > a->size - off) {
            report("%s: %zu bytes to offset %zu of a device allocation of %zu bytes run past its end", api, count, off,
                   a->size);
            return fail(cudaErrorInvalidValue);
        }
    }
    std::memset(ptr, value, count);
    return cudaSuccess;
}
cudaError_t cudaMemset(void *ptr, int value, size_t count) {
    MOLE_SIMT_NEED_DEVICE();
    return memset_checked("cudaMemset", ptr, value, count);
}
cudaError_t cudaMemsetAsync(void *ptr, int value, size_t count, cudaStream_t stream) {
    MOLE_SIMT_NEED_DEVICE();
    if (!stream_ok("cudaMemsetAsync", stream)) return cudaErrorInvalidResourceHandle;
    return memset_checked("cudaMemsetAsync", ptr, value, count);
}

// ---------------------------------------------------------------------------------------------
// Streams and events: everything ran when it was queued, so waits only check their handles.
cudaError_t cudaStreamCreate(cudaStream_t *stream) { return cudaStreamCreateWithFlags(stream, cudaStreamDefault); }
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned flags) {
    MOLE_SIMT_NEED_DEVICE();
    if (!stream || (flags & ~1u)) return fail(cudaErrorInvalidValue);
    *stream = new CUstream_st{flags};
    Registry &r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    r.streams.insert(*stream);
    return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
    MOLE_SIMT_NEED_DEVICE();
    Registry &r = registry();
    {
        std::lock_guard<std::mutex> lock(r.mu);
        if (r.streams.erase(stream)) {
            delete stream;
            return cudaSuccess;
        }
    }
    report("cudaStreamDestroy: %p is not a live stream", (void *)stream);
    return fail(cudaErrorInvalidResourceHandle);
}
cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
    MOLE_SIMT_NEED_DEVICE();
    if (!stream_ok("cudaStreamSynchronize", stream)) return cudaErrorInvalidResourceHandle;
    return take_pending();
}
cudaError_t cudaStreamQuery(cudaStream_t stream) {
    MOLE_SIMT_NEED_DEVICE();
    if (!stream_ok("cudaStreamQuery", stream)) return cudaErrorInvalidResourceHandle;
    return take_pending();
}
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned flags) {
    MOLE_SIMT_NEED_DEVICE();
    if (!stream_ok("cudaStreamWaitEvent", stream)) return cudaErrorInvalidResourceHandle;
    if (!event_ok("cudaStreamWaitEvent", event)) return cudaErrorInvalidResourceHandle;
    return flags == 0 ? cudaSuccess : fail(cudaErrorInvalidValue);
}
cudaError_t cudaEventCreate(cudaEvent_t *event) { return cudaEventCreateWithFlags(event, cudaEventDefault); }
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned flags) {
    MOLE_SIMT_NEED_DEVICE();
    if (!event || (flags & ~7u)) return fail(cudaErrorInvalidValue);
    *event = new CUevent_st{flags, false, 0.0};
    Registry &r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    r.events.insert(*event);
    return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
    MOLE_SIMT_NEED_DEVICE();
    if (!stream_ok("cudaEventRecord", stream)) return cudaErrorInvalidResourceHandle;
    CUevent_st *e = event_ok("cudaEventRecord", event);
    if (!e) return cudaErrorInvalidResourceHandle;
    e->recorded = true;
    e->ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
    return cudaSuccess;
}
cudaError_t cudaEventQuery(cudaEvent_t event) {
    MOLE_SIMT_NEED_DEVICE();
    return event_ok("cudaEventQuery", event) ? cudaSuccess : cudaErrorInvalidResourceHandle;
}
cudaError_t cudaEventSynchronize(cudaEvent_t event) {
    MOLE_SIMT_NEED_DEVICE();
    if (!event_ok("cudaEventSynchronize", event)) return cudaErrorInvalidResourceHandle;
    return take_pending();
}
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end) {
    MOLE_SIMT_NEED_DEVICE();
    CUevent_st *a = event_ok("cudaEventElapsedTime", start), *b = a ? event_ok("cudaEventElapsedTime", end) : nullptr;
    if (!a || !b) return cudaErrorInvalidResourceHandle;
    if (!ms) return fail(cudaErrorInvalidValue);
    if ((a->flags | b->flags) & cudaEventDisableTiming) {
        report("cudaEventElapsedTime: an event was created with cudaEventDisableTiming");
        return fail(cudaErrorInvalidResourceHandle);
    }
    if (!a->recorded || !b->recorded) {
        report("cudaEventElapsedTime: an event was never recorded");
        return fail(cudaErrorInvalidResourceHandle);
    }
    *ms = float(b->ms - a->ms);
    return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t event) {
    MOLE_SIMT_NEED_DEVICE();
    Registry &r = registry();
    {
        std::lock_guard<std::mutex> lock(r.mu);
        if (r.events.erase(event)) {
            delete event;
            return cudaSuccess;
        }
    }
    report("cudaEventDestroy: %p is not a live event", (void *)event);
    return fail(cudaErrorInvalidResourceHandle);
}

// ---------------------------------------------------------------------------------------------
// Test controls.
void mole_simt_set_order(mole_simt_order o) { g_order.store(int(o)); }
mole_simt_order mole_simt_get_order() { return order(); }
uint64_t mole_simt_failures() { return reports().count.load(); }
const char *mole_simt_last_message() {
    static thread_local std::string copy;
    Reports &r = reports();
    std::lock_guard<std::mutex> lock(r.mu);
    copy = r.last;
    return copy.c_str();
}
void mole_simt_set_quiet(bool quiet) { reports().quiet.store(quiet); }
void mole_simt_set_stack_kb(unsigned kb) { g_stack_kb.store(kb < 16 ? 16 : kb); }
uint64_t mole_simt_device_bytes() {
    Registry &r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    return r.device_bytes;
}
std::vector<mole_simt::KernelCount> mole_simt::kernel_counts() {
    Registry &r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    return r.kernels;
}
