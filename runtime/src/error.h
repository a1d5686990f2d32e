// Error reporting inside the runtime: a thread-local message plus a status code, never abort/print.
#pragma once

#include "mole.h"

namespace mole {

using Status = mole_status;

// Stores printf-style text as this thread's last error and returns status (for `return set_error(...)`).
Status set_error(Status status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
const char *last_error();
void clear_error();

}  // namespace mole
