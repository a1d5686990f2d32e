// The plan of one forward step, backend-free: which token goes to which row, at which position of
// which sequence, which distinct ids the step's LUT rows are, and which rows want logits.
#pragma once

#include <cstdint>
#include <memory>

#include "error.h"

namespace mole {

// Rows are in grouped order: the entries of one sequence are contiguous, in entry order.
// The arrays are host memory owned by a Planner (no allocation per step).
struct StepPlan {
    int32_t n_rows = 0;                  // S
    const int32_t *ids = nullptr;        // [S] token ids
    const int32_t *pos = nullptr;        // [S] position of each row in its sequence
    const int32_t *uniq_slot = nullptr;  // [S] index of the row's token in uniq
    const int32_t *uniq = nullptr;       // [U] distinct token ids of the step
    int32_t n_uniq = 0;                  // U (0 when the plan was made without distinct ids)
    int32_t n_groups = 0;                // sequences touched by the step
    const int32_t *group_seq = nullptr;  // [G] sequence id
    const int32_t *group_start = nullptr;// [G] first row
    const int32_t *group_len = nullptr;  // [G] rows
    const int32_t *out_rows = nullptr;   // [n_out] rows whose logits are wanted, in entry order
    int32_t n_out = 0;
};

class Planner {
public:
    // Arrays for up to n_batch rows of n_seq sequences over a vocabulary of n_vocab; with_uniq:
    // also find the distinct ids (a model with a LUT).
    Status init(int32_t n_batch, int32_t n_seq, int32_t n_vocab, bool with_uniq);
    // The plan of entries [0, n) (n <= n_batch): tokens[i] (< n_vocab) appended to sequence
    // seq_ids[i] (null: all 0) at its next position seq_len[seq]; want[i] != 0 (want null: all)
    // asks for the entry's logits. Allocation-free; the result is valid until the next call.
    const StepPlan &plan(int32_t n, const int32_t *tokens, const int32_t *seq_ids, const int8_t *want,
                         const int32_t *seq_len);
    const StepPlan &current() const { return plan_; }

private:
    StepPlan plan_;
    int32_t n_seq_ = 0;
    bool with_uniq_ = false;
    std::unique_ptr<int32_t[]> ids_, pos_, uniq_slot_, uniq_, out_rows_;   // [n_batch]
    std::unique_ptr<int32_t[]> group_seq_, group_start_, group_len_;      // [n_seq]
    std::unique_ptr<int32_t[]> seq_count_;                                // [n_seq]
    std::unique_ptr<int32_t[]> token_mark_;                               // [V] -1 or slot in uniq
};

}  // namespace mole
