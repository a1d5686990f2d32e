// The C API of mole.h over the runtime's C++ classes. Every entry point checks its arguments and
// catches every C++ exception (std::bad_alloc -> MOLE_STATUS_OUT_OF_MEMORY).
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include "backend/cpu/ops.h"
#include "context.h"
#include "error.h"
#include "model.h"
#include "sampler.h"
#include "tokenizer.h"

// A context and a streaming decoder share their model: mole_model_free before them only drops the
// handle's share, and the model goes when the last of them does.
struct mole_model {
    std::shared_ptr<mole::Model> impl;
};
struct mole_context {
    std::shared_ptr<const mole::Model> model;   // declared first: destroyed after impl
    std::unique_ptr<mole::Context> impl;
};
struct mole_sampler {
    std::unique_ptr<mole::Sampler> impl;
};
struct mole_decoder {
    std::shared_ptr<const mole::Model> model;
    std::unique_ptr<mole::StreamDecoder> impl;
};

namespace {

using mole::set_error;
using mole::Status;

#define MOLE_GUARD_BEGIN try {
#define MOLE_GUARD_END                                                                                    \
    }                                                                                                     \
    catch (const std::bad_alloc &) {                                                                      \
        return set_error(MOLE_STATUS_OUT_OF_MEMORY, "%s: out of memory", __func__);                       \
    }                                                                                                     \
    catch (const std::exception &e) {                                                                     \
        return set_error(MOLE_STATUS_INTERNAL_ERROR, "%s: internal error: %s", __func__, e.what());       \
    }                                                                                                     \
    catch (...) {                                                                                         \
        return set_error(MOLE_STATUS_INTERNAL_ERROR, "%s: internal error (unknown exception)", __func__); \
    }

#define MOLE_REQUIRE(ptr) \
    if (!(ptr)) return set_error(MOLE_STATUS_INVALID_ARGUMENT, "%s: argument '%s' is NULL", __func__, #ptr)

// Writes n bytes (+ NUL when it fits) into buf; BUFFER_TOO_SMALL with *n_out = n when n > capacity.
Status write_bytes(const char *fn, const std::string &s, char *buf, size_t capacity, size_t *n_out) {
    *n_out = s.size();
    if (s.size() > capacity)
        return set_error(MOLE_STATUS_BUFFER_TOO_SMALL, "%s: buffer of %zu bytes is too small; %zu needed", fn, capacity,
                         s.size());
    if (!s.empty()) std::memcpy(buf, s.data(), s.size());
    if (s.size() < capacity) buf[s.size()] = '\0';
    return MOLE_STATUS_OK;
}

Status need_tokenizer(const char *fn, const mole_model *model) {
    if (!model->impl->tokenizer)
        return set_error(MOLE_STATUS_UNSUPPORTED, "%s: the model file has no tokenizer (no tokenizer.ggml.tokens)", fn);
    return MOLE_STATUS_OK;
}

}  // namespace

extern "C" {

MOLE_API int32_t mole_abi_version(void) { return MOLE_ABI_VERSION; }
MOLE_API const char *mole_version(void) { return MOLE_VERSION_STRING; }   // CMake's project version
MOLE_API const char *mole_last_error(void) { return mole::last_error(); }

MOLE_API const char *mole_status_string(enum mole_status status) {
    switch (status) {
    case MOLE_STATUS_OK: return "ok";
    case MOLE_STATUS_INVALID_ARGUMENT: return "invalid argument";
    case MOLE_STATUS_FILE_NOT_FOUND: return "file not found";
    case MOLE_STATUS_IO_ERROR: return "I/O error";
    case MOLE_STATUS_FORMAT_ERROR: return "invalid model file";
    case MOLE_STATUS_OUT_OF_MEMORY: return "out of memory";
    case MOLE_STATUS_CONTEXT_FULL: return "context full";
    case MOLE_STATUS_BUFFER_TOO_SMALL: return "buffer too small";
    case MOLE_STATUS_UNSUPPORTED: return "unsupported";
    case MOLE_STATUS_CANCELLED: return "cancelled";
    case MOLE_STATUS_BACKEND_ERROR: return "backend error";
    case MOLE_STATUS_INTERNAL_ERROR: return "internal error";
    }
    return "unknown status";
}

MOLE_API const char *mole_system_info(void) {
    static const std::string info = [] {
        const mole::cpu::Features &f = mole::cpu::cpu_features();
        std::string s = "avx512=" + std::to_string(f.avx512f ? 1 : 0) + " avx2=" + std::to_string(f.avx2 ? 1 : 0) +
            " fma=" + std::to_string(f.fma ? 1 : 0) + " f16c=" + std::to_string(f.f16c ? 1 : 0) +
            " vnni=" + std::to_string(f.avx512vnni ? 1 : 0) + " avxvnni=" + std::to_string(f.avxvnni ? 1 : 0) +
            " avx512bf16=" + std::to_string(f.avx512bf16 ? 1 : 0);
        // Whether CUDA is usable here, and if not why: "cuda=1 (NVIDIA H200, sm_90, 150.1 GB)",
        // "cuda=0 (device CUDA: no usable CUDA driver (...))", "cuda=0 (not built)".
        const mole::BackendInfo *cuda = mole::find_backend(MOLE_DEVICE_CUDA);
        if (!cuda) return s + " cuda=0 (not built)";
        const std::string saved = mole::last_error();   // a query must not change the caller's error text
        const mole::Status st = cuda->probe(0);
        s += st == MOLE_STATUS_OK ? " cuda=1 (" + cuda->describe(0) + ")"
                                  : " cuda=0 (" + std::string(mole::last_error()) + ")";
        mole::set_error(MOLE_STATUS_OK, "%s", saved.c_str());
        return s;
    }();
    return info.c_str();
}

/* ---- model ---- */

MOLE_API void mole_model_default_params(struct mole_model_params *out) {
    if (!out) return;
    out->device = MOLE_DEVICE_CPU;
    out->device_index = 0;
    out->check_tensors = 0;
    out->reserved = 0;
}

MOLE_API enum mole_status mole_model_load(const char *path, const struct mole_model_params *params,
                                          struct mole_model **out) {
    MOLE_GUARD_BEGIN
    MOLE_REQUIRE(path);
    MOLE_REQUIRE(out);
    *out = nullptr;
    mole_model_params p;
    mole_model_default_params(&p);
    if (params) p = *params;
    if (p.device != MOLE_DEVICE_CPU && p.device != MOLE_DEVICE_CUDA)
        return set_error(MOLE_STATUS_INVALID_ARGUMENT, "unknown device %d (0: CPU, 1: CUDA)", p.device);
    if (p.device_index < 0)
        return set_error(MOLE_STATUS_INVALID_ARGUMENT, "device_index must be >= 0, got %d", p.device_index);
    mole::LoadOptions opts;
    opts.check_tensors = p.check_tensors != 0;
    opts.device = p.device;
    opts.device_index = p.device_index;
    std::unique_ptr<mole::Model> m;
    if (Status s = mole::load_model(path, opts, &m)) return s;
    auto h = std::make_unique<mole_model>();
    h->impl = std::move(m);
    *out = h.release();
    return MOLE_STATUS_OK;
    MOLE_GUARD_END
}

MOLE_API void mole_model_free(struct mole_model *model) { delete model; }

MOLE_API enum mole_status mole_model_get_info(const struct mole_model *model, struct mole_model_info *out) {
    MOLE_GUARD_BEGIN
    MOLE_REQUIRE(model);
    MOLE_REQUIRE(out);
    const mole::Model &m = *model->impl;
    const mole::Hparams &hp = m.hp;
    *out = mole_model_info{};
    out->n_vocab = hp.n_vocab;
    out->n_ctx_train = hp.n_ctx_train;
    out->n_embd = hp.n_embd;
    out->n_layer = hp.n_layer;
    out->n_head = hp.n_head;
    out->n_head_kv = hp.n_head_kv;
    out->n_ff = hp.n_ff;
    out->n_expert = hp.n_expert;
    out->n_ff_expert = hp.n_ff_expert;
    out->bos_token_id = hp.bos_id;
    out->eos_token_id = hp.eos_id;
    out->pad_token_id = hp.pad_id;
    out->lut_type = hp.n_expert > 0 ? static_cast<int32_t>(m.lut.type) : -1;
    out->weight_type = static_cast<int32_t>(m.layers[0].wq.type);
    out->lut_row_bytes = hp.n_expert > 0 ? m.lut.row_bytes() : 0;
    out->lut_bytes = hp.n_expert > 0 ? m.lut.nbytes : 0;
    out->dense_bytes = m.dense_bytes;
    out->n_params_dense = m.n_params_dense;
    return MOLE_STATUS_OK;
    MOLE_GUARD_END
}

MOLE_API enum mole_status mole_model_metadata_json(const struct mole_model *model, char *buf, size_t capacity,
                                                   size_t *n_out) {
    MOLE_GUARD_BEGIN
    MOLE_REQUIRE(model);
    MOLE_REQUIRE(n_out);
    if (!buf && capacity > 0)
        return set_error(MOLE_STATUS_INVALID_ARGUMENT, "%s: buf is NULL with capacity %zu", __func__, capacity);
    if (Status s = model->impl->file->check_unchanged()) return s;   // the values are read from the mapping
    return write_bytes(__func__, mole::metadata_json(model->impl->gguf), buf, capacity, n_out);
    MOLE_GUARD_END
}

MOLE_API enum mole_status mole_model_metadata_string(const struct mole_model *model, const char *key, char *buf,
                                                     size_t capacity, size_t *n_out) {
    MOLE_GUARD_BEGIN
    MOLE_REQUIRE(model);
    MOLE_REQUIRE(key);
    MOLE_REQUIRE(n_out);
    if (!buf && capacity > 0)
        return set_error(MOLE_STATUS_INVALID_ARGUMENT, "%s: buf is NULL with capacity %zu", __func__, capacity);
    if (Status s = model->impl->file->check_unchanged()) return s;
    const mole::GgufValue *v = model->impl->gguf.find(key);
    if (!v) return set_error(MOLE_STATUS_INVALID_ARGUMENT, "metadata key '%s' is not in the model", key);
    if (v->type != mole::GgufType::STRING)
        return set_error(MOLE_STATUS_INVALID_ARGUMENT, "metadata key '%s' holds a %s, not a string", key,
                         mole::gguf_type_name(v->type));
    return write_bytes(__func__, std::string(v->str), buf, capacity, n_out);
    MOLE_GUARD_END
}

MOLE_API enum mole_status mole_model_n_tensors(const struct mole_model *model, size_t *n_out) {
    MOLE_GUARD_BEGIN
    MOLE_REQUIRE(model);
    MOLE_REQUIRE(n_out);
    *n_out = model->impl->gguf.tensors().size();
    return MOLE_STATUS_OK;
    MOLE_GUARD_END
}

MOLE_API enum mole_status mole_model_tensor_info(const struct mole_model *model, size_t index,
                                                 struct mole_tensor_info *out) {
    MOLE_GUARD_BEGIN
    MOLE_REQUIRE(model);
    MOLE_REQUIRE(out);
    const std::vector<mole::GgufTensor> &tensors = model->impl->gguf.tensors();
    if (index >= tensors.size())
        return set_error(MOLE_STATUS_INVALID_ARGUMENT, "tensor index %zu is out of range [0, %zu)", index,
                         tensors.size());
    const mole::GgufTensor &t = tensors[index];
    *out = mole_tensor_info{};
    out->name = t.name.c_str();
    out->type = static_cast<int32_t>(t.type);
    out->n_dims = static_cast<int32_t>(t.n_dims);
    for (int d = 0; d < 4; ++d) out->ne[d] = t.ne[d];
    out->offset = t.offset;
    out->nbytes = t.nbytes;
    return MOLE_STATUS_OK;
    MOLE_GUARD_END
}

/* ---- tokenizer ---- */

MOLE_API enum mole_status mole_tokenize(const struct mole_model *model, const char *text, size_t text_len,
                                        int32_t add_bos, int32_t parse_special, int32_t *tokens, size_t capacity,
                                        size_t *n_out) {
    MOLE_GUARD_BEGIN
    MOLE_REQUIRE(model);
    MOLE_REQUIRE(n_out);
    if (!text && text_len > 0)
        return set_error(MOLE_STATUS_INVALID_ARGUMENT, "%s: text is NULL with length %zu", __func__, text_len);
    if (!tokens && capacity > 0)
        return set_error(MOLE_STATUS_INVALID_ARGUMENT, "%s: tokens is NULL with capacity %zu", __func__, capacity);
    if (Status s = need_tokenizer(__func__, model)) return s;
    std::vector<int32_t> ids;
    model->impl->tokenizer->encode(std::string_view(text ? text : "", text_len), add_bos != 0, parse_special != 0, ids);
    *n_out = ids.size();
    if (ids.size() > capacity)
        return set_error(MOLE_STATUS_BUFFER_TOO_SMALL, "%s: room for %zu tokens; %zu needed", __func__, capacity,
                         ids.size());
    if (!ids.empty()) std::memcpy(tokens, ids.data(), ids.size() * sizeof(int32_t));
    return MOLE_STATUS_OK;
    MOLE_GUARD_END
}

MOLE_API enum mole_status mole_token_to_bytes(const struct mole_model *model, int32_t token, char *buf, size_t capacity,
                                              size_t *n_out) {
    MOLE_GUARD_BEGIN
    MOLE_REQUIRE(model);
    MOLE_REQUIRE(n_out);
    if (!buf && capacity > 0)
        return set_error(MOLE_STATUS_INVALID_ARGUMENT, "%s: buf is NULL with capacity %zu", __func__, capacity);
    if (Status s = need_tokenizer(__func__, model)) return s;
    const mole::Tokenizer &t = *model->impl->tokenizer;
    if (!t.valid(token))
        return set_error(MOLE_STATUS_INVALID_ARGUMENT, "token id %d is out of range [0, %d)", token, t.n_vocab());
    return write_bytes(__func__, t.token_bytes(token), buf, capacity, n_out);
    MOLE_GUARD_END
}

MOLE_API enum mole_status mole_detokenize(const struct mole_model *model, const int32_t *tokens, size_t n_tokens,
                                          int32_t skip_special, char *buf, size_t capacity, size_t *n_out) {
    MOLE_GUARD_BEGIN
    MOLE_REQUIRE(model);
    MOLE_REQUIRE(n_out);
    if (!tokens && n_tokens > 0)
        return set_error(MOLE_STATUS_INVALID_ARGUMENT, "%s: tokens is NULL with count %zu", __func__, n_tokens);
    if (!buf && capacity > 0)
        return set_error(MOLE_STATUS_INVALID_ARGUMENT, "%s: buf is NULL with capacity %zu", __func__, capacity);
    if (Status s = need_tokenizer(__func__, model)) return s;
    std::string text;
    if (Status s = model->impl->tokenizer->decode(tokens, n_tokens, skip_special != 0, text)) return s;
    return write_bytes(__func__, text, buf, capacity, n_out);
    MOLE_GUARD_END
}

MOLE_API int32_t mole_token_is_eog(const struct mole_model *model, int32_t token) {
    try {
        if (!model) return 0;
        const mole::Model &m = *model->impl;
        if (m.tokenizer) return m.tokenizer->is_eog(token) ? 1 : 0;
        return token >= 0 && token == m.hp.eos_id ? 1 : 0;
    } catch (...) { return 0; }
}

MOLE_API enum mole_status mole_decoder_new(const struct mole_model *model, struct mole_decoder **out) {
    MOLE_GUARD_BEGIN
    MOLE_REQUIRE(model);
    MOLE_REQUIRE(out);
    *out = nullptr;
    if (Status s = need_tokenizer(__func__, model)) return s;
    auto d = std::make_unique<mole_decoder>();
    d->model = model->impl;
    d->impl = std::make_unique<mole::StreamDecoder>(*model->impl->tokenizer);
    *out = d.release();
    return MOLE_STATUS_OK;
    MOLE_GUARD_END
}

MOLE_API void mole_decoder_free(struct mole_decoder *decoder) { delete decoder; }

// push/flush change the decoder only when the output fits, so a caller can retry with a bigger
// buffer after MOLE_STATUS_BUFFER_TOO_SMALL.
MOLE_API enum mole_status mole_decoder_push(struct mole_decoder *decoder, int32_t token, char *buf, size_t capacity,
                                            size_t *n_out) {
    MOLE_GUARD_BEGIN
    MOLE_REQUIRE(decoder);
    MOLE_REQUIRE(n_out);
    if (!buf && capacity > 0)
        return set_error(MOLE_STATUS_INVALID_ARGUMENT, "%s: buf is NULL with capacity %zu", __func__, capacity);
    auto trial = std::make_unique<mole::StreamDecoder>(*decoder->impl);
    std::string text;
    if (Status s = trial->push(token, text)) return s;
    if (Status s = write_bytes(__func__, text, buf, capacity, n_out)) return s;
    decoder->impl = std::move(trial);
    return MOLE_STATUS_OK;
    MOLE_GUARD_END
}

MOLE_API enum mole_status mole_decoder_flush(struct mole_decoder *decoder, char *buf, size_t capacity, size_t *n_out) {
    MOLE_GUARD_BEGIN
    MOLE_REQUIRE(decoder);
    MOLE_REQUIRE(n_out);
    if (!buf && capacity > 0)
        return set_error(MOLE_STATUS_INVALID_ARGUMENT, "%s: buf is NULL with capacity %zu", __func__, capacity);
    auto trial = std::make_unique<mole::StreamDecoder>(*decoder->impl);
    std::string text;
    trial->flush(text);
    if (Status s = write_bytes(__func__, text, buf, capacity, n_out)) return s;
    decoder->impl = std::move(trial);
    return MOLE_STATUS_OK;
    MOLE_GUARD_END
}

/* ---- context ---- */

MOLE_API void mole_context_default_params(struct mole_context_params *out) {
    if (!out) return;
    out->n_ctx = 0;
    out->n_seq_max = 1;
    out->n_threads = 0;
    out->n_batch = 512;
    out->lut_cache_mb = -1;   // the backend's choice (Backend::default_lut_cache_bytes)
    out->type_kv = -1;        // the backend's choice (BackendInfo::kv_default)
}

MOLE_API enum mole_status mole_context_new(const struct mole_model *model, const struct mole_context_params *params,
                                           struct mole_context **out) {
    MOLE_GUARD_BEGIN
    MOLE_REQUIRE(model);
    MOLE_REQUIRE(out);
    *out = nullptr;
    mole_context_params p;
    mole_context_default_params(&p);
    if (params) p = *params;
    mole::ContextParams cp;
    cp.n_ctx = p.n_ctx;
    cp.n_seq_max = p.n_seq_max;
    cp.n_threads = p.n_threads;
    cp.n_batch = p.n_batch;
    cp.lut_cache_mb = p.lut_cache_mb;
    cp.type_kv = p.type_kv;
    if (Status s = model->impl->file->check_unchanged()) return s;
    auto c = std::make_unique<mole_context>();
    c->model = model->impl;
    c->impl = std::make_unique<mole::Context>();
    if (Status s = c->impl->init(*model->impl, cp)) return s;
    *out = c.release();
    return MOLE_STATUS_OK;
    MOLE_GUARD_END
}

MOLE_API void mole_context_free(struct mole_context *ctx) { delete ctx; }

MOLE_API enum mole_status mole_context_get_params(const struct mole_context *ctx, struct mole_context_params *out) {
    MOLE_GUARD_BEGIN
    MOLE_REQUIRE(ctx);
    MOLE_REQUIRE(out);
    const mole::ContextParams &p = ctx->impl->params;
    out->n_ctx = p.n_ctx;
    out->n_seq_max = p.n_seq_max;
    out->n_threads = p.n_threads;
    out->n_batch = p.n_batch;
    out->lut_cache_mb = p.lut_cache_mb;
    out->type_kv = p.type_kv;
    return MOLE_STATUS_OK;
    MOLE_GUARD_END
}

MOLE_API enum mole_status mole_decode(struct mole_context *ctx, int32_t n_tokens, const int32_t *tokens,
                                      const int32_t *seq_ids, const int8_t *want_logits, float *logits,
                                      size_t capacity) {
    MOLE_GUARD_BEGIN
    MOLE_REQUIRE(ctx);
    return ctx->impl->decode(n_tokens, tokens, seq_ids, want_logits, logits, capacity);
    MOLE_GUARD_END
}

MOLE_API enum mole_status mole_seq_length(const struct mole_context *ctx, int32_t seq_id, int32_t *out) {
    MOLE_GUARD_BEGIN
    MOLE_REQUIRE(ctx);
    MOLE_REQUIRE(out);
    const mole::Context &c = *ctx->impl;
    if (seq_id < 0 || seq_id >= c.params.n_seq_max)
        return set_error(MOLE_STATUS_INVALID_ARGUMENT, "seq id %d is out of range [0, %d)", seq_id, c.params.n_seq_max);
    *out = c.seq_len[static_cast<size_t>(seq_id)];
    return MOLE_STATUS_OK;
    MOLE_GUARD_END
}

MOLE_API enum mole_status mole_seq_truncate(struct mole_context *ctx, int32_t seq_id, int32_t n_keep) {
    MOLE_GUARD_BEGIN
    MOLE_REQUIRE(ctx);
    return ctx->impl->truncate(seq_id, n_keep);
    MOLE_GUARD_END
}

MOLE_API void mole_context_cancel(struct mole_context *ctx) {
    if (ctx && ctx->impl) ctx->impl->cancel.store(true);
}

MOLE_API enum mole_status mole_context_get_stats(const struct mole_context *ctx, struct mole_stats *out) {
    MOLE_GUARD_BEGIN
    MOLE_REQUIRE(ctx);
    MOLE_REQUIRE(out);
    const mole::Context &c = *ctx->impl;
    out->lut_rows_fetched = c.lut.counters().rows_fetched;
    out->lut_bytes_fetched = c.lut.counters().bytes_fetched;
    out->lut_cache_hits = c.lut.counters().cache_hits;
    out->tokens_evaluated = c.stats.tokens_evaluated;
    out->steps = c.stats.steps;
    out->lut_cache_bytes = c.lut.cache_bytes_used();
    out->t_eval_ms = c.stats.t_eval_ms;
    out->t_lut_ms = c.stats.t_lut_ms;
    const mole::LutDeviceCounters dc = c.backend->lut_counters();
    out->lut_bytes_to_device = dc.bytes_to_device - c.stats.lut_base.bytes_to_device;
    out->t_lut_wait_ms = dc.wait_ms - c.stats.lut_base.wait_ms;
    return MOLE_STATUS_OK;
    MOLE_GUARD_END
}

MOLE_API void mole_context_reset_stats(struct mole_context *ctx) {
    if (!ctx || !ctx->impl) return;
    ctx->impl->lut.counters() = mole::LutCounters{};
    ctx->impl->stats = mole::Stats{};
    ctx->impl->stats.lut_base = ctx->impl->backend->lut_counters();
}

/* ---- sampler ---- */

MOLE_API void mole_sampler_default_params(struct mole_sampler_params *out) {
    if (!out) return;
    out->temperature = 0.8f;
    out->top_k = 40;
    out->top_p = 0.95f;
    out->min_p = 0.05f;
    out->repeat_penalty = 1.0f;
    out->repeat_last_n = 64;
    out->seed = 0;
}

MOLE_API enum mole_status mole_sampler_new(const struct mole_sampler_params *params, struct mole_sampler **out) {
    MOLE_GUARD_BEGIN
    MOLE_REQUIRE(out);
    *out = nullptr;
    mole_sampler_params p;
    mole_sampler_default_params(&p);
    if (params) p = *params;
    auto s = std::make_unique<mole_sampler>();
    if (Status st = mole::Sampler::create(p, &s->impl)) return st;
    *out = s.release();
    return MOLE_STATUS_OK;
    MOLE_GUARD_END
}

MOLE_API void mole_sampler_free(struct mole_sampler *sampler) { delete sampler; }

MOLE_API enum mole_status mole_sampler_sample(struct mole_sampler *sampler, const float *logits, int32_t n_vocab,
                                              int32_t *token_out) {
    MOLE_GUARD_BEGIN
    MOLE_REQUIRE(sampler);
    MOLE_REQUIRE(logits);
    MOLE_REQUIRE(token_out);
    return sampler->impl->sample(logits, n_vocab, token_out);
    MOLE_GUARD_END
}

MOLE_API enum mole_status mole_sampler_accept(struct mole_sampler *sampler, int32_t token) {
    MOLE_GUARD_BEGIN
    MOLE_REQUIRE(sampler);
    if (token < 0) return set_error(MOLE_STATUS_INVALID_ARGUMENT, "token id %d is negative", token);
    sampler->impl->accept(token);
    return MOLE_STATUS_OK;
    MOLE_GUARD_END
}

MOLE_API void mole_sampler_reset(struct mole_sampler *sampler) {
    if (sampler && sampler->impl) sampler->impl->reset();
}

}  // extern "C"
