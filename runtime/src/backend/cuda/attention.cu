// Attention over the KV cache in VRAM. K/V of the step's rows are appended first (kv_append). Then
// one block per (tile of up to 8 consecutive rows of one sequence, head, key split): K/V tiles of
// 32 keys go through shared memory, each warp runs an online softmax for 2 of the tile's queries
// (lane j scores key j; the values are summed with the weights broadcast by shuffles). Prompts
// share each K/V tile among their queries; decode splits the keys over several blocks
// (flash-decoding) and a second kernel merges the partial softmaxes. GQA/MQA: head h reads kv head
// h / (H / Hkv).
#include "backend/cuda/ops.cuh"

namespace mole::cuda {

namespace {

constexpr int kKT = 32;                           // keys per shared-memory tile
constexpr int kWarps = 4;                         // per block
constexpr int kQPerWarp = kAttnQ / kWarps;        // 2
constexpr int kMaxHd = 256, kDims = kMaxHd / kWarp;   // output dims per lane

MOLE_GLOBAL void kv_append_kernel(const float *k, const float *v, int64_t n, int64_t kvd, int64_t hd,
                                  const int32_t *row_seq, const int32_t *pos, float *kc, float *vc, int64_t n_layer,
                                  int64_t layer, int64_t n_ctx) {
    const int64_t t = int64_t(blockIdx.x) * 256 + threadIdx.x;
    if (t >= n) return;
    const int64_t r = t / kvd, e = t % kvd, j = e / hd;   // row, element, its kv head
    const int64_t at = (((int64_t(row_seq[r]) * n_layer + layer) * (kvd / hd) + j) * n_ctx + pos[r]) * hd + e % hd;
    kc[at] = k[t];
    vc[at] = v[t];
}

MOLE_GLOBAL void attention_kernel(AttnArgs a) {
    MOLE_DYNAMIC_SHARED(float, smem);
    const int hd = a.hd, stride = hd + 1;
    float *q_sh = smem;                     // [kAttnQ][hd], pre-scaled by 1/sqrt(hd)
    float *k_sh = q_sh + kAttnQ * hd;       // [kKT][hd + 1]
    float *v_sh = k_sh + kKT * stride;      // [kKT][hd + 1]
    const AttnTile tile = a.tiles[blockIdx.x];
    const int h = int(blockIdx.y), split = int(blockIdx.z);
    const int kvh = h / (a.H / a.Hkv);
    const int tid = int(threadIdx.x), warp = tid / kWarp, lane = tid % kWarp;
    const int64_t base = ((int64_t(tile.seq) * a.n_layer + a.layer) * a.Hkv + kvh) * a.n_ctx * hd;   // head-major
    const float *kc = a.k_cache + base, *vc = a.v_cache + base;
    const int64_t n_keys = int64_t(tile.max_pos) + 1;
    const int64_t chunk = ((n_keys + a.n_split - 1) / a.n_split + kKT - 1) / kKT * kKT;
    const int64_t t0 = int64_t(split) * chunk, t1 = t0 + chunk < n_keys ? t0 + chunk : n_keys;
    const float scale = rsqrtf(float(hd));
    for (int i = tid; i < kAttnQ * hd; i += kWarps * kWarp) {
        const int qi = i / hd, e = i % hd;
        q_sh[i] = qi < tile.n_rows ? a.q[(int64_t(tile.row0 + qi) * a.H + h) * hd + e] * scale : 0.0f;
    }
    float m[kQPerWarp], l[kQPerWarp], acc[kQPerWarp][kDims];
    int64_t qpos[kQPerWarp];
    for (int j = 0; j < kQPerWarp; ++j) {
        const int qi = warp * kQPerWarp + j;
        m[j] = -INFINITY;
        l[j] = 0.0f;
        qpos[j] = qi < tile.n_rows ? a.pos[tile.row0 + qi] : -1;
        for (int dd = 0; dd < kDims; ++dd) acc[j][dd] = 0.0f;
    }
    for (int64_t tt = t0; tt < t1; tt += kKT) {
        __syncthreads();   // the previous tile (and q_sh the first time) is complete / no longer read
        for (int i = tid; i < kKT * hd; i += kWarps * kWarp) {
            const int key = i / hd, e = i % hd;
            const int64_t t = tt + key;
            k_sh[key * stride + e] = t < t1 ? kc[t * hd + e] : 0.0f;
            v_sh[key * stride + e] = t < t1 ? vc[t * hd + e] : 0.0f;
        }
        __syncthreads();
        for (int j = 0; j < kQPerWarp; ++j) {
            const int qi = warp * kQPerWarp + j;
            if (qpos[j] < 0) continue;   // warp-uniform
            const int64_t t = tt + lane;
            const bool valid = t < t1 && t <= qpos[j];
            float s = -INFINITY;
            if (valid) {
                s = 0.0f;
                for (int e = 0; e < hd; ++e) s = fmaf(q_sh[qi * hd + e], k_sh[lane * stride + e], s);
            }
            const float mt = warp_max(s);
            if (mt == -INFINITY) continue;   // no visible key in this tile (warp-uniform)
            const float m_new = fmaxf(m[j], mt), corr = expf(m[j] - m_new);
            const float p = valid ? expf(s - m_new) : 0.0f;
            l[j] = l[j] * corr + warp_sum(p);
            for (int dd = 0; dd < kDims; ++dd) acc[j][dd] *= corr;
            for (int kk = 0; kk < kKT; ++kk) {
                const float pk = __shfl_sync(kFull, p, kk);
                if (pk == 0.0f) continue;   // warp-uniform (a broadcast value)
                for (int dd = 0; dd < kDims; ++dd) {
                    const int e = lane + kWarp * dd;
                    if (e < hd) acc[j][dd] = fmaf(pk, v_sh[kk * stride + e], acc[j][dd]);
                }
            }
            m[j] = m_new;
        }
    }
    for (int j = 0; j < kQPerWarp; ++j) {
        if (qpos[j] < 0) continue;
        const int64_t row = tile.row0 + warp * kQPerWarp + j;
        if (a.n_split == 1) {
            const float inv = l[j] > 0.0f ? 1.0f / l[j] : 0.0f;
            for (int dd = 0; dd < kDims; ++dd) {
                const int e = lane + kWarp * dd;
                if (e < hd) a.out[(row * a.H + h) * hd + e] = acc[j][dd] * inv;
            }
        } else {   // partial [split][S][H][hd + 2]: unnormalized sums, then max and denominator
            float *pt = a.partial + ((int64_t(split) * a.S + row) * a.H + h) * (hd + 2);
            for (int dd = 0; dd < kDims; ++dd) {
                const int e = lane + kWarp * dd;
                if (e < hd) pt[e] = acc[j][dd];
            }
            if (lane == 0) {
                pt[hd] = m[j];
                pt[hd + 1] = l[j];
            }
        }
    }
}

// out [r, h, :] = sum_s acc_s e^(m_s - M) / sum_s l_s e^(m_s - M) over the splits.
MOLE_GLOBAL void attention_merge_kernel(const float *partial, int32_t n_split, int64_t S, int64_t H, int64_t hd,
                                        float *out) {
    const int64_t row = blockIdx.x, h = blockIdx.y;
    float M = -INFINITY;
    for (int32_t s = 0; s < n_split; ++s) M = fmaxf(M, partial[((s * S + row) * H + h) * (hd + 2) + hd]);
    float L = 0.0f;
    for (int32_t s = 0; s < n_split; ++s) {
        const float *pt = partial + ((s * S + row) * H + h) * (hd + 2);
        if (pt[hd + 1] > 0.0f) L += pt[hd + 1] * expf(pt[hd] - M);
    }
    const float inv = L > 0.0f ? 1.0f / L : 0.0f;
    for (int64_t e = threadIdx.x; e < hd; e += blockDim.x) {
        float o = 0.0f;
        for (int32_t s = 0; s < n_split; ++s) {
            const float *pt = partial + ((s * S + row) * H + h) * (hd + 2);
            if (pt[hd + 1] > 0.0f) o = fmaf(pt[e], expf(pt[hd] - M), o);
        }
        out[(row * H + h) * hd + e] = o * inv;
    }
}

int64_t smem_bytes(int64_t hd) { return (int64_t(kAttnQ) * hd + 2 * int64_t(kKT) * (hd + 1)) * int64_t(sizeof(float)); }

}  // namespace

bool attention_supported(int64_t hd) { return hd >= 1 && hd <= kMaxHd; }

int32_t attention_splits(int64_t S, int64_t max_keys) {
    if (S > kAttnQ) return 1;   // prompts: the tiles already fill the GPU
    const int64_t want = (max_keys + 255) / 256;   // one block per 256 keys, up to 32
    return int32_t(want < 1 ? 1 : want > 32 ? 32 : want);
}

int64_t attention_partial_floats(int64_t S, int64_t H, int64_t hd, int32_t n_split) {
    return n_split > 1 ? int64_t(n_split) * S * H * (hd + 2) : 0;
}

void kv_append(const float *k, const float *v, int64_t S, int64_t kvd, int64_t hd, const int32_t *row_seq,
               const int32_t *pos, float *k_cache, float *v_cache, int64_t n_layer, int64_t layer, int64_t n_ctx,
               cudaStream_t st) {
    const int64_t n = S * kvd;
    if (n <= 0) return;
    MOLE_LAUNCH(kv_append_kernel, unsigned((n + 255) / 256), 256, 0, st, k, v, n, kvd, hd, row_seq, pos, k_cache,
                v_cache, n_layer, layer, n_ctx);
}

void attention(const AttnArgs &a, cudaStream_t st) {
    if (a.n_tiles <= 0) return;
    const int64_t smem = smem_bytes(a.hd);
    static bool opted_in = false;   // above 48 KiB of dynamic shared memory needs an opt-in
    if (smem > 48 * 1024 && !opted_in) {
        cudaFuncSetAttribute(attention_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem_bytes(kMaxHd)));
        opted_in = true;
    }
    const dim3 grid(unsigned(a.n_tiles), unsigned(a.H), unsigned(a.n_split));
    MOLE_LAUNCH(attention_kernel, grid, kWarps * kWarp, size_t(smem), st, a);
    if (a.n_split > 1)
        MOLE_LAUNCH(attention_merge_kernel, dim3(unsigned(a.S), unsigned(a.H)), 128, 0, st, a.partial, a.n_split, a.S,
                    int64_t(a.H), int64_t(a.hd), a.out);
}

}  // namespace mole::cuda
