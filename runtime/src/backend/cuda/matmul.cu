// Matrix products Y [S, n] = X [S, k] W^T over the file's weight bytes. Decode (S <= 8): one warp
// per weight row, every X row at once (the row is read once): Q8_0 / Q4_0 by __dp4a against q8
// activations, F16 / BF16 by half2 / bfloat162 loads, F32 by float2. Prompts: 64 x 32 output tiles
// through shared memory, dp4a for the quantized types.
#include "backend/cuda/ops.cuh"

namespace mole::cuda {

namespace {

constexpr int kMvWarps = 4;   // weight rows per block of the matrix-vector kernels

// The 8 words of a block's 32 quants as int8x4 (Q4_0: the nibbles 0..15, elements 4i.. in word i
// and 16 + 4i.. in word 4 + i, matching the activations' words).
template <bool Q4> MOLE_DEV void block_words(const uint8_t *blk, int w[8]) {
    if (Q4) {
        for (int i = 0; i < 4; ++i) {
            const unsigned raw = unsigned(load_i32_a2(blk + 2, i));
            w[i] = int(raw & 0x0f0f0f0fu);
            w[i + 4] = int((raw >> 4) & 0x0f0f0f0fu);
        }
    } else {
        for (int i = 0; i < 8; ++i) w[i] = load_i32_a2(blk + 2, i);
    }
}

template <int NC, bool Q4> MOLE_GLOBAL void mv_quant_kernel(const uint8_t *W, int64_t n, int64_t k, const int8_t *xq,
                                                            const float *xd, const int32_t *xs, float *Y) {
    const int64_t r = int64_t(blockIdx.x) * kMvWarps + threadIdx.x / kWarp;
    const int lane = int(threadIdx.x % kWarp);
    if (r >= n) return;   // a whole warp at once
    const int64_t nb = k / kQK, bb = Q4 ? kQ4Bytes : kQ8Bytes;
    const uint8_t *row = W + r * nb * bb;
    float acc[NC];
    for (int s = 0; s < NC; ++s) acc[s] = 0.0f;
    for (int64_t b = lane; b < nb; b += kWarp) {
        const uint8_t *blk = row + b * bb;
        const float dw = f16_bits(load_u16(blk));
        int w[8];
        block_words<Q4>(blk, w);
        for (int s = 0; s < NC; ++s) {
            const int *x = reinterpret_cast<const int *>(xq + s * k + b * kQK);
            int dot = 0;
            for (int i = 0; i < 8; ++i) dot = __dp4a(w[i], x[i], dot);
            if (Q4) dot -= 8 * xs[s * nb + b];
            acc[s] = fmaf(dw * xd[s * nb + b], float(dot), acc[s]);
        }
    }
    for (int s = 0; s < NC; ++s) {
        const float v = warp_sum(acc[s]);
        if (lane == 0) Y[s * n + r] = v;
    }
}

// Two consecutive weights of row `row` (element i even, row 4-byte aligned) as floats.
template <Type T> MOLE_DEV float2 load_pair(const uint8_t *row, int64_t i) {
    if (T == Type::F32) return *reinterpret_cast<const float2 *>(row + i * 4);
    if (T == Type::F16) return __half22float2(*reinterpret_cast<const __half2 *>(row + i * 2));
    return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(row + i * 2));
}
template <Type T> MOLE_DEV float load_one(const uint8_t *row, int64_t i) {
    if (T == Type::F32) return reinterpret_cast<const float *>(row)[i];
    const uint16_t h = reinterpret_cast<const uint16_t *>(row)[i];
    return T == Type::F16 ? f16_bits(h) : bf16_bits(h);
}
template <Type T> constexpr int64_t kElemBytes = T == Type::F32 ? 4 : 2;

template <int NC, Type T>
MOLE_GLOBAL void mv_float_kernel(const uint8_t *W, int64_t n, int64_t k, const float *X, float *Y) {
    const int64_t r = int64_t(blockIdx.x) * kMvWarps + threadIdx.x / kWarp;
    const int lane = int(threadIdx.x % kWarp);
    if (r >= n) return;
    const uint8_t *row = W + r * k * kElemBytes<T>;
    float acc[NC];
    for (int s = 0; s < NC; ++s) acc[s] = 0.0f;
    if (k % 2 == 0) {   // rows start 4-byte aligned: pairs
        for (int64_t i = 2 * lane; i < k; i += 2 * kWarp) {
            const float2 w = load_pair<T>(row, i);
            for (int s = 0; s < NC; ++s) acc[s] = fmaf(w.y, X[s * k + i + 1], fmaf(w.x, X[s * k + i], acc[s]));
        }
    } else {
        for (int64_t i = lane; i < k; i += kWarp) {
            const float w = load_one<T>(row, i);
            for (int s = 0; s < NC; ++s) acc[s] = fmaf(w, X[s * k + i], acc[s]);
        }
    }
    for (int s = 0; s < NC; ++s) {
        const float v = warp_sum(acc[s]);
        if (lane == 0) Y[s * n + r] = v;
    }
}

// ---- tiles for prompts: 64 weight rows x 32 X rows per block of 256 threads, 4 x 2 outputs each.
constexpr int kTn = 64, kTs = 32, kThreads = 256;
constexpr int kKb = 4;    // q8 blocks of k per stage (quantized)
constexpr int kKc = 32;   // elements of k per stage (float types)

template <bool Q4> MOLE_GLOBAL void mm_quant_kernel(const uint8_t *W, int64_t n, int64_t k, const int8_t *xq,
                                                    const float *xd, const int32_t *xs, int64_t S, float *Y) {
    MOLE_SHARED(int, wq, kKb *kTn * 9);   // [kb][row][8 words + pad]
    MOLE_SHARED(float, wd, kKb *kTn);
    MOLE_SHARED(int, xw, kKb *kTs * 9);
    MOLE_SHARED(float, xdd, kKb *kTs);
    MOLE_SHARED(int, xsum, kKb *kTs);
    const int tid = int(threadIdx.x), tr = tid % 16, ts = tid / 16;
    const int64_t r0 = int64_t(blockIdx.x) * kTn, s0 = int64_t(blockIdx.y) * kTs;
    const int64_t nb = k / kQK, bb = Q4 ? kQ4Bytes : kQ8Bytes;
    float acc[4][2] = {};
    for (int64_t b0 = 0; b0 < nb; b0 += kKb) {
        // weights: kKb blocks of 64 rows (one thread per (block, row) pair)
        for (int i = tid; i < kKb * kTn; i += kThreads) {
            const int kb = i / kTn, rr = i % kTn;
            const int64_t r = r0 + rr, b = b0 + kb;
            int w[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            float dw = 0.0f;
            if (r < n && b < nb) {
                const uint8_t *blk = W + (r * nb + b) * bb;
                dw = f16_bits(load_u16(blk));
                block_words<Q4>(blk, w);
            }
            for (int c = 0; c < 8; ++c) wq[(kb * kTn + rr) * 9 + c] = w[c];
            wd[kb * kTn + rr] = dw;
        }
        for (int i = tid; i < kKb * kTs; i += kThreads) {
            const int kb = i / kTs, sr = i % kTs;
            const int64_t s = s0 + sr, b = b0 + kb;
            const bool in = s < S && b < nb;
            const int *x = in ? reinterpret_cast<const int *>(xq + s * k + b * kQK) : nullptr;
            for (int c = 0; c < 8; ++c) xw[(kb * kTs + sr) * 9 + c] = in ? x[c] : 0;
            xdd[kb * kTs + sr] = in ? xd[s * nb + b] : 0.0f;
            xsum[kb * kTs + sr] = in ? xs[s * nb + b] : 0;
        }
        __syncthreads();
        for (int kb = 0; kb < kKb; ++kb)
            for (int i = 0; i < 4; ++i) {
                const int rr = tr + 16 * i;
                for (int j = 0; j < 2; ++j) {
                    const int sr = ts + 16 * j;
                    int dot = 0;
                    for (int c = 0; c < 8; ++c)
                        dot = __dp4a(wq[(kb * kTn + rr) * 9 + c], xw[(kb * kTs + sr) * 9 + c], dot);
                    if (Q4) dot -= 8 * xsum[kb * kTs + sr];
                    acc[i][j] = fmaf(wd[kb * kTn + rr] * xdd[kb * kTs + sr], float(dot), acc[i][j]);
                }
            }
        __syncthreads();
    }
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 2; ++j) {
            const int64_t r = r0 + tr + 16 * i, s = s0 + ts + 16 * j;
            if (r < n && s < S) Y[s * n + r] = acc[i][j];
        }
}

template <Type T>
MOLE_GLOBAL void mm_float_kernel(const uint8_t *W, int64_t n, int64_t k, const float *X, int64_t S, float *Y) {
    MOLE_SHARED(float, ws, kTn *(kKc + 1));
    MOLE_SHARED(float, xs, kTs *(kKc + 1));
    const int tid = int(threadIdx.x), tr = tid % 16, ts = tid / 16;
    const int64_t r0 = int64_t(blockIdx.x) * kTn, s0 = int64_t(blockIdx.y) * kTs;
    float acc[4][2] = {};
    for (int64_t c0 = 0; c0 < k; c0 += kKc) {
        for (int i = tid; i < kTn * kKc; i += kThreads) {
            const int rr = i / kKc, c = i % kKc;
            const int64_t r = r0 + rr, col = c0 + c;
            ws[rr * (kKc + 1) + c] = r < n && col < k ? load_one<T>(W + r * k * kElemBytes<T>, col) : 0.0f;
        }
        for (int i = tid; i < kTs * kKc; i += kThreads) {
            const int sr = i / kKc, c = i % kKc;
            const int64_t s = s0 + sr, col = c0 + c;
            xs[sr * (kKc + 1) + c] = s < S && col < k ? X[s * k + col] : 0.0f;
        }
        __syncthreads();
        for (int c = 0; c < kKc; ++c) {
            float w[4], x[2];
            for (int i = 0; i < 4; ++i) w[i] = ws[(tr + 16 * i) * (kKc + 1) + c];
            for (int j = 0; j < 2; ++j) x[j] = xs[(ts + 16 * j) * (kKc + 1) + c];
            for (int i = 0; i < 4; ++i)
                for (int j = 0; j < 2; ++j) acc[i][j] = fmaf(w[i], x[j], acc[i][j]);
        }
        __syncthreads();
    }
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 2; ++j) {
            const int64_t r = r0 + tr + 16 * i, s = s0 + ts + 16 * j;
            if (r < n && s < S) Y[s * n + r] = acc[i][j];
        }
}

template <int NC>
void mv(Type type, const uint8_t *W, int64_t n, int64_t k, const float *X, const Q8Act &xq, float *Y, cudaStream_t st) {
    const unsigned grid = unsigned((n + kMvWarps - 1) / kMvWarps), block = kMvWarps * kWarp;
    switch (type) {
    case Type::Q8_0:
        MOLE_LAUNCH((mv_quant_kernel<NC, false>), grid, block, 0, st, W, n, k, xq.q, xq.d, xq.sum, Y);
        break;
    case Type::Q4_0:
        MOLE_LAUNCH((mv_quant_kernel<NC, true>), grid, block, 0, st, W, n, k, xq.q, xq.d, xq.sum, Y);
        break;
    case Type::F32: MOLE_LAUNCH((mv_float_kernel<NC, Type::F32>), grid, block, 0, st, W, n, k, X, Y); break;
    case Type::F16: MOLE_LAUNCH((mv_float_kernel<NC, Type::F16>), grid, block, 0, st, W, n, k, X, Y); break;
    case Type::BF16: MOLE_LAUNCH((mv_float_kernel<NC, Type::BF16>), grid, block, 0, st, W, n, k, X, Y); break;
    case Type::IQ4_NL:
    case Type::Q3_K: break;   // LUT-only types: model.cpp never binds a matrix to them
    }
}

}  // namespace

void matmul(Type type, const uint8_t *W, int64_t n, int64_t k, const float *X, const Q8Act &xq, int64_t S, float *Y,
            cudaStream_t st) {
    if (S <= 0 || n <= 0) return;
    switch (S) {
    case 1: return mv<1>(type, W, n, k, X, xq, Y, st);
    case 2: return mv<2>(type, W, n, k, X, xq, Y, st);
    case 3: return mv<3>(type, W, n, k, X, xq, Y, st);
    case 4: return mv<4>(type, W, n, k, X, xq, Y, st);
    case 5: return mv<5>(type, W, n, k, X, xq, Y, st);
    case 6: return mv<6>(type, W, n, k, X, xq, Y, st);
    case 7: return mv<7>(type, W, n, k, X, xq, Y, st);
    case 8: return mv<8>(type, W, n, k, X, xq, Y, st);
    default: break;
    }
    const dim3 grid(unsigned((n + kTn - 1) / kTn), unsigned((S + kTs - 1) / kTs));
    switch (type) {
    case Type::Q8_0:
        MOLE_LAUNCH(mm_quant_kernel<false>, grid, kThreads, 0, st, W, n, k, xq.q, xq.d, xq.sum, S, Y);
        break;
    case Type::Q4_0:
        MOLE_LAUNCH(mm_quant_kernel<true>, grid, kThreads, 0, st, W, n, k, xq.q, xq.d, xq.sum, S, Y);
        break;
    case Type::F32: MOLE_LAUNCH(mm_float_kernel<Type::F32>, grid, kThreads, 0, st, W, n, k, X, S, Y); break;
    case Type::F16: MOLE_LAUNCH(mm_float_kernel<Type::F16>, grid, kThreads, 0, st, W, n, k, X, S, Y); break;
    case Type::BF16: MOLE_LAUNCH(mm_float_kernel<Type::BF16>, grid, kThreads, 0, st, W, n, k, X, S, Y); break;
    case Type::IQ4_NL:
    case Type::Q3_K: break;   // LUT-only types
    }
}

}  // namespace mole::cuda
