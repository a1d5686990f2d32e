// The CPU backend: the reference implementation of backend.h over the CPU kernels (ops.h). It owns
// the thread pool, the q8x16 repacking of Q8_0 matrices (made once per model on AVX2, AVX-VNNI and
// AVX-512 machines; MOLE_CPU_REPACK=0 keeps the file's rows) and its memory; every op runs at once.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <new>
#include <system_error>
#include <utility>
#include <vector>

#include "backend/backend.h"
#include "backend/cpu/kernels.h"
#include "backend/cpu/ops.h"
#include "backend/cpu/repack.h"
#include "backend/cpu/threadpool.h"
#include "lut_reader.h"
#include "mmap.h"
#include "plan.h"

namespace mole::cpu {

namespace {

// The weights as the CPU kernels read them: in place (the file's bytes), or q8x16 copies.
class CpuWeights : public WeightStore {
public:
    const MappedFile *file = nullptr;            // null: weights are plain host memory
    std::vector<const uint8_t *> packed;         // [n weights] q8x16 copy, or null
    std::unique_ptr<LargeBuffer> packed_store;   // the copies, one after another
};

bool repack_wanted() {
    const char *e = std::getenv("MOLE_CPU_REPACK");
    if (e && (!std::strcmp(e, "0") || !std::strcmp(e, "off") || !std::strcmp(e, "false"))) return false;
    return active_isa() != Isa::Portable;
}

// Copies every Q8_0 matrix into the q8x16 layout, reading the file with pread a chunk of rows at
// a time (the mapping's pages are never touched, so they do not count in RSS).
Status repack(const Weight *const *ws, int32_t n, CpuWeights *out) {
    auto repacked = [&](const Weight &w) { return w.use == WeightUse::Matrix && w.type == Type::Q8_0; };
    uint64_t total = 0;
    for (int32_t i = 0; i < n; ++i)
        if (repacked(*ws[i])) total += uint64_t(q8x16_bytes(ws[i]->ne1, ws[i]->ne0));
    if (total == 0) return MOLE_STATUS_OK;
    if (Status s = LargeBuffer::allocate(total, true, "the repacked weights (MOLE_CPU_REPACK=0 reads them in place)",
                                         &out->packed_store))
        return s;
    uint8_t *dst = out->packed_store->data();   // zero-filled: the last group's padding rows stay 0
    std::vector<uint8_t> chunk;
    for (int32_t i = 0; i < n; ++i) {
        const Weight &w = *ws[i];
        if (!repacked(w)) continue;
        const int64_t rb = int64_t(w.row_bytes()), rows_per_chunk = std::max<int64_t>(16, (1 << 20) / rb / 16 * 16);
        chunk.resize(size_t(rows_per_chunk * rb));
        for (int64_t r = 0; r < w.ne1; r += rows_per_chunk) {
            const int64_t r1 = std::min(w.ne1, r + rows_per_chunk);
            const uint64_t off = uint64_t(r * rb), len = uint64_t((r1 - r) * rb);
            if (!out->file)
                std::memcpy(chunk.data(), w.data + off, len);
            else if (!out->file->read_at(w.offset + off, chunk.data(), len))
                return set_error(MOLE_STATUS_IO_ERROR, "%s: cannot read the weights at offset %llu",
                                 out->file->path().c_str(), static_cast<unsigned long long>(w.offset + off));
            pack_q8x16(reinterpret_cast<const BlockQ8_0 *>(chunk.data()), r, r1, w.ne0, dst);
        }
        out->packed[size_t(w.id)] = dst;
        dst += q8x16_bytes(w.ne1, w.ne0);
    }
    return MOLE_STATUS_OK;
}

class CpuBackend : public Backend {
public:
    CpuBackend(const CpuWeights &w, int n_threads) : w_(w), pool_(n_threads) {}
    const char *name() const override { return "cpu"; }

    Status alloc(uint64_t bytes, const char *what, void **out) override {
        void *p = ::operator new(size_t(std::max<uint64_t>(bytes, 1)), std::align_val_t(64), std::nothrow);
        if (!p)
            return set_error(MOLE_STATUS_OUT_OF_MEMORY, "cannot allocate %s (%s)", what, human_bytes(bytes).c_str());
        buffers_.emplace_back(p);
        *out = p;
        return MOLE_STATUS_OK;
    }
    void upload(void *dst, const void *src, uint64_t bytes) override { std::memcpy(dst, src, bytes); }
    void download(void *dst, const void *src, uint64_t bytes) override { std::memcpy(dst, src, bytes); }

    Status alloc_lut(const LutShape &shape) override {
        // Anonymous memory, touched only as rows arrive (no huge pages: their faults may stall a
        // decode step on memory compaction).
        slot_bytes_ = shape.row_bytes;
        populated_ = 0;
        if (shape.n_slots == 0) return MOLE_STATUS_OK;
        return LargeBuffer::allocate(uint64_t(shape.n_slots) * shape.row_bytes, false, "the LUT row cache", &slots_);
    }
    uint64_t default_lut_cache_bytes(uint64_t) const override { return uint64_t(64) << 20; }

    void begin_step(const StepPlan &plan) override {
        plan_ = &plan;
        rope_valid_ = false;
    }

    // Rows are read with pread, like LUT rows: a fault on the mapping maps its page-cache
    // neighbours too (fault-around, large folios), so a 512-token prompt touching 512 random
    // rows of a 41 MB embedding counted 11-26 MB in RSS.
    void embed(const Weight &e, float *x) override {
        const int64_t d = e.ne0;
        const uint64_t rb = e.row_bytes();
        if (embd_raw_.size() < rb) embd_raw_.resize(size_t(rb));
        for (int32_t r = 0; r < plan_->n_rows; ++r) {
            const uint64_t off = uint64_t(plan_->ids[r]) * rb;
            const uint8_t *row = e.data + off;
            if (w_.file && w_.file->read_at(e.offset + off, embd_raw_.data(), rb)) row = embd_raw_.data();
            dequantize_row(e.type, row, x + r * d, d);   // (an I/O error: the mapping has it or SIGBUS)
        }
    }

    void rmsnorm(const float *x, const Weight &w, int64_t S, float eps, float *out) override {
        const int64_t d = w.ne0;
        over_rows(S, [&](int64_t r0, int64_t r1) {
            cpu::rmsnorm(x + r0 * d, reinterpret_cast<const float *>(w.data), r1 - r0, d, eps, out + r0 * d);
        });
    }

    void matmul(const MatOut *outs, int n_outs, const float *X, int64_t S) override {
        constexpr int kMax = 8;
        MatmulOut mo[kMax];
        for (int i0 = 0; i0 < n_outs; i0 += kMax) {
            const int n = std::min(kMax, n_outs - i0);
            for (int i = 0; i < n; ++i) mo[i] = out_of(outs[i0 + i]);
            matmul_multi(mo, n, outs[i0].w->ne0, X, S, &pool_);
        }
    }

    // The step's angles are computed at its first rope (layer 0's Q) and serve every layer's Q and K.
    void rope(float *x, int64_t n_head, int64_t hd, float theta, float freq_scale) override {
        const int64_t S = plan_->n_rows;
        if (!rope_valid_ || rope_hd_ != hd || rope_theta_ != theta || rope_scale_ != freq_scale) {
            if (int64_t(rope_cs_.size()) < S * hd) rope_cs_.resize(size_t(S * hd));
            over_rows(S, [&](int64_t r0, int64_t r1) {
                cpu::rope_table(plan_->pos + r0, r1 - r0, hd, theta, freq_scale, rope_cs_.data() + r0 * hd);
            });
            rope_valid_ = true;
            rope_hd_ = hd;
            rope_theta_ = theta;
            rope_scale_ = freq_scale;
        }
        over_rows(S, [&](int64_t r0, int64_t r1) { cpu::rope_apply(x, r0, r1, n_head, hd, rope_cs_.data()); });
    }

    void attention(KvCache &kv, int32_t layer, const float *q, const float *k, const float *v, int64_t n_head,
                   int64_t n_head_kv, int64_t hd, float *out) override {
        const StepPlan &p = *plan_;
        const int64_t kvd = kv.kv_dim, qd = n_head * hd;
        attn_seqs_.resize(size_t(p.n_groups));
        for (int32_t g = 0; g < p.n_groups; ++g) {   // each group: one sequence's rows of the step
            const int32_t r0 = p.group_start[g], len = p.group_len[g], pos0 = p.pos[r0];
            const void *kc = kv.k_at(p.group_seq[g], layer), *vc = kv.v_at(p.group_seq[g], layer);
            attn_seqs_[size_t(g)] = cpu::AttnSeq{q + int64_t(r0) * qd, kc, vc, out + int64_t(r0) * qd, len, pos0};
        }
        // The new K and V into the cache: one task per (group, K or V, kv head) for a prompt's rows,
        // inline for a decode step's few.
        auto store = [&](int64_t t, int) {
            const int64_t g = t / (2 * n_head_kv), j = t % n_head_kv;
            const bool is_v = t / n_head_kv % 2;
            const int32_t r0 = p.group_start[g];
            cpu::kv_store_heads((is_v ? v : k) + int64_t(r0) * kvd, p.group_len[g], n_head_kv, hd, kv.type,
                                is_v ? kv.v_at(p.group_seq[g], layer) : kv.k_at(p.group_seq[g], layer), kv.n_ctx,
                                p.pos[r0], j, j + 1);
        };
        const int64_t n_store = int64_t(p.n_groups) * 2 * n_head_kv;
        if (pool_.size() > 1 && p.n_rows >= kWideRows)
            pool_.parallel_for(n_store, std::ref(store));
        else
            for (int64_t t = 0; t < n_store; ++t) store(t, 0);
        // head-major cache: positions hd apart, heads n_ctx * hd
        cpu::attention_seqs(attn_seqs_.data(), p.n_groups, kv.type, hd, int64_t(kv.n_ctx) * hd, n_head, n_head_kv, hd,
                            &pool_);
    }

    void softmax(float *x, int64_t S, int64_t n) override { cpu::softmax(x, S, n); }
    void gelu(float *x, int64_t n) override { cpu::gelu(x, n, &pool_); }
    void add(float *x, const float *y, int64_t n) override {
        split(n, kWideElems, kElemChunk, [&](int64_t i0, int64_t i1) {
            for (int64_t i = i0; i < i1; ++i) x[i] += y[i];
        });
    }

    void gather_out_rows(const float *x, int64_t d, float *out) override {
        for (int32_t i = 0; i < plan_->n_out; ++i)
            std::memcpy(out + int64_t(i) * d, x + int64_t(plan_->out_rows[i]) * d, sizeof(float) * size_t(d));
    }

    void logits(const Weight &w, const float *X, int64_t n_out, float *host_logits) override {
        const MatmulOut mo = out_of(MatOut{&w, host_logits});
        matmul_multi(&mo, 1, w.ne0, X, n_out, &pool_);
    }

    void lut_fill(const LutReader &reader, const LutFill *fills, int32_t n, int32_t, const BlockRange &range) override {
        const uint64_t off = range.offset, len = range.bytes;
        int32_t top = -1;   // fresh slots: pages faulted in with one call, not one trap per page
        for (int32_t i = 0; i < n; ++i) top = std::max(top, fills[i].slot);
        if (top >= populated_) {
            slots_->populate(uint64_t(populated_) * slot_bytes_, uint64_t(top + 1 - populated_) * slot_bytes_);
            populated_ = top + 1;
        }
        auto read = [&](int64_t i, int) {
            const int32_t s = fills[i].slot;   // (< 0 never sent: the CPU mixes a row without a slot in place)
            if (s >= 0) reader.read(fills[i].src + off, slots_->data() + uint64_t(s) * slot_bytes_ + off, len);
        };
        // A prompt's rows (or a batch's) split over the threads: each read is a copy out of the page cache.
        if (pool_.size() > 1 && n >= 4 && uint64_t(n) * len >= kWideFillBytes)
            pool_.parallel_for(n, std::ref(read));
        else
            for (int32_t i = 0; i < n; ++i) read(i, 0);
    }

    void lut_mix(int32_t, const LutRow *rows, Type type, const BlockRange &slice, const float *gate, int64_t N,
                 int64_t d, float *x) override {
        const StepPlan &p = *plan_;
        const int64_t S = p.n_rows, stride = N * d + 2 * kMaxBlockElems;   // a slice + 2 blocks
        if (mix_tmp_.size() < size_t(pool_.size() * stride)) mix_tmp_.resize(size_t(pool_.size() * stride));
        auto run = [&](int64_t r, int thread) {
            const LutRow &row = rows[p.uniq_slot[r]];
            const uint8_t *src = row.slot >= 0 ? slots_->data() + uint64_t(row.slot) * slot_bytes_ : row.host;
            lut_mix_raw(type, gate + r * N, src + slice.offset, slice.skip, N, d, mix_tmp_.data() + thread * stride,
                        x + r * d);
        };
        if (pool_.size() > 1 && S >= 8)
            pool_.parallel_for(S, std::ref(run));
        else
            for (int64_t r = 0; r < S; ++r) run(r, 0);
    }

    Status synchronize() override { return MOLE_STATUS_OK; }
    Status status() const override { return MOLE_STATUS_OK; }

private:
    // The element-wise and row-wise ops of a step with at least kWideRows rows (a prompt's) go across
    // the pool in chunks; a decode step's few rows stay on the caller, where a dispatch would cost
    // more than the work.
    static constexpr int64_t kWideRows = 64, kRowChunk = 32, kWideElems = 32768, kElemChunk = 16384;
    static constexpr uint64_t kWideFillBytes = 128 << 10;   // LUT rows read by one thread below this
    // f(i0, i1) over [0, n): in chunks of `chunk` across the pool from n = wide on, else at once.
    template <class F> void split(int64_t n, int64_t wide, int64_t chunk, F &&f) {
        if (pool_.size() < 2 || n < wide) {
            if (n > 0) f(int64_t(0), n);
            return;
        }
        auto run = [&](int64_t t, int) { f(t * chunk, std::min(n, (t + 1) * chunk)); };
        pool_.parallel_for((n + chunk - 1) / chunk, std::ref(run));
    }
    template <class F> void over_rows(int64_t S, F &&f) { split(S, kWideRows, kRowChunk, std::forward<F>(f)); }

    struct AlignedFree {
        void operator()(void *p) const { ::operator delete(p, std::align_val_t(64)); }
    };

    MatmulOut out_of(const MatOut &o) const {
        const Weight &w = *o.w;
        const uint8_t *packed = w.id >= 0 && size_t(w.id) < w_.packed.size() ? w_.packed[size_t(w.id)] : nullptr;
        return packed ? MatmulOut{w.type, packed, w.ne1, o.Y, true} : MatmulOut{w.type, w.data, w.ne1, o.Y};
    }

    const CpuWeights &w_;
    ThreadPool pool_;
    const StepPlan *plan_ = nullptr;
    std::vector<std::unique_ptr<void, AlignedFree>> buffers_;
    std::unique_ptr<LargeBuffer> slots_;
    uint64_t slot_bytes_ = 0;
    int32_t populated_ = 0;            // slots [0, populated_) have their pages
    std::vector<uint8_t> embd_raw_;    // one embedding row as read from the file
    std::vector<float> mix_tmp_;       // [threads, N*d + 512] one layer's slice per thread
    std::vector<cpu::AttnSeq> attn_seqs_;   // [groups] the step's sequences for one attention dispatch
    std::vector<float> rope_cs_;       // [rows, head_dim] the step's RoPE cos and sin (cpu::rope_table)
    bool rope_valid_ = false;          // rope_cs_ holds this step's, for rope_hd_, rope_theta_, rope_scale_
    int64_t rope_hd_ = 0;
    float rope_theta_ = 0, rope_scale_ = 0;
};

Status probe(int32_t) { return MOLE_STATUS_OK; }

std::string describe(int32_t) { return std::string("kernels ") + isa_name(active_isa()); }

Status load_weights(const Weight *const *ws, int32_t n, const MappedFile *file, int32_t,
                    std::unique_ptr<WeightStore> *out) {
    auto w = std::make_unique<CpuWeights>();
    w->file = file;
    w->packed.assign(size_t(n), nullptr);
    if (repack_wanted())
        if (Status s = repack(ws, n, w.get())) return s;
    *out = std::move(w);
    return MOLE_STATUS_OK;
}

Status create(const WeightStore &weights, const BackendParams &params, std::unique_ptr<Backend> *out) {
    try {
        *out = std::make_unique<CpuBackend>(static_cast<const CpuWeights &>(weights), std::max(1, params.n_threads));
    } catch (const std::system_error &e) {
        return set_error(MOLE_STATUS_OUT_OF_MEMORY, "cannot start n_threads = %d worker threads: %s", params.n_threads,
                         e.what());
    }
    return MOLE_STATUS_OK;
}

}  // namespace

const BackendInfo *backend_info() {
    static const BackendInfo info = [] {
        BackendInfo b{MOLE_DEVICE_CPU, "cpu", probe, load_weights, create, describe};
        b.kv_types |= 1u << uint32_t(Type::F16);   // an f32 or f16 KV cache, f16 unless asked
        b.kv_default = Type::F16;
        return b;
    }();
    return &info;
}

}  // namespace mole::cpu
