// CPU feature detection (cpuid + xgetbv) and the run-time choice of the kernel instruction set,
// which MOLE_CPU_ISA=portable|avx2|avxvnni|avx512 or set_isa() may lower for tests and benchmarks.
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "backend/cpu/kernels.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#define MOLE_X86 1
#endif

namespace mole::cpu {

namespace {

// The build compiles the AVX-VNNI kernels where the compiler knows -mavxvnni (CMakeLists.txt).
constexpr bool have_avxvnni_kernels() {
#ifdef MOLE_AVXVNNI_KERNELS
    return true;
#else
    return false;
#endif
}

Features detect() {
    Features f;
#ifdef MOLE_X86
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
    bool osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, fma = (c >> 12) & 1, f16c = (c >> 29) & 1;
    if (!osxsave || !avx) return f;
    unsigned xlo, xhi;
    __asm__ volatile("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));
    bool ymm_os = (xlo & 0x6) == 0x6;            // XMM and YMM state enabled
    bool zmm_os = (xlo & 0xe6) == 0xe6;          // plus opmask, ZMM0-15 high halves, ZMM16-31
    if (!ymm_os) return f;
    unsigned max_leaf = __get_cpuid_max(0, nullptr);
    if (max_leaf < 7) return f;
    __cpuid_count(7, 0, a, b, c, d);
    f.avx2 = (b >> 5) & 1;
    f.fma = fma;
    f.f16c = f16c;
    unsigned a1, b1, c1, d1;
    __cpuid_count(7, 1, a1, b1, c1, d1);
    f.avxvnni = (a1 >> 4) & 1;   // VEX-encoded vpdpbusd on xmm/ymm
    if (zmm_os) {
        f.avx512f = (b >> 16) & 1;
        f.avx512dq = (b >> 17) & 1;
        f.avx512bw = (b >> 30) & 1;
        f.avx512vl = (b >> 31) & 1;
        f.avx512vnni = (c >> 11) & 1;
        f.avx512bf16 = (a1 >> 5) & 1;
    }
#endif
    return f;
}

Isa detect_best() {
    const Features &f = cpu_features();
    if (f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq && f.avx512vnni && f.avx2 && f.fma && f.f16c)
        return Isa::Avx512;
    if (f.avx2 && f.fma && f.f16c) return f.avxvnni && have_avxvnni_kernels() ? Isa::AvxVnni : Isa::Avx2;
    return Isa::Portable;
}

// At most best_isa(); AVXVNNI only where the CPU has it (an AVX-512 CPU may not).
Isa clamp(Isa want) {
    Isa v = int(want) < int(best_isa()) ? want : best_isa();
    if (v == Isa::AvxVnni && !(cpu_features().avxvnni && have_avxvnni_kernels())) v = Isa::Avx2;
    return v;
}

Isa from_env(Isa best) {
    const char *e = std::getenv("MOLE_CPU_ISA");
    if (!e || !*e) return best;
    Isa want = best;
    if (!std::strcmp(e, "portable"))
        want = Isa::Portable;
    else if (!std::strcmp(e, "avx2"))
        want = Isa::Avx2;
    else if (!std::strcmp(e, "avxvnni"))
        want = Isa::AvxVnni;
    else if (!std::strcmp(e, "avx512"))
        want = Isa::Avx512;
    return clamp(want);   // unknown values keep the best level
}

std::atomic<int> g_isa{-1};

}  // namespace

const Features &cpu_features() {
    static const Features f = detect();
    return f;
}

Isa best_isa() {
    static const Isa b = detect_best();
    return b;
}

Isa active_isa() {
    int v = g_isa.load(std::memory_order_relaxed);
    if (v < 0) {
        int want = int(from_env(best_isa()));
        g_isa.compare_exchange_strong(v, want);
        v = g_isa.load(std::memory_order_relaxed);
    }
    return Isa(v);
}

Isa set_isa(Isa isa) {
    const Isa v = clamp(isa);
    g_isa.store(int(v), std::memory_order_relaxed);
    return v;
}

const char *isa_name(Isa isa) {
    switch (isa) {
    case Isa::Portable: return "portable";
    case Isa::Avx2: return "avx2";
    case Isa::AvxVnni: return "avxvnni";
    case Isa::Avx512: return "avx512";
    }
    return "?";
}

}  // namespace mole::cpu
