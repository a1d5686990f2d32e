// Fuzz target: the model loader through the C API (mole_model_load validating a whole mole GGUF),
// and, for a file it accepts, a context and a 3-token decode: a bad file gives a status, never a
// crash, and a good one runs. The input is handed over as a file (memfd: no disk I/O).
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "fuzz.h"
#include "mole.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const int fd = memfd_create("mole-fuzz", 0);
    if (fd < 0) return 0;
    for (size_t at = 0; at < size;) {
        const ssize_t n = write(fd, data + at, size - at);
        if (n <= 0) break;
        at += size_t(n);
    }
    const std::string path = "/proc/self/fd/" + std::to_string(fd);
    mole_model *model = nullptr;
    if (mole_model_load(path.c_str(), nullptr, &model) == MOLE_STATUS_OK) {
        mole_model_info info;
        FUZZ_CHECK(mole_model_get_info(model, &info) == MOLE_STATUS_OK, "%s", mole_last_error());
        mole_context_params p;
        mole_context_default_params(&p);
        p.n_ctx = 8;
        p.n_threads = 1;
        p.lut_cache_mb = 1;
        mole_context *ctx = nullptr;
        // a huge shape can be refused for memory, nothing else
        const mole_status st = mole_context_new(model, &p, &ctx);
        FUZZ_CHECK(st == MOLE_STATUS_OK || st == MOLE_STATUS_OUT_OF_MEMORY || st == MOLE_STATUS_INVALID_ARGUMENT,
                   "context: status %d: %s", int(st), mole_last_error());
        if (st == MOLE_STATUS_OK && info.n_vocab > 0 && uint64_t(info.n_embd) * info.n_vocab < (uint64_t(1) << 26)) {
            const int32_t toks[3] = {0, info.n_vocab - 1, info.n_vocab / 2};
            std::vector<float> logits(3 * size_t(info.n_vocab));
            const mole_status d = mole_decode(ctx, 3, toks, nullptr, nullptr, logits.data(), logits.size());
            FUZZ_CHECK(d == MOLE_STATUS_OK || d == MOLE_STATUS_OUT_OF_MEMORY, "decode: status %d: %s", int(d),
                       mole_last_error());
        }
        mole_context_free(ctx);
        mole_model_free(model);
    } else {
        FUZZ_CHECK(*mole_last_error() != '\0', "%s", "a refused file must say why");
    }
    close(fd);
    return 0;
}
