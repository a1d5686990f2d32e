// LutPipeline: the staging ring of lut_pipeline.h.
#include "lut_pipeline.h"

#include <algorithm>
#include <chrono>
#include <cstring>

namespace mole {

namespace {
double now_ms() {
    using namespace std::chrono;
    return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}
uint64_t padded(uint64_t n) { return (n + LutPipeline::kPad - 1) / LutPipeline::kPad * LutPipeline::kPad; }
}  // namespace

Status LutPipeline::init(CopyEngine &engine, int32_t ring, int32_t max_rows, uint64_t slice_bytes, uint8_t *slots,
                         uint64_t row_bytes) {
    if (ring < 3)
        return set_error(MOLE_STATUS_INTERNAL_ERROR, "the LUT staging ring needs at least 3 slots, not %d", ring);
    engine_ = &engine;
    ring_ = ring;
    max_rows_ = std::max(1, max_rows);
    seg_cap_ = padded(slice_bytes);
    slots_ = slots;
    row_bytes_ = row_bytes;
    counters = LutPipelineCounters{};
    const uint64_t bytes = uint64_t(max_rows_) * seg_cap_ + 2 * uint64_t(max_rows_) * sizeof(uint8_t *);
    if (Status s = engine.make_events(2 * ring)) return s;
    ring_slots_.assign(size_t(ring), Slot{});
    for (Slot &s : ring_slots_) {
        s.host = static_cast<uint8_t *>(engine.alloc_pinned(bytes));
        s.dev = static_cast<uint8_t *>(engine.alloc_device(bytes));
        if (!s.host || !s.dev) {
            if (Status st = engine.status()) return st;
            return set_error(MOLE_STATUS_OUT_OF_MEMORY, "cannot allocate the LUT staging ring (%d x %s)", ring,
                             human_bytes(bytes).c_str());
        }
    }
    seg_of_.assign(size_t(ring) * size_t(max_rows_), -1);
    staged_u_.assign(size_t(ring) * size_t(max_rows_), 0);
    n_staged_.assign(size_t(ring), 0);
    seg_bytes_.assign(size_t(ring), 0);
    return MOLE_STATUS_OK;
}

void LutPipeline::begin_step(int32_t) {
    for (int32_t r = 0; r < ring_; ++r) {
        for (int32_t i = 0; i < n_staged_[r]; ++i)
            seg_of_[size_t(r) * max_rows_ + staged_u_[size_t(r) * max_rows_ + i]] = -1;
        n_staged_[r] = 0;
        ring_slots_[size_t(r)].layer = -1;
    }
}

void LutPipeline::stage(const LutReader &reader, const LutFill *fills, int32_t n, int32_t layer,
                        const BlockRange &range) {
    if (n <= 0 || layer < 0) return;
    n = std::min(n, max_rows_);
    const int32_t r = layer % ring_;
    Slot &slot = ring_slots_[size_t(r)];
    if (slot.used) {   // the pinned half is read by the copy queued the last time: wait for it
        const double t0 = now_ms();
        engine_->host_wait(ev_h2d(r));
        counters.host_wait_ms += now_ms() - t0;
    }
    for (int32_t i = 0; i < n_staged_[r]; ++i)
        seg_of_[size_t(r) * max_rows_ + staged_u_[size_t(r) * max_rows_ + i]] = -1;
    const uint64_t seg = padded(range.bytes);
    // the segments, then the scatter's pointer pairs right after them: one copy carries both
    const uint64_t data = uint64_t(n) * seg;
    uint8_t **pairs = reinterpret_cast<uint8_t **>(slot.host + data);
    int32_t n_pairs = 0;
    for (int32_t i = 0; i < n; ++i) {
        uint8_t *dst = slot.host + uint64_t(i) * seg;
        reader.read_auto(fills[i].src + range.offset, dst, range.bytes);
        if (seg > range.bytes) std::memset(dst + range.bytes, 0, seg - range.bytes);
        seg_of_[size_t(r) * max_rows_ + fills[i].u] = i;
        staged_u_[size_t(r) * max_rows_ + i] = fills[i].u;
        if (fills[i].slot >= 0) {   // into the cache too
            pairs[2 * n_pairs] = slot.dev + uint64_t(i) * seg;
            pairs[2 * n_pairs + 1] = slots_ + uint64_t(fills[i].slot) * row_bytes_ + range.offset;
            ++n_pairs;
        }
    }
    n_staged_[r] = n;
    seg_bytes_[r] = seg;
    slot.layer = layer;
    if (slot.used) engine_->wait(CopyEngine::kCopy, ev_mix(r));   // the device half is read by that mix
    engine_->copy_h2d(slot.dev, slot.host, data + 2 * uint64_t(n_pairs) * sizeof(uint8_t *), CopyEngine::kCopy);
    engine_->record(ev_h2d(r), CopyEngine::kCopy);
    if (n_pairs > 0)
        engine_->scatter(reinterpret_cast<const uint8_t *const *>(slot.dev + data), n_pairs, range.bytes,
                         CopyEngine::kCopy);
    slot.used = true;
    counters.rows_staged += uint64_t(n);
    counters.bytes_h2d += uint64_t(n) * range.bytes;
}

void LutPipeline::before_mix(int32_t layer) {
    const int32_t r = layer % ring_;
    if (ring_slots_[size_t(r)].layer == layer) engine_->wait(CopyEngine::kCompute, ev_h2d(r));
}

const uint8_t *LutPipeline::staged(int32_t layer, int32_t u) const {
    const int32_t r = layer % ring_;
    const Slot &slot = ring_slots_[size_t(r)];
    if (slot.layer != layer || u < 0 || u >= max_rows_) return nullptr;
    const int32_t k = seg_of_[size_t(r) * max_rows_ + u];
    return k < 0 ? nullptr : slot.dev + uint64_t(k) * seg_bytes_[r];
}

void LutPipeline::after_mix(int32_t layer) {
    const int32_t r = layer % ring_;
    if (ring_slots_[size_t(r)].layer == layer) engine_->record(ev_mix(r), CopyEngine::kCompute);
}

}  // namespace mole
