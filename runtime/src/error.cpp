// Thread-local last-error text behind mole_last_error().
#include "error.h"

#include <cstdarg>
#include <cstdio>

namespace mole {

namespace {
thread_local char g_error[1024] = "";
}

Status set_error(Status status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(g_error, sizeof g_error, fmt, ap);
    va_end(ap);
    return status;
}

const char *last_error() { return g_error; }
void clear_error() { g_error[0] = '\0'; }

}  // namespace mole
