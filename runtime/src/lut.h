// LUT store: gathers the LUT rows of a step's unique token ids out of the mapping (or a row cache
// of raw row bytes, LRU) and dequantizes them into the step's expert buffer. One per context.
#pragma once

#include <cstdint>
#include <memory>

#include "model.h"

namespace mole {

struct LutCounters {
    uint64_t rows_fetched = 0;   // rows read from the mapping (cache misses)
    uint64_t bytes_fetched = 0;
    uint64_t cache_hits = 0;
};

class LutStore {
public:
    // All memory is allocated here: a cache of cache_bytes (0: none), at most one row per token.
    Status init(const Model &model, uint64_t cache_bytes);

    // uniq[0..U): distinct token ids (< V). out [U, L, N, d] f32: row u = token uniq[u]'s
    // expert outputs. Allocation-free.
    void gather(const int32_t *uniq, int32_t U, float *out);

    int64_t row_elems() const { return row_elems_; }     // L*N*d
    uint64_t row_bytes() const { return row_bytes_; }
    uint64_t cache_bytes_used() const { return static_cast<uint64_t>(n_used_) * row_bytes_; }
    int32_t cache_capacity_rows() const { return capacity_; }
    LutCounters counters;

private:
    void touch(int32_t slot);        // move slot to the front (most recent)
    void unlink(int32_t slot);

    const Model *model_ = nullptr;
    int64_t row_elems_ = 0;
    uint64_t row_bytes_ = 0;
    int32_t capacity_ = 0;           // slots
    int32_t n_used_ = 0;
    std::unique_ptr<uint8_t[]> rows_;      // [capacity, row_bytes] raw file bytes
    std::unique_ptr<int32_t[]> slot_of_;   // [V] slot holding token v, -1 if none
    std::unique_ptr<int32_t[]> token_of_;  // [capacity]
    std::unique_ptr<int32_t[]> prev_, next_;   // [capacity] LRU list, head_ = most recent
    int32_t head_ = -1, tail_ = -1;
};

}  // namespace mole
