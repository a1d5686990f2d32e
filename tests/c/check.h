// The C++ tests' assertion: CHECK(cond) reports file:line and the condition and counts the failure;
// a test program returns non-zero when g_failures > 0.
#pragma once

#include <cstdio>

inline int g_failures = 0;

#define CHECK(cond)                                                                       \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
            ++g_failures;                                                                 \
        }                                                                                 \
    } while (0)
