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
    L_ = hp.n_layer;
    feed_ = be.lut_feed();
    reader_.init(*model.file, model.lut.offset, rb);
    const int32_t cap = int32_t(cache_bytes < rb ? 0 : std::min<uint64_t>(cache_bytes / rb, uint64_t(hp.n_vocab)));
    const int32_t U = std::max(1, std::min(max_uniq, hp.n_vocab));
    if (Status s = index_.init(hp.n_vocab, cap, U, rb)) return s;
    if (feed_.pin_frequent) index_.set_pinned(cap / 2);
    LutShape shape;
    shape.n_slots = cap;
    shape.row_bytes = rb;
    shape.max_rows = U;
    shape.n_layer = L_;
    for (int32_t il = 0; il < L_; ++il)
        shape.slice_bytes = std::max(shape.slice_bytes, lut_layer_slice(type_, il, N_, d_).bytes);
    if (Status s = be.alloc_lut(shape)) return s;
    try {
        slots_.reset(new int32_t[size_t(U)]);
        rows_.reset(new LutRow[size_t(U)]);
        pending_.reset(new LutFill[size_t(U)]);
        whole_.reset(new LutFill[size_t(U)]);
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
    int32_t n_whole = 0;
    next_layer_ = 0;
    for (int32_t i = 0; i < index_.n_misses(); ++i) {
        const LutMiss &m = index_.misses()[i];
        const uint64_t src = reader_.row_offset(m.token);
        const LutFill fill{m.slot, src, m.u};
        if (m.slot < 0) rows_[m.u].host = reader_.mapped(src);
        if (feed_.by_layer) {   // every miss one slice at a time (its reads start now)
            reader_.willneed(src, rb);
            pending_[n_pending_++] = fill;
            continue;
        }
        if (m.slot < 0) {   // no slot: the mix reads the mapping in place
            reader_.willneed(src, rb);
            inplace_[n_inplace_++] = src;
            continue;
        }
        if (reader_.resident(src, rb)) {   // in the page cache already: read whole now, not one slice per layer
            whole_[n_whole++] = fill;
            continue;
        }
        reader_.willneed(src, rb);
        pending_[n_pending_++] = fill;
    }
    if (n_whole > 0)
        be_->lut_fill(reader_, whole_.get(), n_whole, -1, BlockRange{0, rb, 0});   // one call: split over threads
    for (int32_t il = 0; il < std::min(feed_.lookahead, L_); ++il) fill_layer(il);
}

void LutStore::fill_layer(int32_t il) {
    if (n_pending_ > 0) be_->lut_fill(reader_, pending_.get(), n_pending_, il, lut_layer_slice(type_, il, N_, d_));
    next_layer_ = il + 1;
}

void LutStore::fetch_layer(int32_t il) {
    while (next_layer_ <= std::min(il + feed_.lookahead, L_ - 1)) fill_layer(next_layer_);
}

void LutStore::finish_layer(int32_t il) {
    if (n_inplace_ == 0) return;
    const BlockRange r = lut_layer_slice(type_, il, N_, d_);
    for (int32_t i = 0; i < n_inplace_; ++i) reader_.release(inplace_[i] + r.offset, r.bytes);
}

}  // namespace mole
