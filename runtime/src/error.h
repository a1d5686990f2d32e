// Error reporting inside the runtime: a thread-local message plus a status code, never abort/print;
// and byte counts written for messages.
#pragma once

#include <cstdint>
#include <string>

#include "mole.h"

namespace mole {

using Status = mole_status;

// Stores printf-style text as this thread's last error and returns status (for `return set_error(...)`).
Status set_error(Status status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
const char *last_error();
void clear_error();

// "1.7 GB", "512 B": a byte count for messages.
std::string human_bytes(uint64_t n);

}  // namespace mole
