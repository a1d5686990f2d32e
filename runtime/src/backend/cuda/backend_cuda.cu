// The CUDA backend: dense weights uploaded at load in their file types, activations, KV cache and
// LUT slots in VRAM, every op a kernel queued on one stream. Each step's plan goes up in one copy;
// host-side staging (LUT rows read from the file, the mix's row table) comes from a pinned arena
// that lives until the next step, so nothing waits on the GPU inside a step. Every CUDA call goes
// through MOLE_CUDA_TRY: the first failure becomes the sticky status, with file, line, call and
// CUDA's text; nothing aborts.
#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "backend/cuda/copy_engine.cuh"
#include "backend/cuda/ops.cuh"
#include "lut_pipeline.h"
#include "lut_reader.h"
#include "mmap.h"
#include "plan.h"

namespace mole::cuda {

namespace {

constexpr uint64_t kAlign = 256;

uint64_t aligned(uint64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// Records the first CUDA failure: status (OUT_OF_MEMORY for allocations) and its text.
struct Sticky {
    Status status = MOLE_STATUS_OK;
    std::string text;
    bool ok(cudaError_t e, const char *call, const char *file, int line) {
        if (e == cudaSuccess) return true;
        if (status == MOLE_STATUS_OK) {
            status = e == cudaErrorMemoryAllocation ? MOLE_STATUS_OUT_OF_MEMORY : MOLE_STATUS_BACKEND_ERROR;
            const char *base = std::strrchr(file, '/');
            text = std::string(base ? base + 1 : file) + ":" + std::to_string(line) + " " + call + ": " +
                cudaGetErrorString(e);
        }
        cudaGetLastError();   // clear a non-sticky error so later calls report their own
        return false;
    }
    Status report() const { return status == MOLE_STATUS_OK ? status : set_error(status, "%s", text.c_str()); }
    void fail(Status s, const char *why) {
        if (status != MOLE_STATUS_OK) return;
        status = s;
        text = why;
    }
};

#define MOLE_CUDA_TRY(sticky, call) (sticky).ok((call), #call, __FILE__, __LINE__)

std::string device_name(int32_t index) {
    cudaDeviceProp p;
    if (cudaGetDeviceProperties(&p, index) != cudaSuccess) return "?";
    int ro = 0;   // the file mapping could be registered read-only for direct DMA (not used by default)
    if (cudaDeviceGetAttribute(&ro, cudaDevAttrHostRegisterReadOnlySupported, index) != cudaSuccess) cudaGetLastError();
    return std::string(p.name) + ", sm_" + std::to_string(p.major) + std::to_string(p.minor) + ", " +
        human_bytes(uint64_t(p.totalGlobalMem)) + ", host-register-read-only " + (ro ? "yes" : "no");
}

// The weights in VRAM, byte for byte as in the file.
class CudaWeights : public WeightStore {
public:
    int32_t device = 0;
    std::vector<uint8_t *> dev;   // [n weights]
    ~CudaWeights() override {
        cudaSetDevice(device);
        for (uint8_t *p : dev) cudaFree(p);
    }
};

// Bump allocation of one step's temporaries (pinned host or device memory). A step that needs more
// than the arena holds moves on to a larger buffer; the old one is freed at the next reset, when
// the work that read it has finished.
class Arena {
public:
    Arena(bool pinned, Sticky &sticky) : pinned_(pinned), sticky_(sticky) {}
    ~Arena() {
        reset();
        release(base_);
    }
    void *get(uint64_t bytes) {
        bytes = aligned(std::max<uint64_t>(bytes, 1));
        if (used_ + bytes > cap_) {
            if (base_) retired_.push_back(base_);
            cap_ = std::max(aligned(cap_ * 2), aligned(bytes) + (uint64_t(1) << 20));
            base_ = nullptr;
            used_ = 0;
            void *p = nullptr;
            const bool ok = pinned_ ? MOLE_CUDA_TRY(sticky_, cudaMallocHost(&p, cap_))
                                    : MOLE_CUDA_TRY(sticky_, cudaMalloc(&p, cap_));
            if (!ok) {
                cap_ = 0;
                return nullptr;
            }
            base_ = static_cast<uint8_t *>(p);
        }
        void *p = base_ + used_;
        used_ += bytes;
        return p;
    }
    void reset() {   // the stream must be idle
        for (uint8_t *p : retired_) release(p);
        retired_.clear();
        used_ = 0;
    }

private:
    void release(uint8_t *p) {
        if (!p) return;
        if (pinned_)
            cudaFreeHost(p);
        else
            cudaFree(p);
    }
    bool pinned_;
    Sticky &sticky_;
    uint8_t *base_ = nullptr;
    uint64_t cap_ = 0, used_ = 0;
    std::vector<uint8_t *> retired_;
};

class CudaBackend : public Backend {
public:
    CudaBackend(const CudaWeights &w) : w_(w), host_(true, sticky_), dev_(false, sticky_) {
        MOLE_CUDA_TRY(sticky_, cudaSetDevice(w.device));
        MOLE_CUDA_TRY(sticky_, cudaStreamCreateWithFlags(&st_, cudaStreamNonBlocking));
    }
    ~CudaBackend() override {
        cudaSetDevice(w_.device);
        if (st_) cudaStreamSynchronize(st_);
        engine_.reset();   // its copy stream drained, its ring freed
        host_.reset();
        dev_.reset();
        for (void *p : allocs_) cudaFree(p);
        for (void *p : {q8_, partial_, logits_}) cudaFree(p);
        if (st_) cudaStreamDestroy(st_);
    }
    const char *name() const override { return "cuda"; }

    Status alloc(uint64_t bytes, const char *what, void **out) override {
        void *p = nullptr;
        const cudaError_t e = cudaMalloc(&p, std::max<uint64_t>(bytes, 1));
        if (e != cudaSuccess) {
            cudaGetLastError();
            size_t free_b = 0, total_b = 0;
            cudaMemGetInfo(&free_b, &total_b);
            return set_error(e == cudaErrorMemoryAllocation ? MOLE_STATUS_OUT_OF_MEMORY : MOLE_STATUS_BACKEND_ERROR,
                             "cannot allocate %s (%s) in VRAM (%s free of %s): %s", what, human_bytes(bytes).c_str(),
                             human_bytes(free_b).c_str(), human_bytes(total_b).c_str(), cudaGetErrorString(e));
        }
        allocs_.push_back(p);
        *out = p;
        return MOLE_STATUS_OK;
    }
    void upload(void *dst, const void *src, uint64_t bytes) override {
        MOLE_CUDA_TRY(sticky_, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, st_));
    }
    void download(void *dst, const void *src, uint64_t bytes) override {
        MOLE_CUDA_TRY(sticky_, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, st_));
        MOLE_CUDA_TRY(sticky_, cudaStreamSynchronize(st_));
    }
    Status alloc_lut(const LutShape &shape) override {
        slot_bytes_ = shape.row_bytes;
        if (shape.n_slots > 0) {
            void *p = nullptr;
            if (Status s = alloc(uint64_t(shape.n_slots) * shape.row_bytes, "the LUT row cache", &p)) return s;
            slots_ = static_cast<uint8_t *>(p);
        }
        engine_ = std::make_unique<CudaCopyEngine>(st_);
        if (Status s = engine_->status()) return s;
        return pipeline_.init(*engine_, kRing, shape.max_rows, shape.slice_bytes, slots_, shape.row_bytes);
    }
    // The whole LUT when it fits in half the free VRAM (at most 32 GB): no row crosses twice.
    uint64_t default_lut_cache_bytes(uint64_t lut_bytes) const override {
        size_t free_b = 0, total_b = 0;
        if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) {
            cudaGetLastError();
            return uint64_t(64) << 20;
        }
        const uint64_t budget = std::min<uint64_t>(uint64_t(free_b) / 2, uint64_t(32) << 30);
        return lut_bytes <= budget ? lut_bytes : budget;
    }
    LutFeed lut_feed() const override { return LutFeed{true, kRing - 1, true}; }
    LutDeviceCounters lut_counters() const override {
        return LutDeviceCounters{pipeline_.counters.bytes_h2d, pipeline_.counters.host_wait_ms};
    }

    void begin_step(const StepPlan &p) override {
        plan_ = &p;
        drain();   // the last step's temporaries and staging are free
        host_.reset();
        dev_.reset();
        if (engine_) pipeline_.begin_step(p.n_uniq);
        const int32_t S = p.n_rows;
        // row -> sequence, and the attention tiles (up to kAttnQ consecutive rows of one sequence)
        n_tiles_ = 0;
        max_keys_ = 0;
        for (int32_t g = 0; g < p.n_groups; ++g) n_tiles_ += (p.group_len[g] + kAttnQ - 1) / kAttnQ;
        const uint64_t n_ints = uint64_t(S) * 5 + uint64_t(std::max(p.n_out, 0));
        const uint64_t bytes = n_ints * 4 + uint64_t(n_tiles_) * sizeof(AttnTile);
        uint8_t *h = static_cast<uint8_t *>(host_.get(bytes));
        uint8_t *d = static_cast<uint8_t *>(dev_.get(bytes));
        if (!h || !d) return;
        int32_t *hi = reinterpret_cast<int32_t *>(h);
        std::memcpy(hi, p.ids, size_t(S) * 4);
        std::memcpy(hi + S, p.pos, size_t(S) * 4);
        int32_t *row_seq = hi + 2 * S;
        std::memset(hi + 3 * S, 0, size_t(S) * 4);   // uniq_slot (a plan made without distinct ids: 0)
        if (p.n_uniq > 0) std::memcpy(hi + 3 * S, p.uniq_slot, size_t(S) * 4);
        if (p.n_out > 0) std::memcpy(hi + 5 * S, p.out_rows, size_t(p.n_out) * 4);
        AttnTile *tiles = reinterpret_cast<AttnTile *>(h + n_ints * 4);
        int32_t t = 0;
        for (int32_t g = 0; g < p.n_groups; ++g) {
            const int32_t r0 = p.group_start[g], len = p.group_len[g];
            for (int32_t r = r0; r < r0 + len; ++r) row_seq[r] = p.group_seq[g];
            for (int32_t a = 0; a < len; a += kAttnQ) {
                const int32_t n = std::min(kAttnQ, len - a);
                tiles[t++] = AttnTile{r0 + a, n, p.group_seq[g], p.pos[r0 + a + n - 1]};
            }
            max_keys_ = std::max<int64_t>(max_keys_, int64_t(p.pos[r0 + len - 1]) + 1);
        }
        MOLE_CUDA_TRY(sticky_, cudaMemcpyAsync(d, h, bytes, cudaMemcpyHostToDevice, st_));
        const int32_t *di = reinterpret_cast<const int32_t *>(d);
        d_ids_ = di;
        d_pos_ = di + S;
        d_row_seq_ = di + 2 * S;
        d_uniq_slot_ = di + 3 * S;
        d_out_rows_ = di + 5 * S;
        d_tiles_ = reinterpret_cast<const AttnTile *>(d + n_ints * 4);
    }

    void embed(const Weight &e, float *x) override {
        if (!live()) return;
        cuda::embed(e.type, dev(e), e.ne0, d_ids_, plan_->n_rows, x, st_);
        launched("embed");
    }
    void rmsnorm(const float *x, const Weight &w, int64_t S, float eps, float *out) override {
        if (!live()) return;
        cuda::rmsnorm(x, reinterpret_cast<const float *>(dev(w)), S, w.ne0, eps, out, st_);
        launched("rmsnorm");
    }
    void matmul(const MatOut *outs, int n_outs, const float *X, int64_t S) override {
        if (!live() || n_outs <= 0) return;
        const int64_t k = outs[0].w->ne0;
        bool quant = false;
        for (int i = 0; i < n_outs; ++i) quant |= is_quantized(outs[i].w->type);
        Q8Act xq{nullptr, nullptr, nullptr, k};
        if (quant) {   // X quantized once for every quantized weight of the call
            const uint64_t nq = uint64_t(S * k), nb = uint64_t(S * (k / kQK));
            uint8_t *buf = static_cast<uint8_t *>(scratch(q8_, q8_cap_, aligned(nq) + 2 * aligned(nb * 4)));
            if (!buf) return;
            xq = Q8Act{reinterpret_cast<int8_t *>(buf), reinterpret_cast<float *>(buf + aligned(nq)),
                       reinterpret_cast<int32_t *>(buf + aligned(nq) + aligned(nb * 4)), k};
            quantize_q8(X, S, k, xq, st_);
        }
        for (int i = 0; i < n_outs; ++i) {
            const Weight &w = *outs[i].w;
            cuda::matmul(w.type, dev(w), w.ne1, k, X, xq, S, outs[i].Y, st_);
        }
        launched("matmul");
    }
    void rope(float *x, int64_t n_head, int64_t hd, float theta, float freq_scale) override {
        if (!live()) return;
        cuda::rope(x, plan_->n_rows, n_head, hd, d_pos_, theta, freq_scale, st_);
        launched("rope");
    }
    void attention(KvCache &kv, int32_t layer, const float *q, const float *k, const float *v, int64_t n_head,
                   int64_t n_head_kv, int64_t hd, float *out) override {
        if (!live()) return;
        if (!attention_supported(hd)) {
            sticky_.status = MOLE_STATUS_UNSUPPORTED;
            sticky_.text = "the CUDA attention supports head dimensions up to 256, not " + std::to_string(hd);
            return;
        }
        const int64_t S = plan_->n_rows;
        float *kc = static_cast<float *>(kv.k), *vc = static_cast<float *>(kv.v);   // f32: its only kv_types
        kv_append(k, v, S, kv.kv_dim, hd, d_row_seq_, d_pos_, kc, vc, kv.n_layer, layer, kv.n_ctx, st_);
        AttnArgs a{};
        a.q = q;
        a.k_cache = kc;
        a.v_cache = vc;
        a.out = out;
        a.pos = d_pos_;
        a.tiles = d_tiles_;
        a.n_tiles = n_tiles_;
        a.n_split = attention_splits(S, max_keys_);
        a.H = int32_t(n_head);
        a.Hkv = int32_t(n_head_kv);
        a.hd = int32_t(hd);
        a.S = S;
        a.n_layer = kv.n_layer;
        a.layer = layer;
        a.n_ctx = kv.n_ctx;
        const int64_t np = attention_partial_floats(S, n_head, hd, a.n_split);
        a.partial = np > 0 ? static_cast<float *>(scratch(partial_, partial_cap_, uint64_t(np) * 4)) : nullptr;
        if (np > 0 && !a.partial) return;
        cuda::attention(a, st_);
        launched("attention");
    }
    void softmax(float *x, int64_t S, int64_t n) override {
        if (!live()) return;
        cuda::softmax(x, S, n, st_);
        launched("softmax");
    }
    void gelu(float *x, int64_t n) override {
        if (!live()) return;
        cuda::gelu(x, n, st_);
        launched("gelu");
    }
    void add(float *x, const float *y, int64_t n) override {
        if (!live()) return;
        cuda::add(x, y, n, st_);
        launched("add");
    }
    void gather_out_rows(const float *x, int64_t d, float *out) override {
        if (!live()) return;
        gather_rows(x, d_out_rows_, plan_->n_out, d, out, st_);
        launched("gather_out_rows");
    }
    void logits(const Weight &w, const float *X, int64_t n_out, float *host_logits) override {
        if (!live() || n_out <= 0) return;
        const uint64_t bytes = uint64_t(n_out) * uint64_t(w.ne1) * 4;
        float *Y = static_cast<float *>(scratch(logits_, logits_cap_, bytes));
        if (!Y) return;
        const MatOut o{&w, Y};
        matmul(&o, 1, X, n_out);
        MOLE_CUDA_TRY(sticky_, cudaMemcpyAsync(host_logits, Y, bytes, cudaMemcpyDeviceToHost, st_));
    }

    void lut_fill(const LutReader &reader, const LutFill *fills, int32_t n, int32_t layer,
                  const BlockRange &range) override {
        if (!live() || n <= 0) return;
        if (layer >= 0 && engine_) {   // layer-major staging, one copy per layer on the copy stream
            pipeline_.stage(reader, fills, n, layer, range);
            if (Status s = engine_->status()) sticky_.fail(s, last_error());
            return;
        }
        // whole rows (not sent to this backend: its feed is by layer), on the compute stream
        uint8_t *staging = static_cast<uint8_t *>(host_.get(uint64_t(n) * range.bytes));
        if (!staging) return;
        for (int32_t i = 0; i < n; ++i) {
            if (fills[i].slot < 0) continue;
            reader.read(fills[i].src + range.offset, staging + uint64_t(i) * range.bytes, range.bytes);
            MOLE_CUDA_TRY(
                sticky_,
                cudaMemcpyAsync(slots_ + uint64_t(fills[i].slot) * slot_bytes_ + range.offset,
                                staging + uint64_t(i) * range.bytes, range.bytes, cudaMemcpyHostToDevice, st_));
        }
    }
    void lut_mix(int32_t layer, const LutRow *rows, Type type, const BlockRange &slice, const float *gate, int64_t N,
                 int64_t d, float *x) override {
        if (!live()) return;
        if (engine_) pipeline_.before_mix(layer);   // the compute stream waits for this layer's copy
        const int32_t U = std::max(plan_->n_uniq, 1);
        // Where each distinct id's slice is: staged this step, a cache slot, or (rows the feed did
        // not stage) copied here from the mapping
        int32_t n_host = 0;
        for (int32_t u = 0; u < plan_->n_uniq; ++u) n_host += rows[u].slot < 0 && !staged(layer, u);
        const uint64_t table = aligned(uint64_t(U) * sizeof(uint8_t *)), bytes = table + uint64_t(n_host) * slice.bytes;
        uint8_t *h = static_cast<uint8_t *>(host_.get(bytes)), *dv = static_cast<uint8_t *>(dev_.get(bytes));
        if (!h || !dv) return;
        const uint8_t **ptrs = reinterpret_cast<const uint8_t **>(h);
        uint64_t at = table;
        for (int32_t u = 0; u < plan_->n_uniq; ++u) {
            if (const uint8_t *p = staged(layer, u)) {
                ptrs[u] = p;
            } else if (rows[u].slot >= 0) {
                ptrs[u] = slots_ + uint64_t(rows[u].slot) * slot_bytes_ + slice.offset;
            } else {
                std::memcpy(h + at, rows[u].host + slice.offset, slice.bytes);
                ptrs[u] = dv + at;
                at += slice.bytes;
            }
        }
        MOLE_CUDA_TRY(sticky_, cudaMemcpyAsync(dv, h, bytes, cudaMemcpyHostToDevice, st_));
        cuda::lut_mix(type, reinterpret_cast<const uint8_t *const *>(dv), d_uniq_slot_, slice.skip, gate, plan_->n_rows,
                      N, d, x, st_);
        launched("lut_mix");
        if (engine_) pipeline_.after_mix(layer);
    }

    Status synchronize() override {
        drain();
        return status();
    }
    Status status() const override { return sticky_.report(); }

private:
    static constexpr int32_t kRing = 4;   // staging ring slots: 3 layers staged ahead of the mix

    bool live() const { return sticky_.status == MOLE_STATUS_OK; }
    void drain() {   // both streams idle
        MOLE_CUDA_TRY(sticky_, cudaStreamSynchronize(st_));
        if (engine_) MOLE_CUDA_TRY(sticky_, cudaStreamSynchronize(engine_->copy_stream()));
    }
    const uint8_t *staged(int32_t layer, int32_t u) const { return engine_ ? pipeline_.staged(layer, u) : nullptr; }
    void launched(const char *op) {
        const cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess) sticky_.ok(e, op, __FILE__, __LINE__);
    }
    const uint8_t *dev(const Weight &w) const { return w_.dev[size_t(w.id)]; }
    // A buffer that only grows (the stream is drained before a larger one replaces it).
    void *scratch(void *&buf, uint64_t &cap, uint64_t bytes) {
        if (bytes <= cap) return buf;
        MOLE_CUDA_TRY(sticky_, cudaStreamSynchronize(st_));
        if (buf) cudaFree(buf);
        buf = nullptr;
        cap = 0;
        if (!MOLE_CUDA_TRY(sticky_, cudaMalloc(&buf, bytes))) return nullptr;
        cap = bytes;
        return buf;
    }

    const CudaWeights &w_;
    Sticky sticky_;
    cudaStream_t st_ = nullptr;
    std::unique_ptr<CudaCopyEngine> engine_;   // the LUT staging ring's streams and events
    LutPipeline pipeline_;
    std::vector<void *> allocs_;
    Arena host_, dev_;
    uint8_t *slots_ = nullptr;
    uint64_t slot_bytes_ = 0;
    const StepPlan *plan_ = nullptr;
    const int32_t *d_ids_ = nullptr, *d_pos_ = nullptr, *d_row_seq_ = nullptr, *d_uniq_slot_ = nullptr,
                  *d_out_rows_ = nullptr;
    const AttnTile *d_tiles_ = nullptr;
    int32_t n_tiles_ = 0;
    int64_t max_keys_ = 0;
    void *q8_ = nullptr, *partial_ = nullptr, *logits_ = nullptr;
    uint64_t q8_cap_ = 0, partial_cap_ = 0, logits_cap_ = 0;
};

Status probe(int32_t index) {
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return set_error(MOLE_STATUS_UNSUPPORTED,
                         "device CUDA: no usable CUDA driver (cudaGetDeviceCount: %s, error %d)", cudaGetErrorString(e),
                         int(e));
    }
    if (n == 0) return set_error(MOLE_STATUS_UNSUPPORTED, "device CUDA: this machine has no CUDA device");
    if (index < 0 || index >= n)
        return set_error(MOLE_STATUS_INVALID_ARGUMENT, "device_index %d: this machine has %d CUDA device(s)", index, n);
    cudaDeviceProp p;
    if (cudaGetDeviceProperties(&p, index) != cudaSuccess) {
        cudaGetLastError();
        return set_error(MOLE_STATUS_UNSUPPORTED, "device CUDA %d: cannot read its properties", index);
    }
    if (p.major < 8)
        return set_error(MOLE_STATUS_UNSUPPORTED,
                         "device CUDA %d (%s) has compute capability %d.%d; this build needs 8.0 or newer", index,
                         p.name, p.major, p.minor);
    return MOLE_STATUS_OK;
}

Status load_weights(const Weight *const *ws, int32_t n, const MappedFile *file, int32_t device,
                    std::unique_ptr<WeightStore> *out) {
    auto w = std::make_unique<CudaWeights>();
    w->device = device;
    Sticky sticky;
    if (!MOLE_CUDA_TRY(sticky, cudaSetDevice(device))) return sticky.report();
    uint64_t total = 0;
    for (int32_t i = 0; i < n; ++i) total += ws[i]->nbytes;
    size_t free_b = 0, total_b = 0;
    if (MOLE_CUDA_TRY(sticky, cudaMemGetInfo(&free_b, &total_b)) && total > free_b)
        return set_error(MOLE_STATUS_OUT_OF_MEMORY, "device CUDA %d: the dense weights need %s of VRAM, %s are free",
                         device, human_bytes(total).c_str(), human_bytes(free_b).c_str());
    constexpr uint64_t kChunk = uint64_t(16) << 20;   // file bytes read (pread) per host-to-device copy
    void *pinned = nullptr;
    if (file && !MOLE_CUDA_TRY(sticky, cudaMallocHost(&pinned, kChunk))) return sticky.report();
    w->dev.assign(size_t(n), nullptr);
    for (int32_t i = 0; i < n && sticky.status == MOLE_STATUS_OK; ++i) {
        const Weight &x = *ws[i];
        void *d = nullptr;
        if (!MOLE_CUDA_TRY(sticky, cudaMalloc(&d, std::max<uint64_t>(x.nbytes, 1)))) break;
        w->dev[size_t(x.id)] = static_cast<uint8_t *>(d);
        for (uint64_t at = 0; at < x.nbytes && sticky.status == MOLE_STATUS_OK; at += kChunk) {
            const uint64_t len = std::min(kChunk, x.nbytes - at);
            const void *src = x.data + at;
            if (file) {
                if (!file->read_at(x.offset + at, pinned, len)) std::memcpy(pinned, x.data + at, len);
                src = pinned;
            }
            MOLE_CUDA_TRY(sticky, cudaMemcpy(static_cast<uint8_t *>(d) + at, src, len, cudaMemcpyHostToDevice));
        }
    }
    if (pinned) cudaFreeHost(pinned);
    if (sticky.status != MOLE_STATUS_OK) return sticky.report();
    *out = std::move(w);
    return MOLE_STATUS_OK;
}

Status create(const WeightStore &weights, const BackendParams &, std::unique_ptr<Backend> *out) {
    auto be = std::make_unique<CudaBackend>(static_cast<const CudaWeights &>(weights));
    if (Status s = be->status()) return s;
    *out = std::move(be);
    return MOLE_STATUS_OK;
}

}  // namespace

const BackendInfo *backend_info() {
    static const BackendInfo info{MOLE_DEVICE_CUDA, "cuda", probe, load_weights, create, device_name};
    return &info;
}

}  // namespace mole::cuda
