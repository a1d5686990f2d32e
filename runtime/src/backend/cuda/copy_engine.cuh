// The CUDA side of the LUT staging pipeline (lut_pipeline.h): a compute and a non-blocking copy
// stream, pinned ring buffers from cudaHostAlloc, events without timing, and the scatter kernel
// that copies staged row segments into their cache slots.
#pragma once

#include <vector>

#include "backend/cuda/common.cuh"
#include "lut_pipeline.h"

namespace mole::cuda {

class CudaCopyEngine : public CopyEngine {
public:
    // compute: the backend's stream; the copy stream is made here. Errors go to status().
    explicit CudaCopyEngine(cudaStream_t compute);
    ~CudaCopyEngine() override;
    void *alloc_pinned(uint64_t bytes) override;
    void *alloc_device(uint64_t bytes) override;
    Status make_events(int32_t n) override;
    void copy_h2d(void *dev, const void *pinned, uint64_t bytes, Stream s) override;
    void scatter(const uint8_t *const *pairs, int32_t n, uint64_t len, Stream s) override;
    void record(int32_t event, Stream s) override;
    void wait(Stream s, int32_t event) override;
    void host_wait(int32_t event) override;
    Status status() const override;
    cudaStream_t copy_stream() const { return streams_[kCopy]; }

private:
    bool ok(cudaError_t e, const char *call);
    cudaStream_t streams_[2] = {nullptr, nullptr};
    std::vector<cudaEvent_t> events_;
    std::vector<bool> recorded_;
    std::vector<void *> pinned_, device_;
    Status status_ = MOLE_STATUS_OK;
    std::string text_;
};

}  // namespace mole::cuda
