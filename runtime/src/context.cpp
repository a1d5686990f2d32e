// Context setup and mole_decode: argument checks, CONTEXT_FULL before any change, n_batch chunks,
// per-chunk plan + forward step, sequence lengths committed only after a chunk completes.
#include "context.h"

#include <chrono>
#include <cinttypes>
#include <new>

#include "mmap.h"

namespace mole {

namespace {
double now_ms() {
    using namespace std::chrono;
    return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}

// More threads than this is a mistake, not a machine: each is a stack and a place in the pool.
constexpr int32_t kMaxThreads = 1024;

// The KV cache must fit the machine before it is allocated: on the CPU, whose allocations succeed
// lazily (overcommit) and would only fail, fatally, once the cache fills up, it must fit in the
// physical memory; everywhere its size must fit in 64 bits (alloc_kv_cache multiplies in uint64).
Status check_kv_cache(const Model &m, const ContextParams &p, bool n_ctx_defaulted) {
    const int64_t kv_dim = int64_t(m.hp.n_head_kv) * m.hp.head_dim;
    const double elem = p.type_kv == int32_t(Type::F16) ? 2.0 : 4.0;
    const double bytes = 2.0 * p.n_seq_max * m.hp.n_layer * double(p.n_ctx) * double(kv_dim) * elem;
    const uint64_t ram = m.backend->device == MOLE_DEVICE_CPU ? physical_memory_bytes() : 0;
    const double limit = ram ? double(ram) : 9.2e18;
    if (bytes <= limit) return MOLE_STATUS_OK;
    return set_error(MOLE_STATUS_OUT_OF_MEMORY,
                     "n_ctx = %d%s: the KV cache would take %s (K and V, %d sequence(s) x %d layers x %d positions x "
                     "%lld %s), more than %s%s; ask for a smaller n_ctx%s",
                     p.n_ctx, n_ctx_defaulted ? " (0: the model's context_length)" : "",
                     human_bytes(bytes < 1.8e19 ? uint64_t(bytes) : UINT64_MAX).c_str(), p.n_seq_max, m.hp.n_layer,
                     p.n_ctx, static_cast<long long>(kv_dim), elem == 2.0 ? "halves" : "floats",
                     ram ? "this machine's " : "64-bit sizes", ram ? (human_bytes(ram) + " of memory").c_str() : "",
                     p.n_seq_max > 1 ? " or n_seq_max" : "");
}
}  // namespace

Status Context::init(const Model &m, const ContextParams &p_in) {
    model = &m;
    ContextParams p = p_in;
    if (p.n_ctx < 0)
        return set_error(MOLE_STATUS_INVALID_ARGUMENT, "n_ctx must be >= 1 (0: the model's %d), got %d",
                         m.hp.n_ctx_train, p.n_ctx);
    if (p.n_ctx == 0) p.n_ctx = m.hp.n_ctx_train;
    if (p.n_seq_max < 1) return set_error(MOLE_STATUS_INVALID_ARGUMENT, "n_seq_max must be >= 1, got %d", p.n_seq_max);
    if (p.n_threads < 0)
        return set_error(MOLE_STATUS_INVALID_ARGUMENT, "n_threads must be >= 0 (0: one per core), got %d", p.n_threads);
    if (p.n_threads > kMaxThreads)
        return set_error(MOLE_STATUS_INVALID_ARGUMENT, "n_threads = %d is more than the limit of %d", p.n_threads,
                         kMaxThreads);
    if (p.n_threads == 0) p.n_threads = physical_core_count();
    if (p.n_batch < 1) return set_error(MOLE_STATUS_INVALID_ARGUMENT, "n_batch must be >= 1, got %d", p.n_batch);
    if (p.lut_cache_mb < -1)
        return set_error(MOLE_STATUS_INVALID_ARGUMENT, "lut_cache_mb must be >= 0 (-1: default), got %" PRId64,
                         p.lut_cache_mb);
    if (p.lut_cache_mb > (int64_t(1) << 30))
        return set_error(MOLE_STATUS_INVALID_ARGUMENT, "lut_cache_mb %" PRId64 " is too large", p.lut_cache_mb);
    if (p.type_kv == -1) p.type_kv = int32_t(m.backend->kv_default);
    if (p.type_kv != int32_t(Type::F32) && p.type_kv != int32_t(Type::F16))
        return set_error(MOLE_STATUS_INVALID_ARGUMENT,
                         "type_kv must be MOLE_TYPE_F32 (0) or MOLE_TYPE_F16 (1), or -1 for the backend's default; "
                         "got %d",
                         p.type_kv);
    if (!(m.backend->kv_types >> uint32_t(p.type_kv) & 1u))
        return set_error(MOLE_STATUS_UNSUPPORTED, "type_kv %s: the %s backend keeps its KV cache in %s",
                         type_name(Type(p.type_kv)), m.backend->name, type_name(m.backend->kv_default));
    if (Status s = check_kv_cache(m, p, p_in.n_ctx == 0)) return s;
    params = p;
    BackendParams bp;
    bp.n_threads = p.n_threads;
    bp.device_index = m.device_index;
    if (Status s = m.backend->create(*m.device_weights, bp, &backend)) return s;
    if (Status s = alloc_kv_cache(*backend, m.hp, p.n_ctx, p.n_seq_max, Type(p.type_kv), &kv)) return s;
    if (Status s = planner.init(p.n_batch, p.n_seq_max, m.hp.n_vocab, m.hp.n_expert > 0)) return s;
    if (Status s = scratch.init(*backend, m.hp, p.n_batch)) return s;
    // -1: the backend's choice (the CPU's 64 MB; on a GPU a share of the free VRAM, or the whole LUT)
    const uint64_t lut_bytes = m.hp.n_expert > 0 ? m.lut.nbytes : 0;
    const uint64_t cache =
        p.lut_cache_mb == -1 ? backend->default_lut_cache_bytes(lut_bytes) : uint64_t(p.lut_cache_mb) << 20;
    params.lut_cache_mb = int64_t((cache + (1 << 20) - 1) >> 20);
    if (Status s = lut.init(m, *backend, cache, p.n_batch)) return s;
    seq_len.assign(static_cast<size_t>(p.n_seq_max), 0);
    chunk_count.assign(static_cast<size_t>(p.n_seq_max), 0);
    return MOLE_STATUS_OK;
}

Status Context::decode(int32_t n_tokens, const int32_t *tokens, const int32_t *seq_ids, const int8_t *want_logits,
                       float *logits, size_t capacity) {
    const Hparams &hp = model->hp;
    if (n_tokens < 0) return set_error(MOLE_STATUS_INVALID_ARGUMENT, "n_tokens must be >= 0, got %d", n_tokens);
    if (n_tokens == 0) return MOLE_STATUS_OK;
    if (!tokens) return set_error(MOLE_STATUS_INVALID_ARGUMENT, "tokens is NULL");
    // The weights are read from the mapping: a file cut short since the load would fault, one
    // rewritten would give a wrong answer. Checked before and after the call (docs/reliability.md).
    if (Status s = model->file->check_unchanged()) return s;
    std::fill(chunk_count.begin(), chunk_count.end(), 0);
    size_t n_want = 0;
    for (int32_t i = 0; i < n_tokens; ++i) {
        if (tokens[i] < 0 || tokens[i] >= hp.n_vocab)
            return set_error(MOLE_STATUS_INVALID_ARGUMENT, "token id %d at entry %d is out of range [0, %d)", tokens[i],
                             i, hp.n_vocab);
        const int32_t sq = seq_ids ? seq_ids[i] : 0;
        if (sq < 0 || sq >= params.n_seq_max)
            return set_error(MOLE_STATUS_INVALID_ARGUMENT, "seq id %d at entry %d is out of range [0, %d)", sq, i,
                             params.n_seq_max);
        chunk_count[sq]++;
        if (!want_logits || want_logits[i]) n_want++;
    }
    for (int32_t sq = 0; sq < params.n_seq_max; ++sq)
        if (int64_t(seq_len[sq]) + chunk_count[sq] > params.n_ctx)
            return set_error(MOLE_STATUS_CONTEXT_FULL, "sequence %d holds %d tokens; %d more do not fit in n_ctx = %d",
                             sq, seq_len[sq], chunk_count[sq], params.n_ctx);
    if (n_want > 0 && !logits)
        return set_error(MOLE_STATUS_INVALID_ARGUMENT, "logits is NULL but %zu entries want logits", n_want);
    if (n_want > 0 && capacity / static_cast<size_t>(hp.n_vocab) < n_want)
        return set_error(MOLE_STATUS_BUFFER_TOO_SMALL,
                         "logits buffer holds %zu floats; %zu entries x %d vocab need %zu", capacity, n_want,
                         hp.n_vocab, n_want * static_cast<size_t>(hp.n_vocab));

    const double t0 = now_ms();
    StepTimes times;
    Status status = MOLE_STATUS_OK;
    size_t logits_done = 0;
    for (int32_t start = 0; start < n_tokens; start += params.n_batch) {
        const int32_t n = std::min(params.n_batch, n_tokens - start);
        if (cancel.load()) {
            status = set_error(MOLE_STATUS_CANCELLED, "decode cancelled after %d of %d tokens", start, n_tokens);
            break;
        }
        const StepPlan &p = planner.plan(n, tokens + start, seq_ids ? seq_ids + start : nullptr,
                                         want_logits ? want_logits + start : nullptr, seq_len.data());
        float *out = p.n_out > 0 ? logits + logits_done * hp.n_vocab : nullptr;
        status = forward_step(*model, *backend, p, scratch, kv, lut, cancel, out, &times);
        if (status != MOLE_STATUS_OK) break;
        // Commit: the chunk's tokens now belong to their sequences.
        for (int32_t g = 0; g < p.n_groups; ++g) seq_len[p.group_seq[g]] += p.group_len[g];
        logits_done += static_cast<size_t>(p.n_out);
        stats.tokens_evaluated += static_cast<uint64_t>(n);
        stats.steps++;
    }
    stats.t_eval_ms += now_ms() - t0;
    stats.t_lut_ms += times.lut_ms;
    cancel.store(false);
    if (status == MOLE_STATUS_OK) {
        // Changed during the call: the logits may hold bytes of the new file. Take the call's
        // tokens back (every chunk was committed) and say so rather than answer.
        status = model->file->check_unchanged();
        if (status != MOLE_STATUS_OK)
            for (int32_t sq = 0; sq < params.n_seq_max; ++sq) seq_len[sq] -= chunk_count[sq];
    }
    return status;
}

Status Context::truncate(int32_t seq_id, int32_t n_keep) {
    if (seq_id < 0 || seq_id >= params.n_seq_max)
        return set_error(MOLE_STATUS_INVALID_ARGUMENT, "seq id %d is out of range [0, %d)", seq_id, params.n_seq_max);
    if (n_keep < 0) return set_error(MOLE_STATUS_INVALID_ARGUMENT, "n_keep must be >= 0, got %d", n_keep);
    if (n_keep < seq_len[seq_id]) seq_len[seq_id] = n_keep;
    return MOLE_STATUS_OK;
}

}  // namespace mole
