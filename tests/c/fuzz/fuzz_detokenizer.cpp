// Fuzz target: the streaming detokenizer on arbitrary token sequences (2 input bytes per id, modulo
// the demo vocabulary): every piece it returns is valid UTF-8 on its own, and the pieces plus the
// final flush equal the whole sequence's bytes decoded with U+FFFD for ill-formed parts.
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "fuzz.h"
#include "mole.h"

namespace {
mole_model *g_model = nullptr;
int32_t g_vocab = 0;

// Independent of the library: whether s is well-formed UTF-8 (Unicode 15, table 3-7).
bool valid_utf8(const std::string &s) {
    size_t i = 0;
    while (i < s.size()) {
        const unsigned char c = static_cast<unsigned char>(s[i]);
        int n = c < 0x80 ? 1 : c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
        if (n == 0 || i + n > s.size()) return false;
        unsigned char lo = 0x80, hi = 0xBF;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
        for (int k = 1; k < n; ++k) {
            const unsigned char d = static_cast<unsigned char>(s[i + k]);
            if (d < (k == 1 ? lo : 0x80) || d > (k == 1 ? hi : 0xBF)) return false;
        }
        i += size_t(n);
    }
    return true;
}

std::string call(mole_status (*fn)(mole_decoder *, int32_t, char *, size_t, size_t *), mole_decoder *d, int32_t t) {
    char buf[64];
    size_t n = 0;
    FUZZ_CHECK(fn(d, t, buf, sizeof buf, &n) == MOLE_STATUS_OK, "push %d: %s", t, mole_last_error());
    return std::string(buf, n);
}
}  // namespace

extern "C" int LLVMFuzzerInitialize(int *, char ***) {
    g_model = fuzz_load_demo_model("fuzz_detokenizer", &g_vocab);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    std::vector<int32_t> ids;
    for (size_t i = 0; i + 1 < size; i += 2) ids.push_back(int32_t((data[i] | (data[i + 1] << 8)) % g_vocab));
    mole_decoder *dec = nullptr;
    FUZZ_CHECK(mole_decoder_new(g_model, &dec) == MOLE_STATUS_OK, "%s", mole_last_error());
    std::string all;
    for (int32_t t : ids) {
        const std::string piece = call(mole_decoder_push, dec, t);
        FUZZ_CHECK(valid_utf8(piece), "a piece is not valid UTF-8 (token %d)", t);
        all += piece;
    }
    char buf[64];
    size_t n = 0;
    FUZZ_CHECK(mole_decoder_flush(dec, buf, sizeof buf, &n) == MOLE_STATUS_OK, "flush: %s", mole_last_error());
    const std::string tail(buf, n);
    FUZZ_CHECK(valid_utf8(tail), "%s", "the flush is not valid UTF-8");
    all += tail;
    mole_decoder_free(dec);
    FUZZ_CHECK(valid_utf8(all), "%s", "the stream is not valid UTF-8");
    // the same bytes in one piece: detokenize, then the replacement decode of Python's errors="replace"
    std::string raw(ids.size() * 64 + 16, '\0');
    size_t m = 0;
    FUZZ_CHECK(mole_detokenize(g_model, ids.data(), ids.size(), 0, raw.data(), raw.size(), &m) == MOLE_STATUS_OK, "%s",
               mole_last_error());
    raw.resize(m);
    if (valid_utf8(raw)) FUZZ_CHECK(all == raw, "%s", "the stream differs from the whole sequence's text");
    return 0;
}
