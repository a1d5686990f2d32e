// Tests of the SIMT executor itself: correct kernels pass in the order the environment selects
// (MOLE_SIMT_ORDER), and each planted bug is caught with a message naming it. The ASan and UBSan
// cases run in a child process (this program, --child CASE) and are skipped in builds without
// the sanitizer. Usage: test_simt [--list] [NAME...]; exit status 0 when every test passed.
#include <dlfcn.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "test_kernels.h"

#if defined(__SANITIZE_ADDRESS__)
#define HAVE_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define HAVE_ASAN 1
#endif
#endif

// UBSan's runtime is present when the program was linked with -fsanitize=undefined.
static bool have_ubsan() {
    return dlsym(RTLD_DEFAULT, "__ubsan_handle_type_mismatch_v1_abort") ||
        dlsym(RTLD_DEFAULT, "__ubsan_handle_type_mismatch_v1");
}

using namespace simt_test;

static int g_failed_checks = 0;
static uint64_t g_expected_reports = 0;   // reports the tests asked for (Expect)
#define CHECK(cond, ...)                                                                      \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            std::fprintf(stderr, "  CHECK failed at %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            std::fprintf(stderr, __VA_ARGS__);                                                \
            std::fprintf(stderr, "\n");                                                       \
            ++g_failed_checks;                                                                \
        }                                                                                     \
    } while (0)
#define CUDA_OK(call) CHECK((call) == cudaSuccess, "%s", cudaGetErrorString(cudaGetLastError()))

static bool contains(const std::string &s, const char *part) { return s.find(part) != std::string::npos; }

// ---------------------------------------------------------------------------------------------
// Device buffers.
template <class T> struct Dev {
    T *p = nullptr;
    size_t n = 0;
    explicit Dev(size_t count) : n(count) { CUDA_OK(cudaMalloc(&p, count * sizeof(T))); }
    Dev(const std::vector<T> &h) : Dev(h.size()) { put(h); }
    ~Dev() { cudaFree(p); }
    Dev(const Dev &) = delete;
    Dev &operator=(const Dev &) = delete;
    void put(const std::vector<T> &h) {
        CUDA_OK(cudaMemcpy(p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
    }
    std::vector<T> get() const {
        std::vector<T> h(n);
        CUDA_OK(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
        return h;
    }
};

static std::vector<float> random_floats(size_t n, unsigned seed, float lo = -1.0f, float hi = 1.0f) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> d(lo, hi);
    std::vector<float> v(n);
    for (float &x : v) x = d(rng);
    return v;
}

static std::vector<double> block_sums(const std::vector<float> &x, int per_block, int blocks) {
    std::vector<double> s(size_t(blocks), 0.0);
    for (int b = 0; b < blocks; ++b)
        for (int i = 0; i < per_block; ++i) s[size_t(b)] += x[size_t(b) * size_t(per_block) + size_t(i)];
    return s;
}

static bool close_to(const std::vector<float> &got, const std::vector<double> &want, double tol, std::string *why) {
    for (size_t i = 0; i < want.size(); ++i) {
        if (!(std::fabs(double(got[i]) - want[i]) <= tol * (1.0 + std::fabs(want[i])))) {
            char b[160];
            std::snprintf(b, sizeof b, "element %zu: got %.9g, want %.9g", i, double(got[i]), want[i]);
            *why = b;
            return false;
        }
    }
    return true;
}

// A launch that must fail: the executor reports it, the error reaches cudaGetLastError once.
struct Expect {
    uint64_t before;
    Expect() : before(mole_simt_failures()) { mole_simt_set_quiet(true); }
    ~Expect() { mole_simt_set_quiet(false); }
    std::string message(cudaError_t want) {
        const cudaError_t e = cudaGetLastError();
        CHECK(e == want, "cudaGetLastError: got %s, want %s", cudaGetErrorName(e), cudaGetErrorName(want));
        CHECK(cudaGetLastError() == cudaSuccess, "the error must clear");
        CHECK(mole_simt_failures() == before + 1, "expected exactly one report, got %llu",
              (unsigned long long)(mole_simt_failures() - before));
        ++g_expected_reports;
        return mole_simt_last_message();
    }
};

// ---------------------------------------------------------------------------------------------
// Q8_0 data: rows of 34-byte blocks, and x quantized to q8 blocks.
struct Q8Problem {
    int n, k;
    std::vector<uint8_t> W;
    std::vector<int8_t> xq;
    std::vector<float> xd;
    std::vector<double> ref;
};
static Q8Problem make_q8(int n, int k, unsigned seed) {
    Q8Problem p{n, k, {}, {}, {}, {}};
    std::mt19937 rng(seed);
    std::uniform_int_distribution<int> q(-127, 127);
    std::uniform_real_distribution<float> sc(0.001f, 0.02f);
    const int nb = k / kQK;
    p.W.resize(size_t(n) * nb * kQ8Bytes);
    for (int r = 0; r < n; ++r)
        for (int b = 0; b < nb; ++b) {
            uint8_t *blk = &p.W[(size_t(r) * nb + b) * kQ8Bytes];
            const uint16_t d = mole::f32_to_f16(sc(rng));
            blk[0] = uint8_t(d & 0xff);
            blk[1] = uint8_t(d >> 8);
            for (int i = 0; i < kQK; ++i) blk[2 + i] = uint8_t(int8_t(q(rng)));
        }
    p.xq.resize(size_t(k));
    for (int8_t &v : p.xq) v = int8_t(q(rng));
    p.xd.resize(size_t(nb));
    for (float &d : p.xd) d = sc(rng);
    p.ref.assign(size_t(n), 0.0);
    for (int r = 0; r < n; ++r)   // the scalar reference, in double
        for (int b = 0; b < nb; ++b) {
            const uint8_t *blk = &p.W[(size_t(r) * nb + b) * kQ8Bytes];
            long dot = 0;
            for (int i = 0; i < kQK; ++i) dot += long(int8_t(blk[2 + i])) * p.xq[size_t(b) * kQK + i];
            p.ref[size_t(r)] +=
                double(mole::f16_to_f32(uint16_t(blk[0] | (blk[1] << 8)))) * p.xd[size_t(b)] * double(dot);
        }
    return p;
}

// ---------------------------------------------------------------------------------------------
// Correct kernels.
static void test_reduce_shared() {
    const int per_block = 1000, blocks = 7;
    const std::vector<float> x = random_floats(size_t(per_block) * blocks, 1);
    Dev<float> dx(x), dout{size_t(blocks)};
    reduce_shared(dx.p, per_block, blocks, dout.p, 0);
    CUDA_OK(cudaGetLastError());
    std::string why;
    CHECK(close_to(dout.get(), block_sums(x, per_block, blocks), 1e-5, &why), "%s", why.c_str());
}

static void test_reduce_dynamic() {
    const int per_block = 777, blocks = 3;
    const std::vector<float> x = random_floats(size_t(per_block) * blocks, 2);
    Dev<float> dx(x), dout{size_t(blocks)};
    reduce_dynamic(dx.p, per_block, blocks, dout.p, 128 * sizeof(float), 0);
    CUDA_OK(cudaGetLastError());
    std::string why;
    CHECK(close_to(dout.get(), block_sums(x, per_block, blocks), 1e-5, &why), "%s", why.c_str());
}

static void test_reduce_warp0() {
    const int per_block = 3000, blocks = 5;
    const std::vector<float> x = random_floats(size_t(per_block) * blocks, 3);
    Dev<float> dx(x), dout{size_t(blocks)};
    reduce_warp0(dx.p, per_block, blocks, dout.p, 0);
    CUDA_OK(cudaGetLastError());
    std::string why;
    CHECK(close_to(dout.get(), block_sums(x, per_block, blocks), 1e-5, &why), "%s", why.c_str());
}

static void test_q8_matvec() {
    for (int k : {32, 256, 1056 /* 33 blocks: one lane takes two */}) {
        const Q8Problem p = make_q8(37, k, unsigned(k));
        Dev<uint8_t> W(p.W);
        Dev<int8_t> xq(p.xq);
        Dev<float> xd(p.xd), y{size_t(p.n)};
        q8_matvec(W.p, xq.p, xd.p, p.n, p.k, y.p, 0);
        CUDA_OK(cudaGetLastError());
        std::string why;
        CHECK(close_to(y.get(), p.ref, 1e-5, &why), "k = %d: %s", k, why.c_str());
    }
}

// ---------------------------------------------------------------------------------------------
// Planted bugs.
static void test_missing_sync() {
    const int per_block = 512, blocks = 2;
    const std::vector<float> x = random_floats(size_t(per_block) * blocks, 4, 0.5f, 1.0f);
    const std::vector<double> ref = block_sums(x, per_block, blocks);
    Dev<float> dx(x), dout{size_t(blocks)};
    const mole_simt_order saved = mole_simt_get_order();
    int wrong = 0;
    for (mole_simt_order o : {MOLE_SIMT_FORWARD, MOLE_SIMT_REVERSE}) {
        mole_simt_set_order(o);
        reduce_shared(dx.p, per_block, blocks, dout.p, 0);   // the same kernel with its barriers
        std::string why;
        CHECK(close_to(dout.get(), ref, 1e-5, &why), "with barriers, %s order: %s",
              o == MOLE_SIMT_FORWARD ? "forward" : "reverse", why.c_str());
        reduce_missing_sync(dx.p, per_block, blocks, dout.p, 0);
        if (!close_to(dout.get(), ref, 1e-5, &why)) {
            ++wrong;
            std::printf("  missing __syncthreads, %s order: wrong result (%s)\n",
                        o == MOLE_SIMT_FORWARD ? "forward" : "reverse", why.c_str());
        }
    }
    mole_simt_set_order(saved);
    CHECK(wrong > 0, "a reduction without barriers gave the right sums in both thread orders");
}

static void test_barrier_after_return() {
    Dev<float> dx(random_floats(kReduceThreads, 5)), dout(1);
    Expect ex;
    barrier_after_return(dx.p, 100, dout.p, 0);
    const std::string m = ex.message(cudaErrorLaunchFailure);
    std::printf("  reported: %s\n", m.c_str());
    CHECK(contains(m, "barrier divergence") && contains(m, "has returned") && contains(m, "__syncthreads") &&
              contains(m, "barrier_after_return_kernel") && contains(m, "thread (100,0,0)") &&
              contains(m, "156 thread(s)") == false && contains(m, "100 thread(s)"),
          "message: %s", m.c_str());
    CHECK(cudaStreamSynchronize(0) == cudaErrorLaunchFailure, "the next synchronize returns the launch failure");
    CHECK(cudaStreamSynchronize(0) == cudaSuccess, "once");
    cudaGetLastError();
}

static void test_shuffle_exited_lanes() {
    Dev<float> dx(random_floats(32, 6)), dout(1);
    Expect ex;
    shuffle_exited_lanes(dx.p, dout.p, 0);
    const std::string m = ex.message(cudaErrorLaunchFailure);
    std::printf("  reported: %s\n", m.c_str());
    CHECK(contains(m, "__shfl_down_sync(mask 0xffffffff)") && contains(m, "lane 16") && contains(m, "has exited") &&
              contains(m, "shuffle_exited_kernel"),
          "message: %s", m.c_str());
}

// The sanitizer cases run in a child: this program with --child NAME; its stderr comes back.
static int run_child(const char *name, const char *env, std::string *err) {
    int fds[2];
    if (pipe(fds) != 0) return -1;
    const pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], 2);
        close(fds[0]);
        close(fds[1]);
        if (env) putenv(const_cast<char *>(env));
        execl("/proc/self/exe", "test_simt", "--child", name, (char *)nullptr);
        _exit(127);
    }
    close(fds[1]);
    char buf[4096];
    ssize_t got;
    while ((got = read(fds[0], buf, sizeof buf)) > 0) err->append(buf, size_t(got));
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    return status;
}

static void test_oob_read_asan() {
#ifndef HAVE_ASAN
    std::printf("  skipped: not an ASan build\n");
#else
    std::string err;
    const int status = run_child("oob", nullptr, &err);
    CHECK(!(WIFEXITED(status) && WEXITSTATUS(status) == 0), "the child survived an out-of-bounds read");
    CHECK(contains(err, "AddressSanitizer: heap-buffer-overflow") && contains(err, "READ of size 4"),
          "no ASan report:\n%s", err.c_str());
    const size_t at = err.find("AddressSanitizer");
    std::printf("  child: %s\n", err.substr(at, err.find('\n', at) - at).c_str());
#endif
}

// ASan across fiber switches (the start/finish_switch_fiber annotations): a kernel's local array
// overrun is a stack-buffer-overflow on that fiber's stack, in the kernel's frame.
static void test_stack_oob_asan() {
#ifndef HAVE_ASAN
    std::printf("  skipped: not an ASan build\n");
#else
    std::string err;
    const int status = run_child("stack_oob", nullptr, &err);
    CHECK(!(WIFEXITED(status) && WEXITSTATUS(status) == 0), "the child survived a stack overrun");
    CHECK(contains(err, "AddressSanitizer: stack-buffer-overflow") && contains(err, "stack_oob_kernel") &&
              contains(err, "'a'"),
          "no ASan stack report:\n%s", err.c_str());
    const size_t at = err.find("AddressSanitizer");
    std::printf("  child: %s\n", err.substr(at, err.find('\n', at) - at).c_str());
#endif
}

static void test_misaligned_ubsan() {
    std::string err;
    const int status = run_child("misaligned", nullptr, &err);
    if (!have_ubsan()) {
        std::printf("  skipped: not a UBSan build (the child %s)\n",
                    WIFEXITED(status) && WEXITSTATUS(status) == 0 ? "ran the misaligned loads silently" : "failed");
        return;
    }
    CHECK(!(WIFEXITED(status) && WEXITSTATUS(status) == 0), "the child survived a misaligned load");
    CHECK(contains(err, "load of misaligned address") && contains(err, "for type 'const int'") &&
              contains(err, "requires 4 byte alignment"),
          "no UBSan report:\n%s", err.c_str());
    const size_t at = err.find("runtime error");
    if (at != std::string::npos) std::printf("  child: %s\n", err.substr(at, err.find('\n', at) - at).c_str());
}

static int child_main(const std::string &name) {
    if (name == "oob") {
        Dev<float> x(64), out(64);
        oob_read(x.p, 64, out.p, 0);
        return 0;
    }
    if (name == "stack_oob") {
        Dev<int> idx(std::vector<int>{8});
        Dev<float> out(std::vector<float>{0.0f, 1.0f});
        stack_oob(idx.p, out.p, 0);
        return 0;
    }
    if (name == "misaligned") {
        const Q8Problem p = make_q8(8, 64, 9);
        Dev<uint8_t> W(p.W);
        Dev<int8_t> xq(p.xq);
        Dev<float> xd(p.xd), y{size_t(p.n)};
        q8_matvec_misaligned(W.p, xq.p, xd.p, p.n, p.k, y.p, 0);
        return 0;
    }
    if (name == "abort") {
        Dev<float> dx(kReduceThreads), dout(1);
        barrier_after_return(dx.p, 10, dout.p, 0);
        return 0;
    }
    std::fprintf(stderr, "unknown child case %s\n", name.c_str());
    return 2;
}

static void test_abort_env() {
    std::string err;
    const int status = run_child("abort", "MOLE_SIMT_ABORT=1", &err);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT, "MOLE_SIMT_ABORT=1 must abort (status %d)", status);
    CHECK(contains(err, "barrier divergence") && contains(err, "MOLE_SIMT_ABORT=1"), "stderr: %s", err.c_str());
}

// ---------------------------------------------------------------------------------------------
// Runtime API: sizes and kinds of copies.
static void test_memcpy_checks() {
    Dev<uint8_t> d(1024);
    std::vector<uint8_t> h(4096, 1);
    {
        Expect ex;
        CHECK(cudaMemcpy(d.p, h.data(), 4096, cudaMemcpyHostToDevice) == cudaErrorInvalidValue, "past the end");
        const std::string m = ex.message(cudaErrorInvalidValue);
        std::printf("  reported: %s\n", m.c_str());
        CHECK(contains(m,
                       "cudaMemcpy (HostToDevice): 4096 bytes to offset 0 of a device allocation of 1024 bytes run "
                       "past its end"),
              "message: %s", m.c_str());
    }
    {
        Expect ex;
        CHECK(cudaMemcpyAsync(h.data(), d.p + 1000, 25, cudaMemcpyDeviceToHost, 0) == cudaErrorInvalidValue, "");
        const std::string m = ex.message(cudaErrorInvalidValue);
        CHECK(contains(m, "25 bytes from offset 1000 of a device allocation of 1024 bytes run past its end"), "%s",
              m.c_str());
    }
    {
        Expect ex;   // wrong direction: the destination of a HostToDevice copy is host memory
        CHECK(cudaMemcpy(h.data(), d.p, 16, cudaMemcpyHostToDevice) == cudaErrorInvalidValue, "wrong direction");
        const std::string m = ex.message(cudaErrorInvalidValue);
        std::printf("  reported: %s\n", m.c_str());
        CHECK(contains(m, "cudaMemcpy (HostToDevice): the destination") && contains(m, "is not a device allocation"),
              "%s", m.c_str());
    }
    {
        Expect ex;   // a DeviceToHost copy whose source is host memory
        CHECK(cudaMemcpy(h.data(), h.data() + 100, 16, cudaMemcpyDeviceToHost) == cudaErrorInvalidValue, "");
        const std::string m = ex.message(cudaErrorInvalidValue);
        CHECK(contains(m, "(DeviceToHost): the source") && contains(m, "is not a device allocation"), "%s", m.c_str());
    }
    {
        Expect ex;   // a DeviceToHost copy into device memory
        Dev<uint8_t> d2(64);
        CHECK(cudaMemcpy(d2.p, d.p, 16, cudaMemcpyDeviceToHost) == cudaErrorInvalidValue, "");
        CHECK(contains(ex.message(cudaErrorInvalidValue), "the destination"), "");
    }
    {
        Expect ex;
        CHECK(cudaMemset(d.p + 1, 0, 1024) == cudaErrorInvalidValue, "memset past the end");
        CHECK(contains(ex.message(cudaErrorInvalidValue), "1024 bytes to offset 1 of a device allocation of 1024"), "");
    }
    {
        Expect ex;
        CHECK(cudaFree(h.data()) == cudaErrorInvalidValue, "freeing host memory");
        CHECK(contains(ex.message(cudaErrorInvalidValue), "is not a live device allocation"), "");
    }
    {
        Expect ex;
        CHECK(cudaFree(d.p + 8) == cudaErrorInvalidValue, "freeing the middle");
        CHECK(contains(ex.message(cudaErrorInvalidValue), "points 8 bytes into a device allocation of 1024"), "");
    }
    // What is right passes: exact sizes, DeviceToDevice, Default, pinned memory.
    CUDA_OK(cudaMemcpy(d.p, h.data(), 1024, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(d.p + 512, d.p, 512, cudaMemcpyDeviceToDevice));
    CUDA_OK(cudaMemcpy(h.data(), d.p, 1024, cudaMemcpyDefault));
    CUDA_OK(cudaMemsetAsync(d.p, 7, 1024, 0));
    void *pinned = nullptr;
    CUDA_OK(cudaMallocHost(&pinned, 100));
    CUDA_OK(cudaMemcpy(d.p, pinned, 100, cudaMemcpyHostToDevice));
    {
        Expect ex;
        CHECK(cudaMemcpy(d.p, pinned, 101, cudaMemcpyHostToDevice) == cudaErrorInvalidValue, "past a pinned buffer");
        CHECK(contains(ex.message(cudaErrorInvalidValue), "of a pinned host allocation of 100 bytes"), "");
    }
    {
        Expect ex;
        CHECK(cudaFree(pinned) == cudaErrorInvalidValue, "cudaFree of pinned memory");
        CHECK(contains(ex.message(cudaErrorInvalidValue), "is a pinned host allocation, not a device allocation"), "");
    }
    CUDA_OK(cudaFreeHost(pinned));
    std::vector<uint8_t> reg(256);
    CUDA_OK(cudaHostRegister(reg.data(), reg.size(), cudaHostRegisterReadOnly));
    {
        Expect ex;
        CHECK(cudaHostRegister(reg.data() + 8, 8, 0) == cudaErrorHostMemoryAlreadyRegistered, "");
        ex.message(cudaErrorHostMemoryAlreadyRegistered);
    }
    CUDA_OK(cudaHostUnregister(reg.data()));
    const uint64_t held = mole_simt_device_bytes();
    {
        Dev<float> more(1000);
        CHECK(mole_simt_device_bytes() == held + 4000, "allocations are counted");
    }
    CHECK(mole_simt_device_bytes() == held, "and released");
}

static void test_kernel_arg_host_pointer() {
    std::vector<float> host(4, 1.0f);
    Dev<float> out(1);
    Expect ex;
    touch(host.data(), out.p, 0);
    const std::string m = ex.message(cudaErrorIllegalAddress);
    std::printf("  reported: %s\n", m.c_str());
    CHECK(contains(m, "argument 0") && contains(m, "is not device memory"), "%s", m.c_str());
    CHECK(cudaDeviceSynchronize() == cudaErrorIllegalAddress, "pending until a synchronize");
    cudaGetLastError();
    touch(out.p, out.p, 0);   // device memory is fine
    CUDA_OK(cudaGetLastError());
}

static void test_device_and_streams() {
    int n = -1;
    CUDA_OK(cudaGetDeviceCount(&n));
    CHECK(n == 1, "one simulated device, got %d", n);
    cudaDeviceProp p;
    CUDA_OK(cudaGetDeviceProperties(&p, 0));
    CHECK(std::strcmp(p.name, "mole-simt") == 0 && p.major == 9 && p.minor == 0 && p.warpSize == 32 &&
              p.sharedMemPerBlock == 48 * 1024 && p.sharedMemPerBlockOptin == 227 * 1024 &&
              p.maxThreadsPerBlock == 1024,
          "properties");
    int v = 0;
    CUDA_OK(cudaDeviceGetAttribute(&v, cudaDevAttrHostRegisterReadOnlySupported, 0));
    CHECK(v == 1, "read-only registration");
    CUDA_OK(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0));
    CHECK(v == 227 * 1024, "opt-in shared memory");
    size_t free_b = 0, total_b = 0;
    CUDA_OK(cudaMemGetInfo(&free_b, &total_b));
    CHECK(total_b > 0 && free_b <= total_b, "memory info");

    setenv("MOLE_SIMT_NO_DEVICE", "1", 1);   // a machine without a driver
    n = -1;
    CHECK(cudaGetDeviceCount(&n) == cudaErrorInsufficientDriver && n == 0, "no driver: 35 and no devices");
    CHECK(cudaGetLastError() == cudaErrorInsufficientDriver, "the error is the last error");
    void *q = nullptr;
    CHECK(cudaMalloc(&q, 16) == cudaErrorInsufficientDriver, "no allocations either");
    cudaGetLastError();
    unsetenv("MOLE_SIMT_NO_DEVICE");
    CHECK(std::strcmp(cudaGetErrorString(cudaErrorInsufficientDriver),
                      "CUDA driver version is insufficient for CUDA runtime version") == 0,
          "error text");
    CHECK(std::strcmp(cudaGetErrorName(cudaErrorInsufficientDriver), "cudaErrorInsufficientDriver") == 0, "name");

    cudaStream_t s = nullptr;
    cudaEvent_t a = nullptr, b = nullptr, c = nullptr;
    CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    CUDA_OK(cudaEventCreate(&a));
    CUDA_OK(cudaEventCreate(&b));
    CUDA_OK(cudaEventCreateWithFlags(&c, cudaEventDisableTiming));
    CUDA_OK(cudaEventRecord(a, s));
    empty_kernel(dim3(3), dim3(5), 0, s);
    CUDA_OK(cudaGetLastError());
    CUDA_OK(cudaEventRecord(b, s));
    CUDA_OK(cudaEventRecord(c, s));
    CUDA_OK(cudaStreamWaitEvent(0, c, 0));
    CUDA_OK(cudaEventQuery(b));
    CUDA_OK(cudaEventSynchronize(b));
    float ms = -1.0f;
    CUDA_OK(cudaEventElapsedTime(&ms, a, b));
    CHECK(ms >= 0.0f, "elapsed %g", double(ms));
    {
        Expect ex;
        CHECK(cudaEventElapsedTime(&ms, a, c) == cudaErrorInvalidResourceHandle, "timing disabled");
        CHECK(contains(ex.message(cudaErrorInvalidResourceHandle), "cudaEventDisableTiming"), "");
    }
    CUDA_OK(cudaStreamSynchronize(s));
    for (cudaEvent_t e : {a, b, c}) CUDA_OK(cudaEventDestroy(e));
    CUDA_OK(cudaStreamDestroy(s));
    {
        Expect ex;
        empty_kernel(dim3(1), dim3(1), 0, s);
        CHECK(contains(ex.message(cudaErrorInvalidResourceHandle), "not a live stream"),
              "launch on a destroyed stream");
    }
}

// ---------------------------------------------------------------------------------------------
// Executor semantics.
static void test_launch_config() {
    {
        Expect ex;
        empty_kernel(dim3(1), dim3(1025), 0, 0);
        const std::string m = ex.message(cudaErrorInvalidConfiguration);
        CHECK(contains(m, "empty_kernel_kernel") && contains(m, "1025 threads"), "%s", m.c_str());
    }
    {
        Expect ex;
        empty_kernel(dim3(0), dim3(32), 0, 0);
        ex.message(cudaErrorInvalidConfiguration);
    }
    {
        Expect ex;
        empty_kernel(dim3(1), dim3(32, 1, 65), 0, 0);
        ex.message(cudaErrorInvalidConfiguration);
    }
    empty_kernel(dim3(2, 2, 2), dim3(4, 4, 4), 0, 0);
    CUDA_OK(cudaGetLastError());
    Dev<float> out(1);
    {
        Expect ex;   // over 48 KiB of dynamic shared memory needs the opt-in
        big_dynamic(out.p, 64 * 1024, false, 0);
        const std::string m = ex.message(cudaErrorInvalidValue);
        CHECK(contains(m, "65536 bytes of dynamic shared memory, over its limit of 49152"), "%s", m.c_str());
    }
    big_dynamic(out.p, 64 * 1024, true, 0);
    CUDA_OK(cudaGetLastError());
    CHECK(out.get()[0] == 3.0f, "the opted-in kernel ran");
    {
        Expect ex;
        CHECK(cudaFuncSetAttribute(touch, cudaFuncAttributeMaxDynamicSharedMemorySize, 228 * 1024) ==
                  cudaErrorInvalidValue,
              "over the device's opt-in limit");
        ex.message(cudaErrorInvalidValue);
    }
}

static void test_thread_ids() {
    const int nthreads = 64, nblocks = 6;
    Dev<uint32_t> out(size_t(nthreads) * nblocks), ballots(size_t(nblocks) * 2);
    thread_ids(out.p, ballots.p, 0);
    CUDA_OK(cudaGetLastError());
    const std::vector<uint32_t> o = out.get(), b = ballots.get();
    for (int blk = 0; blk < nblocks; ++blk)
        for (int t = 0; t < nthreads; ++t) {   // x fastest, then y, then z
            const uint32_t want = uint32_t(t % 8) | uint32_t((t / 8) % 4) << 8 | uint32_t(t / 32) << 16 |
                uint32_t(blk % 2) << 24 | uint32_t(blk / 2) << 28;
            CHECK(o[size_t(blk * nthreads + t)] == want, "block %d thread %d: 0x%08x, want 0x%08x", blk, t,
                  o[size_t(blk * nthreads + t)], want);
        }
    for (uint32_t v : b) CHECK(v == 0xaaaaaaaau, "warps of 32 consecutive linear ids: odd-x ballot 0x%08x", v);
}

// The order the environment asked for: forward runs linear id 0 (and block 0) first, reverse the
// highest first.
static void test_thread_order() {
    const int blocks = 3, threads = 40;
    Dev<int> counter(std::vector<int>{0}), out{size_t(blocks * threads)};
    tickets(counter.p, out.p, blocks, threads, 0);
    CUDA_OK(cudaGetLastError());
    const std::vector<int> o = out.get();
    const bool reverse = mole_simt_get_order() == MOLE_SIMT_REVERSE;
    for (int i = 0; i < blocks * threads; ++i)
        CHECK(o[size_t(i)] == (reverse ? blocks * threads - 1 - i : i), "thread %d ran as number %d (%s order)", i,
              o[size_t(i)], reverse ? "reverse" : "forward");
}

static void test_warp_ops() {
    std::vector<int> x(32);
    for (int i = 0; i < 32; ++i) x[size_t(i)] = (i * 37 + 11) % 101;
    x[20] = 77;
    Dev<int> dx(x), dout(32 * 8);
    warp_ops(dx.p, dout.p, 0);
    CUDA_OK(cudaGetLastError());
    const std::vector<int> o = dout.get();
    unsigned ballot = 0, odd_ballot = 0;
    for (int i = 0; i < 32; ++i) {
        ballot |= unsigned(x[size_t(i)] % 3 == 0) << i;
        if (i & 1) odd_ballot |= unsigned(x[size_t(i)] > 40) << i;
    }
    for (int l = 0; l < 32; ++l) {
        const int *r = &o[size_t(8 * l)];
        CHECK(r[0] == x[5], "lane %d shfl", l);
        CHECK(r[1] == x[size_t((l & ~7) + 3)], "lane %d shfl width 8", l);
        CHECK(r[2] == ((l & 7) >= 2 ? x[size_t(l - 2)] : x[size_t(l)]), "lane %d shfl_up width 8", l);
        CHECK(r[3] == (l + 3 < 32 ? x[size_t(l + 3)] : x[size_t(l)]), "lane %d shfl_down", l);
        CHECK(r[4] == x[size_t(l ^ 9)], "lane %d shfl_xor", l);
        CHECK(unsigned(r[5]) == ballot, "lane %d ballot 0x%08x", l, unsigned(r[5]));
        CHECK(r[6] == 3, "lane %d any/all: %d", l, r[6]);
        CHECK(r[7] == ((l & 1) ? int(odd_ballot) + 16000 : 0), "lane %d partial-mask ballot and reduce_add", l);
    }
}

static void test_shuffle_outside_mask() {
    Dev<float> dx(random_floats(32, 7)), dout(32);
    const std::vector<float> x = dx.get();
    shuffle_outside_mask(dx.p, dout.p, 0);
    CUDA_OK(cudaGetLastError());
    const std::vector<float> o = dout.get();
    for (int l = 0; l < 8; ++l) CHECK(o[size_t(l)] == x[size_t(l + 8)], "lane %d reads inside the mask", l);
    for (int l = 8; l < 16; ++l) CHECK(std::isnan(o[size_t(l)]), "lane %d read outside the mask: poison expected", l);
}

static void test_shuffle_mask_errors() {
    Dev<float> dx(random_floats(32, 8)), dout(64);
    {
        Expect ex;
        shuffle_self_not_in_mask(dout.p, 0);
        const std::string m = ex.message(cudaErrorLaunchFailure);
        CHECK(contains(m, "the calling lane 0 is not in the mask") && contains(m, "thread (0,0,0)"), "%s", m.c_str());
    }
    {
        Expect ex;
        shuffle_mismatched_ops(dx.p, dout.p, 0);
        const std::string m = ex.message(cudaErrorLaunchFailure);
        std::printf("  reported: %s\n", m.c_str());
        CHECK(contains(m, "__shfl_xor_sync(mask 0xffffffff)") && contains(m, "__shfl_down_sync") &&
                  contains(m, "must reach the same op"),
              "%s", m.c_str());
    }
    {
        Expect ex;
        barrier_two_sites(dout.p, 0);
        const std::string m = ex.message(cudaErrorLaunchFailure);
        std::printf("  reported: %s\n", m.c_str());
        CHECK(
            contains(m, "barrier divergence") && contains(m, "thread (32,0,0)") && contains(m, "while thread (0,0,0)"),
            "%s", m.c_str());
    }
}

static void test_shared_poison() {
    Dev<float> fresh(16);   // device memory nobody wrote reads as NaN too
    for (float v : fresh.get()) CHECK(std::isnan(v), "fresh device memory: %g", double(v));
    Dev<float> dout(64);
    shared_uninitialized(dout.p, 0);
    CUDA_OK(cudaGetLastError());
    const std::vector<float> o = dout.get();
    for (int i = 0; i < 32; ++i) CHECK(o[size_t(i)] == float(i), "written shared memory");
    for (int i = 32; i < 64; ++i) CHECK(std::isnan(o[size_t(i)]), "unwritten shared memory reads as NaN");
}

static void test_shared_per_block() {
    Dev<float> dout(3 * 128);
    shared_per_block(dout.p, 0);
    CUDA_OK(cudaGetLastError());
    const std::vector<float> o = dout.get();
    for (int blk = 0; blk < 3; ++blk)
        for (int t = 0; t < 64; ++t) {
            CHECK(o[size_t(blk * 128 + t)] == float(63 - t) - float(2 * t), "block %d thread %d: the arrays alias", blk,
                  t);
            const float seen = o[size_t(blk * 128 + 64 + t)];
            CHECK(blk == 0 ? seen == 5.0f : std::isnan(seen),
                  "block %d thread %d: %g; each block's shared memory is fresh", blk, t, double(seen));
        }
}

static void test_atomics() {
    const int blocks = 9, threads = 96 * blocks;
    Dev<int> counter(std::vector<int>{0, 0, 0, 0});
    Dev<unsigned> maxv(std::vector<unsigned>{0});
    Dev<float> fsum(std::vector<float>{0.0f});
    Dev<unsigned long long> u64(std::vector<unsigned long long>{5});
    atomics(counter.p, maxv.p, fsum.p, u64.p, blocks, 0);
    CUDA_OK(cudaGetLastError());
    const std::vector<int> c = counter.get();
    unsigned want_max = 0;
    for (int i = 0; i < threads; ++i) want_max = std::max(want_max, unsigned(i) * 7u % 1000u);
    CHECK(c[0] == threads, "atomicAdd int: %d", c[0]);
    CHECK(c[1] >= 1 && c[1] <= threads && c[2] == 1, "atomicCAS claims once: %d %d", c[1], c[2]);
    CHECK(c[3] == -(threads - 1), "atomicMin: %d", c[3]);
    CHECK(maxv.get()[0] == want_max, "atomicMax");
    CHECK(fsum.get()[0] == 0.5f * float(threads), "atomicAdd float");
    CHECK(u64.get()[0] == 5 + (uint64_t(threads) << 33), "atomicAdd u64");
}

static void test_template_kernel() {
    const std::vector<float> x = random_floats(300, 12);
    Dev<float> dx(x), dout(300);
    scale_by_minus3(dx.p, dout.p, 300, 0);
    CUDA_OK(cudaGetLastError());
    const std::vector<float> o = dout.get();
    for (int i = 0; i < 300; ++i) CHECK(o[size_t(i)] == -3.0f * x[size_t(i)], "element %d", i);
}

static void test_params_by_value() {
    const std::vector<float> x = random_floats(64, 10);
    Dev<float> dx(x), dout(64);
    params_by_value(dx.p, 40, dout.p, 0);
    CUDA_OK(cudaGetLastError());
    const std::vector<float> o = dout.get();
    for (int t = 0; t < 64; ++t)
        CHECK(o[size_t(t)] == (40 - t > 0 ? x[size_t(t)] + float(40 - t) : -1.0f), "thread %d", t);
}

static void test_sync_count() {
    std::vector<int> x(128);
    for (int i = 0; i < 128; ++i) x[size_t(i)] = i % 20;
    Dev<int> dx(x), dout(3);
    sync_count(dx.p, dout.p, 0);
    CUDA_OK(cudaGetLastError());
    const std::vector<int> o = dout.get();
    int want = 0;
    for (int v : x) want += v > 10;
    CHECK(o[0] == want && o[1] == 1 && o[2] == 0, "count %d and %d or %d", o[0], o[1], o[2]);
}

static void test_intrinsics() {
    // dp4a: signed, unsigned and vector forms against a scalar loop.
    std::mt19937 rng(11);
    for (int t = 0; t < 1000; ++t) {
        const uint32_t a = rng(), b = rng();
        const int c = int(rng() % 2001) - 1000;
        int s = c;
        unsigned u = unsigned(c);
        for (int i = 0; i < 4; ++i) {
            s += int(int8_t(a >> (8 * i))) * int(int8_t(b >> (8 * i)));
            u += ((a >> (8 * i)) & 0xff) * ((b >> (8 * i)) & 0xff);
        }
        CHECK(__dp4a(int(a), int(b), c) == s, "signed dp4a");
        CHECK(__dp4a(a, b, unsigned(c)) == u, "unsigned dp4a");
        const char4 ca = make_char4(int8_t(a), int8_t(a >> 8), int8_t(a >> 16), int8_t(a >> 24));
        const char4 cb = make_char4(int8_t(b), int8_t(b >> 8), int8_t(b >> 16), int8_t(b >> 24));
        CHECK(__dp4a(ca, cb, c) == s, "char4 dp4a");
    }
    CHECK(__popc(0xf0f0u) == 8 && __ffs(0) == 0 && __ffs(8) == 4 && __clz(1) == 31 && __brev(1u) == 0x80000000u,
          "bits");
    CHECK(__float_as_int(1.0f) == 0x3f800000 && __int_as_float(0x40000000) == 2.0f, "bit casts");
    CHECK(min(3, 5) == 3 && max(int64_t(-1), 2) == 2 && min(2.0f, NAN) == 2.0f, "min / max");

    // half / bfloat16: every bit pattern through a kernel, and float -> half / bf16 rounding
    // against the executor's independent double-based rounding.
    std::vector<uint16_t> bits(65536);
    for (int i = 0; i < 65536; ++i) bits[size_t(i)] = uint16_t(i);
    Dev<uint16_t> dh(bits), dbf(bits);
    Dev<float> dout(2 * 65536);
    half_convert(dh.p, dbf.p, dout.p, 65536, 0);
    CUDA_OK(cudaGetLastError());
    const std::vector<float> o = dout.get();
    int bad = 0;
    for (int i = 0; i < 65536; ++i) {
        const float h = o[size_t(2 * i)], bf = o[size_t(2 * i + 1)];
        if (std::isnan(h))
            bad += !((i & 0x7c00) == 0x7c00 && (i & 0x3ff));
        else
            bad += __half_as_ushort(__float2half_rn(h)) != i;
        if (std::isnan(bf))
            bad += !((i & 0x7f80) == 0x7f80 && (i & 0x7f));
        else
            bad += __bfloat16_as_ushort(__float2bfloat16(bf)) != i;
    }
    CHECK(bad == 0, "%d half / bf16 bit patterns do not round-trip", bad);
    std::uniform_real_distribution<float> e(-30.0f, 18.0f);
    bad = 0;
    for (int t = 0; t < 200000; ++t) {
        const float f =
            std::ldexp(1.0f + float(rng() % (1u << 23)) / float(1u << 23), int(e(rng))) * (t & 1 ? -1.0f : 1.0f);
        bad += __half_as_ushort(__float2half(f)) != mole_simt::detail::f64_to_f16(double(f));
        bad += __bfloat16_as_ushort(__float2bfloat16(f)) != mole_simt::detail::f64_to_bf16(double(f));
    }
    CHECK(bad == 0, "%d float -> half / bf16 roundings disagree", bad);
    CHECK(__half_as_ushort(__float2half(65520.0f)) == 0x7c00 && __half_as_ushort(__float2half(65519.0f)) == 0x7bff &&
              __half_as_ushort(__float2half(std::ldexp(1.0f, -25))) == 0 &&
              __half_as_ushort(__float2half(std::ldexp(1.5f, -25))) == 1,
          "half edges: overflow to inf, ties to even in the subnormals");
    const __half2 h2 = __floats2half2_rn(1.5f, -2.25f);
    const float2 f2 = __half22float2(h2);
    CHECK(f2.x == 1.5f && f2.y == -2.25f, "half2");
    CHECK(__half2float(__hfma(__float2half(1.5f), __float2half(2.0f), __float2half(0.25f))) == 3.25f, "hfma");
}

static void test_kernel_counts() {
    const std::vector<mole_simt::KernelCount> k = mole_simt::kernel_counts();
    bool found = false;
    for (const auto &c : k) found |= c.name == "reduce_warp0_kernel" && c.launches >= 1 && c.blocks >= 5;
    CHECK(found, "kernel_counts lists reduce_warp0_kernel");
}

// ---------------------------------------------------------------------------------------------
struct Test {
    const char *name;
    void (*fn)();
};
static const Test kTests[] = {
    {"reduce_shared", test_reduce_shared},
    {"reduce_dynamic", test_reduce_dynamic},
    {"reduce_warp0", test_reduce_warp0},
    {"q8_matvec", test_q8_matvec},
    {"missing_sync", test_missing_sync},
    {"barrier_after_return", test_barrier_after_return},
    {"shuffle_exited_lanes", test_shuffle_exited_lanes},
    {"oob_read_asan", test_oob_read_asan},
    {"stack_oob_asan", test_stack_oob_asan},
    {"misaligned_ubsan", test_misaligned_ubsan},
    {"abort_env", test_abort_env},
    {"memcpy_checks", test_memcpy_checks},
    {"kernel_arg_host_pointer", test_kernel_arg_host_pointer},
    {"device_and_streams", test_device_and_streams},
    {"launch_config", test_launch_config},
    {"thread_ids", test_thread_ids},
    {"thread_order", test_thread_order},
    {"warp_ops", test_warp_ops},
    {"shuffle_outside_mask", test_shuffle_outside_mask},
    {"shuffle_mask_errors", test_shuffle_mask_errors},
    {"shared_poison", test_shared_poison},
    {"shared_per_block", test_shared_per_block},
    {"atomics", test_atomics},
    {"template_kernel", test_template_kernel},
    {"params_by_value", test_params_by_value},
    {"sync_count", test_sync_count},
    {"intrinsics", test_intrinsics},
    {"kernel_counts", test_kernel_counts},
};

int main(int argc, char **argv) {
    std::vector<std::string> only;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--child" && i + 1 < argc) return child_main(argv[i + 1]);
        if (a == "--list") {
            for (const Test &t : kTests) std::printf("%s\n", t.name);
            return 0;
        }
        only.push_back(a);
    }
    std::printf("test_simt: thread order %s%s\n", mole_simt_get_order() == MOLE_SIMT_REVERSE ? "reverse" : "forward",
#ifdef HAVE_ASAN
                ", ASan"
#else
                ""
#endif
    );
    int failed = 0, ran = 0;
    for (const Test &t : kTests) {
        bool pick = only.empty();
        for (const std::string &o : only) pick |= o == t.name;
        if (!pick) continue;
        const int before = g_failed_checks;
        const uint64_t reports = mole_simt_failures(), expected = g_expected_reports;
        std::printf("%s\n", t.name);
        std::fflush(stdout);
        t.fn();
        // Every report must be one the test expected (Expect): a correct kernel raises none.
        const uint64_t unexpected = (mole_simt_failures() - reports) - (g_expected_reports - expected);
        CHECK(unexpected == 0, "%llu unexpected executor report(s); the last: %s", (unsigned long long)unexpected,
              mole_simt_last_message());
        ++ran;
        if (g_failed_checks > before) {
            ++failed;
            std::printf("FAILED %s\n", t.name);
        }
    }
    std::printf("%d of %d tests passed\n", ran - failed, ran);
    return failed ? 1 : 0;
}
