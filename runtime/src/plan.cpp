// Planner: groups a step's entries by sequence (stable counting sort), assigns positions, and
// finds the distinct token ids (a repeated id is fetched once).
#include "plan.h"

#include <algorithm>
#include <new>

namespace mole {

Status Planner::init(int32_t n_batch, int32_t n_seq, int32_t n_vocab, bool with_uniq) {
    n_seq_ = n_seq;
    with_uniq_ = with_uniq;
    const size_t B = size_t(std::max(1, n_batch)), G = size_t(std::max(1, n_seq));
    try {
        for (auto *p : {&ids_, &pos_, &uniq_slot_, &uniq_, &out_rows_}) p->reset(new int32_t[B]);
        for (auto *p : {&group_seq_, &group_start_, &group_len_, &seq_count_}) p->reset(new int32_t[G]);
        token_mark_.reset(new int32_t[size_t(std::max(1, n_vocab))]);
    } catch (const std::bad_alloc &) {
        return set_error(MOLE_STATUS_OUT_OF_MEMORY, "cannot allocate the step plan for n_batch %d", n_batch);
    }
    std::fill(token_mark_.get(), token_mark_.get() + std::max(1, n_vocab), -1);
    plan_ = StepPlan{};
    plan_.ids = ids_.get();
    plan_.pos = pos_.get();
    plan_.uniq_slot = uniq_slot_.get();
    plan_.uniq = uniq_.get();
    plan_.group_seq = group_seq_.get();
    plan_.group_start = group_start_.get();
    plan_.group_len = group_len_.get();
    plan_.out_rows = out_rows_.get();
    return MOLE_STATUS_OK;
}

const StepPlan &Planner::plan(int32_t n, const int32_t *tokens, const int32_t *seq_ids, const int8_t *want,
                              const int32_t *seq_len) {
    StepPlan &p = plan_;
    int32_t *count = seq_count_.get(), *gstart = group_start_.get(), *glen = group_len_.get();
    p.n_rows = n;
    // Group rows by sequence (counting sort, stable): group g holds its sequence's entries in order.
    std::fill(count, count + n_seq_, 0);
    for (int32_t i = 0; i < n; ++i) count[seq_ids ? seq_ids[i] : 0]++;
    p.n_groups = 0;
    int32_t start = 0;
    for (int32_t sq = 0; sq < n_seq_; ++sq) {
        if (count[sq] == 0) continue;
        const int32_t g = p.n_groups++;
        group_seq_[g] = sq;
        gstart[g] = start;
        glen[g] = 0;
        start += count[sq];
        count[sq] = g;   // now: the group of sequence sq
    }
    p.n_uniq = 0;
    p.n_out = 0;
    for (int32_t i = 0; i < n; ++i) {
        const int32_t sq = seq_ids ? seq_ids[i] : 0;
        const int32_t g = count[sq];
        const int32_t r = gstart[g] + glen[g];
        pos_[r] = seq_len[sq] + glen[g];
        glen[g]++;
        const int32_t id = tokens[i];
        ids_[r] = id;
        if (with_uniq_) {
            int32_t u = token_mark_[id];
            if (u < 0) {
                u = p.n_uniq++;
                token_mark_[id] = u;
                uniq_[u] = id;
            }
            uniq_slot_[r] = u;
        }
        if (!want || want[i]) out_rows_[p.n_out++] = r;
    }
    for (int32_t u = 0; u < p.n_uniq; ++u) token_mark_[uniq_[u]] = -1;
    return p;
}

}  // namespace mole
