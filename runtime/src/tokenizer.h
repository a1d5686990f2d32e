// Byte-level BPE tokenizer (GPT-2 / GPT-NeoX style) built from plain data (the GGUF tokenizer.* keys),
// and a streaming detokenizer that only ever emits complete UTF-8. Matches HF `tokenizers` ids.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "error.h"

namespace mole {

// GGUF tokenizer.ggml.token_type values (llama.cpp's).
enum TokenType : int32_t {
    TOKEN_TYPE_NORMAL = 1,        // vocab entry in the byte-level alphabet ("Ġthe")
    TOKEN_TYPE_UNKNOWN = 2,
    TOKEN_TYPE_CONTROL = 3,       // special added token ("<|endoftext|>"): matched only with parse_special
    TOKEN_TYPE_USER_DEFINED = 4,  // non-special added token: always matched (in normalized text)
    TOKEN_TYPE_UNUSED = 5,        // padded-vocab filler ("<|pad_50280|>")
    TOKEN_TYPE_BYTE = 6,
};

// Everything the tokenizer needs, as read from tokenizer.ggml.* (nothing GGUF-specific).
struct TokenizerData {
    std::vector<std::string> tokens;   // [V] tokens exactly as stored; normal ones in byte-level form
    std::vector<int32_t> token_types;  // [V] TokenType; empty means all normal
    std::vector<std::string> merges;   // "left right" in priority order (rank = index)
    std::string pre = "default";       // "gpt-neox" -> NFC normalization; "default"/"gpt2" -> none
    int32_t bos = -1, eos = -1, pad = -1;  // -1: absent
};

class Tokenizer {
public:
    // Validates the data and builds the tables. On bad data returns MOLE_STATUS_FORMAT_ERROR with a
    // message naming it (duplicate token, merge naming an unknown token, bad token type, ...).
    static Status create(TokenizerData data, std::unique_ptr<Tokenizer> *out);

    // Appends the ids of text (UTF-8; invalid bytes are tokenized as their raw bytes) to out.
    // add_bos: prepend bos if the vocab has one. parse_special: match control-token text.
    // Thread-safe (the BPE word cache is guarded internally).
    void encode(std::string_view text, bool add_bos, bool parse_special, std::vector<int32_t> &out) const;

    // Concatenated bytes of the tokens (lossless); skip_special drops control and unused tokens.
    // Returns MOLE_STATUS_INVALID_ARGUMENT naming the first id out of range.
    Status decode(const int32_t *ids, size_t n, bool skip_special, std::string &out) const;

    int32_t n_vocab() const { return (int32_t)bytes_.size(); }
    bool valid(int32_t id) const { return id >= 0 && id < n_vocab(); }
    // Raw bytes of a token (may be part of a UTF-8 character). id must be valid().
    const std::string &token_bytes(int32_t id) const { return bytes_[(size_t)id]; }
    // The token as stored in the vocab (byte-level form for normal tokens). id must be valid().
    const std::string &token_text(int32_t id) const { return data_.tokens[(size_t)id]; }
    int32_t token_type(int32_t id) const { return types_[(size_t)id]; }
    bool is_control(int32_t id) const {
        return valid(id) && (types_[(size_t)id] == TOKEN_TYPE_CONTROL || types_[(size_t)id] == TOKEN_TYPE_UNUSED);
    }
    // End of generation: eos, or a control token spelled like a known end-of-turn marker.
    bool is_eog(int32_t id) const;
    int32_t bos() const { return data_.bos; }
    int32_t eos() const { return data_.eos; }
    int32_t pad() const { return data_.pad; }
    const std::string &pre() const { return data_.pre; }
    // Token id of an exact vocab string, or -1.
    int32_t find(std::string_view token) const;

private:
    Tokenizer() = default;
    struct AddedSet;  // literal strings matched leftmost-longest before pre-tokenization
    void encode_plain(std::string_view text, std::vector<int32_t> &out) const;  // no added tokens
    void encode_normalized(std::string_view text, std::vector<int32_t> &out) const;
    void bpe_word(std::string_view word, std::vector<int32_t> &out) const;

    TokenizerData data_;
    std::vector<int32_t> types_;        // [V]
    std::vector<std::string> bytes_;    // [V] raw bytes of each token
    std::unordered_map<std::string_view, int32_t> index_;  // token text -> id (views into data_.tokens)
    int32_t byte_token_[256];           // id of the single-byte token for each byte (-1 if none)
    // (left id << 32 | right id) -> (rank << 32 | merged id)
    std::unordered_map<uint64_t, uint64_t> merges_;
    std::shared_ptr<const AddedSet> control_, user_;
    bool nfc_ = false;
    std::vector<int32_t> eog_;

    mutable std::mutex cache_mu_;       // BPE word cache, shared by all callers
    mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

// Streaming detokenizer: push() returns only complete, valid UTF-8; an incomplete trailing
// sequence is held back until later bytes complete it; bytes that can never form a character
// become U+FFFD (one per maximal ill-formed subpart, as Python's errors="replace").
class StreamDecoder {
public:
    explicit StreamDecoder(const Tokenizer &tok, bool skip_special = false) : tok_(tok), skip_special_(skip_special) {}
    // Appends the text that became complete to out. MOLE_STATUS_INVALID_ARGUMENT for a bad id.
    Status push(int32_t token, std::string &out);
    // Appends what is held back (an incomplete sequence becomes U+FFFD) and resets.
    void flush(std::string &out);
    void reset() { pending_.clear(); }

private:
    const Tokenizer &tok_;
    bool skip_special_;
    std::string pending_;  // bytes of an incomplete UTF-8 sequence (at most 3)
};

// Appends the valid UTF-8 prefix of bytes to out, replacing ill-formed subparts by U+FFFD. If
// hold_incomplete, a trailing sequence that may still complete is not consumed; returns the number
// of bytes consumed.
size_t utf8_sanitize(std::string_view bytes, bool hold_incomplete, std::string &out);

}  // namespace mole
