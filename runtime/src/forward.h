// The forward pass of one step, split into the per-step plan (which tokens, where, which LUT rows:
// backend-independent) and the op calls over the CPU kernels (forward.cpp).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

#include "backend/cpu/threadpool.h"
#include "lut.h"
#include "model.h"

namespace mole {

// Rows are in grouped order: the entries of one sequence are contiguous, in entry order.
// All arrays are owned by Scratch and sized at context creation (no allocation per step).
struct StepPlan {
    int32_t n_rows = 0;        // S
    int32_t *ids;              // [S] token ids
    int32_t *pos;              // [S] position of each row in its sequence
    int32_t *uniq_slot;        // [S] index of the row's token in uniq
    int32_t *uniq;             // [U] distinct token ids of the step
    int32_t n_uniq = 0;        // U
    int32_t n_groups = 0;      // sequences touched by the step
    int32_t *group_seq;        // [G] sequence id
    int32_t *group_start;      // [G] first row
    int32_t *group_len;        // [G] rows
    int32_t *out_rows;         // [n_out] rows whose logits are wanted, in entry order
    int32_t n_out = 0;
};

// Activations and plan arrays for up to B = n_batch rows. No LUT row is expanded to f32 as a
// whole: the mix dequantizes one layer's slice of one row at a time (mix_tmp).
struct Scratch {
    int32_t B = 0, U_max = 0, n_threads = 1;
    std::unique_ptr<float[]> x;        // [B, d] residual stream
    std::unique_ptr<float[]> xn;       // [B, d] normed input (attn norm, ffn norm, final norm)
    std::unique_ptr<float[]> q;        // [B, n_head*hd]
    std::unique_ptr<float[]> k, v;     // [B, n_head_kv*hd]
    std::unique_ptr<float[]> att;      // [B, n_head*hd]
    std::unique_ptr<float[]> tmp;      // [B, d] attention output / FFN output
    std::unique_ptr<float[]> ff;       // [B, D]
    std::unique_ptr<float[]> gate;     // [B, N] router weights
    std::unique_ptr<const uint8_t *[]> rows;   // [U_max] raw LUT row of each distinct id (LutStore::prepare)
    int64_t mix_stride = 0;                   // floats per thread in mix_tmp
    std::unique_ptr<float[]> mix_tmp;         // [n_threads, N*d + 2 blocks] one layer's slice, dequantized
    std::unique_ptr<uint8_t[]> embd_raw;   // [row bytes of token_embd] one embedding row as read from the file
    std::unique_ptr<float[]> out_x;    // [B, d] final-normed rows whose logits are wanted
    std::unique_ptr<int32_t[]> ids, pos, uniq_slot, uniq, out_rows;   // [B]
    std::unique_ptr<int32_t[]> group_seq, group_start, group_len;     // [n_seq]
    std::unique_ptr<int32_t[]> seq_count;                             // [n_seq]
    std::unique_ptr<int32_t[]> token_mark;                            // [V] -1 or slot in uniq
    StepPlan plan;

    Status init(const Model &m, int32_t n_batch, int32_t n_seq, int32_t n_threads);
};

// KV cache: per sequence, per layer, [n_ctx, n_head_kv*hd] f32 for K and for V.
struct KvCache {
    int32_t n_ctx = 0, n_seq = 0, n_layer = 0;
    int64_t kv_dim = 0;
    std::unique_ptr<float[]> k, v;    // [n_seq, L, n_ctx, kv_dim]
    float *k_at(int32_t seq, int32_t layer) { return k.get() + (int64_t(seq) * n_layer + layer) * n_ctx * kv_dim; }
    float *v_at(int32_t seq, int32_t layer) { return v.get() + (int64_t(seq) * n_layer + layer) * n_ctx * kv_dim; }
    Status init(const Model &m, int32_t n_ctx, int32_t n_seq);
};

// Fills s.plan for entries [0, n) (tokens/seq_ids/want of the chunk, seq_ids may be null = 0,
// want may be null = all); seq_len gives each sequence's next position.
void plan_step(Scratch &s, int32_t n, const int32_t *tokens, const int32_t *seq_ids, const int8_t *want,
               const int32_t *seq_len, int32_t n_seq);

struct StepTimes { double lut_ms = 0; };

// Runs the model on s.plan: writes K/V at the planned positions, logits [n_out, V] to `logits`.
// Returns MOLE_STATUS_CANCELLED (between layers) when *cancel turns true.
Status forward_step(const Model &m, Scratch &s, KvCache &kv, LutStore &lut, cpu::ThreadPool *pool,
                    const std::atomic<bool> &cancel, float *logits, StepTimes *times);

}  // namespace mole
