// One forward step of the MoLE model on the CPU kernels (DESIGN.md's math):
//   x = E[ids]; per layer: a = x + Wo attn(rope(Wq n1), rope(Wk n1), Wv n1), n1 = rmsnorm_in(x)
//   h = rmsnorm_post(a); g = softmax(router h); x = a + Down(gelu(Up h)) + sum_j g_j LUT[id][l][j]
//   logits = Out(rmsnorm_final(x)).
#include "forward.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <functional>
#include <new>

namespace mole {

namespace {

template <typename T> Status alloc(std::unique_ptr<T[]> &p, int64_t n, const char *what) {
    try {
        p.reset(new T[static_cast<size_t>(n > 0 ? n : 1)]);
    } catch (const std::bad_alloc &) {
        return set_error(MOLE_STATUS_OUT_OF_MEMORY, "cannot allocate %s (%s)", what,
                         human_bytes(static_cast<uint64_t>(n) * sizeof(T)).c_str());
    }
    return MOLE_STATUS_OK;
}

double now_ms() {
    using namespace std::chrono;
    return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}

}  // namespace

Status Scratch::init(const Model &m, int32_t n_batch, int32_t n_seq, int32_t threads) {
    const Hparams &hp = m.hp;
    const int64_t d = hp.n_embd, qd = int64_t(hp.n_head) * hp.head_dim, kvd = int64_t(hp.n_head_kv) * hp.head_dim;
    B = n_batch;
    U_max = hp.n_expert > 0 ? std::min(n_batch, hp.n_vocab) : 0;
    n_threads = std::max(1, threads);
    mix_stride = hp.n_expert > 0 ? int64_t(hp.n_expert) * d + 64 : 0;   // + 2 blocks of <= 32
    Status st = MOLE_STATUS_OK;
    if ((st = alloc(x, B * d, "activations")) || (st = alloc(xn, B * d, "activations")) ||
        (st = alloc(q, B * qd, "activations")) || (st = alloc(k, B * kvd, "activations")) ||
        (st = alloc(v, B * kvd, "activations")) || (st = alloc(att, B * qd, "activations")) ||
        (st = alloc(tmp, B * d, "activations")) || (st = alloc(ff, B * int64_t(hp.n_ff), "activations")) ||
        (st = alloc(gate, B * int64_t(hp.n_expert), "router weights")) ||
        (st = alloc(rows, U_max, "the step's LUT row table")) ||
        (st = alloc(mix_tmp, n_threads * mix_stride, "the LUT mix buffer")) ||
        (st = alloc(out_x, B * d, "activations")) ||
        (st = alloc(embd_raw, int64_t(m.tok_embd.row_bytes()), "the embedding row buffer")) ||
        (st = alloc(ids, B, "plan")) || (st = alloc(pos, B, "plan")) ||
        (st = alloc(uniq_slot, B, "plan")) || (st = alloc(uniq, B, "plan")) || (st = alloc(out_rows, B, "plan")) ||
        (st = alloc(group_seq, n_seq, "plan")) || (st = alloc(group_start, n_seq, "plan")) ||
        (st = alloc(group_len, n_seq, "plan")) || (st = alloc(seq_count, n_seq, "plan")) ||
        (st = alloc(token_mark, hp.n_vocab, "plan")))
        return st;
    std::fill(token_mark.get(), token_mark.get() + hp.n_vocab, -1);
    plan.ids = ids.get();
    plan.pos = pos.get();
    plan.uniq_slot = uniq_slot.get();
    plan.uniq = uniq.get();
    plan.group_seq = group_seq.get();
    plan.group_start = group_start.get();
    plan.group_len = group_len.get();
    plan.out_rows = out_rows.get();
    return MOLE_STATUS_OK;
}

Status KvCache::init(const Model &m, int32_t ctx, int32_t seqs) {
    n_ctx = ctx;
    n_seq = seqs;
    n_layer = m.hp.n_layer;
    kv_dim = int64_t(m.hp.n_head_kv) * m.hp.head_dim;
    const int64_t n = int64_t(n_seq) * n_layer * n_ctx * kv_dim;
    if (Status st = alloc(k, n, "the KV cache (K)")) return st;
    return alloc(v, n, "the KV cache (V)");
}

void plan_step(Scratch &s, int32_t n, const int32_t *tokens, const int32_t *seq_ids, const int8_t *want,
               const int32_t *seq_len, int32_t n_seq) {
    StepPlan &p = s.plan;
    p.n_rows = n;
    // Group rows by sequence (counting sort, stable): group g holds its sequence's entries in order.
    std::fill(s.seq_count.get(), s.seq_count.get() + n_seq, 0);
    for (int32_t i = 0; i < n; ++i) s.seq_count[seq_ids ? seq_ids[i] : 0]++;
    p.n_groups = 0;
    int32_t start = 0;
    for (int32_t sq = 0; sq < n_seq; ++sq) {
        if (s.seq_count[sq] == 0) continue;
        int32_t g = p.n_groups++;
        p.group_seq[g] = sq;
        p.group_start[g] = start;
        p.group_len[g] = 0;
        start += s.seq_count[sq];
        s.seq_count[sq] = g;   // now: the group of sequence sq
    }
    p.n_uniq = 0;
    p.n_out = 0;
    for (int32_t i = 0; i < n; ++i) {
        const int32_t sq = seq_ids ? seq_ids[i] : 0;
        const int32_t g = s.seq_count[sq];
        const int32_t r = p.group_start[g] + p.group_len[g];
        p.pos[r] = seq_len[sq] + p.group_len[g];
        p.group_len[g]++;
        const int32_t id = tokens[i];
        p.ids[r] = id;
        if (s.U_max > 0) {   // unique ids: a repeated id is fetched once
            int32_t u = s.token_mark[id];
            if (u < 0) {
                u = p.n_uniq++;
                s.token_mark[id] = u;
                p.uniq[u] = id;
            }
            p.uniq_slot[r] = u;
        }
        if (!want || want[i]) p.out_rows[p.n_out++] = r;
    }
    for (int32_t u = 0; u < p.n_uniq; ++u) s.token_mark[p.uniq[u]] = -1;
}

namespace {

// x[S, d] = E[ids]. Rows are read with pread, like LUT rows: a fault on the mapping maps its
// page-cache neighbours too (fault-around, large folios), so a 512-token prompt touching 512
// random rows of a 41 MB embedding counted 11-26 MB in RSS, varying with the page cache's state.
void embed(const Model &m, Scratch &s, float *x) {
    const StepPlan &p = s.plan;
    const int64_t d = m.hp.n_embd;
    const uint64_t rb = m.tok_embd.row_bytes();
    for (int32_t r = 0; r < p.n_rows; ++r) {
        const uint64_t off = m.tok_embd.offset + uint64_t(p.ids[r]) * rb;
        const uint8_t *row = m.file->read_at(off, s.embd_raw.get(), rb) ? s.embd_raw.get() : m.file->data() + off;
        cpu::dequantize_row(m.tok_embd.type, row, x + r * d, d);   // (an I/O error: the mapping has it or SIGBUS)
    }
}

cpu::MatmulOut out_of(const Weight &w, float *Y) {
    return w.packed ? cpu::MatmulOut{w.type, w.packed, w.ne1, Y, true} : cpu::MatmulOut{w.type, w.data, w.ne1, Y};
}

void matmul(const Weight &w, const float *X, int64_t S, float *Y, cpu::ThreadPool *pool) {
    const cpu::MatmulOut out = out_of(w, Y);
    cpu::matmul_multi(&out, 1, w.ne0, X, S, pool);
}

// x += Wo attn(rope(Wq n1), rope(Wk n1), Wv n1), with K/V appended to each sequence's cache.
void attention_block(const Model &m, int32_t il, Scratch &s, KvCache &kv, cpu::ThreadPool *pool) {
    const Hparams &hp = m.hp;
    const LayerWeights &w = m.layers[il];
    const StepPlan &p = s.plan;
    const int64_t S = p.n_rows, d = hp.n_embd, hd = hp.head_dim, kvd = kv.kv_dim, qd = int64_t(hp.n_head) * hd;
    cpu::rmsnorm(s.x.get(), static_cast<const float *>(static_cast<const void *>(w.attn_norm.data)), S, d, hp.rms_eps,
                 s.xn.get());
    const cpu::MatmulOut qkv[3] = {out_of(w.wq, s.q.get()), out_of(w.wk, s.k.get()), out_of(w.wv, s.v.get())};
    cpu::matmul_multi(qkv, 3, d, s.xn.get(), S, pool);   // one dispatch, n1 quantized once
    cpu::rope(s.q.get(), S, hp.n_head, hd, p.pos, hp.rope_theta, hp.rope_freq_scale);
    cpu::rope(s.k.get(), S, hp.n_head_kv, hd, p.pos, hp.rope_theta, hp.rope_freq_scale);
    for (int32_t g = 0; g < p.n_groups; ++g) {
        const int32_t r0 = p.group_start[g], len = p.group_len[g], pos0 = p.pos[r0];
        float *kc = kv.k_at(p.group_seq[g], il), *vc = kv.v_at(p.group_seq[g], il);
        std::memcpy(kc + int64_t(pos0) * kvd, s.k.get() + int64_t(r0) * kvd, sizeof(float) * len * kvd);
        std::memcpy(vc + int64_t(pos0) * kvd, s.v.get() + int64_t(r0) * kvd, sizeof(float) * len * kvd);
        cpu::attention(s.q.get() + int64_t(r0) * qd, kc, vc, kvd, s.att.get() + int64_t(r0) * qd, len, pos0,
                       hp.n_head, hp.n_head_kv, hd, pool);
    }
    matmul(w.wo, s.att.get(), S, s.tmp.get(), pool);
    float *x = s.x.get(), *o = s.tmp.get();
    for (int64_t i = 0; i < S * d; ++i) x[i] += o[i];
}

// x[r] += sum_j g[r, j] LUT[id_r][il][j]: layer il's slice of each row, mixed from the row's file
// bytes (cache or mapping: the first touch of a missed row waits only for these pages).
void mix_experts(const Model &m, int32_t il, Scratch &s, cpu::ThreadPool *pool) {
    const Hparams &hp = m.hp;
    const StepPlan &p = s.plan;
    const int64_t S = p.n_rows, d = hp.n_embd, N = hp.n_expert;
    const cpu::Type type = m.lut.type;
    int64_t be = 1, bb = 4;
    cpu::type_traits(uint32_t(type), &be, &bb);
    // Whole blocks covering elements [il*N*d, (il+1)*N*d) of the row (d need not be a block multiple).
    const int64_t e0 = int64_t(il) * N * d, b0 = e0 / be, skip = e0 - b0 * be;
    auto run = [&](int64_t r, int thread) {
        float *tmp = s.mix_tmp.get() + int64_t(thread) * s.mix_stride;
        cpu::lut_mix_raw(type, s.gate.get() + r * N, s.rows[p.uniq_slot[r]] + b0 * bb, skip, N, d, tmp,
                         s.x.get() + r * d);
    };
    if (pool && pool->size() > 1 && S >= 8) pool->parallel_for(S, std::ref(run));
    else for (int64_t r = 0; r < S; ++r) run(r, 0);
}

// x += Down(gelu(Up h)) + sum_j g_j LUT[id][l][j], h = rmsnorm_post(x), g = softmax(router h).
void ffn_block(const Model &m, int32_t il, Scratch &s, LutStore &lut, cpu::ThreadPool *pool, StepTimes *times) {
    const Hparams &hp = m.hp;
    const LayerWeights &w = m.layers[il];
    const StepPlan &p = s.plan;
    const int64_t S = p.n_rows, d = hp.n_embd, N = hp.n_expert;
    cpu::rmsnorm(s.x.get(), reinterpret_cast<const float *>(w.ffn_norm.data), S, d, hp.rms_eps, s.xn.get());
    const cpu::MatmulOut up[2] = {out_of(w.ffn_up, s.ff.get()), out_of(w.router, s.gate.get())};
    cpu::matmul_multi(up, N > 0 ? 2 : 1, d, s.xn.get(), S, pool);   // router rides along with Up
    if (N > 0) cpu::softmax(s.gate.get(), S, N);
    cpu::gelu(s.ff.get(), S * hp.n_ff, pool);
    matmul(w.ffn_down, s.ff.get(), S, s.tmp.get(), pool);
    float *x = s.x.get(), *o = s.tmp.get();
    for (int64_t i = 0; i < S * d; ++i) x[i] += o[i];
    if (N > 0) {
        const double t0 = now_ms();
        lut.fetch_layer(il);    // missed rows' slice il read into their cache slots
        times->lut_ms += now_ms() - t0;
        mix_experts(m, il, s, pool);
        const double t1 = now_ms();
        lut.finish_layer(il);   // pages of rows read through the mapping unmapped
        times->lut_ms += now_ms() - t1;
    }
}

// logits[n_out, V] = Out(rmsnorm_final(x[out_rows]))
void output_block(const Model &m, Scratch &s, float *logits, cpu::ThreadPool *pool) {
    const StepPlan &p = s.plan;
    const int64_t d = m.hp.n_embd;
    if (p.n_out == 0) return;
    for (int32_t i = 0; i < p.n_out; ++i)
        std::memcpy(s.xn.get() + int64_t(i) * d, s.x.get() + int64_t(p.out_rows[i]) * d, sizeof(float) * d);
    cpu::rmsnorm(s.xn.get(), reinterpret_cast<const float *>(m.output_norm.data), p.n_out, d, m.hp.rms_eps,
                 s.out_x.get());
    matmul(m.output, s.out_x.get(), p.n_out, logits, pool);
}

}  // namespace

Status forward_step(const Model &m, Scratch &s, KvCache &kv, LutStore &lut, cpu::ThreadPool *pool,
                    const std::atomic<bool> &cancel, float *logits, StepTimes *times) {
    const StepPlan &p = s.plan;
    if (m.hp.n_expert > 0) {   // first, so the missed rows' reads overlap layer 0's attention
        double t0 = now_ms();
        lut.prepare(p.uniq, p.n_uniq, s.rows.get());
        times->lut_ms += now_ms() - t0;
    }
    embed(m, s, s.x.get());
    for (int32_t il = 0; il < m.hp.n_layer; ++il) {
        if (cancel.load(std::memory_order_relaxed))
            return set_error(MOLE_STATUS_CANCELLED, "decode cancelled at layer %d", il);
        attention_block(m, il, s, kv, pool);
        ffn_block(m, il, s, lut, pool, times);
    }
    output_block(m, s, logits, pool);
    if (m.hp.n_expert > 0) {
        double t0 = now_ms();
        lut.commit();
        times->lut_ms += now_ms() - t0;
    }
    return MOLE_STATUS_OK;
}

}  // namespace mole
