// The SIMT executor's test kernels: one source for nvcc and for g++ -DMOLE_SIMT. Correct kernels
// (block reductions, a warp-0 shuffle reduction, a Q8_0 dp4a matrix-vector product), kernels
// with one planted bug each, and small kernels pinning the executor's semantics.
#include "test_kernels.h"

namespace simt_test {

namespace {

constexpr unsigned kFull = 0xffffffffu;

MOLE_DEV float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
    return v;
}
MOLE_HOST_DEV int ceil_div(int a, int b) { return (a + b - 1) / b; }

// Each thread sums a strided slice, then a shared-memory tree. Sync = false drops the barriers.
template <bool Sync> MOLE_GLOBAL void reduce_shared_kernel(const float *x, int per_block, float *out) {
    MOLE_SHARED(float, part, kReduceThreads);
    const int tid = int(threadIdx.x);
    const float *row = x + int64_t(blockIdx.x) * per_block;
    float s = 0.0f;
    for (int i = tid; i < per_block; i += kReduceThreads) s += row[i];
    part[tid] = s;
    if (Sync) __syncthreads();
    for (int h = kReduceThreads / 2; h > 0; h >>= 1) {
        if (tid < h) part[tid] += part[tid + h];
        if (Sync) __syncthreads();
    }
    if (tid == 0) out[blockIdx.x] = part[0];
}

MOLE_GLOBAL void reduce_dynamic_kernel(const float *x, int per_block, float *out) {
    MOLE_DYNAMIC_SHARED(float, part);   // blockDim.x floats
    const int tid = int(threadIdx.x), n = int(blockDim.x);
    const float *row = x + int64_t(blockIdx.x) * per_block;
    float s = 0.0f;
    for (int i = tid; i < per_block; i += n) s += row[i];
    part[tid] = s;
    __syncthreads();
    for (int h = n / 2; h > 0; h >>= 1) {
        if (tid < h) part[tid] += part[tid + h];
        __syncthreads();
    }
    if (tid == 0) out[blockIdx.x] = part[0];
}

// Partial sums in shared memory; warp 0 alone finishes with shuffles (a full mask: all of warp 0).
MOLE_GLOBAL void reduce_warp0_kernel(const float *x, int per_block, float *out) {
    MOLE_SHARED(float, part, kReduceThreads);
    const int tid = int(threadIdx.x);
    const float *row = x + int64_t(blockIdx.x) * per_block;
    float s = 0.0f;
    for (int i = tid; i < per_block; i += kReduceThreads) s += row[i];
    part[tid] = s;
    __syncthreads();
    if (tid < 32) {
        float v = 0.0f;
        for (int i = tid; i < kReduceThreads; i += 32) v += part[i];
        v = warp_sum(v);
        if (tid == 0) out[blockIdx.x] = v;
    }
}

// Word i of a block's quants, which are only 2-byte aligned: two 16-bit loads.
MOLE_DEV int load_q_a2(const uint8_t *qs, int i) {
    const uint16_t *h = reinterpret_cast<const uint16_t *>(qs) + 2 * i;
    return int(unsigned(h[0]) | (unsigned(h[1]) << 16));
}
// The planted bug: one 4-byte load, misaligned for every block (34-byte blocks, quants at +2).
MOLE_DEV int load_q_misaligned(const uint8_t *qs, int i) { return *reinterpret_cast<const int *>(qs + 4 * i); }

// One warp per row; lane l takes blocks l, l + 32, ...
template <bool Misaligned>
MOLE_GLOBAL void q8_matvec_kernel(const uint8_t *W, const int8_t *xq, const float *xd, int n, int k, float *y) {
    const int r = int(blockIdx.x) * 4 + int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
    if (r >= n) return;   // a whole warp at once
    const int nb = k / kQK;
    const uint8_t *row = W + int64_t(r) * nb * kQ8Bytes;
    float acc = 0.0f;
    for (int b = lane; b < nb; b += 32) {
        const uint8_t *blk = row + b * kQ8Bytes;
        const float dw = __half2float(__ushort_as_half(uint16_t(blk[0] | (blk[1] << 8))));
        const int *xw = reinterpret_cast<const int *>(xq + b * kQK);
        int dot = 0;
        for (int i = 0; i < 8; ++i)
            dot = __dp4a(Misaligned ? load_q_misaligned(blk + 2, i) : load_q_a2(blk + 2, i), xw[i], dot);
        acc = fmaf(dw * xd[b], float(dot), acc);
    }
    acc = warp_sum(acc);
    if (lane == 0) y[r] = acc;
}

// Planted bug: threads past n leave, the rest wait at a barrier they can never complete.
MOLE_GLOBAL void barrier_after_return_kernel(const float *x, int n, float *out) {
    MOLE_SHARED(float, part, kReduceThreads);
    const int tid = int(threadIdx.x);
    if (tid >= n) return;
    part[tid] = x[tid];
    __syncthreads();
    if (tid == 0) out[0] = part[n - 1];
}

// Planted bug: lanes 16..31 leave, lanes 0..15 shuffle with a full mask.
MOLE_GLOBAL void shuffle_exited_kernel(const float *x, float *out) {
    const int lane = int(threadIdx.x);
    if (lane >= 16) return;
    float v = x[lane];
    v += __shfl_down_sync(kFull, v, 8);
    if (lane == 0) out[0] = v;
}

// Planted bug: out[i] = x[i + 1] for i < n reads x[n].
MOLE_GLOBAL void oob_read_kernel(const float *x, int n, float *out) {
    const int i = int(blockIdx.x * blockDim.x + threadIdx.x);
    if (i < n) out[i] = x[i + 1];
}

MOLE_GLOBAL void thread_ids_kernel(uint32_t *out, uint32_t *ballots) {
    const unsigned linear = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    const unsigned block = blockIdx.x + gridDim.x * blockIdx.y;
    const unsigned nthreads = blockDim.x * blockDim.y * blockDim.z;
    out[block * nthreads + linear] =
        threadIdx.x | (threadIdx.y << 8) | (threadIdx.z << 16) | (blockIdx.x << 24) | (blockIdx.y << 28);
    // Lanes whose threadIdx.x is odd, per warp: shows which threads form a warp.
    const unsigned b = __ballot_sync(kFull, threadIdx.x & 1);
    if (linear % 32 == 0) ballots[block * (nthreads / 32) + linear / 32] = b;
}

MOLE_GLOBAL void warp_ops_kernel(const int *x, int *out) {
    const int lane = int(threadIdx.x);
    const int v = x[lane];
    int *o = out + 8 * lane;
    o[0] = __shfl_sync(kFull, v, 5);          // lane 5's
    o[1] = __shfl_sync(kFull, v, 3, 8);       // lane 3 of each group of 8
    o[2] = __shfl_up_sync(kFull, v, 2, 8);    // groups of 8: lanes 0, 1 of a group keep theirs
    o[3] = __shfl_down_sync(kFull, v, 3);     // lanes 29..31 keep theirs
    o[4] = __shfl_xor_sync(kFull, v, 9);      // lane ^ 9
    o[5] = int(__ballot_sync(kFull, v % 3 == 0));
    o[6] = __any_sync(kFull, v == 77) * 2 + __all_sync(kFull, v >= 0);
    o[7] = 0;
    if (lane & 1) o[7] = int(__ballot_sync(0xaaaaaaaau, v > 40)) + __reduce_add_sync(0xaaaaaaaau, 1) * 1000;
    __syncwarp();
}

// Lanes 0..15 shuffle among themselves; lanes 8..15 read lanes 16..23, outside the mask.
MOLE_GLOBAL void shuffle_outside_mask_kernel(const float *x, float *out) {
    const int lane = int(threadIdx.x);
    const float v = x[lane];
    if (lane < 16) out[lane] = __shfl_down_sync(0x0000ffffu, v, 8);
}

MOLE_GLOBAL void shuffle_self_not_in_mask_kernel(float *out) {
    out[threadIdx.x] = __shfl_sync(0xfffffffeu, 1.0f, 1);   // lane 0 calls with a mask without itself
}

MOLE_GLOBAL void shuffle_mismatched_kernel(const float *x, float *out) {
    const int lane = int(threadIdx.x);
    float v = x[lane];
    if (lane < 16)
        v = __shfl_xor_sync(kFull, v, 1);
    else
        v = __shfl_down_sync(kFull, v, 1);
    out[lane] = v;
}

MOLE_GLOBAL void barrier_two_sites_kernel(float *out) {
    if (threadIdx.x < 32) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    out[threadIdx.x] = 1.0f;
}

MOLE_GLOBAL void shared_uninitialized_kernel(float *out) {
    MOLE_SHARED(float, part, 64);
    const int tid = int(threadIdx.x);
    if (tid < 32) part[tid] = float(tid);
    __syncthreads();
    out[tid] = part[tid];   // part[32..63] were never written
}

// Two arrays must not alias; block 0 alone writes `seen`: other blocks get fresh, poisoned ones.
MOLE_GLOBAL void shared_per_block_kernel(float *out) {
    MOLE_SHARED(float, a, 64);
    MOLE_SHARED(int, b, 64);
    MOLE_SHARED(float, seen, 64);
    const int tid = int(threadIdx.x);
    a[tid] = float(tid);
    b[tid] = -2 * tid;
    if (blockIdx.x == 0) seen[tid] = 5.0f;
    __syncthreads();
    out[blockIdx.x * 128 + tid] = a[63 - tid] + float(b[tid]);
    out[blockIdx.x * 128 + 64 + tid] = seen[tid];
}

MOLE_GLOBAL void atomics_kernel(int *counter, unsigned *maxv, float *fsum, unsigned long long *u64) {
    const unsigned id = blockIdx.x * blockDim.x + threadIdx.x;
    atomicAdd(counter, 1);
    atomicMax(maxv, id * 7u % 1000u);
    atomicAdd(fsum, 0.5f);
    atomicAdd(u64, 1ull << 33);
    int old = atomicCAS(counter + 1, 0, int(id) + 1);   // the first thread to get here claims it
    if (old != 0) atomicExch(counter + 2, 1);
    atomicMin(counter + 3, -int(id));
}

// No barrier: each thread runs to its end before the next starts, so the tickets show the order.
MOLE_GLOBAL void tickets_kernel(int *counter, int *out) {
    out[blockIdx.x * blockDim.x + threadIdx.x] = atomicAdd(counter, 1);
}

// Kernels may write their by-value parameters: each thread has its own copies.
MOLE_GLOBAL void params_by_value_kernel(const float *x, int n, float *out) {
    x += threadIdx.x;
    out += threadIdx.x;
    n -= int(threadIdx.x);
    *out = n > 0 ? *x + float(n) : -1.0f;
}

MOLE_GLOBAL void sync_count_kernel(const int *x, int *out) {
    const int v = x[threadIdx.x];
    const int c = __syncthreads_count(v > 10);
    const int a = __syncthreads_and(v >= 0);
    const int o = __syncthreads_or(v == 99);
    if (threadIdx.x == 0) {
        out[0] = c;
        out[1] = a;
        out[2] = o;
    }
}

MOLE_GLOBAL void empty_kernel_kernel() {}

MOLE_GLOBAL void big_dynamic_kernel(float *out, int n_floats) {
    MOLE_DYNAMIC_SHARED(float, buf);
    if (threadIdx.x == 0) {
        buf[n_floats - 1] = 3.0f;
        out[0] = buf[n_floats - 1];
    }
}

MOLE_GLOBAL void touch_kernel(const float *p, float *out) { out[0] = p[0]; }

// A template kernel with two arguments: MOLE_LAUNCH takes it in parentheses.
template <int Scale, bool Negate> MOLE_GLOBAL void scale_kernel(const float *x, float *out, int n) {
    const int i = int(blockIdx.x * blockDim.x + threadIdx.x);
    if (i < n) out[i] = (Negate ? -1.0f : 1.0f) * float(Scale) * x[i];
}

// Planted bug for ASan on a fiber's stack: a local array read at idx[0] (8: one past its end).
MOLE_GLOBAL void stack_oob_kernel(const int *idx, float *out) {
    float a[8];
    for (int i = 0; i < 8; ++i) a[i] = float(i) * out[1];
    const float *volatile p = a;   // an opaque pointer: past UBSan's bounds / object-size checks, for ASan
    out[0] = p[idx[0]];
}

MOLE_GLOBAL void half_convert_kernel(const uint16_t *h, const uint16_t *bf, float *out, int n) {
    const int i = int(blockIdx.x * blockDim.x + threadIdx.x);
    if (i >= n) return;
    out[2 * i] = __half2float(__ushort_as_half(h[i]));
    out[2 * i + 1] = __bfloat162float(__ushort_as_bfloat16(bf[i]));
}

}  // namespace

void reduce_shared(const float *x, int per_block, int blocks, float *out, cudaStream_t st) {
    MOLE_LAUNCH(reduce_shared_kernel<true>, blocks, kReduceThreads, 0, st, x, per_block, out);
}
void reduce_missing_sync(const float *x, int per_block, int blocks, float *out, cudaStream_t st) {
    MOLE_LAUNCH(reduce_shared_kernel<false>, blocks, kReduceThreads, 0, st, x, per_block, out);
}
void reduce_dynamic(const float *x, int per_block, int blocks, float *out, size_t shmem, cudaStream_t st) {
    MOLE_LAUNCH(reduce_dynamic_kernel, blocks, unsigned(shmem / sizeof(float)), shmem, st, x, per_block, out);
}
void reduce_warp0(const float *x, int per_block, int blocks, float *out, cudaStream_t st) {
    MOLE_LAUNCH(reduce_warp0_kernel, blocks, kReduceThreads, 0, st, x, per_block, out);
}
void q8_matvec(const uint8_t *W, const int8_t *xq, const float *xd, int n, int k, float *y, cudaStream_t st) {
    MOLE_LAUNCH(q8_matvec_kernel<false>, unsigned(ceil_div(n, 4)), 128, 0, st, W, xq, xd, n, k, y);
}
void q8_matvec_misaligned(const uint8_t *W, const int8_t *xq, const float *xd, int n, int k, float *y,
                          cudaStream_t st) {
    MOLE_LAUNCH(q8_matvec_kernel<true>, unsigned(ceil_div(n, 4)), 128, 0, st, W, xq, xd, n, k, y);
}
void barrier_after_return(const float *x, int n, float *out, cudaStream_t st) {
    MOLE_LAUNCH(barrier_after_return_kernel, 1, kReduceThreads, 0, st, x, n, out);
}
void shuffle_exited_lanes(const float *x, float *out, cudaStream_t st) {
    MOLE_LAUNCH(shuffle_exited_kernel, 1, 32, 0, st, x, out);
}
void oob_read(const float *x, int n, float *out, cudaStream_t st) {
    MOLE_LAUNCH(oob_read_kernel, unsigned(ceil_div(n, 64)), 64, 0, st, x, n, out);
}
void thread_ids(uint32_t *out, uint32_t *ballots, cudaStream_t st) {
    MOLE_LAUNCH(thread_ids_kernel, dim3(2, 3), dim3(8, 4, 2), 0, st, out, ballots);
}
void warp_ops(const int *x, int *out, cudaStream_t st) { MOLE_LAUNCH(warp_ops_kernel, 1, 32, 0, st, x, out); }
void shuffle_outside_mask(const float *x, float *out, cudaStream_t st) {
    MOLE_LAUNCH(shuffle_outside_mask_kernel, 1, 32, 0, st, x, out);
}
void shuffle_self_not_in_mask(float *out, cudaStream_t st) {
    MOLE_LAUNCH(shuffle_self_not_in_mask_kernel, 1, 32, 0, st, out);
}
void shuffle_mismatched_ops(const float *x, float *out, cudaStream_t st) {
    MOLE_LAUNCH(shuffle_mismatched_kernel, 1, 32, 0, st, x, out);
}
void barrier_two_sites(float *out, cudaStream_t st) { MOLE_LAUNCH(barrier_two_sites_kernel, 1, 64, 0, st, out); }
void shared_uninitialized(float *out, cudaStream_t st) { MOLE_LAUNCH(shared_uninitialized_kernel, 1, 64, 0, st, out); }
void shared_per_block(float *out, cudaStream_t st) { MOLE_LAUNCH(shared_per_block_kernel, 3, 64, 0, st, out); }
void atomics(int *counter, unsigned *maxv, float *fsum, unsigned long long *u64, int blocks, cudaStream_t st) {
    MOLE_LAUNCH(atomics_kernel, unsigned(blocks), 96, 0, st, counter, maxv, fsum, u64);
}
void tickets(int *counter, int *out, int blocks, int threads, cudaStream_t st) {
    MOLE_LAUNCH(tickets_kernel, unsigned(blocks), unsigned(threads), 0, st, counter, out);
}
void params_by_value(const float *x, int n, float *out, cudaStream_t st) {
    MOLE_LAUNCH(params_by_value_kernel, 1, 64, 0, st, x, n, out);
}
void sync_count(const int *x, int *out, cudaStream_t st) { MOLE_LAUNCH(sync_count_kernel, 1, 128, 0, st, x, out); }
void empty_kernel(dim3 grid, dim3 block, size_t shmem, cudaStream_t st) {
    MOLE_LAUNCH(empty_kernel_kernel, grid, block, shmem, st);
}
void big_dynamic(float *out, size_t shmem, bool opt_in, cudaStream_t st) {
    if (opt_in) cudaFuncSetAttribute(big_dynamic_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(shmem));
    MOLE_LAUNCH(big_dynamic_kernel, 1, 32, shmem, st, out, int(shmem / sizeof(float)));
}
void touch(const float *p, float *out, cudaStream_t st) { MOLE_LAUNCH(touch_kernel, 1, 1, 0, st, p, out); }
void scale_by_minus3(const float *x, float *out, int n, cudaStream_t st) {
    MOLE_LAUNCH((scale_kernel<3, true>), unsigned(ceil_div(n, 128)), 128, 0, st, x, out, n);
}
void stack_oob(const int *idx, float *out, cudaStream_t st) { MOLE_LAUNCH(stack_oob_kernel, 1, 32, 0, st, idx, out); }
void half_convert(const uint16_t *h, const uint16_t *bf, float *out, int n, cudaStream_t st) {
    MOLE_LAUNCH(half_convert_kernel, unsigned(ceil_div(n, 256)), 256, 0, st, h, bf, out, n);
}

}  // namespace simt_test
