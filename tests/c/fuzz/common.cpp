// Shared by the fuzz targets: where the demo model is.
#include <cstdlib>

#include "fuzz.h"

#ifndef MOLE_SOURCE_DIR
#define MOLE_SOURCE_DIR "."
#endif

const char *fuzz_demo_model() {
    const char *e = std::getenv("MOLE_DEMO_MODEL");
    return e && *e ? e : MOLE_SOURCE_DIR "/python/mole/data/demo.gguf";
}
