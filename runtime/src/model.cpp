// Model load: hyperparameters from the `mole.*` keys, then every tensor bound by name with its
// expected shape and allowed types; nothing unexpected may be left over.
//
// Keys (names.h). Required: general.architecture = "mole", mole.vocab_size, mole.context_length,
//   mole.embedding_length, mole.block_count, mole.feed_forward_length, mole.expert_count,
//   mole.attention.head_count.
// Optional (default): mole.attention.head_count_kv (head_count), mole.expert_feed_forward_length
//   (feed_forward_length), mole.attention.layer_norm_rms_epsilon (1e-6), mole.rope.freq_base
//   (10000), mole.rope.scaling.type ("none"; "linear" needs mole.rope.scaling.factor > 0),
//   tokenizer.ggml.{bos,eos,padding}_token_id (absent: -1), general.alignment (32).
//
// The dense weights then go to the device's backend (Model::device_weights): the CPU repacks
// them, a GPU uploads them. The LUT stays in the mapping.
#include "model.h"

#include <cinttypes>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <set>
#include <vector>

#include "names.h"

namespace mole {

namespace {

constexpr unsigned kAllTypes = (1u << 0) | (1u << 1) | (1u << 2) | (1u << 8) | (1u << 30);
constexpr unsigned kF32 = 1u << 0;
constexpr unsigned kEmbdTypes = (1u << 0) | (1u << 1) | (1u << 8) | (1u << 30);
constexpr unsigned kLutTypes = kAllTypes | (1u << 11) | (1u << 20);   // + Q3_K, IQ4_NL: row-wise LUT types

std::string type_list(unsigned mask) {
    std::string s;
    for (uint32_t t : {0u, 1u, 30u, 8u, 2u, 20u, 11u})
        if (mask & (1u << t)) {
            if (!s.empty()) s += "/";
            s += type_name(static_cast<Type>(t));
        }
    return s;
}

struct Binder {
    const Model &m;
    std::set<std::string> used;
    std::vector<const Weight *> weights;

    // Binds tensor `name` of shape [ne0] or [ne0, ne1] with a type in `types`.
    Status bind(const std::string &name, int64_t ne0, int64_t ne1, unsigned types, Weight *w) {
        w->use = ne1 == 0 ? WeightUse::Vector : name == names::TENSOR_TOKEN_EMBD ? WeightUse::Rows : WeightUse::Matrix;
        const std::string &path = m.file->path();
        const GgufTensor *t = m.gguf.find_tensor(name);
        if (!t) return set_error(MOLE_STATUS_FORMAT_ERROR, "%s: missing tensor '%s'", path.c_str(), name.c_str());
        bool one_d = ne1 == 0;
        bool shape_ok =
            one_d ? (t->n_dims == 1 && t->ne[0] == ne0) : (t->n_dims == 2 && t->ne[0] == ne0 && t->ne[1] == ne1);
        if (!shape_ok) {
            std::string want =
                one_d ? "[" + std::to_string(ne0) + "]" : "[" + std::to_string(ne0) + ", " + std::to_string(ne1) + "]";
            return set_error(MOLE_STATUS_FORMAT_ERROR, "%s: tensor '%s': expected shape %s, got %s", path.c_str(),
                             name.c_str(), want.c_str(), t->shape_string().c_str());
        }
        if (t->type >= 32 || !(types & (1u << t->type)))
            return set_error(MOLE_STATUS_FORMAT_ERROR, "%s: tensor '%s': type %s is not allowed here (allowed: %s)",
                             path.c_str(), name.c_str(), type_name(static_cast<Type>(t->type)),
                             type_list(types).c_str());
        if (t->offset % 4 != 0)
            return set_error(MOLE_STATUS_FORMAT_ERROR, "%s: tensor '%s': data offset %llu is not 4-byte aligned",
                             path.c_str(), name.c_str(), static_cast<unsigned long long>(t->offset));
        w->data = m.file->data() + t->offset;
        w->type = static_cast<Type>(t->type);
        w->ne0 = t->ne[0];
        w->ne1 = one_d ? 1 : t->ne[1];
        w->offset = t->offset;
        w->nbytes = t->nbytes;
        if (name != names::TENSOR_LUT) {   // the LUT never goes to the device whole
            w->id = int32_t(weights.size());
            weights.push_back(w);
        }
        used.insert(name);
        return MOLE_STATUS_OK;
    }
};

// Reads a required (or optional) positive integer key into *out.
Status int_key(const Model &m, const char *key, bool required, int32_t def, int32_t *out) {
    uint32_t v = 0;
    bool found = false;
    if (Status s = m.gguf.get_u32(key, &v, &found)) return s;
    if (!found) {
        if (required)
            return set_error(MOLE_STATUS_FORMAT_ERROR, "%s: missing required key '%s'", m.file->path().c_str(), key);
        *out = def;
        return MOLE_STATUS_OK;
    }
    if (v > static_cast<uint32_t>(INT32_MAX))
        return set_error(MOLE_STATUS_FORMAT_ERROR, "%s: key '%s' = %u is too large", m.file->path().c_str(), key, v);
    *out = static_cast<int32_t>(v);
    return MOLE_STATUS_OK;
}

Status token_id_key(const Model &m, const char *key, int32_t *out) {
    int32_t v = -1;
    if (Status s = int_key(m, key, false, -1, &v)) return s;
    if (v >= m.hp.n_vocab)
        return set_error(MOLE_STATUS_FORMAT_ERROR, "%s: key '%s' = %d is outside the vocabulary (%d tokens)",
                         m.file->path().c_str(), key, v, m.hp.n_vocab);
    *out = v;
    return MOLE_STATUS_OK;
}

Status read_hparams(Model &m) {
    const std::string &path = m.file->path();
    std::string_view arch;
    bool found = false;
    if (Status s = m.gguf.get_string(names::KEY_ARCHITECTURE, &arch, &found)) return s;
    if (!found)
        return set_error(MOLE_STATUS_FORMAT_ERROR, "%s: missing required key '%s'", path.c_str(),
                         names::KEY_ARCHITECTURE);
    if (arch != names::ARCH)
        return set_error(MOLE_STATUS_FORMAT_ERROR, "%s: general.architecture is '%.*s', expected '%s'", path.c_str(),
                         static_cast<int>(arch.size()), arch.data(), names::ARCH);
    Hparams &hp = m.hp;
    if (Status s = int_key(m, names::KEY_VOCAB_SIZE, true, 0, &hp.n_vocab)) return s;
    if (Status s = int_key(m, names::KEY_CONTEXT_LENGTH, true, 0, &hp.n_ctx_train)) return s;
    if (Status s = int_key(m, names::KEY_EMBEDDING_LENGTH, true, 0, &hp.n_embd)) return s;
    if (Status s = int_key(m, names::KEY_BLOCK_COUNT, true, 0, &hp.n_layer)) return s;
    if (Status s = int_key(m, names::KEY_FEED_FORWARD_LENGTH, true, 0, &hp.n_ff)) return s;
    if (Status s = int_key(m, names::KEY_EXPERT_COUNT, true, 0, &hp.n_expert)) return s;
    if (Status s = int_key(m, names::KEY_HEAD_COUNT, true, 0, &hp.n_head)) return s;
    if (Status s = int_key(m, names::KEY_HEAD_COUNT_KV, false, hp.n_head, &hp.n_head_kv)) return s;
    if (Status s = int_key(m, names::KEY_EXPERT_FEED_FORWARD_LENGTH, false, hp.n_ff, &hp.n_ff_expert)) return s;

    struct {
        const char *key;
        int32_t v;
    } positive[] = {{names::KEY_VOCAB_SIZE, hp.n_vocab},       {names::KEY_CONTEXT_LENGTH, hp.n_ctx_train},
                    {names::KEY_EMBEDDING_LENGTH, hp.n_embd},  {names::KEY_BLOCK_COUNT, hp.n_layer},
                    {names::KEY_FEED_FORWARD_LENGTH, hp.n_ff}, {names::KEY_HEAD_COUNT, hp.n_head},
                    {names::KEY_HEAD_COUNT_KV, hp.n_head_kv}};
    for (auto &p : positive)
        if (p.v < 1)
            return set_error(MOLE_STATUS_FORMAT_ERROR, "%s: key '%s' must be at least 1, got %d", path.c_str(), p.key,
                             p.v);
    if (hp.n_embd % hp.n_head != 0)
        return set_error(MOLE_STATUS_FORMAT_ERROR, "%s: embedding_length %d is not a multiple of head_count %d",
                         path.c_str(), hp.n_embd, hp.n_head);
    if (hp.n_head % hp.n_head_kv != 0)
        return set_error(MOLE_STATUS_FORMAT_ERROR, "%s: head_count %d is not a multiple of head_count_kv %d",
                         path.c_str(), hp.n_head, hp.n_head_kv);
    hp.head_dim = hp.n_embd / hp.n_head;
    if (hp.head_dim % 2 != 0)
        return set_error(MOLE_STATUS_FORMAT_ERROR, "%s: head dimension %d is odd; rotate-half RoPE needs an even one",
                         path.c_str(), hp.head_dim);
    // L*N*d must fit the LUT row arithmetic in int64 comfortably.
    if (static_cast<int64_t>(hp.n_layer) * hp.n_expert * hp.n_embd > (int64_t(1) << 40))
        return set_error(MOLE_STATUS_FORMAT_ERROR, "%s: block_count x expert_count x embedding_length is too large",
                         path.c_str());

    if (Status s = m.gguf.get_f32(names::KEY_RMS_EPS, &hp.rms_eps, &found)) return s;
    if (!(hp.rms_eps > 0.0f) || !std::isfinite(hp.rms_eps))
        return set_error(MOLE_STATUS_FORMAT_ERROR, "%s: key '%s' must be a positive number, got %g", path.c_str(),
                         names::KEY_RMS_EPS, hp.rms_eps);
    if (Status s = m.gguf.get_f32(names::KEY_ROPE_FREQ_BASE, &hp.rope_theta, &found)) return s;
    if (!(hp.rope_theta > 0.0f) || !std::isfinite(hp.rope_theta))
        return set_error(MOLE_STATUS_FORMAT_ERROR, "%s: key '%s' must be a positive number, got %g", path.c_str(),
                         names::KEY_ROPE_FREQ_BASE, hp.rope_theta);
    std::string_view scaling = "none";
    if (Status s = m.gguf.get_string(names::KEY_ROPE_SCALING_TYPE, &scaling, &found)) return s;
    if (scaling == "linear") {
        float factor = 0.0f;
        if (Status s = m.gguf.get_f32(names::KEY_ROPE_SCALING_FACTOR, &factor, &found)) return s;
        if (!found || !(factor > 0.0f) || !std::isfinite(factor))
            return set_error(MOLE_STATUS_FORMAT_ERROR, "%s: linear RoPE scaling needs a positive '%s'", path.c_str(),
                             names::KEY_ROPE_SCALING_FACTOR);
        hp.rope_freq_scale = 1.0f / factor;
    } else if (scaling != "none" && !scaling.empty()) {
        return set_error(MOLE_STATUS_FORMAT_ERROR,
                         "%s: RoPE scaling type '%.*s' is not supported (supported: none, linear)", path.c_str(),
                         static_cast<int>(scaling.size()), scaling.data());
    }
    if (Status s = token_id_key(m, names::KEY_BOS_ID, &hp.bos_id)) return s;
    if (Status s = token_id_key(m, names::KEY_EOS_ID, &hp.eos_id)) return s;
    if (Status s = token_id_key(m, names::KEY_PAD_ID, &hp.pad_id)) return s;
    return MOLE_STATUS_OK;
}

Status bind_tensors(Model &m) {
    const Hparams &hp = m.hp;
    const int64_t d = hp.n_embd, V = hp.n_vocab, D = hp.n_ff, N = hp.n_expert, L = hp.n_layer;
    const int64_t q_dim = int64_t(hp.n_head) * hp.head_dim, kv_dim = int64_t(hp.n_head_kv) * hp.head_dim;
    Binder b{m, {}, {}};
    if (Status s = b.bind(names::TENSOR_TOKEN_EMBD, d, V, kEmbdTypes, &m.tok_embd)) return s;
    m.layers.resize(static_cast<size_t>(L));
    for (int i = 0; i < L; ++i) {
        LayerWeights &l = m.layers[i];
        auto n = [i](const char *t) { return names::layer_name(t, i); };
        if (Status s = b.bind(n(names::TENSOR_ATTN_NORM), d, 0, kF32, &l.attn_norm)) return s;
        if (Status s = b.bind(n(names::TENSOR_ATTN_Q), d, q_dim, kAllTypes, &l.wq)) return s;
        if (Status s = b.bind(n(names::TENSOR_ATTN_K), d, kv_dim, kAllTypes, &l.wk)) return s;
        if (Status s = b.bind(n(names::TENSOR_ATTN_V), d, kv_dim, kAllTypes, &l.wv)) return s;
        if (Status s = b.bind(n(names::TENSOR_ATTN_OUT), q_dim, d, kAllTypes, &l.wo)) return s;
        if (Status s = b.bind(n(names::TENSOR_FFN_NORM), d, 0, kF32, &l.ffn_norm)) return s;
        if (Status s = b.bind(n(names::TENSOR_FFN_UP), d, D, kAllTypes, &l.ffn_up)) return s;
        if (Status s = b.bind(n(names::TENSOR_FFN_DOWN), D, d, kAllTypes, &l.ffn_down)) return s;
        if (N > 0)
            if (Status s = b.bind(n(names::TENSOR_ROUTER), d, N, kF32, &l.router)) return s;
    }
    if (Status s = b.bind(names::TENSOR_OUTPUT_NORM, d, 0, kF32, &m.output_norm)) return s;
    if (Status s = b.bind(names::TENSOR_OUTPUT, d, V, kAllTypes, &m.output)) return s;
    if (N > 0) {
        if (Status s = b.bind(names::TENSOR_LUT, L * N * d, V, kLutTypes, &m.lut)) return s;
        for (const GgufTensor &t : m.gguf.tensors())
            if (t.name != names::TENSOR_LUT && t.offset > m.lut.offset)
                return set_error(MOLE_STATUS_FORMAT_ERROR,
                                 "%s: tensor '%s' lies after 'lut.weight'; the LUT must be the last tensor in the file",
                                 m.file->path().c_str(), t.name.c_str());
    }
    for (const GgufTensor &t : m.gguf.tensors()) {
        if (!b.used.count(t.name)) {
            const char *why = t.name == names::TENSOR_LUT || t.name.find("ffn_gate_inp") != std::string::npos
                ? " (mole.expert_count is 0: a dense model has no router or LUT)"
                : "";
            return set_error(MOLE_STATUS_FORMAT_ERROR, "%s: unexpected tensor '%s'%s", m.file->path().c_str(),
                             t.name.c_str(), why);
        }
        if (t.name != names::TENSOR_LUT) {
            m.dense_bytes += t.nbytes;
            m.n_params_dense += static_cast<uint64_t>(t.n_elements());
        }
    }
    m.weights = std::move(b.weights);
    return MOLE_STATUS_OK;
}

// Builds the tokenizer from tokenizer.ggml.* when the file has a vocabulary.
Status load_tokenizer(Model &m) {
    const std::string &path = m.file->path();
    std::string_view chat_template;   // rendered by the bindings (Jinja); here only its type is checked
    bool found_template = false;
    if (Status s = m.gguf.get_string(names::KEY_CHAT_TEMPLATE, &chat_template, &found_template)) return s;
    const GgufValue *tokens = m.gguf.find(names::KEY_TOKENS);
    if (!tokens) return MOLE_STATUS_OK;
    std::string_view model_name = "gpt2", pre = "default";
    bool found = false;
    if (Status s = m.gguf.get_string(names::KEY_TOKENIZER_MODEL, &model_name, &found)) return s;
    if (model_name != "gpt2")
        return set_error(MOLE_STATUS_FORMAT_ERROR,
                         "%s: tokenizer model '%.*s' is not supported (only 'gpt2' byte-level BPE)", path.c_str(),
                         static_cast<int>(model_name.size()), model_name.data());
    if (Status s = m.gguf.get_string(names::KEY_TOKENIZER_PRE, &pre, &found)) return s;
    if (tokens->type != GgufType::ARRAY || tokens->elem_type != GgufType::STRING)
        return set_error(MOLE_STATUS_FORMAT_ERROR, "%s: key '%s' must be an array of strings", path.c_str(),
                         names::KEY_TOKENS);
    if (tokens->count > static_cast<uint64_t>(m.hp.n_vocab))
        return set_error(MOLE_STATUS_FORMAT_ERROR, "%s: the tokenizer has %llu tokens, more than vocab_size %d",
                         path.c_str(), static_cast<unsigned long long>(tokens->count), m.hp.n_vocab);
    TokenizerData data;
    data.tokens.reserve(tokens->strings.size());
    for (std::string_view t : tokens->strings) data.tokens.emplace_back(t);
    if (const GgufValue *types = m.gguf.find(names::KEY_TOKEN_TYPE)) {
        bool int_elems = types->type == GgufType::ARRAY && types->elem_type != GgufType::STRING &&
            types->elem_type != GgufType::ARRAY && types->elem_type != GgufType::FLOAT32 &&
            types->elem_type != GgufType::FLOAT64;
        if (!int_elems || types->count != tokens->count)
            return set_error(MOLE_STATUS_FORMAT_ERROR,
                             "%s: key '%s' must be an integer array with one entry per token (%llu)", path.c_str(),
                             names::KEY_TOKEN_TYPE, static_cast<unsigned long long>(tokens->count));
        data.token_types.resize(static_cast<size_t>(types->count));
        for (uint64_t i = 0; i < types->count; ++i) {
            int64_t t = types->elem_int(i);
            data.token_types[i] = t < INT32_MIN || t > INT32_MAX ? -1 : static_cast<int32_t>(t);
        }
    }
    if (const GgufValue *merges = m.gguf.find(names::KEY_MERGES)) {
        if (merges->type != GgufType::ARRAY || merges->elem_type != GgufType::STRING)
            return set_error(MOLE_STATUS_FORMAT_ERROR, "%s: key '%s' must be an array of strings", path.c_str(),
                             names::KEY_MERGES);
        data.merges.reserve(merges->strings.size());
        for (std::string_view t : merges->strings) data.merges.emplace_back(t);
    }
    data.pre = std::string(pre);
    for (int32_t id : {m.hp.bos_id, m.hp.eos_id, m.hp.pad_id})
        if (id >= static_cast<int64_t>(tokens->count))
            return set_error(MOLE_STATUS_FORMAT_ERROR, "%s: special token id %d is past the tokenizer's %llu tokens",
                             path.c_str(), id, static_cast<unsigned long long>(tokens->count));
    data.bos = m.hp.bos_id;
    data.eos = m.hp.eos_id;
    data.pad = m.hp.pad_id;
    if (Status s = Tokenizer::create(std::move(data), &m.tokenizer)) {
        const std::string why = last_error();   // names the token or merge; the path says which file
        return set_error(s, "%s: %s", path.c_str(), why.c_str());
    }
    return MOLE_STATUS_OK;
}

// Dequantizes every row of every tensor and rejects NaN/Inf.
Status scan_tensors(const Model &m) {
    std::vector<float> row;
    for (const GgufTensor &t : m.gguf.tensors()) {
        int64_t n_rows = t.n_elements() / t.ne[0];
        uint64_t rb = t.nbytes / static_cast<uint64_t>(n_rows);
        row.resize(static_cast<size_t>(t.ne[0]));
        for (int64_t r = 0; r < n_rows; ++r) {
            dequantize_row_ref(static_cast<Type>(t.type), m.file->data() + t.offset + r * rb, row.data(), t.ne[0]);
            for (int64_t c = 0; c < t.ne[0]; ++c)
                if (!std::isfinite(row[c]))
                    return set_error(MOLE_STATUS_FORMAT_ERROR,
                                     "%s: tensor '%s': non-finite value %g at row %" PRId64 ", column %" PRId64,
                                     m.file->path().c_str(), t.name.c_str(), row[c], r, c);
        }
    }
    return MOLE_STATUS_OK;
}

// The backend of opts.device, asked whether it can run here before the file is read.
Status find_device(const LoadOptions &opts, const BackendInfo **out) {
    const char *name = opts.device == MOLE_DEVICE_CUDA ? "CUDA" : opts.device == MOLE_DEVICE_CPU ? "CPU" : "?";
    *out = find_backend(opts.device);
    if (!*out)
        return set_error(MOLE_STATUS_UNSUPPORTED, "device %s: this build of libmole has no %s backend", name, name);
    return (*out)->probe(opts.device_index);
}

}  // namespace

Status load_model(const std::string &path, const LoadOptions &opts, std::unique_ptr<Model> *out) {
    auto m = std::make_unique<Model>();
    if (Status s = find_device(opts, &m->backend)) return s;
    m->device_index = opts.device_index;
    if (Status s = MappedFile::open(path, &m->file)) return s;
    if (Status s = m->gguf.parse(m->file->data(), m->file->size(), path)) return s;
    if (Status s = read_hparams(*m)) return s;
    if (Status s = bind_tensors(*m)) return s;
    if (Status s = load_tokenizer(*m)) return s;
    if (opts.check_tensors)
        if (Status s = scan_tensors(*m)) return s;
    // Dense weights are read in place: page them in now, over exactly their range (the whole
    // mapping is MADV_RANDOM, so nothing is read around faults). The LUT is only ever read row by
    // row and is never prefetched; its first page is left out when it shares one with dense data.
    uint64_t dense_end = m->hp.n_expert > 0 ? m->lut.offset : m->file->size();
    uint64_t ps = page_size();
    uint64_t dense_end_page = m->hp.n_expert > 0 ? dense_end / ps * ps : dense_end;
    if (dense_end_page > 0) m->file->advise_willneed(0, dense_end_page);
    if (m->hp.n_expert > 0) m->file->advise_random(m->lut.offset, m->lut.nbytes);
    if (Status s = m->backend->load_weights(m->weights.data(), int32_t(m->weights.size()), m->file.get(),
                                            opts.device_index, &m->device_weights))
        return s;
    *out = std::move(m);
    return MOLE_STATUS_OK;
}

namespace {

void json_string(std::string &o, std::string_view s) {
    o += '"';
    size_t i = 0;
    while (i < s.size()) {
        unsigned char c = static_cast<unsigned char>(s[i]);
        if (c == '"') {
            o += "\\\"";
            ++i;
            continue;
        }
        if (c == '\\') {
            o += "\\\\";
            ++i;
            continue;
        }
        if (c < 0x20) {
            char buf[8];
            switch (c) {
            case '\n': o += "\\n"; break;
            case '\r': o += "\\r"; break;
            case '\t': o += "\\t"; break;
            default: std::snprintf(buf, sizeof buf, "\\u%04x", c); o += buf;
            }
            ++i;
            continue;
        }
        if (c < 0x80) {
            o += static_cast<char>(c);
            ++i;
            continue;
        }
        // Copy a valid UTF-8 sequence; replace an invalid byte with U+FFFD.
        int len = (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
        bool ok = len > 0 && i + len <= s.size();
        for (int k = 1; ok && k < len; ++k) ok = (static_cast<unsigned char>(s[i + k]) & 0xC0) == 0x80;
        if (ok && len == 2) ok = c >= 0xC2;
        if (ok && len == 3) {
            unsigned char c1 = static_cast<unsigned char>(s[i + 1]);
            ok = !(c == 0xE0 && c1 < 0xA0) && !(c == 0xED && c1 >= 0xA0);
        }
        if (ok && len == 4) {
            unsigned char c1 = static_cast<unsigned char>(s[i + 1]);
            ok = c <= 0xF4 && !(c == 0xF0 && c1 < 0x90) && !(c == 0xF4 && c1 >= 0x90);
        }
        if (ok) {
            o.append(s.data() + i, static_cast<size_t>(len));
            i += static_cast<size_t>(len);
        } else {
            o += "\xEF\xBF\xBD";
            ++i;
        }
    }
    o += '"';
}

// A float key's value (an f32 widened to double: its exact value): 17 digits round-trip, and a
// JSON reader must see a float even when the value is whole (10000.0, not 10000).
void json_number(std::string &o, double v) {
    if (!std::isfinite(v)) {
        o += "null";
        return;
    }
    char buf[40];
    std::snprintf(buf, sizeof buf, "%.17g", v);
    o += buf;
    if (!std::strpbrk(buf, ".eE")) o += ".0";
}

void json_value(std::string &o, const GgufValue &v) {
    switch (v.type) {
    case GgufType::STRING: json_string(o, v.str); return;
    case GgufType::BOOL: o += v.u64 ? "true" : "false"; return;
    case GgufType::FLOAT32:
    case GgufType::FLOAT64: json_number(o, v.f64); return;
    case GgufType::UINT64: o += std::to_string(v.u64); return;
    case GgufType::ARRAY: break;
    default: o += std::to_string(v.i64); return;
    }
    o += '[';
    for (uint64_t i = 0; i < v.count; ++i) {
        if (i) o += ',';
        if (v.elem_type == GgufType::STRING)
            json_string(o, v.strings[i]);
        else if (v.elem_type == GgufType::ARRAY)
            json_value(o, v.arrays[i]);
        else if (v.elem_type == GgufType::BOOL)
            o += v.elem_int(i) ? "true" : "false";
        else if (v.elem_type == GgufType::FLOAT32 || v.elem_type == GgufType::FLOAT64)
            json_number(o, v.elem_float(i));
        else if (v.elem_type == GgufType::UINT64)
            o += std::to_string(static_cast<uint64_t>(v.elem_int(i)));
        else
            o += std::to_string(v.elem_int(i));
    }
    o += ']';
}

}  // namespace

std::string metadata_json(const Gguf &gguf) {
    std::string o = "{";
    bool first = true;
    for (const auto &kv : gguf.kv()) {
        if (!first) o += ',';
        first = false;
        json_string(o, kv.first);
        o += ':';
        json_value(o, kv.second);
    }
    o += '}';
    return o;
}

}  // namespace mole
