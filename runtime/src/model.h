// A loaded mole model: hyperparameters, and every weight as a view into the read-only mapping.
// Read-only after load; shared by any number of contexts.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "gguf.h"
#include "mmap.h"
#include "tokenizer.h"

namespace mole {

struct Hparams {
    int32_t n_vocab = 0;        // V
    int32_t n_ctx_train = 0;
    int32_t n_embd = 0;         // d
    int32_t n_layer = 0;        // L
    int32_t n_ff = 0;           // D (shared FFN)
    int32_t n_expert = 0;       // N (0: dense, no router / LUT)
    int32_t n_ff_expert = 0;
    int32_t n_head = 0;
    int32_t n_head_kv = 0;
    int32_t head_dim = 0;       // hd = d / n_head
    float rms_eps = 1e-6f;
    float rope_theta = 10000.0f;
    float rope_freq_scale = 1.0f;   // 1 / linear scaling factor
    int32_t bos_id = -1, eos_id = -1, pad_id = -1;
};

struct LayerWeights {
    Weight attn_norm;   // [d] f32
    Weight wq;          // [d, n_head*hd]     (ne0 = d: one row per output)
    Weight wk;          // [d, n_head_kv*hd]
    Weight wv;          // [d, n_head_kv*hd]
    Weight wo;          // [n_head*hd, d]
    Weight ffn_norm;    // [d] f32
    Weight ffn_up;      // [d, D]
    Weight ffn_down;    // [D, d]
    Weight router;      // [d, N] f32 (absent when N = 0)
};

struct Model {
    std::unique_ptr<MappedFile> file;
    Gguf gguf;
    Hparams hp;
    Weight tok_embd;                  // [d, V]
    std::vector<LayerWeights> layers; // [L]
    Weight output_norm;               // [d] f32
    Weight output;                    // [d, V]
    Weight lut;                       // [L*N*d, V]; row v = token v's expert outputs [L, N, d]
    std::unique_ptr<Tokenizer> tokenizer;   // null if the file has no tokenizer.ggml.tokens
    uint64_t dense_bytes = 0;
    uint64_t n_params_dense = 0;
    std::vector<const Weight *> weights;    // every tensor above but the LUT, in id order (Weight::id)
    const BackendInfo *backend = nullptr;   // the device the model was loaded for
    int32_t device_index = 0;
    std::unique_ptr<WeightStore> device_weights;   // that backend's copy of the weights
};

struct LoadOptions {
    bool check_tensors = false;   // scan every tensor's values for NaN/Inf
    int32_t device = 0;           // enum mole_device
    int32_t device_index = 0;
};

// Maps `path`, validates it as a mole GGUF, gives the weights to the device's backend and fills
// *out. Errors name the key or tensor, or why the device cannot be used.
Status load_model(const std::string &path, const LoadOptions &opts, std::unique_ptr<Model> *out);

// All metadata as one JSON object.
std::string metadata_json(const Gguf &gguf);

}  // namespace mole
