// One forward step of the model over the backend interface (backend/backend.h): the activations'
// arena and the step itself. The plan (plan.h) and the LUT path (lut.h) are made outside.
#pragma once

#include <atomic>
#include <cstdint>

#include "backend/backend.h"
#include "lut.h"
#include "model.h"
#include "plan.h"

namespace mole {

// Activations for up to B = n_batch rows: one arena of backend memory, carved into plain pointers.
// No LUT row is expanded to f32 as a whole: the mix reads each layer's slice from the row's bytes.
struct Scratch {
    float *x = nullptr;       // [B, d] residual stream
    float *xn = nullptr;      // [B, d] normed input (attn norm, ffn norm, the rows wanting logits)
    float *q = nullptr;       // [B, n_head*hd]
    float *k = nullptr;       // [B, n_head_kv*hd]
    float *v = nullptr;       // [B, n_head_kv*hd]
    float *att = nullptr;     // [B, n_head*hd]
    float *tmp = nullptr;     // [B, d] attention output / FFN output
    float *ff = nullptr;      // [B, D]
    float *gate = nullptr;    // [B, N] router weights
    float *out_x = nullptr;   // [B, d] final-normed rows whose logits are wanted

    Status init(Backend &be, const Hparams &hp, int32_t n_batch);
};

// K and V of n_seq sequences of n_ctx positions, elements of `type` (F32 or F16), in be's memory.
Status alloc_kv_cache(Backend &be, const Hparams &hp, int32_t n_ctx, int32_t n_seq, Type type, KvCache *kv);

struct StepTimes {
    double lut_ms = 0;
};

// Runs the model on `plan` (handed to be.begin_step first): writes K/V at the planned positions
// and logits [plan.n_out, V] to host `logits`. MOLE_STATUS_CANCELLED (between layers) when
// *cancel turns true; a backend error as soon as a layer ends with one.
Status forward_step(const Model &m, Backend &be, const StepPlan &plan, Scratch &s, KvCache &kv, LutStore &lut,
                    const std::atomic<bool> &cancel, float *logits, StepTimes *times);

}  // namespace mole
