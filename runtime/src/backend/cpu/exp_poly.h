// The e^r polynomial of every SIMD exp (softmax, attention, GELU), written once for any vector
// width: after a Cody-Waite reduction x = k ln2 + r (|r| <= ~0.35), e^r by Taylor to r^7
// (truncation < 1e-8 relative) in Horner form. Included by the per-ISA files, which pass their
// own fused multiply-add and broadcast, so each compiles it with its own instructions.
#pragma once

namespace mole::cpu {

inline constexpr float kExpTaylor[8] = {1.0f / 5040.0f, 1.0f / 720.0f, 1.0f / 120.0f, 1.0f / 24.0f,
                                        1.0f / 6.0f,    0.5f,          1.0f,          1.0f};

// fma(a, b, c) = a * b + c; set1(c) = c in every lane.
template <class V, class Fma, class Set1> inline V exp_taylor(V r, Fma fma, Set1 set1) {
    V e = set1(kExpTaylor[0]);
    for (int i = 1; i < 8; ++i) e = fma(e, r, set1(kExpTaylor[i]));
    return e;
}

}  // namespace mole::cpu
