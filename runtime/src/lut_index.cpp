// LutIndex: slot lookup, reservation and LRU eviction over plain index arrays.
#include "lut_index.h"

#include <algorithm>
#include <new>

namespace mole {

Status LutIndex::init(int32_t n_vocab, int32_t capacity, int32_t max_uniq, uint64_t row_bytes) {
    capacity_ = std::max(0, capacity);
    row_bytes_ = row_bytes;
    n_used_ = n_missed_ = 0;
    step_ = 0;
    head_ = tail_ = -1;
    pinned_below_ = 0;
    counters = LutCounters{};
    const size_t n_miss = size_t(std::max(1, std::min(max_uniq, n_vocab)));
    try {
        missed_.reset(new LutMiss[n_miss]);
        if (capacity_ > 0) {
            slot_of_.reset(new int32_t[size_t(n_vocab)]);
            token_of_.reset(new int32_t[size_t(capacity_)]);
            prev_.reset(new int32_t[size_t(capacity_)]);
            next_.reset(new int32_t[size_t(capacity_)]);
            stamp_.reset(new uint64_t[size_t(capacity_)]);
        }
    } catch (const std::bad_alloc &) {
        return set_error(MOLE_STATUS_OUT_OF_MEMORY, "cannot allocate the LUT cache index (%d slots)", capacity_);
    }
    if (capacity_ > 0) std::fill(slot_of_.get(), slot_of_.get() + n_vocab, -1);
    return MOLE_STATUS_OK;
}

void LutIndex::unlink(int32_t s) {
    const int32_t p = prev_[s], n = next_[s];
    if (p >= 0)
        next_[p] = n;
    else
        head_ = n;
    if (n >= 0)
        prev_[n] = p;
    else
        tail_ = p;
}

void LutIndex::touch(int32_t s) {
    prev_[s] = -1;
    next_[s] = head_;
    if (head_ >= 0) prev_[head_] = s;
    head_ = s;
    if (tail_ < 0) tail_ = s;
}

void LutIndex::prepare(const int32_t *uniq, int32_t U, int32_t *slots) {
    ++step_;
    n_missed_ = 0;
    // Hits first: their slots are marked as this step's, so no miss below evicts them.
    for (int32_t u = 0; u < U; ++u) {
        const int32_t s = capacity_ > 0 ? slot_of_[uniq[u]] : -1;
        slots[u] = s;
        if (s < 0) continue;
        counters.cache_hits++;
        if (uniq[u] >= pinned_below_) {   // pinned rows stay out of the LRU list
            unlink(s);
            touch(s);
        }
        stamp_[s] = step_;
    }
    for (int32_t u = 0; u < U; ++u) {
        if (slots[u] >= 0) continue;
        const int32_t v = uniq[u];
        counters.rows_fetched++;
        counters.bytes_fetched += row_bytes_;
        int32_t s = -1;
        if (n_used_ < capacity_) {
            s = n_used_++;
        } else if (capacity_ > 0 && tail_ >= 0 && stamp_[tail_] != step_) {
            s = tail_;   // evict the least recently used row
            unlink(s);
            if (slot_of_[token_of_[s]] == s) slot_of_[token_of_[s]] = -1;
        }
        if (s >= 0) {   // reserved now, found by lookups after commit()
            token_of_[s] = v;
            stamp_[s] = step_;
            touch(s);   // a pinned row leaves the LRU list when its step commits
        }
        slots[u] = s;
        missed_[n_missed_++] = LutMiss{u, v, s};
    }
}

void LutIndex::commit() {
    for (int32_t i = 0; i < n_missed_; ++i) {
        const LutMiss &m = missed_[i];
        if (m.slot < 0) continue;
        slot_of_[m.token] = m.slot;
        if (m.token < pinned_below_) unlink(m.slot);   // never evicted from now on
    }
    n_missed_ = 0;
}

}  // namespace mole
