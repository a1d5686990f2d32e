// A decoding context: its backend (workers, device memory), KV cache per sequence, the step's
// plan and activations, LUT store with its row cache, and counters. Used by one thread at a time
// (cancel excepted).
#pragma once

#include <atomic>
#include <memory>
#include <vector>

#include "backend/backend.h"
#include "forward.h"
#include "lut.h"
#include "model.h"
#include "plan.h"

namespace mole {

struct ContextParams {
    int32_t n_ctx = 0;         // 0: the model's context_length
    int32_t n_seq_max = 1;
    int32_t n_threads = 0;     // 0: physical cores
    int32_t n_batch = 512;
    int64_t lut_cache_mb = 64; // 0: off; -1: default
    int32_t type_kv = -1;      // KV cache elements: Type::F32 or F16; -1: the backend's default
};

struct Stats {
    uint64_t tokens_evaluated = 0, steps = 0;
    double t_eval_ms = 0, t_lut_ms = 0;
    LutDeviceCounters lut_base;   // the backend's counters when the stats were last reset
};

struct Context {
    const Model *model = nullptr;
    ContextParams params;                // resolved (no 0/-1 defaults left)
    std::unique_ptr<Backend> backend;
    KvCache kv;
    Planner planner;
    Scratch scratch;
    LutStore lut;
    std::vector<int32_t> seq_len;        // [n_seq] next position of each sequence
    std::vector<int32_t> chunk_count;    // [n_seq] tokens per sequence of the current call
    Stats stats;
    std::atomic<bool> cancel{false};

    // Validates params (INVALID_ARGUMENT naming the field) and allocates everything.
    Status init(const Model &m, const ContextParams &p);

    // mole_decode: see mole.h. Allocation-free.
    Status decode(int32_t n_tokens, const int32_t *tokens, const int32_t *seq_ids, const int8_t *want_logits,
                  float *logits, size_t capacity);
    Status truncate(int32_t seq_id, int32_t n_keep);
};

}  // namespace mole
