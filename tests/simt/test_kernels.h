// Launchers of the SIMT executor's test kernels (test_kernels.cu): correct kernels, and kernels
// with one planted bug each. Every pointer is device memory; each launcher queues on `st`.
#pragma once

#include <cstdint>

#include "backend/cuda/compat.cuh"

namespace simt_test {

constexpr int kReduceThreads = 256;
constexpr int kQK = 32, kQ8Bytes = 34;   // Q8_0: f16 scale + 32 int8

// out[b] = sum of x[b*per_block .. (b+1)*per_block), one block per b.
void reduce_shared(const float *x, int per_block, int blocks, float *out, cudaStream_t st);
void reduce_dynamic(const float *x, int per_block, int blocks, float *out, size_t shmem, cudaStream_t st);
void reduce_warp0(const float *x, int per_block, int blocks, float *out, cudaStream_t st);
// y [n] = W [n, k] (Q8_0 rows) . x, x given as q8 blocks (xq [k] int8, xd [k/32] scales).
void q8_matvec(const uint8_t *W, const int8_t *xq, const float *xd, int n, int k, float *y, cudaStream_t st);

// Planted bugs.
void reduce_missing_sync(const float *x, int per_block, int blocks, float *out, cudaStream_t st);
void barrier_after_return(const float *x, int n, float *out, cudaStream_t st);   // n < kReduceThreads
void shuffle_exited_lanes(const float *x, float *out, cudaStream_t st);          // one warp
void oob_read(const float *x, int n, float *out, cudaStream_t st);               // reads x[n]
void q8_matvec_misaligned(const uint8_t *W, const int8_t *xq, const float *xd, int n, int k, float *y, cudaStream_t st);

// Executor semantics.
void thread_ids(uint32_t *out, uint32_t *ballots, cudaStream_t st);   // block (8, 4, 2), grid (2, 3)
// out[8 * lane + j]: shfl idx / up / down / xor (width 8 and 32), ballot, any / all, reduce_add.
void warp_ops(const int *x, int *out, cudaStream_t st);
void shuffle_outside_mask(const float *x, float *out, cudaStream_t st);   // lanes 8..15 read lanes 16..23
void shuffle_self_not_in_mask(float *out, cudaStream_t st);
void shuffle_mismatched_ops(const float *x, float *out, cudaStream_t st);
void barrier_two_sites(float *out, cudaStream_t st);
void shared_uninitialized(float *out, cudaStream_t st);   // reads shared memory nobody wrote
void shared_per_block(float *out, cudaStream_t st);      // grid 3, block 64: out [3][128]
void atomics(int *counter, unsigned *maxv, float *fsum, unsigned long long *u64, int blocks, cudaStream_t st);
void tickets(int *counter, int *out, int blocks, int threads, cudaStream_t st);   // out[i] = atomicAdd(counter, 1)
void params_by_value(const float *x, int n, float *out, cudaStream_t st);   // kernels may change their params
void sync_count(const int *x, int *out, cudaStream_t st);                    // __syncthreads_count / _and / _or
void empty_kernel(dim3 grid, dim3 block, size_t shmem, cudaStream_t st);
// Writes its dynamic shared memory's last float: needs shmem bytes (> 48 KiB: the opt-in first).
void big_dynamic(float *out, size_t shmem, bool opt_in, cudaStream_t st);
void touch(const float *p, float *out, cudaStream_t st);   // out[0] = p[0]
void scale_by_minus3(const float *x, float *out, int n, cudaStream_t st);   // a two-argument template kernel
void stack_oob(const int *idx, float *out, cudaStream_t st);                // reads a local float[8] at idx[0]
void half_convert(const uint16_t *h, const uint16_t *bf, float *out, int n, cudaStream_t st);

}  // namespace simt_test
