// The SIMT executor: CUDA's device language and a small CUDA runtime, spelled as CUDA spells them,
// so that a kernel file compiled by g++ with -DMOLE_SIMT runs on the CPU, each CUDA thread a fiber.
// Kernels reach this header only through runtime/src/backend/cuda/compat.cuh. For tests only.
#pragma once

#include <math.h>
#include <stddef.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "types.h"   // mole::f16_to_f32 and friends: the exact conversions

// ---------------------------------------------------------------------------------------------
// Keywords. __shared__ is an error on purpose: a plain local would silently be per thread.
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __constant__
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ MOLE_SIMT_declare_shared_memory_with_MOLE_SHARED_or_MOLE_DYNAMIC_SHARED
// __restrict__ is already a g++ / clang++ keyword.

// ---------------------------------------------------------------------------------------------
// Vector types (CUDA's alignments, so -fsanitize=alignment flags what faults on a GPU).
struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return uint3{x, y, z}; }
};

#define MOLE_SIMT_VEC2(T, name, al)            \
    struct __attribute__((aligned(al))) name { \
        T x, y;                                \
    };                                         \
    inline name make_##name(T x, T y) { return name{x, y}; }
#define MOLE_SIMT_VEC3(T, name) \
    struct name {               \
        T x, y, z;              \
    };                          \
    inline name make_##name(T x, T y, T z) { return name{x, y, z}; }
#define MOLE_SIMT_VEC4(T, name, al)            \
    struct __attribute__((aligned(al))) name { \
        T x, y, z, w;                          \
    };                                         \
    inline name make_##name(T x, T y, T z, T w) { return name{x, y, z, w}; }
MOLE_SIMT_VEC2(signed char, char2, 2)
MOLE_SIMT_VEC4(signed char, char4, 4)
MOLE_SIMT_VEC2(unsigned char, uchar2, 2)
MOLE_SIMT_VEC4(unsigned char, uchar4, 4)
MOLE_SIMT_VEC2(short, short2, 4)
MOLE_SIMT_VEC4(short, short4, 8)
MOLE_SIMT_VEC2(unsigned short, ushort2, 4)
MOLE_SIMT_VEC4(unsigned short, ushort4, 8)
MOLE_SIMT_VEC2(int, int2, 8)
MOLE_SIMT_VEC3(int, int3)
MOLE_SIMT_VEC4(int, int4, 16)
MOLE_SIMT_VEC2(unsigned, uint2, 8)
MOLE_SIMT_VEC4(unsigned, uint4, 16)
MOLE_SIMT_VEC2(float, float2, 8)
MOLE_SIMT_VEC3(float, float3)
MOLE_SIMT_VEC4(float, float4, 16)
MOLE_SIMT_VEC2(double, double2, 16)
MOLE_SIMT_VEC2(long long, longlong2, 16)
inline uint3 make_uint3(unsigned x, unsigned y, unsigned z) { return uint3{x, y, z}; }
#undef MOLE_SIMT_VEC2
#undef MOLE_SIMT_VEC3
#undef MOLE_SIMT_VEC4

// ---------------------------------------------------------------------------------------------
// The CUDA runtime on the CPU: synchronous, one simulated device. Device memory is host memory
// from malloc (so ASan checks kernels' accesses) whose size is remembered: a copy past an
// allocation's end, or one whose kind does not match its pointers, fails with a message.
// The error codes (CUDA's values) and their texts, spelled once.
#define MOLE_SIMT_ERRORS(X)                                                                                     \
    X(cudaSuccess, 0, "no error")                                                                               \
    X(cudaErrorInvalidValue, 1, "invalid argument")                                                             \
    X(cudaErrorMemoryAllocation, 2, "out of memory")                                                            \
    X(cudaErrorInitializationError, 3, "initialization error")                                                  \
    X(cudaErrorInvalidConfiguration, 9, "invalid configuration argument")                                       \
    X(cudaErrorInvalidDevicePointer, 17, "invalid device pointer")                                              \
    X(cudaErrorInvalidMemcpyDirection, 21, "invalid copy direction for memcpy")                                 \
    X(cudaErrorInsufficientDriver, 35, "CUDA driver version is insufficient for CUDA runtime version")          \
    X(cudaErrorInvalidDeviceFunction, 98, "invalid device function")                                            \
    X(cudaErrorNoDevice, 100, "no CUDA-capable device is detected")                                             \
    X(cudaErrorInvalidDevice, 101, "invalid device ordinal")                                                    \
    X(cudaErrorInvalidResourceHandle, 400, "invalid resource handle")                                           \
    X(cudaErrorNotReady, 600, "device not ready")                                                               \
    X(cudaErrorIllegalAddress, 700, "an illegal memory access was encountered")                                 \
    X(cudaErrorLaunchOutOfResources, 701, "too many resources requested for launch")                            \
    X(cudaErrorAssert, 710, "device-side assert triggered")                                                     \
    X(cudaErrorHostMemoryAlreadyRegistered, 712, "part or all of the requested memory range is already mapped") \
    X(cudaErrorHostMemoryNotRegistered, 713, "pointer does not correspond to a registered memory region")       \
    X(cudaErrorMisalignedAddress, 716, "misaligned address")                                                    \
    X(cudaErrorLaunchFailure, 719, "unspecified launch failure")                                                \
    X(cudaErrorNotSupported, 801, "operation not supported")                                                    \
    X(cudaErrorUnknown, 999, "unknown error")
#define MOLE_SIMT_ERROR_ENUM(name, value, text) name = value,
enum cudaError_t { MOLE_SIMT_ERRORS(MOLE_SIMT_ERROR_ENUM) };
#undef MOLE_SIMT_ERROR_ENUM
typedef cudaError_t cudaError;

enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4,
};

enum cudaFuncAttribute {
    cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
    cudaFuncAttributePreferredSharedMemoryCarveout = 9,
};

enum cudaDeviceAttr {
    cudaDevAttrMaxThreadsPerBlock = 1,
    cudaDevAttrMaxBlockDimX = 2,
    cudaDevAttrMaxBlockDimY = 3,
    cudaDevAttrMaxBlockDimZ = 4,
    cudaDevAttrMaxGridDimX = 5,
    cudaDevAttrMaxGridDimY = 6,
    cudaDevAttrMaxGridDimZ = 7,
    cudaDevAttrMaxSharedMemoryPerBlock = 8,
    cudaDevAttrTotalConstantMemory = 9,
    cudaDevAttrWarpSize = 10,
    cudaDevAttrMaxRegistersPerBlock = 12,
    cudaDevAttrMultiProcessorCount = 16,
    cudaDevAttrIntegrated = 18,
    cudaDevAttrCanMapHostMemory = 19,
    cudaDevAttrConcurrentKernels = 31,
    cudaDevAttrL2CacheSize = 38,
    cudaDevAttrMaxThreadsPerMultiProcessor = 39,
    cudaDevAttrAsyncEngineCount = 40,
    cudaDevAttrUnifiedAddressing = 41,
    cudaDevAttrComputeCapabilityMajor = 75,
    cudaDevAttrComputeCapabilityMinor = 76,
    cudaDevAttrMaxSharedMemoryPerMultiprocessor = 81,
    cudaDevAttrManagedMemory = 83,
    cudaDevAttrPageableMemoryAccess = 88,
    cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
    cudaDevAttrMaxBlocksPerMultiprocessor = 106,
    cudaDevAttrHostRegisterSupported = 99,
    cudaDevAttrHostRegisterReadOnlySupported = 113,
};

// The fields of CUDA's cudaDeviceProp that this runtime fills (same names and types).
struct cudaDeviceProp {
    char name[256];
    size_t totalGlobalMem;
    size_t sharedMemPerBlock;
    int regsPerBlock;
    int warpSize;
    size_t memPitch;
    int maxThreadsPerBlock;
    int maxThreadsDim[3];
    int maxGridSize[3];
    size_t totalConstMem;
    int major;
    int minor;
    size_t textureAlignment;
    int multiProcessorCount;
    int integrated;
    int canMapHostMemory;
    int concurrentKernels;
    int ECCEnabled;
    int pciBusID;
    int pciDeviceID;
    int pciDomainID;
    int asyncEngineCount;
    int unifiedAddressing;
    int memoryBusWidth;
    int l2CacheSize;
    int maxThreadsPerMultiProcessor;
    size_t sharedMemPerMultiprocessor;
    int regsPerMultiprocessor;
    int managedMemory;
    int pageableMemoryAccess;
    size_t sharedMemPerBlockOptin;
    int maxBlocksPerMultiProcessor;
    size_t reservedSharedMemPerBlock;
    int hostRegisterSupported;
    int hostRegisterReadOnlySupported;
};

typedef struct CUstream_st *cudaStream_t;
typedef struct CUevent_st *cudaEvent_t;

#define cudaHostAllocDefault 0x00
#define cudaHostAllocPortable 0x01
#define cudaHostAllocMapped 0x02
#define cudaHostAllocWriteCombined 0x04
#define cudaHostRegisterDefault 0x00
#define cudaHostRegisterPortable 0x01
#define cudaHostRegisterMapped 0x02
#define cudaHostRegisterIoMemory 0x04
#define cudaHostRegisterReadOnly 0x08
#define cudaStreamDefault 0x00
#define cudaStreamNonBlocking 0x01
#define cudaStreamLegacy ((cudaStream_t)0x1)
#define cudaStreamPerThread ((cudaStream_t)0x2)
#define cudaEventDefault 0x00
#define cudaEventBlockingSync 0x01
#define cudaEventDisableTiming 0x02

const char *cudaGetErrorString(cudaError_t e);
const char *cudaGetErrorName(cudaError_t e);
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();

cudaError_t cudaGetDeviceCount(int *count);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDevice(int *device);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *prop, int device);
cudaError_t cudaDeviceGetAttribute(int *value, cudaDeviceAttr attr, int device);
cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaDeviceReset();

cudaError_t cudaMalloc(void **ptr, size_t size);
cudaError_t cudaFree(void *ptr);
cudaError_t cudaMallocHost(void **ptr, size_t size);
cudaError_t cudaHostAlloc(void **ptr, size_t size, unsigned flags);
cudaError_t cudaFreeHost(void *ptr);
cudaError_t cudaHostRegister(void *ptr, size_t size, unsigned flags);
cudaError_t cudaHostUnregister(void *ptr);
cudaError_t cudaHostGetDevicePointer(void **device_ptr, void *host_ptr, unsigned flags);
template <class T> cudaError_t cudaMalloc(T **ptr, size_t size) {
    return cudaMalloc(reinterpret_cast<void **>(ptr), size);
}
template <class T> cudaError_t cudaMallocHost(T **ptr, size_t size) {
    return cudaMallocHost(reinterpret_cast<void **>(ptr), size);
}
template <class T> cudaError_t cudaHostAlloc(T **ptr, size_t size, unsigned flags) {
    return cudaHostAlloc(reinterpret_cast<void **>(ptr), size, flags);
}
template <class T> cudaError_t cudaHostGetDevicePointer(T **device_ptr, void *host_ptr, unsigned flags) {
    return cudaHostGetDevicePointer(reinterpret_cast<void **>(device_ptr), host_ptr, flags);
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t count, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t count, cudaMemcpyKind kind, cudaStream_t stream = 0);
cudaError_t cudaMemset(void *ptr, int value, size_t count);
cudaError_t cudaMemsetAsync(void *ptr, int value, size_t count, cudaStream_t stream = 0);

cudaError_t cudaStreamCreate(cudaStream_t *stream);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t stream);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaStreamQuery(cudaStream_t stream);
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned flags = 0);
cudaError_t cudaEventCreate(cudaEvent_t *event);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned flags);
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream = 0);
cudaError_t cudaEventQuery(cudaEvent_t event);
cudaError_t cudaEventSynchronize(cudaEvent_t event);
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end);
cudaError_t cudaEventDestroy(cudaEvent_t event);

namespace mole_simt::detail {
cudaError_t func_set_attribute(const void *fn, cudaFuncAttribute attr, int value);
}
template <class T> cudaError_t cudaFuncSetAttribute(T *fn, cudaFuncAttribute attr, int value) {
    return mole_simt::detail::func_set_attribute(reinterpret_cast<const void *>(fn), attr, value);
}

// ---------------------------------------------------------------------------------------------
// Test controls. A "report" is every loud failure: a kernel fault (barrier divergence, a bad
// warp-op mask, ...), a rejected launch, a misused runtime call. Each one is printed to stderr
// ("mole-simt: ..."), counted, and kept as the last message; MOLE_SIMT_ABORT=1 aborts on it.
enum mole_simt_order { MOLE_SIMT_FORWARD, MOLE_SIMT_REVERSE };
void mole_simt_set_order(mole_simt_order order);   // default: env MOLE_SIMT_ORDER=forward|reverse
mole_simt_order mole_simt_get_order();
uint64_t mole_simt_failures();             // reports so far
const char *mole_simt_last_message();      // the last report's text, "" before any
void mole_simt_set_quiet(bool quiet);      // true: reports are counted and kept, not printed
void mole_simt_set_stack_kb(unsigned kb);  // fiber stack size (default 64, ASan 256; env MOLE_SIMT_STACK_KB)
uint64_t mole_simt_device_bytes();         // bytes held by live cudaMalloc allocations
namespace mole_simt {
struct KernelCount {
    std::string name;   // as written in MOLE_LAUNCH
    uint64_t launches, blocks, threads;
};
std::vector<KernelCount> kernel_counts();   // every kernel launched so far, in first-launch order
}  // namespace mole_simt

// ---------------------------------------------------------------------------------------------
// Inside a kernel: the running fiber's coordinates, the block's shared memory, warp ops.
namespace mole_simt::detail {

struct ThreadView {
    uint3 thread_idx, block_idx;
    dim3 block_dim, grid_dim;
};
extern __thread ThreadView *tl_view;
[[noreturn]] void outside_kernel(const char *what);
inline const ThreadView &view(const char *what) {
    ThreadView *v = tl_view;
    if (__builtin_expect(v == nullptr, 0)) outside_kernel(what);
    return *v;
}

void *shared_static(const void *key, size_t bytes, size_t align, const char *name);
void *shared_dynamic();
void syncthreads(const char *file, int line, int kind, int pred, int *result);
enum class WarpOp : int { Sync, Shfl, ShflUp, ShflDown, ShflXor, Ballot, Any, All, ReduceAdd, ReduceMin, ReduceMax };
uint64_t warp_op(WarpOp op, unsigned mask, uint64_t value, int arg, int width, const char *file, int line);
unsigned active_mask();
[[noreturn]] void trap(const char *file, int line);

template <class T> uint64_t to_bits(T v) {
    static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8, "warp ops move up to 8 bytes");
    uint64_t b = 0;
    std::memcpy(&b, &v, sizeof(T));
    return b;
}
template <class T> T from_bits(uint64_t b) {
    T v;
    std::memcpy(&v, &b, sizeof(T));
    return v;
}

// One kernel launch, type-erased: the arguments are converted to the kernel's parameter types
// once (as <<<>>> does) and each fiber calls the kernel with its own copies of them.
struct Launch {
    const char *name;
    const void *fn;
    dim3 grid, block;
    size_t shmem;
    cudaStream_t stream;
    void (*invoke)(const void *ctx);
    const void *ctx;
    const void *const *ptr_args;   // the pointer-typed arguments, to check they are device memory
    const int *ptr_arg_index;
    int n_ptr_args;
};
void launch(const Launch &l);

template <class T> constexpr bool is_object_ptr =
    std::is_pointer<T>::value && std::is_object<std::remove_pointer_t<T>>::value;

template <class... P, class... A> void launch_kernel(const char *name, void (*fn)(P...), dim3 grid, dim3 block,
                                                     size_t shmem, cudaStream_t stream, A &&...a) {
    static_assert(sizeof...(P) == sizeof...(A), "MOLE_LAUNCH: the kernel takes a different number of arguments");
    using Args = std::tuple<std::decay_t<P>...>;
    struct Ctx {
        void (*fn)(P...);
        Args args;
    };
    const Ctx ctx{fn, Args(std::forward<A>(a)...)};
    constexpr int n_ptr = (0 + ... + int(is_object_ptr<std::decay_t<P>>));
    const void *ptrs[n_ptr + 1] = {};
    int index[n_ptr + 1] = {};
    std::apply(
        [&](const auto &...v) {
            int k = 0, i = 0;
            auto one = [&](const auto &x) {
                if constexpr (is_object_ptr<std::decay_t<decltype(x)>>) {
                    ptrs[k] = (const void *)x;
                    index[k++] = i;
                }
                ++i;
            };
            (one(v), ...);
            (void)k;
            (void)one;
        },
        ctx.args);
    Launch l{name,
             reinterpret_cast<const void *>(fn),
             grid,
             block,
             shmem,
             stream,
             [](const void *c) {
                 const Ctx *x = static_cast<const Ctx *>(c);
                 std::apply(x->fn, x->args);   // by-value parameters: each thread its own copy
             },
             &ctx,
             ptrs,
             index,
             n_ptr};
    launch(l);
}

}  // namespace mole_simt::detail

#define threadIdx (::mole_simt::detail::view("threadIdx").thread_idx)
#define blockIdx (::mole_simt::detail::view("blockIdx").block_idx)
#define blockDim (::mole_simt::detail::view("blockDim").block_dim)
#define gridDim (::mole_simt::detail::view("gridDim").grid_dim)
constexpr int warpSize = 32;

// __syncthreads fails loudly unless every thread of the block waits at the same one (same file
// and line); the call site comes from the default arguments.
inline void __syncthreads(const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    mole_simt::detail::syncthreads(file, line, 0, 0, nullptr);
}
inline int __syncthreads_count(int pred, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    int r = 0;
    mole_simt::detail::syncthreads(file, line, 1, pred, &r);
    return r;
}
inline int __syncthreads_and(int pred, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    int r = 0;
    mole_simt::detail::syncthreads(file, line, 2, pred, &r);
    return r;
}
inline int __syncthreads_or(int pred, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    int r = 0;
    mole_simt::detail::syncthreads(file, line, 3, pred, &r);
    return r;
}

// Warp ops: every lane named in mask must reach the same kind of op with the same mask (and
// width); a lane reading a lane outside the mask gets poison (NaN as a float), as CUDA leaves it
// undefined. A mask naming an exited or missing lane, or a calling lane outside its own mask,
// fails loudly.
#define MOLE_SIMT_SITE const char *file = __builtin_FILE(), int line = __builtin_LINE()
inline void __syncwarp(unsigned mask = 0xffffffffu, MOLE_SIMT_SITE) {
    mole_simt::detail::warp_op(mole_simt::detail::WarpOp::Sync, mask, 0, 0, 32, file, line);
}
template <class T> T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32, MOLE_SIMT_SITE) {
    using namespace mole_simt::detail;
    return from_bits<T>(warp_op(WarpOp::Shfl, mask, to_bits(var), src_lane, width, file, line));
}
template <class T> T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32, MOLE_SIMT_SITE) {
    using namespace mole_simt::detail;
    return from_bits<T>(warp_op(WarpOp::ShflUp, mask, to_bits(var), int(delta > 32 ? 32 : delta), width, file, line));
}
template <class T> T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32, MOLE_SIMT_SITE) {
    using namespace mole_simt::detail;
    return from_bits<T>(warp_op(WarpOp::ShflDown, mask, to_bits(var), int(delta > 32 ? 32 : delta), width, file, line));
}
template <class T> T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32, MOLE_SIMT_SITE) {
    using namespace mole_simt::detail;
    return from_bits<T>(warp_op(WarpOp::ShflXor, mask, to_bits(var), lane_mask, width, file, line));
}
inline unsigned __ballot_sync(unsigned mask, int pred, MOLE_SIMT_SITE) {
    using namespace mole_simt::detail;
    return unsigned(warp_op(WarpOp::Ballot, mask, pred != 0, 0, 32, file, line));
}
inline int __any_sync(unsigned mask, int pred, MOLE_SIMT_SITE) {
    using namespace mole_simt::detail;
    return int(warp_op(WarpOp::Any, mask, pred != 0, 0, 32, file, line));
}
inline int __all_sync(unsigned mask, int pred, MOLE_SIMT_SITE) {
    using namespace mole_simt::detail;
    return int(warp_op(WarpOp::All, mask, pred != 0, 0, 32, file, line));
}
inline unsigned __reduce_add_sync(unsigned mask, unsigned v, MOLE_SIMT_SITE) {
    using namespace mole_simt::detail;
    return unsigned(warp_op(WarpOp::ReduceAdd, mask, v, 0, 32, file, line));
}
inline int __reduce_add_sync(unsigned mask, int v, MOLE_SIMT_SITE) {
    return int(__reduce_add_sync(mask, unsigned(v), file, line));
}
inline unsigned __reduce_min_sync(unsigned mask, unsigned v, MOLE_SIMT_SITE) {
    using namespace mole_simt::detail;
    return unsigned(warp_op(WarpOp::ReduceMin, mask, v, 0, 32, file, line));
}
inline unsigned __reduce_max_sync(unsigned mask, unsigned v, MOLE_SIMT_SITE) {
    using namespace mole_simt::detail;
    return unsigned(warp_op(WarpOp::ReduceMax, mask, v, 0, 32, file, line));
}
inline int __reduce_min_sync(unsigned mask, int v, MOLE_SIMT_SITE) {   // signed: order-preserving bias
    return int(__reduce_min_sync(mask, unsigned(v) ^ 0x80000000u, file, line) ^ 0x80000000u);
}
inline int __reduce_max_sync(unsigned mask, int v, MOLE_SIMT_SITE) {
    return int(__reduce_max_sync(mask, unsigned(v) ^ 0x80000000u, file, line) ^ 0x80000000u);
}
#undef MOLE_SIMT_SITE
// The warp's lanes that have not exited (the executor's warps never diverge in hardware terms).
inline unsigned __activemask() { return mole_simt::detail::active_mask(); }
inline void __trap(const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    mole_simt::detail::trap(file, line);
}

// ---------------------------------------------------------------------------------------------
// Integer intrinsics.
inline int __dp4a(int a, int b, int c) {
    for (int i = 0; i < 4; ++i) c += int(int8_t(uint32_t(a) >> (8 * i))) * int(int8_t(uint32_t(b) >> (8 * i)));
    return c;
}
inline unsigned __dp4a(unsigned a, unsigned b, unsigned c) {
    for (int i = 0; i < 4; ++i) c += ((a >> (8 * i)) & 0xffu) * ((b >> (8 * i)) & 0xffu);
    return c;
}
inline int __dp4a(char4 a, char4 b, int c) { return c + a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w; }
inline unsigned __dp4a(uchar4 a, uchar4 b, unsigned c) {
    return c + unsigned(a.x) * b.x + unsigned(a.y) * b.y + unsigned(a.z) * b.z + unsigned(a.w) * b.w;
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(unsigned(x)); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
inline unsigned __brev(unsigned x) {
    x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
    x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
    x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
    return __builtin_bswap32(x);
}
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
    const uint64_t v = (uint64_t(y) << 32) | x;
    unsigned r = 0;
    for (int i = 0; i < 4; ++i) r |= unsigned((v >> (8 * ((s >> (4 * i)) & 7))) & 0xff) << (8 * i);
    return r;
}
// min / max as CUDA overloads them (integers of any width, floats as fminf / fmaxf).
template <class A, class B, class = std::enable_if_t<std::is_arithmetic<A>::value && std::is_arithmetic<B>::value>>
inline std::common_type_t<A, B> min(A a, B b) {
    using C = std::common_type_t<A, B>;
    if constexpr (std::is_floating_point<C>::value)
        return std::fmin(C(a), C(b));
    else
        return C(b) < C(a) ? C(b) : C(a);
}
template <class A, class B, class = std::enable_if_t<std::is_arithmetic<A>::value && std::is_arithmetic<B>::value>>
inline std::common_type_t<A, B> max(A a, B b) {
    using C = std::common_type_t<A, B>;
    if constexpr (std::is_floating_point<C>::value)
        return std::fmax(C(a), C(b));
    else
        return C(a) < C(b) ? C(b) : C(a);
}

// ---------------------------------------------------------------------------------------------
// Float intrinsics: the "fast" ones are the exact libm functions here (see DEVELOPING.md: what
// the executor cannot see).
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __tanf(float x) { return tanf(x); }
inline void __sincosf(float x, float *s, float *c) {
    *s = sinf(x);
    *c = cosf(x);
}
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __saturatef(float x) { return x > 0.0f ? (x < 1.0f ? x : 1.0f) : 0.0f; }   // NaN -> 0
inline int __float2int_rn(float x) { return int(nearbyintf(x)); }
inline int __float2int_rz(float x) { return int(x); }
inline int __float2int_rd(float x) { return int(floorf(x)); }
inline int __float2int_ru(float x) { return int(ceilf(x)); }
inline unsigned __float2uint_rn(float x) { return unsigned(nearbyintf(x)); }
inline float __int2float_rn(int x) { return float(x); }
inline float __int_as_float(int x) { return mole_simt::detail::from_bits<float>(uint32_t(x)); }
inline int __float_as_int(float x) { return int(uint32_t(mole_simt::detail::to_bits(x))); }
inline float __uint_as_float(unsigned x) { return mole_simt::detail::from_bits<float>(x); }
inline unsigned __float_as_uint(float x) { return unsigned(mole_simt::detail::to_bits(x)); }
inline double __longlong_as_double(long long x) { return mole_simt::detail::from_bits<double>(uint64_t(x)); }
inline long long __double_as_longlong(double x) { return (long long)mole_simt::detail::to_bits(x); }
template <class T> inline T __ldg(const T *p) { return *p; }
// sin(pi x) and cos(pi x), reduced exactly (x mod 2 is exact) before the multiply by pi, as CUDA's
// are accurate for large x; the float forms go through double.
inline double sinpi(double x) {
    if (!std::isfinite(x)) return NAN;
    double r = std::remainder(x, 2.0);   // [-1, 1], exact
    if (r > 0.5)
        r = 1.0 - r;            // sin(pi r) = sin(pi (1 - r)); exact (Sterbenz)
    else if (r < -0.5)
        r = -1.0 - r;
    return r == 0.0 ? std::copysign(0.0, x) : std::sin(M_PI * r);
}
inline double cospi(double x) {
    if (!std::isfinite(x)) return NAN;
    const double a = std::fabs(std::remainder(x, 2.0));   // [0, 1], exact
    if (a <= 0.25) return std::cos(M_PI * a);
    if (a <= 0.75) return std::sin(M_PI * (0.5 - a));      // 0.5 - a exact here
    return -std::cos(M_PI * (1.0 - a));
}
inline void sincospi(double x, double *s, double *c) {
    *s = sinpi(x);
    *c = cospi(x);
}
inline float sinpif(float x) { return float(sinpi(double(x))); }
inline float cospif(float x) { return float(cospi(double(x))); }
inline void sincospif(float x, float *s, float *c) {
    *s = sinpif(x);
    *c = cospif(x);
}

// ---------------------------------------------------------------------------------------------
// Atomics (real atomic instructions, relaxed, as CUDA's are) and fences.
#define MOLE_SIMT_ATOMIC(T)                                                                                    \
    inline T atomicAdd(T *p, T v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }                       \
    inline T atomicSub(T *p, T v) { return __atomic_fetch_sub(p, v, __ATOMIC_RELAXED); }                       \
    inline T atomicAnd(T *p, T v) { return __atomic_fetch_and(p, v, __ATOMIC_RELAXED); }                       \
    inline T atomicOr(T *p, T v) { return __atomic_fetch_or(p, v, __ATOMIC_RELAXED); }                         \
    inline T atomicXor(T *p, T v) { return __atomic_fetch_xor(p, v, __ATOMIC_RELAXED); }                       \
    inline T atomicExch(T *p, T v) { return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); }                     \
    inline T atomicCAS(T *p, T cmp, T v) {                                                                     \
        __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);                    \
        return cmp;                                                                                            \
    }                                                                                                          \
    inline T atomicMax(T *p, T v) {                                                                            \
        T old = __atomic_load_n(p, __ATOMIC_RELAXED);                                                          \
        while (old < v && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)); \
        return old;                                                                                            \
    }                                                                                                          \
    inline T atomicMin(T *p, T v) {                                                                            \
        T old = __atomic_load_n(p, __ATOMIC_RELAXED);                                                          \
        while (v < old && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)); \
        return old;                                                                                            \
    }
MOLE_SIMT_ATOMIC(int)
MOLE_SIMT_ATOMIC(unsigned)
MOLE_SIMT_ATOMIC(long long)
MOLE_SIMT_ATOMIC(unsigned long long)
#undef MOLE_SIMT_ATOMIC
template <class F> inline F mole_simt_atomic_float(F *p, F v, int op) {   // CAS loop on the bits
    using U = std::conditional_t<sizeof(F) == 4, uint32_t, uint64_t>;
    U *u = reinterpret_cast<U *>(p), old = __atomic_load_n(u, __ATOMIC_RELAXED), next;
    do {
        F f;
        std::memcpy(&f, &old, sizeof f);
        const F r = op == 0 ? f + v : v;
        std::memcpy(&next, &r, sizeof r);
    } while (!__atomic_compare_exchange_n(u, &old, next, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    F f;
    std::memcpy(&f, &old, sizeof f);
    return f;
}
inline float atomicAdd(float *p, float v) { return mole_simt_atomic_float(p, v, 0); }
inline double atomicAdd(double *p, double v) { return mole_simt_atomic_float(p, v, 0); }
inline float atomicExch(float *p, float v) { return mole_simt_atomic_float(p, v, 1); }
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_system() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

// ---------------------------------------------------------------------------------------------
// half and bfloat16: the raw bits in a struct; conversions round to nearest even, exactly.
// Arithmetic on them is computed in double (exact for + and *) and rounded once.
namespace mole_simt::detail {
// double -> binary16 / bfloat16 bits, round to nearest even (man_bits stored mantissa bits,
// emin the least normal exponent).
inline uint16_t round_f64(double x, int man_bits, int emin, uint16_t inf, uint16_t nan) {
    const uint16_t sign = std::signbit(x) ? 0x8000 : 0;
    const double a = std::fabs(x);
    if (std::isnan(a)) return uint16_t(sign | nan);
    if (a == 0.0) return sign;
    if (std::isinf(a)) return uint16_t(sign | inf);
    int e;
    std::frexp(a, &e);
    const int E = (e - 1 < emin ? emin : e - 1);
    const double q = std::nearbyint(std::ldexp(a, man_bits - E));   // exact scaling, RNE to integer
    const uint32_t bits = (uint32_t(E - emin) << man_bits) + uint32_t(q);
    return uint16_t(sign | (bits >= inf ? inf : bits));
}
inline uint16_t f64_to_f16(double x) { return round_f64(x, 10, -14, 0x7c00, 0x7e00); }
inline uint16_t f64_to_bf16(double x) { return round_f64(x, 7, -126, 0x7f80, 0x7fc0); }
}  // namespace mole_simt::detail

struct __attribute__((aligned(2))) __half {
    unsigned short __x;
    __half() = default;
    __half(float f) : __x(mole::f32_to_f16(f)) {}
    operator float() const { return mole::f16_to_f32(__x); }
};
struct __attribute__((aligned(4))) __half2 {
    __half x, y;
};
struct __attribute__((aligned(2))) __nv_bfloat16 {
    unsigned short __x;
    __nv_bfloat16() = default;
    __nv_bfloat16(float f) : __x(mole::f32_to_bf16(f)) {}
    operator float() const { return mole::bf16_to_f32(__x); }
};
struct __attribute__((aligned(4))) __nv_bfloat162 {
    __nv_bfloat16 x, y;
};
typedef __nv_bfloat16 nv_bfloat16;
typedef __nv_bfloat162 nv_bfloat162;
typedef __half half;
typedef __half2 half2;

inline __half __ushort_as_half(unsigned short b) {
    __half h;
    h.__x = b;
    return h;
}
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline __half __short_as_half(short b) { return __ushort_as_half((unsigned short)b); }
inline short __half_as_short(__half h) { return short(h.__x); }
inline float __half2float(__half h) { return mole::f16_to_f32(h.__x); }
inline __half __float2half(float f) { return __ushort_as_half(mole::f32_to_f16(f)); }
inline __half __float2half_rn(float f) { return __float2half(f); }
inline float2 __half22float2(__half2 h) { return float2{__half2float(h.x), __half2float(h.y)}; }
inline __half2 __floats2half2_rn(float a, float b) { return __half2{__float2half(a), __float2half(b)}; }
inline __half2 __float22half2_rn(float2 f) { return __floats2half2_rn(f.x, f.y); }
inline __half2 __float2half2_rn(float f) { return __floats2half2_rn(f, f); }
inline __half2 __halves2half2(__half a, __half b) { return __half2{a, b}; }
inline __half2 __half2half2(__half a) { return __half2{a, a}; }
inline __half __low2half(__half2 h) { return h.x; }
inline __half __high2half(__half2 h) { return h.y; }
inline float __low2float(__half2 h) { return __half2float(h.x); }
inline float __high2float(__half2 h) { return __half2float(h.y); }
inline __half mole_simt_h(double v) { return __ushort_as_half(mole_simt::detail::f64_to_f16(v)); }
inline __half __hadd(__half a, __half b) { return mole_simt_h(double(float(a)) + double(float(b))); }
inline __half __hsub(__half a, __half b) { return mole_simt_h(double(float(a)) - double(float(b))); }
inline __half __hmul(__half a, __half b) { return mole_simt_h(double(float(a)) * double(float(b))); }
inline __half __hfma(__half a, __half b, __half c) {
    return mole_simt_h(std::fma(double(float(a)), double(float(b)), double(float(c))));
}
inline __half __hneg(__half a) { return __ushort_as_half((unsigned short)(a.__x ^ 0x8000u)); }
inline __half2 __hadd2(__half2 a, __half2 b) { return __half2{__hadd(a.x, b.x), __hadd(a.y, b.y)}; }
inline __half2 __hsub2(__half2 a, __half2 b) { return __half2{__hsub(a.x, b.x), __hsub(a.y, b.y)}; }
inline __half2 __hmul2(__half2 a, __half2 b) { return __half2{__hmul(a.x, b.x), __hmul(a.y, b.y)}; }
inline __half2 __hfma2(__half2 a, __half2 b, __half2 c) {
    return __half2{__hfma(a.x, b.x, c.x), __hfma(a.y, b.y, c.y)};
}

inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short b) {
    __nv_bfloat16 h;
    h.__x = b;
    return h;
}
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }
inline float __bfloat162float(__nv_bfloat16 h) { return mole::bf16_to_f32(h.__x); }
inline __nv_bfloat16 __float2bfloat16(float f) { return __ushort_as_bfloat16(mole::f32_to_bf16(f)); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __float2bfloat16(f); }
inline float2 __bfloat1622float2(__nv_bfloat162 h) { return float2{__bfloat162float(h.x), __bfloat162float(h.y)}; }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) {
    return __nv_bfloat162{__float2bfloat16(a), __float2bfloat16(b)};
}
inline __nv_bfloat162 __float22bfloat162_rn(float2 f) { return __floats2bfloat162_rn(f.x, f.y); }
inline float __low2float(__nv_bfloat162 h) { return __bfloat162float(h.x); }
inline float __high2float(__nv_bfloat162 h) { return __bfloat162float(h.y); }
inline __nv_bfloat16 mole_simt_bf(double v) { return __ushort_as_bfloat16(mole_simt::detail::f64_to_bf16(v)); }
inline __nv_bfloat16 __hadd(__nv_bfloat16 a, __nv_bfloat16 b) {
    return mole_simt_bf(double(float(a)) + double(float(b)));
}
inline __nv_bfloat16 __hmul(__nv_bfloat16 a, __nv_bfloat16 b) {
    return mole_simt_bf(double(float(a)) * double(float(b)));
}
inline __nv_bfloat16 __hfma(__nv_bfloat16 a, __nv_bfloat16 b, __nv_bfloat16 c) {
    return mole_simt_bf(std::fma(double(float(a)), double(float(b)), double(float(c))));
}
