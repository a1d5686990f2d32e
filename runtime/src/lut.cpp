// LutStore: a step's LUT rows from the index, the reader and the backend's slots (lut.h).
#include "lut.h"

#include <algorithm>
#include <new>

#include "model.h"

namespace mole {

Status LutStore::init(const Model &model, Backend &be, uint64_t cache_bytes, int32_t max_uniq) {
    const Hparams &hp = model.hp;
    be_ = &be;
    n_pending_ = n_inplace_ = 0;
    if (hp.n_expert == 0) return MOLE_STATUS_OK;
    const uint64_t rb = model.lut.row_bytes();
    type_ = model.lut.type;
    N_ = hp.n_expert;
    d_ = hp.n_embd;
    reader_.init(*model.file, model.lut.offset, rb);
    const int32_t cap = int32_t(cache_bytes < rb ? 0 : std::min<uint64_t>(cache_bytes / rb, uint64_t(hp.n_vocab)));
    const int32_t U = std::max(1, std::min(max_uniq, hp.n_vocab));
    if (Status s = index_.init(hp.n_vocab, cap, U, rb)) return s;
    if (cap > 0)
        if (Status s = be.alloc_lut_slots(cap, rb)) return s;
    try {
        slots_.reset(new int32_t[size_t(U)]);
        rows_.reset(new LutRow[size_t(U)]);
        pending_.reset(new LutFill[size_t(U)]);
        inplace_.reset(new uint64_t[size_t(U)]);
    } catch (const std::bad_alloc &) {
        return set_error(MOLE_STATUS_OUT_OF_MEMORY, "cannot allocate the LUT step tables");
    }
    return MOLE_STATUS_OK;
}

void LutStore::prepare(const StepPlan &plan) {
    index_.prepare(plan.uniq, plan.n_uniq, slots_.get());
    const uint64_t rb = reader_.row_bytes();
    for (int32_t u = 0; u < plan.n_uniq; ++u) rows_[u] = LutRow{slots_[u], nullptr};
    n_pending_ = n_inplace_ = 0;
    for (int32_t i = 0; i < index_.n_misses(); ++i) {
        const LutMiss &m = index_.misses()[i];
        const uint64_t src = reader_.row_offset(m.token);
        if (m.slot < 0) {   // no slot: the mix reads the mapping in place
            rows_[m.u].host = reader_.mapped(src);
            reader_.willneed(src, rb);
            inplace_[n_inplace_++] = src;
            continue;
        }
        const LutFill fill{m.slot, src};
        if (reader_.resident(src, rb)) {   // in the page cache already: one read now, not one per layer
            be_->lut_fill(reader_, &fill, 1, 0, rb);
            continue;
        }
        reader_.willneed(src, rb);
        pending_[n_pending_++] = fill;
    }
}

void LutStore::fetch_layer(int32_t il) {
    if (n_pending_ == 0) return;
    const BlockRange r = lut_layer_slice(type_, il, N_, d_);
    be_->lut_fill(reader_, pending_.get(), n_pending_, r.offset, r.bytes);
}

void LutStore::finish_layer(int32_t il) {
    if (n_inplace_ == 0) return;
    const BlockRange r = lut_layer_slice(type_, il, N_, d_);
    for (int32_t i = 0; i < n_inplace_; ++i) reader_.release(inplace_[i] + r.offset, r.bytes);
}

}  // namespace mole
