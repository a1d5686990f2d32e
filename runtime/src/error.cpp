// Thread-local last-error text behind mole_last_error(), and human_bytes.
#include "error.h"

#include <cinttypes>
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

std::string human_bytes(uint64_t n) {
    char buf[64];
    const char *units[] = {"B", "KB", "MB", "GB", "TB", "PB", "EB"};
    double v = static_cast<double>(n);
    int u = 0;
    while (v >= 1000.0 && u < 6) {
        v /= 1000.0;
        ++u;
    }
    if (u == 0)
        std::snprintf(buf, sizeof buf, "%" PRIu64 " B", n);
    else
        std::snprintf(buf, sizeof buf, "%.1f %s", v, units[u]);
    return buf;
}

}  // namespace mole
