// The fuzz targets' one entry point (libFuzzer's), and what replay.cpp needs to run it without
// libFuzzer (gcc builds, CI): every target defines LLVMFuzzerTestOneInput and may define
// fuzz_init(), called once before the first input.
#pragma once

#include <cstddef>
#include <cstdint>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
extern "C" int LLVMFuzzerInitialize(int *argc, char ***argv);

// The bundled demo model (tokenizer targets read its vocabulary): MOLE_DEMO_MODEL, or the source
// tree's python/mole/data/demo.gguf (compiled in).
const char *fuzz_demo_model();

#include "mole.h"
// Loads fuzz_demo_model() once per process and stores its vocabulary size in *n_vocab; aborts naming
// `target` when the file does not load (the harness, not the input, is broken then).
mole_model *fuzz_load_demo_model(const char *target, int32_t *n_vocab);

// Aborts with a message (a finding) when cond is false: libFuzzer and replay both stop on it.
#define FUZZ_CHECK(cond, ...)                                       \
    do {                                                            \
        if (!(cond)) {                                              \
            std::fprintf(stderr, "fuzz check failed: %s: ", #cond); \
            std::fprintf(stderr, __VA_ARGS__);                      \
            std::fprintf(stderr, "\n");                             \
            std::abort();                                           \
        }                                                           \
    } while (0)
