// LUT rows of a step through staging to a device, backend-free: the host logic of a GPU's LUT path,
// written against a small device interface (CopyEngine: async copies, events, stream waits) that the
// CUDA backend implements, and that a fake asynchronous device implements in the tests
// (tests/c/test_lut_pipeline.cpp, under ThreadSanitizer too).
//
// Per layer l of a step, stage():
//   1. ring slot r = l % R; before its pinned half is rewritten, the host waits for the copy that
//      last read it (event h2d[r]);
//   2. the host reads each missed row's layer-l segment (LutReader: pread when the pages are cold,
//      a copy from the mapping when they are resident) into it, layer-major: the segments of all the
//      step's missed rows one after another, each padded to 16 bytes;
//   3. on the copy stream: wait for the mix that last read the slot's device half (event mix[r]),
//      one host-to-device copy of the slice, event h2d[r], then a device-to-device scatter of the
//      segments of rows that have a cache slot into their slots.
// before_mix(l) makes the compute stream wait for h2d[l % R]; the mix reads each row of the step
// either from its cache slot (a hit) or from the staging slice (staged()); after_mix(l) records
// mix[l % R]. The ring has R >= 3 slots, so up to R - 1 layers are staged ahead of the mix.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "backend/backend.h"
#include "error.h"
#include "lut_reader.h"

namespace mole {

class CopyEngine {
public:
    enum Stream : int { kCompute = 0, kCopy = 1 };
    virtual ~CopyEngine() = default;
    // Memory, at creation (null on failure; status() says why).
    virtual void *alloc_pinned(uint64_t bytes) = 0;
    virtual void *alloc_device(uint64_t bytes) = 0;
    virtual Status make_events(int32_t n) = 0;   // events 0 .. n-1
    // Queued on `s`, in order with the stream's other work.
    virtual void copy_h2d(void *dev, const void *pinned, uint64_t bytes, Stream s) = 0;
    // For i < n: bytes [0, len) of src[i] to dst[i]; pairs (device memory) = src0, dst0, src1, ...
    virtual void scatter(const uint8_t *const *pairs, int32_t n, uint64_t len, Stream s) = 0;
    virtual void record(int32_t event, Stream s) = 0;
    virtual void wait(Stream s, int32_t event) = 0;   // s waits for the event's last record
    // The host waits for the event's last record (returns at once if it was never recorded).
    virtual void host_wait(int32_t event) = 0;
    virtual Status status() const = 0;
};

struct LutPipelineCounters {
    uint64_t rows_staged = 0;     // row segments copied host-to-device (a row counts once per layer)
    uint64_t bytes_h2d = 0;       // bytes of them (unpadded)
    double host_wait_ms = 0;      // host time waiting for a ring slot's copy to finish
};

class LutPipeline {
public:
    static constexpr uint64_t kPad = 16;   // staging segments are padded to 16 bytes

    // A ring of `ring` (>= 3) slots, each holding one layer slice of up to max_rows rows of up to
    // slice_bytes; slots (device memory, row_bytes apart) are the cache the scatter writes into.
    Status init(CopyEngine &engine, int32_t ring, int32_t max_rows, uint64_t slice_bytes, uint8_t *slots,
                uint64_t row_bytes);
    // A new step: nothing of the last one is read again (the engine's streams must be idle).
    void begin_step(int32_t n_uniq);
    // Layer `layer`'s slice (`range` of each row) of the fills, into staging and the fills' slots.
    void stage(const LutReader &reader, const LutFill *fills, int32_t n, int32_t layer, const BlockRange &range);
    // The compute stream waits for layer's staged slice.
    void before_mix(int32_t layer);
    // Device address of distinct id u's layer slice in staging this step, or null if not staged.
    const uint8_t *staged(int32_t layer, int32_t u) const;
    // The mix of `layer` is queued on the compute stream: its ring slot may be rewritten after it.
    void after_mix(int32_t layer);
    int32_t ring() const { return ring_; }
    LutPipelineCounters counters;

private:
    struct Slot {
        uint8_t *host = nullptr, *dev = nullptr;   // [max_rows * padded slice + 2 * max_rows pointers]
        int32_t layer = -1;                        // the layer staged in it now
        bool used = false;
    };
    int32_t ev_h2d(int32_t r) const { return 2 * r; }
    int32_t ev_mix(int32_t r) const { return 2 * r + 1; }

    CopyEngine *engine_ = nullptr;
    int32_t ring_ = 0, max_rows_ = 0;
    uint64_t seg_cap_ = 0, row_bytes_ = 0;
    uint8_t *slots_ = nullptr;
    std::vector<Slot> ring_slots_;
    std::vector<int32_t> seg_of_;   // [ring * max_rows] distinct id u -> its segment in the slot, -1
    std::vector<int32_t> staged_u_; // [ring * max_rows] the ids staged in each slot (to clear them)
    std::vector<int32_t> n_staged_; // [ring]
    std::vector<uint64_t> seg_bytes_;   // [ring] padded segment size of the slice in the slot
};

}  // namespace mole
