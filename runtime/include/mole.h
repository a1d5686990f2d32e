/* mole.h: the public C API of libmole, a runtime for Mixture-of-Lookup-Experts (MoLE) models.
 *
 * Conventions
 *   - Every call returns enum mole_status; results go to out-parameters. On failure,
 *     mole_last_error() returns a thread-local message naming what was wrong.
 *   - The library never aborts, exits, or writes to stdout/stderr.
 *   - *_free(NULL) is a no-op. Params structs are filled by *_default_params(); NULL params mean
 *     defaults.
 *   - Caller-owned buffers carry their capacity; a short buffer gives MOLE_STATUS_BUFFER_TOO_SMALL
 *     and the size needed in the out-parameter.
 * Threading
 *   - A mole_model is read-only after load and may be shared by any number of contexts and
 *     threads. Contexts and decoders keep their model alive: mole_model_free may come first.
 *   - A mole_context (and a mole_sampler, a mole_decoder) must be used by one thread at a
 *     time; mole_context_cancel() is the exception and may be called from any thread.
 * Files
 *   - A loaded model maps its file. Replace a model file by renaming a new one over it: the
 *     loaded model keeps the old file. A file rewritten or cut short in place after the load is
 *     refused with MOLE_STATUS_IO_ERROR by the calls that read it (mole_decode, the metadata);
 *     one cut short while a call reads it can fault the process (SIGBUS), as any mapping does.
 *
 * This header is parsed by the Python binding (cffi): keep declarations plain C, one per line
 * group, enum values explicit, and no macros inside declarations.
 */
#ifndef MOLE_H
#define MOLE_H

#include <stddef.h>
#include <stdint.h>

#define MOLE_ABI_VERSION 3

#ifdef __cplusplus
extern "C" {
#endif

#if defined(MOLE_BUILDING_LIBRARY)
#define MOLE_API __attribute__((visibility("default")))
#else
#define MOLE_API
#endif

enum mole_status {
    MOLE_STATUS_OK = 0,
    MOLE_STATUS_INVALID_ARGUMENT = 1,  /* a bad argument: token id out of range, n_ctx < 1, ... */
    MOLE_STATUS_FILE_NOT_FOUND = 2,
    MOLE_STATUS_IO_ERROR = 3,          /* open/read/mmap failed for another reason */
    MOLE_STATUS_FORMAT_ERROR = 4,      /* the file is not a valid mole GGUF */
    MOLE_STATUS_OUT_OF_MEMORY = 5,
    MOLE_STATUS_CONTEXT_FULL = 6,      /* the sequence has no room for the tokens */
    MOLE_STATUS_BUFFER_TOO_SMALL = 7,
    MOLE_STATUS_UNSUPPORTED = 8,       /* e.g. a device this build lacks */
    MOLE_STATUS_CANCELLED = 9,
    MOLE_STATUS_BACKEND_ERROR = 10,    /* a device error (CUDA) */
    MOLE_STATUS_INTERNAL_ERROR = 11
};

enum mole_device { MOLE_DEVICE_CPU = 0, MOLE_DEVICE_CUDA = 1 };

/* GGML tensor type ids, as stored in the file. Q3_K and IQ4_NL: LUT only. */
enum mole_type {
    MOLE_TYPE_F32 = 0,
    MOLE_TYPE_F16 = 1,
    MOLE_TYPE_Q4_0 = 2,
    MOLE_TYPE_Q8_0 = 8,
    MOLE_TYPE_Q3_K = 11,
    MOLE_TYPE_IQ4_NL = 20,
    MOLE_TYPE_BF16 = 30
};

/* ---- library ---------------------------------------------------------------------------- */

MOLE_API int32_t mole_abi_version(void);
MOLE_API const char *mole_version(void);
/* Thread-local text of the last failure on this thread ("" if none). Valid until the next call. */
MOLE_API const char *mole_last_error(void);
MOLE_API const char *mole_status_string(enum mole_status status);
/* CPU features detected at run time and the kernels chosen, e.g. "avx512=1 avx2=1 vnni=1 avxvnni=1 cuda=0". */
MOLE_API const char *mole_system_info(void);

/* ---- model -------------------------------------------------------------------------------- */

struct mole_model;

struct mole_model_params {
    int32_t device;            /* enum mole_device; default CPU */
    int32_t device_index;      /* GPU ordinal for CUDA; default 0 */
    int32_t check_tensors;     /* 1: also verify every tensor's data (NaN/Inf scan); default 0 */
    int32_t reserved;
};

struct mole_model_info {
    int32_t n_vocab;           /* V (rows of the LUT and the embedding) */
    int32_t n_ctx_train;       /* mole.context_length */
    int32_t n_embd;            /* d */
    int32_t n_layer;           /* L */
    int32_t n_head;
    int32_t n_head_kv;
    int32_t n_ff;              /* shared FFN width D */
    int32_t n_expert;          /* N (0: dense model) */
    int32_t n_ff_expert;
    int32_t bos_token_id;      /* -1 if absent */
    int32_t eos_token_id;      /* -1 if absent */
    int32_t pad_token_id;      /* -1 if absent */
    int32_t lut_type;          /* enum mole_type; -1 if no LUT */
    int32_t weight_type;       /* enum mole_type of attn_q */
    uint64_t lut_row_bytes;    /* bytes of one token's LUT row (all layers, all experts) */
    uint64_t lut_bytes;        /* whole LUT in the file */
    uint64_t dense_bytes;      /* every tensor but the LUT */
    uint64_t n_params_dense;   /* parameters outside the LUT */
};

MOLE_API void mole_model_default_params(struct mole_model_params *out);
MOLE_API enum mole_status mole_model_load(const char *path, const struct mole_model_params *params,
                                          struct mole_model **out);
MOLE_API void mole_model_free(struct mole_model *model);
MOLE_API enum mole_status mole_model_get_info(const struct mole_model *model, struct mole_model_info *out);
/* All GGUF metadata as one JSON object {key: value}; arrays as JSON arrays. *n_out = bytes needed
 * (without the terminating NUL, which is written when it fits). */
MOLE_API enum mole_status mole_model_metadata_json(const struct mole_model *model, char *buf, size_t capacity,
                                                   size_t *n_out);
/* One string-valued metadata key (e.g. "tokenizer.chat_template"); MOLE_STATUS_INVALID_ARGUMENT if absent. */
MOLE_API enum mole_status mole_model_metadata_string(const struct mole_model *model, const char *key, char *buf,
                                                     size_t capacity, size_t *n_out);

/* The file's tensor table, in file order, as validated at load (for inspection tools). */
struct mole_tensor_info {
    const char *name;          /* NUL-terminated; valid while the model lives */
    int32_t type;              /* enum mole_type */
    int32_t n_dims;            /* 1..4 */
    int64_t ne[4];             /* ggml order: ne[0] is the row length; 1 past n_dims */
    uint64_t offset;           /* absolute file offset of the data */
    uint64_t nbytes;
};
MOLE_API enum mole_status mole_model_n_tensors(const struct mole_model *model, size_t *n_out);
/* Tensor `index` (0 <= index < mole_model_n_tensors); MOLE_STATUS_INVALID_ARGUMENT past the end. */
MOLE_API enum mole_status mole_model_tensor_info(const struct mole_model *model, size_t index,
                                                 struct mole_tensor_info *out);

/* ---- tokenizer ------------------------------------------------------------------------------ */

/* Text (UTF-8, text_len bytes) to token ids. parse_special: 1 maps special-token text such as
 * "<|endoftext|>" to its id; 0 tokenizes it as plain text. *n_out = tokens needed. */
MOLE_API enum mole_status mole_tokenize(const struct mole_model *model, const char *text, size_t text_len,
                                        int32_t add_bos, int32_t parse_special, int32_t *tokens, size_t capacity,
                                        size_t *n_out);
/* The raw bytes of one token (may be part of a UTF-8 character). */
MOLE_API enum mole_status mole_token_to_bytes(const struct mole_model *model, int32_t token, char *buf, size_t capacity,
                                              size_t *n_out);
/* Token ids to text; lossless: the bytes of the tokens concatenated. skip_special: 1 drops special
 * tokens. Invalid UTF-8 is passed through as bytes. */
MOLE_API enum mole_status mole_detokenize(const struct mole_model *model, const int32_t *tokens, size_t n_tokens,
                                          int32_t skip_special, char *buf, size_t capacity, size_t *n_out);
/* 1 if the token ends generation (EOS or another end-of-generation token). */
MOLE_API int32_t mole_token_is_eog(const struct mole_model *model, int32_t token);

/* Streaming detokenizer: holds back an incomplete UTF-8 sequence until the bytes that complete it
 * arrive, so every piece it returns is valid UTF-8 on its own. */
struct mole_decoder;
MOLE_API enum mole_status mole_decoder_new(const struct mole_model *model, struct mole_decoder **out);
MOLE_API void mole_decoder_free(struct mole_decoder *decoder);
/* Appends one token; writes the text that became complete (possibly empty). */
MOLE_API enum mole_status mole_decoder_push(struct mole_decoder *decoder, int32_t token, char *buf, size_t capacity,
                                            size_t *n_out);
/* Writes what is held back (an incomplete sequence becomes U+FFFD) and resets. */
MOLE_API enum mole_status mole_decoder_flush(struct mole_decoder *decoder, char *buf, size_t capacity, size_t *n_out);

/* ---- context ------------------------------------------------------------------------------- */

struct mole_context;

struct mole_context_params {
    int32_t n_ctx;             /* positions per sequence; 0 = the model's context_length */
    int32_t n_seq_max;         /* sequences held at once (batched decoding); default 1 */
    int32_t n_threads;         /* CPU worker threads; 0 = one per physical core */
    int32_t n_batch;           /* most tokens processed in one forward step; default 512 */
    int64_t lut_cache_mb;      /* LUT row cache in MB; 0 disables; -1 (default): the backend's choice,
                                  64 on the CPU, on CUDA the whole LUT if it fits in half the free VRAM
                                  (at most 32 GB), else that much; mole_context_get_params gives it */
    int32_t type_kv;           /* KV cache elements: MOLE_TYPE_F16 (half the memory and the bytes a step reads)
                                  or MOLE_TYPE_F32; -1 (default): the backend's choice, F16 on the CPU, F32 on
                                  CUDA (which keeps only F32: F16 there is MOLE_STATUS_UNSUPPORTED) */
};

struct mole_stats {
    uint64_t lut_rows_fetched;   /* LUT rows read from the mapping (cache misses) */
    uint64_t lut_bytes_fetched;  /* bytes of those rows */
    uint64_t lut_cache_hits;     /* LUT rows served by the row cache */
    uint64_t tokens_evaluated;   /* tokens through the forward pass */
    uint64_t steps;              /* forward steps */
    uint64_t lut_cache_bytes;    /* bytes the cache holds now */
    double t_eval_ms;            /* wall time inside mole_decode */
    double t_lut_ms;             /* of which: gathering LUT rows */
    uint64_t lut_bytes_to_device; /* LUT bytes copied host-to-device (CUDA; 0 on the CPU) */
    double t_lut_wait_ms;        /* host time waiting for LUT copies to finish (CUDA) */
};

MOLE_API void mole_context_default_params(struct mole_context_params *out);
MOLE_API enum mole_status mole_context_new(const struct mole_model *model, const struct mole_context_params *params,
                                           struct mole_context **out);
MOLE_API void mole_context_free(struct mole_context *ctx);
MOLE_API enum mole_status mole_context_get_params(const struct mole_context *ctx, struct mole_context_params *out);

/* One forward step over n_tokens entries. Entry i appends tokens[i] to sequence seq_ids[i]
 * (seq_ids NULL: all sequence 0) at that sequence's next position; entries of one sequence must be
 * in order. Logits (n_vocab floats each) are written for each entry with want_logits[i] != 0, in
 * entry order (want_logits NULL: every entry); capacity counts floats. Batches longer than n_batch
 * are split. LUT rows shared by several entries are fetched once. On MOLE_STATUS_CONTEXT_FULL
 * nothing is changed. MOLE_STATUS_IO_ERROR: the model file changed since the load (checked
 * before and after the step; a change found after it takes the call's tokens back). */
MOLE_API enum mole_status mole_decode(struct mole_context *ctx, int32_t n_tokens, const int32_t *tokens,
                                      const int32_t *seq_ids, const int8_t *want_logits, float *logits,
                                      size_t capacity);
/* Tokens held by a sequence (its next position). */
MOLE_API enum mole_status mole_seq_length(const struct mole_context *ctx, int32_t seq_id, int32_t *out);
/* Drops positions >= n_keep of a sequence (0 clears it). */
MOLE_API enum mole_status mole_seq_truncate(struct mole_context *ctx, int32_t seq_id, int32_t n_keep);
/* Asks a running mole_decode on this context to stop soon with MOLE_STATUS_CANCELLED; the
 * sequences keep the tokens before the interrupted step. Safe from any thread; cleared when
 * mole_decode returns. */
MOLE_API void mole_context_cancel(struct mole_context *ctx);
MOLE_API enum mole_status mole_context_get_stats(const struct mole_context *ctx, struct mole_stats *out);
MOLE_API void mole_context_reset_stats(struct mole_context *ctx);

/* ---- sampler --------------------------------------------------------------------------------- */

struct mole_sampler;

struct mole_sampler_params {
    float temperature;         /* 0: greedy; default 0.8 */
    int32_t top_k;             /* 0: off; default 40 */
    float top_p;               /* 1: off; default 0.95 */
    float min_p;               /* 0: off; default 0.05 */
    float repeat_penalty;      /* 1: off; default 1.0 */
    int32_t repeat_last_n;     /* tokens looked back for the penalty; default 64 */
    uint64_t seed;             /* same seed, same logits -> same tokens */
};

MOLE_API void mole_sampler_default_params(struct mole_sampler_params *out);
MOLE_API enum mole_status mole_sampler_new(const struct mole_sampler_params *params, struct mole_sampler **out);
MOLE_API void mole_sampler_free(struct mole_sampler *sampler);
/* Picks a token from n_vocab logits (not modified) and records it for the repetition penalty. */
MOLE_API enum mole_status mole_sampler_sample(struct mole_sampler *sampler, const float *logits, int32_t n_vocab,
                                              int32_t *token_out);
/* Records a token (e.g. a prompt token) for the repetition penalty without sampling. */
MOLE_API enum mole_status mole_sampler_accept(struct mole_sampler *sampler, int32_t token);
MOLE_API void mole_sampler_reset(struct mole_sampler *sampler);

#ifdef __cplusplus
}
#endif

#endif /* MOLE_H */
