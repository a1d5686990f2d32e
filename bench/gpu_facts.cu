// The device facts the CUDA LUT path depends on, for bench/gpu_check.sh: host-to-device bandwidth
// from pinned and from pageable memory, 4 KiB to 64 MiB; the latency of one small copy; and whether
// the file mapping could be registered read-only for direct DMA. Prints one JSON object.
//   nvcc -O2 -o gpu_facts bench/gpu_facts.cu && ./gpu_facts
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define TRY(call)                                                                                 \
    do {                                                                                          \
        const cudaError_t e_ = (call);                                                            \
        if (e_ != cudaSuccess) {                                                                  \
            std::fprintf(stderr, "gpu_facts: %s:%d %s: %s\n", __FILE__, __LINE__, #call,            \
                         cudaGetErrorString(e_));                                                 \
            std::exit(1);                                                                         \
        }                                                                                         \
    } while (0)

// Median seconds of `reps` host-to-device copies of `bytes` from src, each timed by events.
static double copy_seconds(void *dst, const void *src, size_t bytes, cudaStream_t st, int reps) {
    cudaEvent_t a, b;
    TRY(cudaEventCreate(&a));
    TRY(cudaEventCreate(&b));
    std::vector<float> ms(static_cast<size_t>(reps));
    for (int r = 0; r < reps; ++r) {
        TRY(cudaEventRecord(a, st));
        TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, st));
        TRY(cudaEventRecord(b, st));
        TRY(cudaEventSynchronize(b));
        TRY(cudaEventElapsedTime(&ms[size_t(r)], a, b));
    }
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    std::sort(ms.begin(), ms.end());
    return double(ms[size_t(reps / 2)]) * 1e-3;
}

int main() {
    cudaDeviceProp p;
    TRY(cudaGetDeviceProperties(&p, 0));
    int ro = 0;
    TRY(cudaDeviceGetAttribute(&ro, cudaDevAttrHostRegisterReadOnlySupported, 0));
    const size_t max_bytes = size_t(64) << 20;
    void *dev = nullptr, *pinned = nullptr;
    TRY(cudaMalloc(&dev, max_bytes));
    TRY(cudaHostAlloc(&pinned, max_bytes, cudaHostAllocDefault));
    std::vector<unsigned char> pageable(max_bytes, 1);
    cudaStream_t st;
    TRY(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    std::printf("{\n \"device\": \"%s\", \"sm\": %d, \"cc\": \"%d.%d\", \"vram_bytes\": %zu,\n", p.name,
                p.multiProcessorCount, p.major, p.minor, p.totalGlobalMem);
    std::printf(" \"host_register_read_only_supported\": %d,\n \"h2d\": [\n", ro);
    for (size_t bytes = 4096; bytes <= max_bytes; bytes *= 4) {
        const int reps = bytes <= (1 << 20) ? 50 : 10;
        copy_seconds(dev, pinned, bytes, st, 3);   // warm-up
        const double tp = copy_seconds(dev, pinned, bytes, st, reps);
        const double tq = copy_seconds(dev, pageable.data(), bytes, st, reps);
        std::printf("  {\"bytes\": %zu, \"pinned_GBps\": %.2f, \"pageable_GBps\": %.2f, \"pinned_us\": %.1f}%s\n", bytes,
                    double(bytes) / tp * 1e-9, double(bytes) / tq * 1e-9, tp * 1e6, bytes * 4 <= max_bytes ? "," : "");
    }
    // one small copy, launch to completion as the host sees it (what a per-layer copy costs)
    std::vector<double> us;
    for (int r = 0; r < 200; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        TRY(cudaMemcpyAsync(dev, pinned, 64, cudaMemcpyHostToDevice, st));
        TRY(cudaStreamSynchronize(st));
        us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(us.begin(), us.end());
    std::printf(" ],\n \"small_copy_roundtrip_us\": %.1f\n}\n", us[us.size() / 2]);
    cudaFree(dev);
    cudaFreeHost(pinned);
    return 0;
}
