// The backends this build has, one line each (each backend folder defines its backend_info()).
#include "backend/backend.h"

namespace mole {

namespace cpu {
const BackendInfo *backend_info();
}
namespace cuda {
const BackendInfo *backend_info();
}

namespace {
const BackendInfo *const *table(int32_t *n) {
    static const BackendInfo *const backends[] = {
        cpu::backend_info(),
#ifdef MOLE_HAVE_CUDA
        cuda::backend_info(),
#endif
    };
    *n = int32_t(sizeof backends / sizeof backends[0]);
    return backends;
}
}  // namespace

const BackendInfo *const *all_backends(int32_t *n) { return table(n); }

const BackendInfo *find_backend(int32_t device) {
    int32_t n = 0;
    const BackendInfo *const *b = table(&n);
    for (int32_t i = 0; i < n; ++i)
        if (b[i]->device == device) return b[i];
    return nullptr;
}

}  // namespace mole
