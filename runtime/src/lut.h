// The LUT path of a step, over its three parts: the backend-free index (lut_index.h: which ids
// hit which slots), the host row reads (lut_reader.h), and the slot memory the backend owns.
// How misses reach the backend is its LutFeed: the CPU mixes a miss without a slot in place from
// the mapping and fills a row already in the page cache whole at once; every other miss (all of
// them on a by_layer backend) is filled one layer slice at a time, `lookahead` layers ahead of
// the mix, so a layer waits only for its own slice and the first reads overlap layer 0's attention.
#pragma once

#include <cstdint>
#include <memory>

#include "backend/backend.h"
#include "lut_index.h"
#include "lut_reader.h"
#include "plan.h"

namespace mole {

struct Model;

class LutStore {
public:
    // A cache of cache_bytes (0: none; at most one row per token) in be's slot memory; at most max_uniq distinct ids a step. A dense model needs none of
    // this (init does nothing).
    Status init(const Model &model, Backend &be, uint64_t cache_bytes, int32_t max_uniq);

    // At the step's start: looks up the plan's distinct ids; rows() then says where the mix reads
    // each one, and the first layers' fills are issued. Allocation-free.
    void prepare(const StepPlan &plan);
    const LutRow *rows() const { return rows_.get(); }   // [plan.n_uniq]
    // Before layer il's mix: the missed rows' slices up to layer il (+ lookahead) are issued.
    void fetch_layer(int32_t il);
    // After layer il's mix: the mapped pages of misses mixed in place are released.
    void finish_layer(int32_t il);
    // After the whole step: the misses' slots become valid.
    void commit() { index_.commit(); }

    uint64_t row_bytes() const { return reader_.row_bytes(); }
    uint64_t cache_bytes_used() const { return uint64_t(index_.slots_used()) * reader_.row_bytes(); }
    uint64_t cache_bytes() const { return uint64_t(index_.capacity()) * reader_.row_bytes(); }
    LutCounters &counters() { return index_.counters; }
    const LutCounters &counters() const { return index_.counters; }

private:
    void fill_layer(int32_t il);

    Backend *be_ = nullptr;
    Type type_ = Type::F32;
    int64_t N_ = 0, d_ = 0;
    int32_t L_ = 0, next_layer_ = 0;
    LutFeed feed_;
    LutIndex index_;
    LutReader reader_;
    std::unique_ptr<int32_t[]> slots_;   // [max_uniq] index_.prepare's result
    std::unique_ptr<LutRow[]> rows_;   // [max_uniq]
    std::unique_ptr<LutFill[]> pending_;   // [max_uniq] misses filled layer by layer
    std::unique_ptr<LutFill[]> whole_;   // [max_uniq] misses in the page cache, filled whole at the start
    std::unique_ptr<uint64_t[]> inplace_;   // [max_uniq] file offsets of misses mixed in place
    int32_t n_pending_ = 0, n_inplace_ = 0;
};

}   // namespace mole
