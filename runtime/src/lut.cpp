// LUT row lookup: token v's row is bytes [v*row_bytes, (v+1)*row_bytes) of lut.weight, used in
// place (cache slot or mapping; MADV_RANDOM: no readahead, WILLNEED over exactly the row's pages).
#include "lut.h"

#include <algorithm>
#include <cstring>
#include <new>

#include "mmap.h"

namespace mole {

namespace {
constexpr uint64_t kFaultAround = 65536;   // Linux's default fault_around_bytes
}

Status LutStore::init(const Model &model, uint64_t cache_bytes, int32_t max_uniq) {
    model_ = &model;
    const Hparams &hp = model.hp;
    row_elems_ = int64_t(hp.n_layer) * hp.n_expert * hp.n_embd;
    slice_elems_ = int64_t(hp.n_expert) * hp.n_embd;
    row_bytes_ = hp.n_expert > 0 ? model.lut.row_bytes() : 0;
    capacity_ = 0;
    n_used_ = 0;
    n_missed_ = 0;
    step_ = 0;
    head_ = tail_ = -1;
    if (row_bytes_ == 0) return MOLE_STATUS_OK;
    cpu::type_traits(uint32_t(model.lut.type), &block_elems_, &block_bytes_);
    const uint64_t cap = cache_bytes < row_bytes_ ? 0 : std::min<uint64_t>(cache_bytes / row_bytes_, uint64_t(hp.n_vocab));
    const size_t n_miss = size_t(std::max(1, std::min(max_uniq, hp.n_vocab)));
    try {
        missed_.reset(new int32_t[n_miss]);
        missed_slot_.reset(new int32_t[n_miss]);
        missed_ready_.reset(new bool[n_miss]);
        if (cap == 0) return MOLE_STATUS_OK;
        // Anonymous memory, touched only as rows arrive (no huge pages: their faults may stall a
        // decode step on memory compaction).
        if (Status s = LargeBuffer::allocate(cap * row_bytes_, false, "the LUT row cache", &rows_)) return s;
        slot_of_.reset(new int32_t[size_t(hp.n_vocab)]);
        token_of_.reset(new int32_t[cap]);
        prev_.reset(new int32_t[cap]);
        next_.reset(new int32_t[cap]);
        stamp_.reset(new uint64_t[cap]);
    } catch (const std::bad_alloc &) {
        return set_error(MOLE_STATUS_OUT_OF_MEMORY, "cannot allocate the LUT row cache (%s)",
                         human_bytes(cap * row_bytes_).c_str());
    }
    capacity_ = static_cast<int32_t>(cap);
    std::fill(slot_of_.get(), slot_of_.get() + hp.n_vocab, -1);
    return MOLE_STATUS_OK;
}

void LutStore::unlink(int32_t s) {
    int32_t p = prev_[s], n = next_[s];
    if (p >= 0) next_[p] = n; else head_ = n;
    if (n >= 0) prev_[n] = p; else tail_ = p;
}

void LutStore::touch(int32_t s) {
    prev_[s] = -1;
    next_[s] = head_;
    if (head_ >= 0) prev_[head_] = s;
    head_ = s;
    if (tail_ < 0) tail_ = s;
}

void LutStore::prepare(const int32_t *uniq, int32_t U, const uint8_t **rows) {
    const uint8_t *lut = model_->lut.data;
    ++step_;
    n_missed_ = 0;
    // Hits first: their slots are marked as this step's, so no miss below evicts them.
    for (int32_t u = 0; u < U; ++u) {
        const int32_t v = uniq[u];
        const int32_t s = capacity_ > 0 ? slot_of_[v] : -1;
        if (s < 0) continue;
        counters.cache_hits++;
        unlink(s);
        touch(s);
        stamp_[s] = step_;
        rows[u] = rows_->data() + uint64_t(s) * row_bytes_;
    }
    for (int32_t u = 0; u < U; ++u) {
        const int32_t v = uniq[u];
        if (capacity_ > 0 && slot_of_[v] >= 0) continue;
        rows[u] = lut + uint64_t(v) * row_bytes_;
        const uint64_t src = model_->lut.offset + uint64_t(v) * row_bytes_;
        counters.rows_fetched++;
        counters.bytes_fetched += row_bytes_;
        int32_t s = -1;
        if (n_used_ < capacity_) {
            s = n_used_++;
            // A fresh slot: its pages faulted in with one call rather than one trap per page.
            rows_->populate(uint64_t(s) * row_bytes_, row_bytes_);
        } else if (capacity_ > 0 && stamp_[tail_] != step_) {
            s = tail_;                          // evict the least recently used row
            unlink(s);
            if (slot_of_[token_of_[s]] == s) slot_of_[token_of_[s]] = -1;
        }
        bool ready = false;
        if (s >= 0) {                           // reserved now, found by lookups after commit()
            token_of_[s] = v;
            stamp_[s] = step_;
            touch(s);
            uint8_t *slot = rows_->data() + uint64_t(s) * row_bytes_;
            rows[u] = slot;                     // filled now if cached, else by fetch_layer
            // In the page cache already: one pread now instead of one per layer.
            ready = model_->file->all_resident(src, row_bytes_) && model_->file->read_at(src, slot, row_bytes_);
        }
        if (!ready) model_->file->advise_willneed(src, row_bytes_);
        missed_[n_missed_] = v;
        missed_ready_[n_missed_] = ready;
        missed_slot_[n_missed_++] = s;
    }
}

void LutStore::slice_range(int32_t il, uint64_t *off, uint64_t *len) const {
    // Whole blocks covering elements [il*N*d, (il+1)*N*d) of a row (as the mix reads them).
    const int64_t b0 = int64_t(il) * slice_elems_ / block_elems_;
    const int64_t b1 = ((int64_t(il) + 1) * slice_elems_ + block_elems_ - 1) / block_elems_;
    *off = uint64_t(b0 * block_bytes_);
    *len = uint64_t((b1 - b0) * block_bytes_);
}

void LutStore::fetch_layer(int32_t il) {
    uint64_t off, len;
    slice_range(il, &off, &len);
    for (int32_t i = 0; i < n_missed_; ++i) {
        if (missed_slot_[i] < 0 || missed_ready_[i]) continue;
        const uint64_t src = model_->lut.offset + uint64_t(missed_[i]) * row_bytes_ + off;
        uint8_t *dst = rows_->data() + uint64_t(missed_slot_[i]) * row_bytes_ + off;
        if (!model_->file->read_at(src, dst, len))   // I/O error: the mapping reports it (SIGBUS) or has it
            std::memcpy(dst, model_->file->data() + src, len);
    }
}

void LutStore::finish_layer(int32_t il) {
    uint64_t off, len;
    slice_range(il, &off, &len);
    for (int32_t i = 0; i < n_missed_; ++i) {
        if (missed_slot_[i] >= 0) continue;
        // Widened to the fault-around window (the kernel maps up to 64 KiB of already cached
        // neighbours on each fault; MADV_RANDOM does not stop that), aligned in virtual addresses
        // as the kernel aligns it. Neighbours still in use by this step only fault in again.
        const uint64_t base = reinterpret_cast<uintptr_t>(model_->file->data());
        const uint64_t lo = base + model_->lut.offset + uint64_t(missed_[i]) * row_bytes_ + off, hi = lo + len;
        const uint64_t a = std::max(base, lo / kFaultAround * kFaultAround) - base;
        const uint64_t e = (hi + kFaultAround - 1) / kFaultAround * kFaultAround - base;
        model_->file->advise_release(a, e - a);
    }
}

void LutStore::commit() {
    for (int32_t i = 0; i < n_missed_; ++i)
        if (missed_slot_[i] >= 0) slot_of_[missed_[i]] = missed_slot_[i];
    n_missed_ = 0;
}

}  // namespace mole
