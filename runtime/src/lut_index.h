// The LUT row cache's bookkeeping, backend-free: which token sits in which slot, LRU eviction
// that never evicts a row the current step uses (nor a pinned frequent one), and the counters. It holds no row bytes: the
// slots themselves are the backend's memory (Backend::alloc_lut_slots).
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>

#include "error.h"

namespace mole {

struct LutCounters {
    uint64_t rows_fetched = 0;   // rows read from the file (cache misses)
    uint64_t bytes_fetched = 0;
    uint64_t cache_hits = 0;
};

// A missed row of the last prepare(): its distinct-id index, token and reserved slot (-1: none).
struct LutMiss {
    int32_t u, token, slot;
};

class LutIndex {
public:
    // capacity slots (0: no cache) over a vocabulary of n_vocab; at most max_uniq ids a step;
    // row_bytes counts bytes_fetched.
    Status init(int32_t n_vocab, int32_t capacity, int32_t max_uniq, uint64_t row_bytes);
    // Tokens below k (at most half the slots) are never evicted once cached: a static top-k of the
    // most frequent ids, which byte-level BPE vocabularies number first (merge order), beside
    // the LRU rest. Before the first prepare().
    void set_pinned(int32_t k) { pinned_below_ = std::max(0, std::min(k, capacity_ / 2)); }
    int32_t pinned() const { return pinned_below_; }

    // uniq[0..U): a step's distinct ids (< n_vocab, U <= max_uniq). slots[u] = the slot holding
    // token uniq[u] (a hit) or reserved for it now (a miss; -1 when no slot is free of this
    // step's rows, or there is no cache). Hits are served first, so no miss evicts them. The
    // misses are listed in misses() in uniq order. Allocation-free.
    void prepare(const int32_t *uniq, int32_t U, int32_t *slots);
    const LutMiss *misses() const { return missed_.get(); }
    int32_t n_misses() const { return n_missed_; }
    // The misses' reserved slots become findable (their rows are complete). A step that stops
    // early skips this: its partly filled slots are never found.
    void commit();

    int32_t capacity() const { return capacity_; }
    int32_t slots_used() const { return n_used_; }
    LutCounters counters;

private:
    void touch(int32_t slot);   // move slot to the front (most recent)
    void unlink(int32_t slot);

    int32_t capacity_ = 0, n_used_ = 0, n_missed_ = 0, pinned_below_ = 0;
    uint64_t row_bytes_ = 0, step_ = 0;
    std::unique_ptr<int32_t[]> slot_of_;   // [V] slot holding token v, -1 if none
    std::unique_ptr<int32_t[]> token_of_;   // [capacity]
    std::unique_ptr<int32_t[]> prev_, next_;   // [capacity] LRU list, head_ = most recent
    std::unique_ptr<uint64_t[]> stamp_;   // [capacity] step that last used the slot
    std::unique_ptr<LutMiss[]> missed_;   // [max_uniq]
    int32_t head_ = -1, tail_ = -1;
};

}   // namespace mole
