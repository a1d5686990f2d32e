// Shared by the fuzz targets: where the demo model is, and loading it.
#include <cstdio>
#include <cstdlib>

#include "fuzz.h"

#ifndef MOLE_SOURCE_DIR
#define MOLE_SOURCE_DIR "."
#endif

const char *fuzz_demo_model() {
    const char *e = std::getenv("MOLE_DEMO_MODEL");
    return e && *e ? e : MOLE_SOURCE_DIR "/python/mole/data/demo.gguf";
}

mole_model *fuzz_load_demo_model(const char *target, int32_t *n_vocab) {
    mole_model *model = nullptr;
    if (mole_model_load(fuzz_demo_model(), nullptr, &model) != MOLE_STATUS_OK) {
        std::fprintf(stderr, "%s: cannot load %s: %s\n", target, fuzz_demo_model(), mole_last_error());
        std::abort();
    }
    mole_model_info info;
    mole_model_get_info(model, &info);
    *n_vocab = info.n_vocab;
    return model;
}
