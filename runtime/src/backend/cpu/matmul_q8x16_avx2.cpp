// AVX2 matmul over q8x16-packed Q8_0 weights (q8x16_ymm.h; called only after the run-time check).
// vpmaddubsw saturates pairs at int16, so the weights' +128 is undone and the sign trick used:
// |w| (unsigned) times x * sign(w) (signed), pairs <= 2 * 128 * 127, then vpmaddwd into int32.
// (Not the other way round, |x| times w * sign(x): a weight of -128 times sign -1 does not fit.)
#include "backend/cpu/q8x16_ymm.h"

namespace mole::cpu {

namespace {

struct DotAvx2 {
    struct W {
        __m256i s, u;   // w as int8, |w| (128 for -128, as unsigned)
    };
    static constexpr int kH = 1, kC = 4;   // tile: 4 dot + 4 float accumulators, w and |w|
    static W prep(__m256i line) {
        const __m256i s = _mm256_xor_si256(line, _mm256_set1_epi8(char(0x80)));
        return {s, _mm256_sign_epi8(s, s)};
    }
    static __m256i step(__m256i acc, const W &w, __m256i x) {
        const __m256i p = _mm256_maddubs_epi16(w.u, _mm256_sign_epi8(x, w.s));
        __m256i sum = _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
        // GCC otherwise reassociates the integer chain into a tree of 32 partial sums per block
        // and spills them; the empty asm pins each sum to a register in program order
        __asm__("" : "+x"(sum));
        return sum;
    }
    static __m256i init(int32_t) { return _mm256_setzero_si256(); }   // signed products: no offset
};

}  // namespace

void matmul_q8x16_avx2(const Q8x16Args &a, int64_t r0, int64_t r1, int64_t s0, int64_t s1) {
    q8x16_ymm::matmul<DotAvx2>(a, r0, r1, s0, s1);
}

}  // namespace mole::cpu
