"""The GGUF key and tensor names of architecture `mole`.

This is the only place Python spells these names; runtime/src/names.h is the C++ twin and
tests/test_names.py checks that the two agree (every str/int constant here has its twin there).
The checkpoint names, and the map from them to these, are converter/mole_convert/checkpoint_names.py.
Pure Python: importable without numpy or torch.
"""

ARCH = "mole"
ALIGNMENT = 4096

# GGUF metadata keys.
KEY_ARCHITECTURE = "general.architecture"
KEY_NAME = "general.name"
KEY_ALIGNMENT = "general.alignment"
KEY_VOCAB_SIZE = "mole.vocab_size"
KEY_CONTEXT_LENGTH = "mole.context_length"
KEY_EMBEDDING_LENGTH = "mole.embedding_length"
KEY_BLOCK_COUNT = "mole.block_count"
KEY_FEED_FORWARD_LENGTH = "mole.feed_forward_length"
KEY_EXPERT_COUNT = "mole.expert_count"
KEY_EXPERT_FEED_FORWARD_LENGTH = "mole.expert_feed_forward_length"
KEY_HEAD_COUNT = "mole.attention.head_count"
KEY_HEAD_COUNT_KV = "mole.attention.head_count_kv"
KEY_RMS_EPS = "mole.attention.layer_norm_rms_epsilon"
KEY_ROPE_FREQ_BASE = "mole.rope.freq_base"
KEY_ROPE_SCALING_TYPE = "mole.rope.scaling.type"
KEY_ROPE_SCALING_FACTOR = "mole.rope.scaling.factor"
KEY_TOKENIZER_MODEL = "tokenizer.ggml.model"
KEY_TOKENIZER_PRE = "tokenizer.ggml.pre"
KEY_TOKENS = "tokenizer.ggml.tokens"
KEY_TOKEN_TYPE = "tokenizer.ggml.token_type"
KEY_MERGES = "tokenizer.ggml.merges"
KEY_BOS_ID = "tokenizer.ggml.bos_token_id"
KEY_EOS_ID = "tokenizer.ggml.eos_token_id"
KEY_PAD_ID = "tokenizer.ggml.padding_token_id"
KEY_CHAT_TEMPLATE = "tokenizer.chat_template"
# Written only for a LUT type below 8 bits (the converter's quality gate): the mean KL divergence (f32, nats per
# token) of the next-token distributions against the same model with a q8_0 LUT, the perplexity ratio against it
# (f32, with a calibration text only), and what the tokens were (string).
KEY_LUT_KL_VS_Q8_0 = "mole.lut.kl_vs_q8_0"
KEY_LUT_PPL_RATIO_VS_Q8_0 = "mole.lut.ppl_ratio_vs_q8_0"
KEY_LUT_CALIBRATION = "mole.lut.calibration"

# GGUF tensor names; {i} is the layer.
TENSOR_TOKEN_EMBD = "token_embd.weight"        # [d, V]
TENSOR_ATTN_NORM = "blk.{i}.attn_norm.weight"  # [d]
TENSOR_ATTN_Q = "blk.{i}.attn_q.weight"        # [d, n_head*hd]
TENSOR_ATTN_K = "blk.{i}.attn_k.weight"        # [d, n_head_kv*hd]
TENSOR_ATTN_V = "blk.{i}.attn_v.weight"        # [d, n_head_kv*hd]
TENSOR_ATTN_OUT = "blk.{i}.attn_output.weight"  # [n_head*hd, d]
TENSOR_FFN_NORM = "blk.{i}.ffn_norm.weight"    # [d]
TENSOR_FFN_UP = "blk.{i}.ffn_up.weight"        # [d, D]
TENSOR_FFN_DOWN = "blk.{i}.ffn_down.weight"    # [D, d]
TENSOR_ROUTER = "blk.{i}.ffn_gate_inp.weight"  # [d, N]
TENSOR_OUTPUT_NORM = "output_norm.weight"      # [d]
TENSOR_OUTPUT = "output.weight"                # [d, V]
TENSOR_LUT = "lut.weight"                      # [L*N*d, V], last tensor in the file

# Tensors that stay f32 whatever --weight-type says.
F32_TENSORS = (TENSOR_ATTN_NORM, TENSOR_FFN_NORM, TENSOR_OUTPUT_NORM, TENSOR_ROUTER)


def layer_name(template: str, i: int) -> str:
    """Fill the {i} (layer) of a template."""
    return template.format(i=i)
