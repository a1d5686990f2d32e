// GGUF key and tensor names of architecture `mole`: the C++ twin of python/mole/gguf_names.py
// (same identifiers, same strings; tests/test_names.py checks they agree). {i} is the layer.
#pragma once

#include <string>

namespace mole::names {

inline constexpr const char *ARCH = "mole";
inline constexpr unsigned ALIGNMENT = 4096;

// GGUF metadata keys.
inline constexpr const char *KEY_ARCHITECTURE = "general.architecture";
inline constexpr const char *KEY_NAME = "general.name";
inline constexpr const char *KEY_ALIGNMENT = "general.alignment";
inline constexpr const char *KEY_VOCAB_SIZE = "mole.vocab_size";
inline constexpr const char *KEY_CONTEXT_LENGTH = "mole.context_length";
inline constexpr const char *KEY_EMBEDDING_LENGTH = "mole.embedding_length";
inline constexpr const char *KEY_BLOCK_COUNT = "mole.block_count";
inline constexpr const char *KEY_FEED_FORWARD_LENGTH = "mole.feed_forward_length";
inline constexpr const char *KEY_EXPERT_COUNT = "mole.expert_count";
inline constexpr const char *KEY_EXPERT_FEED_FORWARD_LENGTH = "mole.expert_feed_forward_length";
inline constexpr const char *KEY_HEAD_COUNT = "mole.attention.head_count";
inline constexpr const char *KEY_HEAD_COUNT_KV = "mole.attention.head_count_kv";
inline constexpr const char *KEY_RMS_EPS = "mole.attention.layer_norm_rms_epsilon";
inline constexpr const char *KEY_ROPE_FREQ_BASE = "mole.rope.freq_base";
inline constexpr const char *KEY_ROPE_SCALING_TYPE = "mole.rope.scaling.type";
inline constexpr const char *KEY_ROPE_SCALING_FACTOR = "mole.rope.scaling.factor";
inline constexpr const char *KEY_TOKENIZER_MODEL = "tokenizer.ggml.model";
inline constexpr const char *KEY_TOKENIZER_PRE = "tokenizer.ggml.pre";
inline constexpr const char *KEY_TOKENS = "tokenizer.ggml.tokens";
inline constexpr const char *KEY_TOKEN_TYPE = "tokenizer.ggml.token_type";
inline constexpr const char *KEY_MERGES = "tokenizer.ggml.merges";
inline constexpr const char *KEY_BOS_ID = "tokenizer.ggml.bos_token_id";
inline constexpr const char *KEY_EOS_ID = "tokenizer.ggml.eos_token_id";
inline constexpr const char *KEY_PAD_ID = "tokenizer.ggml.padding_token_id";
inline constexpr const char *KEY_CHAT_TEMPLATE = "tokenizer.chat_template";
// The converter's quality gate of a LUT below 8 bits (informational: the runtime only shows them).
inline constexpr const char *KEY_LUT_KL_VS_Q8_0 = "mole.lut.kl_vs_q8_0";
inline constexpr const char *KEY_LUT_PPL_RATIO_VS_Q8_0 = "mole.lut.ppl_ratio_vs_q8_0";
inline constexpr const char *KEY_LUT_CALIBRATION = "mole.lut.calibration";

// GGUF tensor names (ggml order, ne0 first).
inline constexpr const char *TENSOR_TOKEN_EMBD = "token_embd.weight";         // [d, V]
inline constexpr const char *TENSOR_ATTN_NORM = "blk.{i}.attn_norm.weight";   // [d]
inline constexpr const char *TENSOR_ATTN_Q = "blk.{i}.attn_q.weight";         // [d, n_head*hd]
inline constexpr const char *TENSOR_ATTN_K = "blk.{i}.attn_k.weight";         // [d, n_head_kv*hd]
inline constexpr const char *TENSOR_ATTN_V = "blk.{i}.attn_v.weight";         // [d, n_head_kv*hd]
inline constexpr const char *TENSOR_ATTN_OUT = "blk.{i}.attn_output.weight";  // [n_head*hd, d]
inline constexpr const char *TENSOR_FFN_NORM = "blk.{i}.ffn_norm.weight";     // [d]
inline constexpr const char *TENSOR_FFN_UP = "blk.{i}.ffn_up.weight";         // [d, D]
inline constexpr const char *TENSOR_FFN_DOWN = "blk.{i}.ffn_down.weight";     // [D, d]
inline constexpr const char *TENSOR_ROUTER = "blk.{i}.ffn_gate_inp.weight";   // [d, N]
inline constexpr const char *TENSOR_OUTPUT_NORM = "output_norm.weight";       // [d]
inline constexpr const char *TENSOR_OUTPUT = "output.weight";                 // [d, V]
inline constexpr const char *TENSOR_LUT = "lut.weight";                       // [L*N*d, V], last in the file

// Fills the {i} of a template.
inline std::string layer_name(const char *tmpl, int i) {
    std::string s(tmpl);
    auto p = s.find("{i}");
    if (p != std::string::npos) s.replace(p, 3, std::to_string(i));
    return s;
}

}  // namespace mole::names
