// One forward step of the MoLE model (DESIGN.md's math), written once over the backend interface:
//   x = E[ids]; per layer: a = x + Wo attn(rope(Wq n1), rope(Wk n1), Wv n1), n1 = rmsnorm_in(x)
//   h = rmsnorm_post(a); g = softmax(router h); x = a + Down(gelu(Up h)) + sum_j g_j LUT[id][l][j]
//   logits = Out(rmsnorm_final(x)).
#include "forward.h"

#include <chrono>

namespace mole {

namespace {

double now_ms() {
    using namespace std::chrono;
    return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}

// Adds the wall time of a scope to *acc.
struct Timed {
    double *acc, t0 = now_ms();
    ~Timed() { *acc += now_ms() - t0; }
};

}  // namespace

Status Scratch::init(Backend &be, const Hparams &hp, int32_t n_batch) {
    const int64_t B = n_batch, d = hp.n_embd, qd = int64_t(hp.n_head) * hp.head_dim;
    const int64_t kvd = int64_t(hp.n_head_kv) * hp.head_dim;
    struct Part {
        float **p;
        int64_t n;
    } parts[] = {{&x, B * d},
                 {&xn, B * d},
                 {&q, B * qd},
                 {&k, B * kvd},
                 {&v, B * kvd},
                 {&att, B * qd},
                 {&tmp, B * d},
                 {&ff, B * int64_t(hp.n_ff)},
                 {&gate, B * int64_t(hp.n_expert)},
                 {&out_x, B * d}};
    auto padded = [](int64_t n) { return uint64_t(n + 15) / 16 * 16 * sizeof(float); };   // 64-byte aligned parts
    uint64_t total = 0;
    for (const Part &p : parts) total += padded(p.n);
    void *base = nullptr;
    if (Status st = be.alloc(total, "the activations", &base)) return st;
    uint8_t *at = static_cast<uint8_t *>(base);
    for (const Part &p : parts) {
        *p.p = reinterpret_cast<float *>(at);
        at += padded(p.n);
    }
    return MOLE_STATUS_OK;
}

Status alloc_kv_cache(Backend &be, const Hparams &hp, int32_t n_ctx, int32_t n_seq, Type type, KvCache *kv) {
    kv->n_ctx = n_ctx;
    kv->n_seq = n_seq;
    kv->n_layer = hp.n_layer;
    kv->kv_dim = int64_t(hp.n_head_kv) * hp.head_dim;
    kv->type = type;
    const uint64_t bytes =
        uint64_t(n_seq) * uint64_t(hp.n_layer) * uint64_t(n_ctx) * uint64_t(kv->kv_dim) * kv->elem_bytes();
    if (Status st = be.alloc(bytes, "the KV cache (K)", &kv->k)) return st;
    return be.alloc(bytes, "the KV cache (V)", &kv->v);
}

namespace {

// x += Wo attn(rope(Wq n1), rope(Wk n1), Wv n1), n1 = rmsnorm_in(x), K/V appended to the cache.
void attention_block(const Model &m, int32_t il, Backend &be, int64_t S, Scratch &s, KvCache &kv) {
    const Hparams &hp = m.hp;
    const LayerWeights &w = m.layers[il];
    be.rmsnorm(s.x, w.attn_norm, S, hp.rms_eps, s.xn);
    const MatOut qkv[3] = {{&w.wq, s.q}, {&w.wk, s.k}, {&w.wv, s.v}};
    be.matmul(qkv, 3, s.xn, S);   // one dispatch, n1 quantized once
    be.rope(s.q, hp.n_head, hp.head_dim, hp.rope_theta, hp.rope_freq_scale);
    be.rope(s.k, hp.n_head_kv, hp.head_dim, hp.rope_theta, hp.rope_freq_scale);
    be.attention(kv, il, s.q, s.k, s.v, hp.n_head, hp.n_head_kv, hp.head_dim, s.att);
    const MatOut o = {&w.wo, s.tmp};
    be.matmul(&o, 1, s.att, S);
    be.add(s.x, s.tmp, S * hp.n_embd);
}

// x += Down(gelu(Up h)) + sum_j g_j LUT[id][il][j], h = rmsnorm_post(x), g = softmax(router h).
void ffn_block(const Model &m, int32_t il, Backend &be, int64_t S, Scratch &s, LutStore &lut, StepTimes *times) {
    const Hparams &hp = m.hp;
    const LayerWeights &w = m.layers[il];
    const int64_t N = hp.n_expert, d = hp.n_embd;
    be.rmsnorm(s.x, w.ffn_norm, S, hp.rms_eps, s.xn);
    const MatOut up[2] = {{&w.ffn_up, s.ff}, {&w.router, s.gate}};
    be.matmul(up, N > 0 ? 2 : 1, s.xn, S);   // the router rides along with Up
    if (N > 0) be.softmax(s.gate, S, N);
    be.gelu(s.ff, S * hp.n_ff);
    const MatOut down = {&w.ffn_down, s.tmp};
    be.matmul(&down, 1, s.ff, S);
    be.add(s.x, s.tmp, S * d);
    if (N == 0) return;
    {
        Timed t{&times->lut_ms};
        lut.fetch_layer(il);   // the missed rows' slice il into their slots
    }
    be.lut_mix(il, lut.rows(), m.lut.type, lut_layer_slice(m.lut.type, il, N, d), s.gate, N, d, s.x);
    Timed t{&times->lut_ms};
    lut.finish_layer(il);      // pages of rows read in place released
}

}  // namespace

Status forward_step(const Model &m, Backend &be, const StepPlan &plan, Scratch &s, KvCache &kv, LutStore &lut,
                    const std::atomic<bool> &cancel, float *logits, StepTimes *times) {
    const Hparams &hp = m.hp;
    const int64_t S = plan.n_rows;
    be.begin_step(plan);
    if (hp.n_expert > 0) {   // first, so the missed rows' reads overlap layer 0's attention
        Timed t{&times->lut_ms};
        lut.prepare(plan);
    }
    be.embed(m.tok_embd, s.x);
    for (int32_t il = 0; il < hp.n_layer; ++il) {
        if (Status st = be.status()) return st;
        if (cancel.load(std::memory_order_relaxed))
            return set_error(MOLE_STATUS_CANCELLED, "decode cancelled at layer %d", il);
        attention_block(m, il, be, S, s, kv);
        ffn_block(m, il, be, S, s, lut, times);
    }
    if (plan.n_out > 0) {   // logits[n_out, V] = Out(rmsnorm_final(x[out_rows]))
        be.gather_out_rows(s.x, hp.n_embd, s.xn);
        be.rmsnorm(s.xn, m.output_norm, plan.n_out, hp.rms_eps, s.out_x);
        be.logits(m.output, s.out_x, plan.n_out, logits);
    }
    if (Status st = be.synchronize()) return st;
    if (hp.n_expert > 0) {
        Timed t{&times->lut_ms};
        lut.commit();
    }
    return MOLE_STATUS_OK;
}

}  // namespace mole
