// LUT store: finds the raw bytes of a step's LUT rows (row cache of raw row bytes, LRU, or the
// mapping itself), starts reading missed rows at once, and fills the cache layer by layer.
#pragma once

#include <cstdint>
#include <memory>

#include "mmap.h"
#include "model.h"

namespace mole {

struct LutCounters {
    uint64_t rows_fetched = 0;   // rows read from the mapping (cache misses)
    uint64_t bytes_fetched = 0;
    uint64_t cache_hits = 0;
};

class LutStore {
public:
    // All memory is allocated here: a cache of cache_bytes (0: none), at most one row per token;
    // max_uniq = the most distinct ids one step can hold (n_batch).
    Status init(const Model &model, uint64_t cache_bytes, int32_t max_uniq);

    // uniq[0..U): distinct token ids (< V), U <= max_uniq. rows[u] = where token uniq[u]'s raw
    // row (row_bytes() bytes of the LUT's file type: [L, N, d] values) is read by the mix: a cache
    // slot, or for a miss without a slot (cache off, or every slot serves this step) the mapping.
    // A missed row already in the page cache is copied into its slot at once (one pread). Other
    // missed rows get a WILLNEED hint over exactly their pages, so their reads start now,
    // overlapped with layer 0's attention, and their slots are filled one layer slice at a
    // time (fetch_layer), so a layer waits only for its own slice. Allocation-free.
    void prepare(const int32_t *uniq, int32_t U, const uint8_t **rows);
    // Before layer il's mix: preads layer il's slice of every missed row into its slot (no
    // mapping: the file pages never count in RSS; with large page-cache folios a mapped fault
    // can map far more than the row).
    void fetch_layer(int32_t il);
    // After layer il's mix: unmaps the slice's pages of missed rows read through the mapping
    // (they stay in the page cache).
    void finish_layer(int32_t il);
    // After the whole step: the missed rows' slots become valid. A step that stops early (cancel)
    // skips this, and its partly filled slots are never found.
    void commit();
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
    std::unique_ptr<LargeBuffer> rows_;    // [capacity, row_bytes] raw file bytes
    std::unique_ptr<int32_t[]> slot_of_;   // [V] slot holding token v, -1 if none
    std::unique_ptr<int32_t[]> token_of_;  // [capacity]
    std::unique_ptr<int32_t[]> prev_, next_;   // [capacity] LRU list, head_ = most recent
    int32_t head_ = -1, tail_ = -1;
    std::unique_ptr<int32_t[]> missed_;       // [max_uniq] tokens of the last prepare() read from the mapping
    std::unique_ptr<int32_t[]> missed_slot_;  // [max_uniq] their cache slots (-1: none)
    std::unique_ptr<bool[]> missed_ready_;    // [max_uniq] slot already filled whole by prepare()
    std::unique_ptr<uint64_t[]> stamp_;       // [capacity] step that last used the slot
    uint64_t step_ = 0;
    int32_t n_missed_ = 0;
    int64_t slice_elems_ = 0;                 // N*d: one layer's part of a row
    int64_t block_elems_ = 1, block_bytes_ = 4;
    void slice_range(int32_t il, uint64_t *off, uint64_t *len) const;   // layer il's bytes in a row
};

}  // namespace mole
