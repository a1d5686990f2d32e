// Byte-level BPE tokenizer matching HF `tokenizers` (added tokens, optional NFC, GPT-2 regex,
// merges by rank) and the streaming UTF-8 detokenizer.
#include "tokenizer.h"

#include <algorithm>
#include <cstring>
#include <queue>

#include "unicode.h"

namespace mole {

namespace {

// GPT-2 bytes_to_unicode: printable bytes map to themselves, the others to U+0100 upward.
struct ByteAlphabet {
    uint32_t byte_to_cp[256];
    int16_t cp_to_byte[324];  // code points < 324 only; -1: not in the alphabet
    ByteAlphabet() {
        std::fill(cp_to_byte, cp_to_byte + 324, (int16_t)-1);
        uint32_t next = 256;
        for (uint32_t b = 0; b < 256; b++) {
            bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
            byte_to_cp[b] = printable ? b : next++;
            cp_to_byte[byte_to_cp[b]] = (int16_t)b;
        }
    }
};
const ByteAlphabet g_alphabet;

// Spellings of end-of-turn control tokens that also end generation (besides eos).
const char *const kEogTexts[] = {"<|endoftext|>", "<|im_end|>",    "<|eot_id|>", "<|eom_id|>",
                                 "<|end|>",       "<end_of_turn>", "</s>"};

constexpr size_t kCacheMaxEntries = 1 << 17;
constexpr size_t kCacheMaxWordBytes = 64;

}  // namespace

// Literal strings found leftmost-longest (HF's added-token matching, an Aho-Corasick
// LeftmostLongest): candidates indexed by first byte, longest first.
struct Tokenizer::AddedSet {
    struct Entry {
        std::string_view text;
        int32_t id;
    };
    std::vector<Entry> by_first[256];

    bool empty() const {
        for (const auto &v : by_first)
            if (!v.empty()) return false;
        return true;
    }
    // First match at or after pos: sets *start, *len, *id; false if none.
    bool find(std::string_view s, size_t pos, size_t *start, size_t *len, int32_t *id) const {
        for (size_t i = pos; i < s.size(); i++) {
            const auto &cands = by_first[(unsigned char)s[i]];
            for (const Entry &e : cands) {
                if (e.text.size() <= s.size() - i && std::memcmp(s.data() + i, e.text.data(), e.text.size()) == 0) {
                    *start = i;
                    *len = e.text.size();
                    *id = e.id;
                    return true;
                }
            }
        }
        return false;
    }
};

Status Tokenizer::create(TokenizerData data, std::unique_ptr<Tokenizer> *out) {
    const size_t V = data.tokens.size();
    if (V == 0)
        return set_error(MOLE_STATUS_FORMAT_ERROR, "tokenizer: the vocabulary (tokenizer.ggml.tokens) is empty");
    if (V > (size_t)INT32_MAX) return set_error(MOLE_STATUS_FORMAT_ERROR, "tokenizer: %zu tokens is too many", V);
    if (!data.token_types.empty() && data.token_types.size() != V)
        return set_error(MOLE_STATUS_FORMAT_ERROR,
                         "tokenizer: tokenizer.ggml.token_type has %zu entries but tokenizer.ggml.tokens has %zu",
                         data.token_types.size(), V);
    const struct {
        const char *name;
        int32_t id;
    } specials[] = {{"bos_token_id", data.bos}, {"eos_token_id", data.eos}, {"padding_token_id", data.pad}};
    for (const auto &s : specials)
        if (s.id < -1 || s.id >= (int64_t)V)
            return set_error(MOLE_STATUS_FORMAT_ERROR,
                             "tokenizer: tokenizer.ggml.%s = %d is outside the vocabulary of %zu", s.name, s.id, V);
    bool nfc;
    if (data.pre == "gpt-neox")
        nfc = true;
    else if (data.pre == "default" || data.pre == "gpt2" || data.pre.empty())
        nfc = false;
    else
        return set_error(MOLE_STATUS_FORMAT_ERROR,
                         "tokenizer: unsupported tokenizer.ggml.pre '%s' (supported: gpt-neox, default, gpt2)",
                         data.pre.c_str());

    std::unique_ptr<Tokenizer> t(new Tokenizer());
    t->data_ = std::move(data);
    t->nfc_ = nfc;
    const auto &tokens = t->data_.tokens;
    t->types_ = t->data_.token_types.empty() ? std::vector<int32_t>(V, TOKEN_TYPE_NORMAL) : t->data_.token_types;
    t->bytes_.resize(V);
    t->index_.reserve(V * 2);
    auto control = std::make_shared<AddedSet>(), user = std::make_shared<AddedSet>();
    for (size_t id = 0; id < V; id++) {
        const std::string &text = tokens[id];
        const int32_t type = t->types_[id];
        if (type < TOKEN_TYPE_NORMAL || type > TOKEN_TYPE_BYTE)
            return set_error(MOLE_STATUS_FORMAT_ERROR, "tokenizer: token %zu has token_type %d (expected 1..6)", id,
                             type);
        if (text.empty()) return set_error(MOLE_STATUS_FORMAT_ERROR, "tokenizer: token %zu is an empty string", id);
        auto [it, fresh] = t->index_.emplace(std::string_view(text), (int32_t)id);
        if (!fresh)
            return set_error(MOLE_STATUS_FORMAT_ERROR, "tokenizer: duplicate token '%.64s' (ids %d and %zu)",
                             text.c_str(), it->second, id);
        if (type == TOKEN_TYPE_CONTROL || type == TOKEN_TYPE_USER_DEFINED || type == TOKEN_TYPE_UNUSED) {
            t->bytes_[id] = text;  // added tokens and fillers are literal text
            if (type != TOKEN_TYPE_UNUSED) {
                AddedSet &set = type == TOKEN_TYPE_CONTROL ? *control : *user;
                set.by_first[(unsigned char)text[0]].push_back({std::string_view(text), (int32_t)id});
            }
            continue;
        }
        // Normal tokens are spelled in the byte-level alphabet: map each character back to its byte.
        std::string &raw = t->bytes_[id];
        for (size_t i = 0; i < text.size();) {
            uint32_t cp = unicode::decode_utf8(text, &i);
            int b = cp < 324 ? g_alphabet.cp_to_byte[cp] : -1;
            if (b < 0) {
                if (cp == unicode::kInvalid)
                    return set_error(MOLE_STATUS_FORMAT_ERROR, "tokenizer: token %zu is not valid UTF-8", id);
                return set_error(MOLE_STATUS_FORMAT_ERROR,
                                 "tokenizer: token %zu '%.64s' has U+%04X, which is not in the byte-level alphabet", id,
                                 text.c_str(), cp);
            }
            raw += (char)b;
        }
    }
    for (AddedSet *set : {control.get(), user.get()})
        for (auto &v : set->by_first)
            std::stable_sort(v.begin(), v.end(), [](const AddedSet::Entry &a, const AddedSet::Entry &b) {
                return a.text.size() > b.text.size();
            });
    if (!control->empty()) t->control_ = control;
    if (!user->empty()) t->user_ = user;

    for (uint32_t b = 0; b < 256; b++) {
        std::string s;
        unicode::append_utf8(g_alphabet.byte_to_cp[b], s);
        t->byte_token_[b] = t->find(s);
    }

    const auto &merges = t->data_.merges;
    if (merges.size() >= (1ull << 31))
        return set_error(MOLE_STATUS_FORMAT_ERROR, "tokenizer: %zu merges is too many", merges.size());
    t->merges_.reserve(merges.size() * 2);
    for (size_t r = 0; r < merges.size(); r++) {
        const std::string &m = merges[r];
        size_t sp = m.find(' ');
        if (sp == std::string::npos || sp == 0 || sp + 1 >= m.size() || m.find(' ', sp + 1) != std::string::npos)
            return set_error(MOLE_STATUS_FORMAT_ERROR, "tokenizer: merge %zu '%.64s' is not 'left right'", r,
                             m.c_str());
        std::string_view left(m.data(), sp), right(m.data() + sp + 1, m.size() - sp - 1);
        int32_t l = t->find(left), rt = t->find(right);
        if (l < 0 || rt < 0)
            return set_error(MOLE_STATUS_FORMAT_ERROR,
                             "tokenizer: merge %zu '%.64s' names '%.*s', which is not in the vocabulary", r, m.c_str(),
                             (int)(l < 0 ? left : right).size(), (l < 0 ? left : right).data());
        std::string joined = std::string(left) + std::string(right);
        int32_t j = t->find(joined);
        if (j < 0)
            return set_error(MOLE_STATUS_FORMAT_ERROR,
                             "tokenizer: merge %zu '%.64s' makes '%.64s', which is not in the vocabulary", r, m.c_str(),
                             joined.c_str());
        // A repeated pair keeps its last rank, as HF's map does.
        t->merges_[((uint64_t)(uint32_t)l << 32) | (uint32_t)rt] = ((uint64_t)r << 32) | (uint32_t)j;
    }

    if (t->data_.eos >= 0) t->eog_.push_back(t->data_.eos);
    for (const char *s : kEogTexts) {
        int32_t id = t->find(s);
        if (id >= 0 && t->types_[(size_t)id] == TOKEN_TYPE_CONTROL && id != t->data_.eos) t->eog_.push_back(id);
    }
    *out = std::move(t);
    return MOLE_STATUS_OK;
}

int32_t Tokenizer::find(std::string_view token) const {
    auto it = index_.find(token);
    return it == index_.end() ? -1 : it->second;
}

bool Tokenizer::is_eog(int32_t id) const { return id >= 0 && std::find(eog_.begin(), eog_.end(), id) != eog_.end(); }

// Emits the added tokens of `set` found in text as their ids and hands the text between them to
// encode_rest, in order (leftmost, then longest match, as HF).
template <typename Set, typename Fn>
static void split_added(const Set &set, std::string_view text, std::vector<int32_t> &out, Fn &&encode_rest) {
    size_t pos = 0, start, len;
    int32_t id;
    while (set.find(text, pos, &start, &len, &id)) {
        encode_rest(text.substr(pos, start - pos), out);
        out.push_back(id);
        pos = start + len;
    }
    encode_rest(text.substr(pos), out);
}

void Tokenizer::encode(std::string_view text, bool add_bos, bool parse_special, std::vector<int32_t> &out) const {
    if (add_bos && data_.bos >= 0) out.push_back(data_.bos);
    if (!parse_special || !control_) {
        encode_normalized(text, out);
        return;
    }
    // Control tokens are matched in the raw text (HF: special tokens are not normalized).
    split_added(*control_, text, out,
                [this](std::string_view part, std::vector<int32_t> &o) { encode_normalized(part, o); });
}

void Tokenizer::encode_normalized(std::string_view text, std::vector<int32_t> &out) const {
    if (text.empty()) return;
    std::string normalized;
    if (nfc_ && !unicode::nfc_quick_yes(text)) {
        unicode::nfc(text, normalized);
        text = normalized;
    }
    if (!user_) {
        encode_plain(text, out);
        return;
    }
    // User-defined added tokens are matched in the normalized text, before pre-tokenization.
    split_added(*user_, text, out, [this](std::string_view part, std::vector<int32_t> &o) { encode_plain(part, o); });
}

void Tokenizer::encode_plain(std::string_view text, std::vector<int32_t> &out) const {
    if (text.empty()) return;
    thread_local std::vector<size_t> ends;
    ends.clear();
    unicode::gpt2_split(text, ends);
    size_t begin = 0;
    for (size_t end : ends) {
        bpe_word(text.substr(begin, end - begin), out);
        begin = end;
    }
}

void Tokenizer::bpe_word(std::string_view word, std::vector<int32_t> &out) const {
    if (word.size() == 1) {
        int32_t id = byte_token_[(unsigned char)word[0]];
        if (id >= 0) out.push_back(id);
        return;
    }
    const bool cacheable = word.size() <= kCacheMaxWordBytes;
    if (cacheable) {
        std::lock_guard<std::mutex> lock(cache_mu_);
        auto it = cache_.find(std::string(word));
        if (it != cache_.end()) {
            out.insert(out.end(), it->second.begin(), it->second.end());
            return;
        }
    }
    // Symbols as a linked list; a min-heap of (rank, position) picks the lowest-rank pair, leftmost
    // first, exactly as HF's BPE::merge_word. A byte without a token is dropped (HF without unk).
    struct Sym {
        int32_t id;
        int32_t prev, next;
        bool alive;
    };
    thread_local std::vector<Sym> syms;
    syms.clear();
    for (unsigned char b : word) {
        int32_t id = byte_token_[b];
        if (id < 0) continue;
        int32_t k = (int32_t)syms.size();
        syms.push_back({id, k - 1, k + 1, true});
    }
    if (syms.empty()) return;
    syms.back().next = -1;
    using Item = std::pair<uint64_t, int32_t>;  // (rank << 32 | merged id, left position)
    std::priority_queue<Item, std::vector<Item>, std::greater<Item>> heap;
    auto push_pair = [&](int32_t pos) {
        int32_t nx = syms[(size_t)pos].next;
        if (nx < 0) return;
        auto it = merges_.find(((uint64_t)(uint32_t)syms[(size_t)pos].id << 32) | (uint32_t)syms[(size_t)nx].id);
        if (it != merges_.end()) heap.push({it->second, pos});
    };
    for (int32_t k = 0; k + 1 < (int32_t)syms.size(); k++) push_pair(k);
    while (!heap.empty()) {
        auto [rank_id, pos] = heap.top();
        heap.pop();
        Sym &s = syms[(size_t)pos];
        if (!s.alive || s.next < 0) continue;
        // Stale entry: the pair at pos changed since it was pushed.
        auto it = merges_.find(((uint64_t)(uint32_t)s.id << 32) | (uint32_t)syms[(size_t)s.next].id);
        if (it == merges_.end() || it->second != rank_id) continue;
        Sym &r = syms[(size_t)s.next];
        s.id = (int32_t)(uint32_t)rank_id;
        r.alive = false;
        s.next = r.next;
        if (s.next >= 0) syms[(size_t)s.next].prev = pos;
        if (s.prev >= 0) push_pair(s.prev);
        push_pair(pos);
    }
    size_t first = out.size();
    for (int32_t k = 0; k >= 0; k = syms[(size_t)k].next) out.push_back(syms[(size_t)k].id);
    if (cacheable) {
        std::lock_guard<std::mutex> lock(cache_mu_);
        if (cache_.size() >= kCacheMaxEntries) cache_.clear();
        cache_.emplace(std::string(word), std::vector<int32_t>(out.begin() + (long)first, out.end()));
    }
}

Status Tokenizer::decode(const int32_t *ids, size_t n, bool skip_special, std::string &out) const {
    for (size_t i = 0; i < n; i++) {
        if (!valid(ids[i]))
            return set_error(MOLE_STATUS_INVALID_ARGUMENT, "token id %d (at index %zu) is outside the vocabulary of %d",
                             ids[i], i, n_vocab());
        if (skip_special && is_control(ids[i])) continue;
        out += bytes_[(size_t)ids[i]];
    }
    return MOLE_STATUS_OK;
}

// ---- UTF-8 sanitizing and streaming ---------------------------------------------------------

size_t utf8_sanitize(std::string_view s, bool hold_incomplete, std::string &out) {
    static const char kReplacement[] = "\xEF\xBF\xBD";
    const auto *p = reinterpret_cast<const unsigned char *>(s.data());
    const size_t n = s.size();
    size_t i = 0;
    while (i < n) {
        unsigned char b0 = p[i];
        if (b0 < 0x80) {
            out += (char)b0;
            i++;
            continue;
        }
        // Allowed range of the second byte and count of continuation bytes (Unicode table 3-7).
        int need;
        unsigned char lo = 0x80, hi = 0xBF;
        if (b0 >= 0xC2 && b0 <= 0xDF)
            need = 1;
        else if (b0 == 0xE0) {
            need = 2;
            lo = 0xA0;
        } else if (b0 == 0xED) {
            need = 2;
            hi = 0x9F;
        } else if (b0 >= 0xE1 && b0 <= 0xEF)
            need = 2;
        else if (b0 == 0xF0) {
            need = 3;
            lo = 0x90;
        } else if (b0 >= 0xF1 && b0 <= 0xF3)
            need = 3;
        else if (b0 == 0xF4) {
            need = 3;
            hi = 0x8F;
        } else {
            out += kReplacement;
            i++;
            continue;
        }
        int got = 0;
        while (got < need && i + 1 + (size_t)got < n) {
            unsigned char b = p[i + 1 + (size_t)got];
            unsigned char l = got == 0 ? lo : 0x80, h = got == 0 ? hi : 0xBF;
            if (b < l || b > h) break;
            got++;
        }
        if (got == need) {
            out.append(s.data() + i, (size_t)need + 1);
            i += (size_t)need + 1;
        } else if (i + 1 + (size_t)got == n && hold_incomplete) {
            return i;  // a prefix that later bytes may complete
        } else {
            out += kReplacement;  // one U+FFFD per maximal ill-formed subpart
            i += 1 + (size_t)got;
        }
    }
    return i;
}

Status StreamDecoder::push(int32_t token, std::string &out) {
    if (!tok_.valid(token))
        return set_error(MOLE_STATUS_INVALID_ARGUMENT, "token id %d is outside the vocabulary of %d", token,
                         tok_.n_vocab());
    if (skip_special_ && tok_.is_control(token)) return MOLE_STATUS_OK;
    pending_ += tok_.token_bytes(token);
    size_t used = utf8_sanitize(pending_, true, out);
    pending_.erase(0, used);
    return MOLE_STATUS_OK;
}

void StreamDecoder::flush(std::string &out) {
    utf8_sanitize(pending_, false, out);
    pending_.clear();
}

}  // namespace mole
