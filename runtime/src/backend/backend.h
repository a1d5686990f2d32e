// The one seam between the model's math (forward.cpp) and a compute device. A backend owns its
// memory, its copy of the weights and its workers; forward.cpp only passes it pointers it handed
// out. The CPU backend is the reference: every other backend is tested op by op against it
// (tests/c/test_backend_ops.cpp). Adding a backend: a folder under backend/, one line in
// registry.cpp, one line in the op test (docs/DEVELOPING.md).
//
// Memory: every float* / void* an op takes is backend memory from alloc() (device memory on a
// GPU), except where an entry says "host". Shapes: S = rows of the step, d = embedding width,
// V = vocabulary, N = experts; activations are f32 row-major.
//
// Ordering: ops run in call order. A backend may run them asynchronously; download() and
// synchronize() wait for everything before them. A device error is sticky: status() reports the
// first one and later ops may do nothing; forward.cpp checks it once per layer.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "error.h"
#include "types.h"

namespace mole {

class MappedFile;
struct StepPlan;
class LutReader;

// How the model reads a weight: a matrix of a matmul, a table read a row at a time (the
// embedding), or a vector (norm weights).
enum class WeightUse : uint8_t { Matrix, Rows, Vector };

// A tensor of the model, in its file type; rows of ne0 elements (ggml order: a matrix [k, n] has
// n rows of k). data points at its file bytes (the mapping, or host memory in tests). id is its
// index among the weights a WeightStore was made from; backends find their own copy by it.
struct Weight {
    const uint8_t *data = nullptr;
    WeightUse use = WeightUse::Matrix;
    Type type = Type::F32;
    int64_t ne0 = 0, ne1 = 1;
    uint64_t offset = 0, nbytes = 0;   // in the file (offset meaningless without one)
    int32_t id = -1;
    uint64_t row_bytes() const { return ne1 ? nbytes / static_cast<uint64_t>(ne1) : 0; }
};

// A backend's copy of a model's weights, made once at load and shared by every context of the
// model (CPU: the q8x16 repacking; a GPU: the weights in device memory).
class WeightStore {
public:
    virtual ~WeightStore() = default;
};

// K and V of every sequence and layer, in backend memory: [n_seq, L, n_head_kv, n_ctx, hd] each
// (head-major: a query reads its head's keys as one contiguous run of positions), of `type`: F32,
// or F16 (IEEE half, half the bytes a decode step reads; the CPU's default).
struct KvCache {
    int32_t n_ctx = 0, n_seq = 0, n_layer = 0;
    int64_t kv_dim = 0;   // n_head_kv * hd
    Type type = Type::F32;
    void *k = nullptr, *v = nullptr;
    size_t elem_bytes() const { return type == Type::F16 ? 2 : 4; }
    // elements before (seq, layer)'s first head; head h's position t is h * n_ctx * hd + t * hd on
    int64_t offset(int32_t seq, int32_t layer) const { return (int64_t(seq) * n_layer + layer) * n_ctx * kv_dim; }
    void *k_at(int32_t seq, int32_t layer) const { return static_cast<char *>(k) + offset(seq, layer) * elem_bytes(); }
    void *v_at(int32_t seq, int32_t layer) const { return static_cast<char *>(v) + offset(seq, layer) * elem_bytes(); }
};

// One output of a grouped matrix product: Y[S, w->ne1] = X[S, w->ne0] W^T.
struct MatOut {
    const Weight *w;
    float *Y;
};

// Where the mix reads distinct id u's LUT row (row_bytes of the LUT's type: [L, N, d]): a slot of
// the backend's LUT slot memory, or, with slot < 0, host bytes (the file mapping).
struct LutRow {
    int32_t slot = -1;
    const uint8_t *host = nullptr;
};

// One missed row of a step, copied into a slot: the LUT row's file bytes from src on. u is its
// distinct-id index in the step; slot -1: a row with no cache slot, staged for this step only
// (sent only to backends whose feed is by_layer).
struct LutFill {
    int32_t slot;
    uint64_t src;   // file offset of the row's first byte
    int32_t u;
};

// The LUT memory of a context, given once at context creation.
struct LutShape {
    int32_t n_slots = 0;        // cache slots (0: no cache)
    uint64_t row_bytes = 0;     // one row, all layers: [L, N, d] of the LUT's type
    int32_t max_rows = 0;       // distinct ids of one step, at most
    uint64_t slice_bytes = 0;   // the largest layer slice (whole blocks)
    int32_t n_layer = 0;
};

// How the LUT path (lut.h) feeds a backend.
struct LutFeed {
    // false: a missed row without a slot is mixed in place from the mapping, and one already in
    // the page cache is filled whole at the step's start (lut_fill with layer -1). true: every
    // miss, with or without a slot, comes one layer slice at a time through lut_fill.
    bool by_layer = false;
    int32_t lookahead = 0;   // layers filled ahead of the one being mixed
    // Keep the tokenizer's most frequent ids (the lowest, in merge order) in half the cache for
    // good, beside LRU for the rest (LutIndex::set_pinned).
    bool pin_frequent = false;
};

// What a backend's LUT path moved, since it was made.
struct LutDeviceCounters {
    uint64_t bytes_to_device = 0;   // LUT bytes copied host-to-device
    double wait_ms = 0;             // host time waiting for those copies
};

struct BackendParams {
    int32_t n_threads = 1;      // CPU workers (counting the caller)
    int32_t device_index = 0;   // GPU ordinal
};

class Backend {
public:
    virtual ~Backend() = default;
    virtual const char *name() const = 0;

    // ---- memory: at context creation, never inside a step -----------------------------------
    // `bytes` of backend memory, 64-byte aligned, freed with the backend. OUT_OF_MEMORY naming
    // `what` when it is not there.
    virtual Status alloc(uint64_t bytes, const char *what, void **out) = 0;
    // host -> backend and backend -> host copies (download waits for the ops before it).
    virtual void upload(void *dst, const void *host_src, uint64_t bytes) = 0;
    virtual void download(void *host_dst, const void *src, uint64_t bytes) = 0;
    // The LUT's memory: shape.n_slots cache slots of row_bytes, stored as in the file, and
    // whatever the backend stages rows through.
    virtual Status alloc_lut(const LutShape &shape) = 0;
    // The row cache a context gets when it asks for the default (lut_cache_mb = -1), for a LUT of
    // lut_bytes (after the weights, KV cache and activations are allocated).
    virtual uint64_t default_lut_cache_bytes(uint64_t lut_bytes) const = 0;
    virtual LutFeed lut_feed() const { return LutFeed{}; }
    virtual LutDeviceCounters lut_counters() const { return LutDeviceCounters{}; }

    // ---- one step --------------------------------------------------------------------------
    // The step's plan (host memory; plan.h): row ids, positions, sequences, distinct ids. The ops
    // below read it; it stays valid and unchanged until the next begin_step.
    virtual void begin_step(const StepPlan &plan) = 0;
    // x[S, d] = E[ids]: rows of tok_embd [d, V] dequantized to f32.
    virtual void embed(const Weight &tok_embd, float *x) = 0;
    // out[S, d] = w * (x * rsqrt(mean(x^2) + eps)), fp32; w an F32 weight [d].
    virtual void rmsnorm(const float *x, const Weight &w, int64_t S, float eps, float *out) = 0;
    // For each output i: Y_i[S, n_i] = X[S, k] W_i^T, all W_i with ne0 = k (X quantized once for
    // the quantized ones). Results do not depend on the grouping or the number of workers.
    virtual void matmul(const MatOut *outs, int n_outs, const float *X, int64_t S) = 0;
    // Rotate-half RoPE in place on x[S, n_head, hd] at the plan's positions: pair (i, i + hd/2)
    // turns by pos * freq_scale * theta^(-2i/hd).
    virtual void rope(float *x, int64_t n_head, int64_t hd, float theta, float freq_scale) = 0;
    // Appends k, v [S, kv_dim] at the plan's positions of each sequence in layer `layer` of kv,
    // then causal attention: out[S, n_head, hd] from q [S, n_head, hd] over each row's sequence,
    // positions 0 .. pos. Head h reads kv head h / (n_head / n_head_kv); scale 1/sqrt(hd).
    virtual void attention(KvCache &kv, int32_t layer, const float *q, const float *k, const float *v, int64_t n_head,
                           int64_t n_head_kv, int64_t hd, float *out) = 0;
    // Row-wise softmax in place, x[S, n].
    virtual void softmax(float *x, int64_t S, int64_t n) = 0;
    // x = 0.5 x (1 + erf(x / sqrt 2)) in place, n elements.
    virtual void gelu(float *x, int64_t n) = 0;
    // x[n] += y[n].
    virtual void add(float *x, const float *y, int64_t n) = 0;
    // out[n_out, d] = x[out_rows]: the rows whose logits the step wants (plan.out_rows).
    virtual void gather_out_rows(const float *x, int64_t d, float *out) = 0;
    // host logits[n_out, V] = X[n_out, d] W^T (the output head; W [d, V]).
    virtual void logits(const Weight &w, const float *X, int64_t n_out, float *host_logits) = 0;

    // ---- LUT -------------------------------------------------------------------------------
    // Layer `layer`'s slice (`range` of each row; layer -1: whole rows) of each fill's row, read
    // through `reader` (file bytes), into the same bytes of its slot, and for layer >= 0 to where
    // that layer's lut_mix reads the row. Layers come in order within a step. Asynchronous where
    // the device can do that: ordered before the layer's lut_mix; the file bytes are not needed
    // after the call returns.
    virtual void lut_fill(const LutReader &reader, const LutFill *fills, int32_t n, int32_t layer,
                          const BlockRange &range) = 0;
    // x[r] += sum_j gate[r, j] slice_j, for every row r of the step: slice = `slice` (layer
    // `layer`'s) of the LUT row of the row's distinct id (rows[plan.uniq_slot[r]], a host array of
    // n_uniq entries; a row filled this step is read where lut_fill put it), N*d values of `type`
    // starting slice.skip elements into it; gate [S, N].
    virtual void lut_mix(int32_t layer, const LutRow *rows, Type type, const BlockRange &slice, const float *gate,
                         int64_t N, int64_t d, float *x) = 0;

    // Waits for every op before it; returns status().
    virtual Status synchronize() = 0;
    // The first device error since the backend was made (sticky), else OK.
    virtual Status status() const = 0;
};

// ---- the registry (registry.cpp): one entry per backend this build has ------------------------
struct BackendInfo {
    int32_t device;     // enum mole_device
    const char *name;   // "cpu", "cuda"
    // OK when the backend can run device `device_index` here; else a status whose error text
    // names why (no driver, no device).
    Status (*probe)(int32_t device_index);
    // The backend's copy of weights[0..n) (each with id = its index). `file` (may be null: the
    // weights' data are plain host memory) lets a backend read them without mapping the pages.
    Status (*load_weights)(const Weight *const *weights, int32_t n, const MappedFile *file, int32_t device_index,
                           std::unique_ptr<WeightStore> *out);
    // A backend for one context over `weights` (which must outlive it).
    Status (*create)(const WeightStore &weights, const BackendParams &params, std::unique_ptr<Backend> *out);
    // What device `device_index` is, for mole_system_info ("NVIDIA H200, sm_90, 150.1 GB"); after a
    // successful probe.
    std::string (*describe)(int32_t device_index);
    // The KV cache element types it keeps (bit 1 << Type) and the one a context gets by default.
    uint32_t kv_types = 1u << uint32_t(Type::F32);
    Type kv_default = Type::F32;
};

// The backend of a device (enum mole_device), or null when this build has none.
const BackendInfo *find_backend(int32_t device);
// Every backend of this build; *n = how many.
const BackendInfo *const *all_backends(int32_t *n);

}  // namespace mole
