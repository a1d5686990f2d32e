// Unicode helpers for the tokenizer: UTF-8 decoding, the character classes of the GPT-2
// pre-tokenizer regex, and NFC normalization. Tables come from unicode_tables.cpp (generated).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace mole::unicode {

// Decodes one code point at s[*i], advancing *i. An ill-formed byte yields kInvalid and advances
// by one byte (so every input byte is covered exactly once).
constexpr uint32_t kInvalid = 0xFFFFFFFFu;
uint32_t decode_utf8(std::string_view s, size_t *i);
void append_utf8(uint32_t cp, std::string &out);

// Classes of the GPT-2 regex: \s (White_Space), \p{L}, \p{N}, anything else.
enum CharClass : uint8_t { CLASS_OTHER = 0, CLASS_SPACE = 1, CLASS_LETTER = 2, CLASS_NUMBER = 3 };
CharClass char_class(uint32_t cp);

// Splits text into GPT-2 pre-tokens ('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+
// |\s+(?!\S)|\s+): appends the byte offsets where pieces end (the last is text.size()).
void gpt2_split(std::string_view text, std::vector<size_t> &ends);

// Canonical composition (NFC). Invalid UTF-8 bytes pass through unchanged.
void nfc(std::string_view text, std::string &out);
// True if text is NFC for certain by a quick scan (every code point below U+0300).
bool nfc_quick_yes(std::string_view text);

// Table lookups (unicode_tables.cpp).
uint8_t combining_class(uint32_t cp);
// Canonical decomposition of cp (one level) into out[0..n); returns n (0: none).
int canonical_decomposition(uint32_t cp, uint32_t out[2]);
// Primary composite of (a, b), or 0.
uint32_t compose_pair(uint32_t a, uint32_t b);

}  // namespace mole::unicode
