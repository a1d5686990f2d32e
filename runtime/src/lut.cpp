// LUT row gathering: token v's row is bytes [v*row_bytes, (v+1)*row_bytes) of lut.weight, read
// with one contiguous access from the mapping (MADV_RANDOM: no readahead) or from the LRU cache.
#include "lut.h"

#include <algorithm>
#include <cstring>

namespace mole {

Status LutStore::init(const Model &model, uint64_t cache_bytes) {
    model_ = &model;
    const Hparams &hp = model.hp;
    row_elems_ = int64_t(hp.n_layer) * hp.n_expert * hp.n_embd;
    row_bytes_ = hp.n_expert > 0 ? model.lut.row_bytes() : 0;
    capacity_ = 0;
    n_used_ = 0;
    head_ = tail_ = -1;
    if (row_bytes_ == 0 || cache_bytes < row_bytes_) return MOLE_STATUS_OK;
    uint64_t cap = std::min<uint64_t>(cache_bytes / row_bytes_, static_cast<uint64_t>(hp.n_vocab));
    capacity_ = static_cast<int32_t>(cap);
    // Not value-initialized: cache pages are only touched when rows arrive.
    rows_.reset(new uint8_t[cap * row_bytes_]);
    slot_of_.reset(new int32_t[hp.n_vocab]);
    std::fill(slot_of_.get(), slot_of_.get() + hp.n_vocab, -1);
    token_of_.reset(new int32_t[cap]);
    prev_.reset(new int32_t[cap]);
    next_.reset(new int32_t[cap]);
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

void LutStore::gather(const int32_t *uniq, int32_t U, float *out) {
    const uint8_t *lut = model_->lut.data;
    const cpu::Type type = model_->lut.type;
    for (int32_t u = 0; u < U; ++u) {
        const int32_t v = uniq[u];
        float *dst = out + int64_t(u) * row_elems_;
        if (capacity_ == 0) {
            cpu::dequantize_row(type, lut + uint64_t(v) * row_bytes_, dst, row_elems_);
            counters.rows_fetched++;
            counters.bytes_fetched += row_bytes_;
            continue;
        }
        int32_t s = slot_of_[v];
        if (s >= 0) {
            counters.cache_hits++;
            unlink(s);
            touch(s);
        } else {
            if (n_used_ < capacity_) {
                s = n_used_++;
            } else {
                s = tail_;                      // evict the least recently used row
                unlink(s);
                slot_of_[token_of_[s]] = -1;
            }
            std::memcpy(rows_.get() + uint64_t(s) * row_bytes_, lut + uint64_t(v) * row_bytes_, row_bytes_);
            slot_of_[v] = s;
            token_of_[s] = v;
            touch(s);
            counters.rows_fetched++;
            counters.bytes_fetched += row_bytes_;
        }
        cpu::dequantize_row(type, rows_.get() + uint64_t(s) * row_bytes_, dst, row_elems_);
    }
}

}  // namespace mole
