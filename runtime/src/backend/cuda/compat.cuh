// The one header every CUDA kernel file includes. Under nvcc it is plain CUDA; under g++ / clang++
// with -DMOLE_SIMT the same names come from the project's SIMT executor (tests/simt/simt.h), so one
// .cu file also runs on the CPU, each CUDA thread a fiber (tests only; docs/DEVELOPING.md).
//
// Kernels write, instead of the CUDA spellings that cannot be emulated as plain C++:
//   MOLE_GLOBAL void k(...)                 __global__ (a kernel)
//   MOLE_DEV T f(...)                       __device__ __forceinline__ (a device helper)
//   MOLE_HOST_DEV T f(...)                  __host__ __device__ __forceinline__
//   MOLE_SHARED(T, name, N);                __shared__ T name[N] (use name[i], never sizeof(name))
//   MOLE_DYNAMIC_SHARED(T, name);           T *name over the launch's dynamic shared memory (16-aligned)
//   MOLE_LAUNCH(k, grid, block, shmem, stream, args...)   k<<<grid, block, shmem, stream>>>(args...)
//                                           (a template kernel with its arguments: (k<A, B>) or k<A>)
// Everything else is CUDA as written: threadIdx, __syncthreads, __shfl_xor_sync, __dp4a, atomics,
// __half, the runtime API (cudaMalloc, cudaMemcpyAsync, ...).
#pragma once

#if defined(__CUDACC__)

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#define MOLE_GLOBAL __global__
#define MOLE_DEV __device__ __forceinline__
#define MOLE_HOST_DEV __host__ __device__ __forceinline__
#define MOLE_SHARED(T, name, N) __shared__ T name[N]
#define MOLE_DYNAMIC_SHARED(T, name)                                \
    extern __shared__ __align__(16) unsigned char mole_dyn_smem_[]; \
    T *const name = reinterpret_cast<T *>(mole_dyn_smem_)
#define MOLE_LAUNCH(kernel, grid, block, shmem, stream, ...) kernel<<<grid, block, shmem, stream>>>(__VA_ARGS__)

#elif defined(MOLE_SIMT)

#include "simt.h"

#define MOLE_GLOBAL
#define MOLE_DEV inline
#define MOLE_HOST_DEV inline
// One allocation per declaration per block, shared by the block's threads, fresh (and poisoned:
// NaN as floats) for every block, so ASan sees an out-of-bounds index.
#define MOLE_SHARED(T, name, N)         \
    static char mole_shared_key_##name; \
    T *const name = static_cast<T *>(   \
        ::mole_simt::detail::shared_static(&mole_shared_key_##name, sizeof(T) * size_t(N), alignof(T), #name))
#define MOLE_DYNAMIC_SHARED(T, name) T *const name = static_cast<T *>(::mole_simt::detail::shared_dynamic())
#define MOLE_LAUNCH(kernel, ...) ::mole_simt::detail::launch_kernel(#kernel, kernel, __VA_ARGS__)

#else   // host C++ next to CUDA code (g++ with the toolkit's headers): types and the runtime API only

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#define MOLE_GLOBAL __global__
#define MOLE_DEV __device__ __forceinline__
#define MOLE_HOST_DEV __host__ __device__ __forceinline__

#endif
