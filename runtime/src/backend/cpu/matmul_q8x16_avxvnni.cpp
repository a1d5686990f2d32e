// AVX-VNNI matmul over q8x16-packed Q8_0 weights (q8x16_ymm.h; compiled with -mavxvnni, called
// only after the run-time check): vpdpbusd on ymm takes the stored w + 128 as its unsigned operand
// directly, the offset removed once per block through the activations' sum (as on AVX-512).
#include "backend/cpu/q8x16_ymm.h"

namespace mole::cpu {

namespace {

struct DotVnni {
    using W = __m256i;
    static constexpr int kH = 2, kC = 3;   // tile: 6 dot + 6 float accumulators, 2 weight lines
    static W prep(__m256i line) { return line; }
    static __m256i step(__m256i acc, W w, __m256i x) { return _mm256_dpbusd_avx_epi32(acc, w, x); }
    static __m256i init(int32_t xsum) { return _mm256_set1_epi32(-128 * xsum); }
};

}  // namespace

void matmul_q8x16_avxvnni(const Q8x16Args &a, int64_t r0, int64_t r1, int64_t s0, int64_t s1) {
    q8x16_ymm::matmul<DotVnni>(a, r0, r1, s0, s1);
}

}  // namespace mole::cpu
