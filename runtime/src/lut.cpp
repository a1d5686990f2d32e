// LUT row lookup: token v's row is bytes [v*row_bytes, (v+1)*row_bytes) of lut.weight, used in
// place (cache slot or mapping; MADV_RANDOM: no readahead, WILLNEED over exactly the row's pages).
#include "lut.h"

#include <algorithm>
#include <cstring>
#include <new>

#include "mmap.h"

namespace mole {

Status LutStore::init(const Model &model, uint64_t cache_bytes, int32_t max_uniq) {
    model_ = &model;
    const Hparams &hp = model.hp;
    row_elems_ = int64_t(hp.n_layer) * hp.n_expert * hp.n_embd;
    row_bytes_ = hp.n_expert > 0 ? model.lut.row_bytes() : 0;
    capacity_ = 0;
    n_used_ = 0;
    n_missed_ = 0;
    head_ = tail_ = -1;
    if (row_bytes_ == 0) return MOLE_STATUS_OK;
    const uint64_t cap = cache_bytes < row_bytes_ ? 0 : std::min<uint64_t>(cache_bytes / row_bytes_, uint64_t(hp.n_vocab));
    try {
        missed_.reset(new int32_t[size_t(std::max(1, std::min(max_uniq, hp.n_vocab)))]);
        if (cap == 0) return MOLE_STATUS_OK;
        // Not value-initialized: cache pages are only touched when rows arrive.
        rows_.reset(new uint8_t[cap * row_bytes_]);
        slot_of_.reset(new int32_t[size_t(hp.n_vocab)]);
        token_of_.reset(new int32_t[cap]);
        prev_.reset(new int32_t[cap]);
        next_.reset(new int32_t[cap]);
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
    n_missed_ = 0;
    for (int32_t u = 0; u < U; ++u) {
        const int32_t v = uniq[u];
        const int32_t s = capacity_ > 0 ? slot_of_[v] : -1;
        if (s >= 0) {
            counters.cache_hits++;
            unlink(s);
            touch(s);
            rows[u] = rows_.get() + uint64_t(s) * row_bytes_;
            continue;
        }
        rows[u] = lut + uint64_t(v) * row_bytes_;
        model_->file->advise_willneed(model_->lut.offset + uint64_t(v) * row_bytes_, row_bytes_);
        missed_[n_missed_++] = v;
        counters.rows_fetched++;
        counters.bytes_fetched += row_bytes_;
    }
}

void LutStore::commit() {
    // More misses than slots: only the last `capacity_` would survive, so copy only those. Every
    // missed row's pages are then unmapped (not evicted from the page cache): a prompt's rows
    // would otherwise stay in our RSS next to their cached copies.
    const int32_t first = std::max(0, n_missed_ - capacity_);
    for (int32_t i = 0; i < n_missed_; ++i) {
        const int32_t v = missed_[i];
        const uint64_t off = model_->lut.offset + uint64_t(v) * row_bytes_;
        if (i < first) {
            model_->file->advise_release(off, row_bytes_);
            continue;
        }
        int32_t s;
        if (n_used_ < capacity_) {
            s = n_used_++;
        } else {
            s = tail_;                      // evict the least recently used row
            unlink(s);
            slot_of_[token_of_[s]] = -1;
        }
        std::memcpy(rows_.get() + uint64_t(s) * row_bytes_, model_->lut.data + uint64_t(v) * row_bytes_, row_bytes_);
        slot_of_[v] = s;
        token_of_[s] = v;
        touch(s);
        model_->file->advise_release(off, row_bytes_);
    }
    n_missed_ = 0;
}

}  // namespace mole
