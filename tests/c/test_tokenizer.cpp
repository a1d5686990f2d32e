// Tokenizer tests. No arguments: built-in unit tests (UTF-8, NFC, GPT-2 split, BPE on a tiny vocab,
// added tokens, errors, streaming). With dump files (written by tests/test_tokenizer.py from HF
// `tokenizers`): also checks that encode() gives HF's ids and that decode() round-trips the text.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "tokenizer.h"
#include "unicode.h"

#include "check.h"
using namespace mole;

static std::string nfc(const std::string &s) {
    std::string out;
    unicode::nfc(s, out);
    return out;
}

static std::vector<std::string> split(const std::string &s) {
    std::vector<size_t> ends;
    unicode::gpt2_split(s, ends);
    std::vector<std::string> pieces;
    size_t b = 0;
    for (size_t e : ends) {
        pieces.push_back(s.substr(b, e - b));
        b = e;
    }
    return pieces;
}

static std::string sanitize(const std::string &s, bool hold, size_t *used = nullptr) {
    std::string out;
    size_t u = utf8_sanitize(s, hold, out);
    if (used) *used = u;
    return out;
}

// The byte-level alphabet spelling of a byte (GPT-2 bytes_to_unicode).
static std::string byte_char(unsigned b) {
    bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
    unsigned cp = b;
    if (!printable) {
        unsigned n = 0;
        for (unsigned x = 0; x < b; x++)
            if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174))) n++;
        cp = 256 + n;
    }
    std::string s;
    unicode::append_utf8(cp, s);
    return s;
}

// 256 byte tokens + merged tokens + added tokens.
static TokenizerData tiny_data() {
    TokenizerData d;
    for (unsigned b = 0; b < 256; b++) {
        d.tokens.push_back(byte_char(b));
        d.token_types.push_back(1);
    }
    const char *merges[] = {"h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "Ġwor l", "Ġworl d", "l o"};
    for (const char *m : merges) {
        std::string s = m;
        size_t sp = s.find(' ');
        d.tokens.push_back(s.substr(0, sp) + s.substr(sp + 1));
        d.token_types.push_back(1);
        d.merges.push_back(s);
    }
    d.tokens.push_back("<|endoftext|>");
    d.token_types.push_back(3);  // 266
    d.tokens.push_back("  ");
    d.token_types.push_back(4);             // 267
    d.tokens.push_back("   ");
    d.token_types.push_back(4);            // 268
    d.tokens.push_back("<|pad_269|>");
    d.token_types.push_back(5);    // 269
    d.eos = 266;
    d.bos = 266;
    return d;
}

static void test_utf8_and_classes() {
    size_t i = 0;
    std::string s = "a\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80\xC0\xED\xA0\x80";
    CHECK(unicode::decode_utf8(s, &i) == 'a');
    CHECK(unicode::decode_utf8(s, &i) == 0xE9);
    CHECK(unicode::decode_utf8(s, &i) == 0x20AC);
    CHECK(unicode::decode_utf8(s, &i) == 0x1F600);
    CHECK(unicode::decode_utf8(s, &i) == unicode::kInvalid && i == 11);  // C0: never valid
    CHECK(unicode::decode_utf8(s, &i) == unicode::kInvalid && i == 12);  // surrogate ED A0 80
    CHECK(unicode::char_class('a') == unicode::CLASS_LETTER);
    CHECK(unicode::char_class('7') == unicode::CLASS_NUMBER);
    CHECK(unicode::char_class(0x00A0) == unicode::CLASS_SPACE);
    CHECK(unicode::char_class(0x3000) == unicode::CLASS_SPACE);
    CHECK(unicode::char_class(0x4E2D) == unicode::CLASS_LETTER);  // 中
    CHECK(unicode::char_class(0x0663) == unicode::CLASS_NUMBER);  // Arabic-Indic 3
    CHECK(unicode::char_class(0x00BD) == unicode::CLASS_NUMBER);  // ½ (No)
    CHECK(unicode::char_class(0x0301) == unicode::CLASS_OTHER);   // combining acute (Mn)
    CHECK(unicode::char_class(0x200B) == unicode::CLASS_OTHER);   // zero-width space is not \s
    CHECK(unicode::char_class(0x001C) == unicode::CLASS_OTHER);   // not White_Space
}

static void test_split() {
    CHECK((split("Hello world") == std::vector<std::string>{"Hello", " world"}));
    CHECK((split("I'm here, they've 42 cats!!") ==
           std::vector<std::string>{"I", "'m", " here", ",", " they", "'ve", " 42", " cats", "!!"}));
    CHECK((split("a   b") == std::vector<std::string>{"a", "  ", " b"}));
    CHECK((split("a\n\nb") == std::vector<std::string>{"a", "\n", "\n", "b"}));
    CHECK((split("end  ") == std::vector<std::string>{"end", "  "}));
    CHECK((split("x\t y") == std::vector<std::string>{"x", "\t", " y"}));
    CHECK((split("''s 'S") == std::vector<std::string>{"''", "s", " '", "S"}));
    CHECK((split("ab12") == std::vector<std::string>{"ab", "12"}));
    CHECK(split("").empty());
}

static void test_nfc() {
    CHECK(nfc("e\xCC\x81") == "\xC3\xA9");                  // e + U+0301 -> é
    CHECK(nfc("\xC3\xA9") == "\xC3\xA9");
    CHECK(nfc("\xE1\x84\x80\xE1\x85\xA1") == "\xEA\xB0\x80");  // Hangul L + V -> 가
    CHECK(nfc("\xEA\xB0\x80\xE1\x86\xA8") == "\xEA\xB0\x81");  // LV + T -> 각
    // a + dot below (220) + acute (230) in either order -> á + dot below? NFC: ạ + U+0301 (U+1EA1 U+0301)
    CHECK(nfc("a\xCC\x81\xCC\xA3") == "\xE1\xBA\xA1\xCC\x81");
    CHECK(nfc("a\xCC\xA3\xCC\x81") == "\xE1\xBA\xA1\xCC\x81");
    CHECK(nfc("\xE2\x84\xAB") == "\xC3\x85");                // Angstrom sign (singleton) -> Å
    CHECK(nfc("\xCC\x81x") == "\xCC\x81x");                   // lone combining mark stays
    CHECK(nfc("\xFF"
              "e\xCC\x81") == "\xFF\xC3\xA9");         // invalid byte passes through
    CHECK(unicode::nfc_quick_yes("plain ascii \xC3\xA9"));
    CHECK(!unicode::nfc_quick_yes("e\xCC\x81"));
}

static std::vector<int32_t> enc(const Tokenizer &t, const std::string &s, bool special = true, bool bos = false) {
    std::vector<int32_t> ids;
    t.encode(s, bos, special, ids);
    return ids;
}

static void test_tiny_bpe() {
    std::unique_ptr<Tokenizer> t;
    CHECK(Tokenizer::create(tiny_data(), &t) == MOLE_STATUS_OK);
    if (!t) return;
    CHECK(t->n_vocab() == 270);
    const int32_t hello = t->find("hello"), world = t->find("Ġworld");
    CHECK(hello == 259 && world == 264);
    CHECK((enc(*t, "hello world") == std::vector<int32_t>{hello, world}));
    CHECK((enc(*t, "hello world", true, true) == std::vector<int32_t>{266, hello, world}));
    // "llo": "l l" (rank 1) beats "l o" (rank 9)
    CHECK((enc(*t, "llo") == std::vector<int32_t>{t->find("ll"), 'o'}));
    CHECK((enc(*t, "lo") == std::vector<int32_t>{t->find("lo")}));
    // control token only with parse_special; user-defined always, leftmost-longest
    CHECK((enc(*t, "<|endoftext|>", true) == std::vector<int32_t>{266}));
    CHECK(enc(*t, "<|endoftext|>", false).size() == 13);
    CHECK((enc(*t, "a     b") == std::vector<int32_t>{'a', 268, 267, 'b'}));
    CHECK(t->token_bytes(world) == " world");
    CHECK(t->token_bytes(267) == "  ");
    CHECK(t->is_eog(266) && !t->is_eog(hello));
    CHECK(t->is_control(266) && t->is_control(269) && !t->is_control(267));
    // invalid UTF-8 bytes are tokenized as their bytes and round-trip
    std::string odd = "x\xFF\xC3y";
    std::string back;
    auto ids = enc(*t, odd);
    CHECK(t->decode(ids.data(), ids.size(), false, back) == MOLE_STATUS_OK && back == odd);
    std::vector<int32_t> with_special = {266, hello, 269};
    back.clear();
    CHECK(t->decode(with_special.data(), 3, true, back) == MOLE_STATUS_OK && back == "hello");
    back.clear();
    CHECK(t->decode(with_special.data(), 3, false, back) == MOLE_STATUS_OK && back == "<|endoftext|>hello<|pad_269|>");
    int32_t bad = 270;
    CHECK(t->decode(&bad, 1, false, back) == MOLE_STATUS_INVALID_ARGUMENT);
    CHECK(std::strstr(last_error(), "270") != nullptr);
    // the cache gives the same answer as the first computation
    CHECK(enc(*t, "hello hello hello") == enc(*t, "hello hello hello"));
}

static void expect_error(TokenizerData d, const char *needle) {
    std::unique_ptr<Tokenizer> t;
    Status st = Tokenizer::create(std::move(d), &t);
    CHECK(st == MOLE_STATUS_FORMAT_ERROR);
    CHECK(t == nullptr);
    if (std::strstr(last_error(), needle) == nullptr) {
        std::fprintf(stderr, "error '%s' does not mention '%s'\n", last_error(), needle);
        g_failures++;
    }
}

static void test_errors() {
    TokenizerData d = tiny_data();
    d.tokens[300 - 40] = d.tokens[5];
    expect_error(d, "duplicate token");
    d = tiny_data();
    d.merges.push_back("Ġ zz");
    expect_error(d, "'zz', which is not in the vocabulary");
    d = tiny_data();
    d.merges.push_back("a b");
    expect_error(d, "makes 'ab'");
    d = tiny_data();
    d.merges.push_back("ab");
    expect_error(d, "is not 'left right'");
    d = tiny_data();
    d.token_types[3] = 9;
    expect_error(d, "token 3 has token_type 9");
    d = tiny_data();
    d.token_types.pop_back();
    expect_error(d, "token_type has 269 entries");
    d = tiny_data();
    d.eos = 270;
    expect_error(d, "eos_token_id = 270");
    d = tiny_data();
    d.pre = "llama3";
    expect_error(d, "unsupported tokenizer.ggml.pre 'llama3'");
    d = tiny_data();
    d.tokens[7] = " x";
    expect_error(d, "not in the byte-level alphabet");
    d = TokenizerData();
    expect_error(d, "empty");
}

static void test_stream() {
    CHECK(sanitize("abc", true) == "abc");
    size_t used = 0;
    CHECK(sanitize("a\xE2\x82", true, &used) == "a" && used == 1);   // incomplete € held back
    CHECK(sanitize("a\xE2\x82", false, &used) == "a\xEF\xBF\xBD" && used == 3);
    CHECK(sanitize("\xE2\x82x", true) == "\xEF\xBF\xBDx");            // can never complete
    CHECK(sanitize("\xFF\xC0\x80", true) == "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
    CHECK(sanitize("\xED\xA0\x80", false) == "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // surrogate
    CHECK(sanitize("\xF0\x9F\x98", false) == "\xEF\xBF\xBD");        // one maximal subpart

    TokenizerData d;
    for (unsigned b = 0; b < 256; b++) d.tokens.push_back(byte_char(b));
    std::unique_ptr<Tokenizer> t;
    CHECK(Tokenizer::create(d, &t) == MOLE_STATUS_OK);
    if (!t) return;
    StreamDecoder dec(*t);
    std::string out;
    const char *smile = "\xF0\x9F\x98\x80";
    for (int k = 0; k < 3; k++) CHECK(dec.push((unsigned char)smile[k], out) == MOLE_STATUS_OK);
    CHECK(out.empty());
    CHECK(dec.push((unsigned char)smile[3], out) == MOLE_STATUS_OK && out == smile);
    out.clear();
    dec.push(0xE2, out);
    dec.push('!', out);
    CHECK(out == "\xEF\xBF\xBD!");
    out.clear();
    dec.push(0xC3, out);
    CHECK(out.empty());
    dec.flush(out);
    CHECK(out == "\xEF\xBF\xBD");
    CHECK(dec.push(256, out) == MOLE_STATUS_INVALID_ARGUMENT);
}

// Several threads share one tokenizer (and its word cache, which overflows and is cleared): each
// must get what a fresh tokenizer gives on one thread.
static void test_threads() {
    std::unique_ptr<Tokenizer> shared, fresh;
    CHECK(Tokenizer::create(tiny_data(), &shared) == MOLE_STATUS_OK);
    CHECK(Tokenizer::create(tiny_data(), &fresh) == MOLE_STATUS_OK);
    if (!shared || !fresh) return;
    const int n_threads = 4, n_words = 50000;
    std::vector<std::string> texts(n_threads);
    for (int t = 0; t < n_threads; t++)
        for (int i = 0; i < n_words; i++) texts[t] += " hello w" + std::to_string(t * n_words + i) + " world";
    std::vector<std::vector<int32_t>> got(n_threads), want(n_threads);
    std::vector<std::thread> pool;
    for (int t = 0; t < n_threads; t++) pool.emplace_back([&, t] { shared->encode(texts[t], false, true, got[t]); });
    for (auto &th : pool) th.join();
    for (int t = 0; t < n_threads; t++) {
        fresh->encode(texts[t], false, true, want[t]);
        CHECK(got[t] == want[t]);
        std::string back;
        CHECK(shared->decode(got[t].data(), got[t].size(), false, back) == MOLE_STATUS_OK && back == texts[t]);
    }
}

// ---- parity with dumps written by tests/test_tokenizer.py ------------------------------------

struct Reader {
    std::string buf;
    size_t pos = 0;
    bool ok = true;
    uint32_t u32() {
        uint32_t v = 0;
        if (pos + 4 > buf.size()) {
            ok = false;
            return 0;
        }
        std::memcpy(&v, buf.data() + pos, 4);
        pos += 4;
        return v;
    }
    std::string str() {
        uint32_t n = u32();
        if (!ok || pos + n > buf.size()) {
            ok = false;
            return {};
        }
        std::string s = buf.substr(pos, n);
        pos += n;
        return s;
    }
};

// Dump: "MOLETOK1", pre, bos, eos, pad, n_tokens x (text, type), n_merges x text,
// n_cases x (add_bos u32, parse_special u32, text, n_ids x i32). Strings are u32 length + bytes.
static int run_dump(const char *path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) {
        std::fprintf(stderr, "cannot open %s\n", path);
        return 1;
    }
    Reader r;
    r.buf.assign(std::istreambuf_iterator<char>(f), {});
    if (r.buf.compare(0, 8, "MOLETOK1") != 0) {
        std::fprintf(stderr, "%s: bad magic\n", path);
        return 1;
    }
    r.pos = 8;
    TokenizerData d;
    d.pre = r.str();
    d.bos = (int32_t)r.u32();
    d.eos = (int32_t)r.u32();
    d.pad = (int32_t)r.u32();
    uint32_t nt = r.u32();
    for (uint32_t i = 0; i < nt && r.ok; i++) {
        d.tokens.push_back(r.str());
        d.token_types.push_back((int32_t)r.u32());
    }
    uint32_t nm = r.u32();
    for (uint32_t i = 0; i < nm && r.ok; i++) d.merges.push_back(r.str());
    std::unique_ptr<Tokenizer> t;
    if (Tokenizer::create(d, &t) != MOLE_STATUS_OK) {
        std::fprintf(stderr, "%s: create failed: %s\n", path, last_error());
        return 1;
    }
    uint32_t nc = r.u32();
    int failed = 0;
    size_t total_bytes = 0, total_ids = 0;
    double seconds = 0;
    for (uint32_t c = 0; c < nc && r.ok; c++) {
        bool add_bos = r.u32() != 0, parse_special = r.u32() != 0;
        std::string text = r.str();
        uint32_t n = r.u32();
        std::vector<int32_t> want(n);
        if (!r.ok || r.pos + 4ull * n > r.buf.size()) {
            r.ok = false;
            break;
        }
        if (n) std::memcpy(want.data(), r.buf.data() + r.pos, 4ull * n);
        r.pos += 4ull * n;
        std::vector<int32_t> got;
        auto t0 = std::chrono::steady_clock::now();
        t->encode(text, add_bos, parse_special, got);
        seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        total_bytes += text.size();
        total_ids += got.size();
        if (got != want) {
            size_t k = 0;
            while (k < got.size() && k < want.size() && got[k] == want[k]) k++;
            std::fprintf(stderr, "%s case %u (%zu bytes): ids differ at %zu (got %zu ids, want %u)\n", path, c,
                         text.size(), k, got.size(), n);
            for (size_t j = k; j < k + 6; j++)
                std::fprintf(stderr, "   [%zu] got %d '%s'  want %d '%s'\n", j, j < got.size() ? got[j] : -1,
                             j < got.size() ? t->token_bytes(got[j]).c_str() : "", j < want.size() ? want[j] : -1,
                             j < want.size() && t->valid(want[j]) ? t->token_bytes(want[j]).c_str() : "");
            failed++;
            continue;
        }
        // Lossless: decoding gives back the (normalized) text; compare with the decode of HF's ids.
        std::string back, ref;
        t->decode(got.data(), got.size(), false, back);
        t->decode(want.data(), want.size(), false, ref);
        if (back != ref) {
            std::fprintf(stderr, "%s case %u: decode differs\n", path, c);
            failed++;
        }
    }
    if (!r.ok) {
        std::fprintf(stderr, "%s: truncated dump\n", path);
        return 1;
    }
    std::printf("%s: %u cases, %zu bytes -> %zu ids in %.3f s (%.1f MB/s), %d failed\n", path, nc, total_bytes,
                total_ids, seconds, total_bytes / 1e6 / (seconds > 0 ? seconds : 1e-9), failed);
    return failed ? 1 : 0;
}

int main(int argc, char **argv) {
    test_utf8_and_classes();
    test_split();
    test_nfc();
    test_tiny_bpe();
    test_errors();
    test_stream();
    test_threads();
    int rc = g_failures ? 1 : 0;
    if (g_failures)
        std::fprintf(stderr, "unit tests: %d failures\n", g_failures);
    else
        std::printf("unit tests: ok\n");
    for (int i = 1; i < argc; i++) rc |= run_dump(argv[i]);
    return rc;
}
