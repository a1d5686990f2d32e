// Fuzz target: the GGUF reader (runtime/src/gguf.cpp) on arbitrary bytes. Whatever it accepts must
// be safe to walk: every key, array element and tensor it reports lies inside the input.
#include <cstdio>
#include <cstdlib>

#include "fuzz.h"
#include "gguf.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    mole::Gguf g;
    if (g.parse(data, size, "fuzz input") != MOLE_STATUS_OK) return 0;
    uint64_t sink = 0;
    for (const auto &kv : g.kv()) {
        const mole::GgufValue &v = kv.second;
        sink += kv.first.size() + v.str.size();
        if (v.type == mole::GgufType::ARRAY && v.raw)
            for (uint64_t i = 0; i < v.count && i < 64; ++i) sink += uint64_t(v.elem_int(i)) + (v.elem_float(i) > 0);
        for (std::string_view s : v.strings) sink += s.size() ? uint8_t(s[0]) : 0;
    }
    for (const mole::GgufTensor &t : g.tensors()) {
        FUZZ_CHECK(t.offset <= size && t.nbytes <= size - t.offset, "tensor '%s' [%llu, +%llu) past the %zu bytes",
                   t.name.c_str(), (unsigned long long)t.offset, (unsigned long long)t.nbytes, size);
        if (t.nbytes) sink += data[t.offset] + data[t.offset + t.nbytes - 1];
        FUZZ_CHECK(g.find_tensor(t.name) != nullptr, "tensor '%s' not found by name", t.name.c_str());
    }
    if (sink == 42) std::fprintf(stderr, " ");   // keep the walk from being optimized away
    return 0;
}
