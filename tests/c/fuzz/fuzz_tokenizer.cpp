// Fuzz target: the tokenizer (the demo model's byte-level BPE, no normalization) on arbitrary
// bytes: text -> ids -> text gives back the bytes exactly, with and without special-token parsing,
// and every id is in the vocabulary.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "fuzz.h"
#include "mole.h"

namespace {
mole_model *g_model = nullptr;
int32_t g_vocab = 0;
}  // namespace

extern "C" int LLVMFuzzerInitialize(int *, char ***) {
    g_model = fuzz_load_demo_model("fuzz_tokenizer", &g_vocab);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *text = reinterpret_cast<const char *>(data);
    for (int special = 0; special < 2; ++special) {
        size_t n = 0;
        std::vector<int32_t> ids(size + 8);
        mole_status st = mole_tokenize(g_model, text, size, 0, special, ids.data(), ids.size(), &n);
        if (st == MOLE_STATUS_BUFFER_TOO_SMALL) {
            ids.resize(n);
            st = mole_tokenize(g_model, text, size, 0, special, ids.data(), ids.size(), &n);
        }
        FUZZ_CHECK(st == MOLE_STATUS_OK, "tokenize: %s", mole_last_error());
        for (size_t i = 0; i < n; ++i) FUZZ_CHECK(ids[i] >= 0 && ids[i] < g_vocab, "id %d out of range", ids[i]);
        std::string back(size + 16, '\0');
        size_t m = 0;
        st = mole_detokenize(g_model, ids.data(), n, 0, back.data(), back.size(), &m);
        if (st == MOLE_STATUS_BUFFER_TOO_SMALL) {
            back.resize(m + 1);
            st = mole_detokenize(g_model, ids.data(), n, 0, back.data(), back.size(), &m);
        }
        FUZZ_CHECK(st == MOLE_STATUS_OK, "detokenize: %s", mole_last_error());
        FUZZ_CHECK(m == size && (size == 0 || std::memcmp(back.data(), text, size) == 0),
                   "round trip changed the bytes (%zu in, %zu out, parse_special %d)", size, m, special);
    }
    return 0;
}
