// CudaCopyEngine (copy_engine.cuh) and the scatter kernel.
#include <string>

#include "backend/cuda/copy_engine.cuh"

namespace mole::cuda {

namespace {

constexpr int kThreads = 256;

// Block i copies bytes [0, len) of pairs[2i] to pairs[2i + 1] (a slot's bytes need not be aligned).
MOLE_GLOBAL void scatter_kernel(const uint8_t *const *pairs, uint64_t len) {
    const uint8_t *src = pairs[2 * blockIdx.x];
    uint8_t *dst = const_cast<uint8_t *>(pairs[2 * blockIdx.x + 1]);
    for (uint64_t b = threadIdx.x; b < len; b += kThreads) dst[b] = src[b];
}

}  // namespace

CudaCopyEngine::CudaCopyEngine(cudaStream_t compute) {
    streams_[kCompute] = compute;
    ok(cudaStreamCreateWithFlags(&streams_[kCopy], cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
}

CudaCopyEngine::~CudaCopyEngine() {
    if (streams_[kCopy]) cudaStreamSynchronize(streams_[kCopy]);
    for (cudaEvent_t e : events_) cudaEventDestroy(e);
    for (void *p : pinned_) cudaFreeHost(p);
    for (void *p : device_) cudaFree(p);
    if (streams_[kCopy]) cudaStreamDestroy(streams_[kCopy]);
}

bool CudaCopyEngine::ok(cudaError_t e, const char *call) {
    if (e == cudaSuccess) return true;
    if (status_ == MOLE_STATUS_OK) {
        status_ = e == cudaErrorMemoryAllocation ? MOLE_STATUS_OUT_OF_MEMORY : MOLE_STATUS_BACKEND_ERROR;
        text_ = std::string("copy_engine.cu: ") + call + ": " + cudaGetErrorString(e);
    }
    cudaGetLastError();
    return false;
}

Status CudaCopyEngine::status() const {
    return status_ == MOLE_STATUS_OK ? status_ : set_error(status_, "%s", text_.c_str());
}

void *CudaCopyEngine::alloc_pinned(uint64_t bytes) {
    void *p = nullptr;
    if (!ok(cudaHostAlloc(&p, bytes, cudaHostAllocDefault), "cudaHostAlloc (the LUT staging ring)")) return nullptr;
    pinned_.push_back(p);
    return p;
}

void *CudaCopyEngine::alloc_device(uint64_t bytes) {
    void *p = nullptr;
    if (!ok(cudaMalloc(&p, bytes), "cudaMalloc (the LUT staging ring)")) return nullptr;
    device_.push_back(p);
    return p;
}

Status CudaCopyEngine::make_events(int32_t n) {
    events_.assign(size_t(n), nullptr);
    recorded_.assign(size_t(n), false);
    for (cudaEvent_t &e : events_)
        if (!ok(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreateWithFlags")) return status();
    return MOLE_STATUS_OK;
}

void CudaCopyEngine::copy_h2d(void *dev, const void *pinned, uint64_t bytes, Stream s) {
    ok(cudaMemcpyAsync(dev, pinned, bytes, cudaMemcpyHostToDevice, streams_[s]), "cudaMemcpyAsync (LUT staging)");
}

void CudaCopyEngine::scatter(const uint8_t *const *pairs, int32_t n, uint64_t len, Stream s) {
    if (n <= 0) return;
    MOLE_LAUNCH(scatter_kernel, unsigned(n), kThreads, 0, streams_[s], pairs, len);
    ok(cudaGetLastError(), "scatter_kernel (LUT rows into the cache)");
}

void CudaCopyEngine::record(int32_t event, Stream s) {
    if (ok(cudaEventRecord(events_[size_t(event)], streams_[s]), "cudaEventRecord")) recorded_[size_t(event)] = true;
}

void CudaCopyEngine::wait(Stream s, int32_t event) {
    if (recorded_[size_t(event)])
        ok(cudaStreamWaitEvent(streams_[s], events_[size_t(event)], 0), "cudaStreamWaitEvent");
}

void CudaCopyEngine::host_wait(int32_t event) {
    if (recorded_[size_t(event)]) ok(cudaEventSynchronize(events_[size_t(event)]), "cudaEventSynchronize");
}

}  // namespace mole::cuda
