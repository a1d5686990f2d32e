// Tests of the backend-free tensor types (runtime/src/types.h): f16/bf16 conversion (exhaustive,
// and against F16C hardware where present), rounding, type traits, row sizes and block ranges.
// Exit code 0 = all passed; the last line is "N passed, M failed".
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "backend/cpu/ops.h"
#include "op_ref.h"

using namespace mole;
using namespace opref;

namespace {

#if defined(__x86_64__)
__attribute__((target("f16c"))) float hw_h2f(uint16_t h) { return _cvtsh_ss(h); }
__attribute__((target("f16c"))) uint16_t hw_f2h(float f) { return uint16_t(_cvtss_sh(f, 0)); }
#endif

void test_conversions() {
    int bad = 0;
    for (uint32_t h = 0; h < 65536; ++h) {
        const double ref = half_to_double(reinterpret_cast<const uint8_t *>(&h));
        const float got = f16_to_f32(uint16_t(h));
        if (std::isnan(ref) ? !std::isnan(got) : double(got) != ref) ++bad;
        if (!std::isnan(ref) && f32_to_f16(got) != uint16_t(h)) ++bad;   // round trip
        const float bf = bf16_to_f32(uint16_t(h));
        if (!std::isnan(bf) && f32_to_bf16(bf) != uint16_t(h)) ++bad;
    }
    check(bad == 0, fmt("f16/bf16 exhaustive decode + round trip (%d bad)", bad));
#if defined(__x86_64__)
    if (cpu::cpu_features().f16c) {
        Rng rng(7);
        bad = 0;
        for (int i = 0; i < 200000; ++i) {
            uint32_t bits = uint32_t(rng.next());
            if (i % 2) bits = (bits & 0x80000000u) | (uint32_t(0x33000000u + (bits % 0x15000000u)));  // half range
            float f;
            std::memcpy(&f, &bits, 4);
            if (std::isnan(f)) continue;
            if (f32_to_f16(f) != hw_f2h(f)) ++bad;
        }
        for (uint32_t h = 0; h < 65536; ++h) {
            const float a = f16_to_f32(uint16_t(h)), b = hw_h2f(uint16_t(h));
            if (!(std::isnan(a) && std::isnan(b)) && std::memcmp(&a, &b, 4) != 0) ++bad;
        }
        check(bad == 0, fmt("f32<->f16 matches F16C hardware (%d bad)", bad));
    }
#endif
    // bf16 rounding: nearest, ties to even
    const float one_plus_half_ulp = 1.0f + 1.0f / 256.0f;   // exactly halfway between 1 and 1+2^-7
    check(f32_to_bf16(one_plus_half_ulp) == 0x3f80, "bf16 tie rounds to even (down)");
    const float tie_up = 1.0f + 3.0f / 256.0f;               // halfway between 1+2^-7 and 1+2^-6
    check(f32_to_bf16(tie_up) == 0x3f82, "bf16 tie rounds to even (up)");
}

void test_type_traits() {
    int64_t e = 0, b = 0;
    check(type_traits(8, &e, &b) && e == 32 && b == 34, "q8_0 traits 32/34");
    check(type_traits(2, &e, &b) && e == 32 && b == 18, "q4_0 traits 32/18");
    check(type_traits(30, &e, &b) && e == 1 && b == 2, "bf16 traits");
    check(type_traits(0, &e, &b) && e == 1 && b == 4, "f32 traits");
    check(!type_traits(3, &e, &b) && !type_traits(12345, nullptr, nullptr), "unknown types rejected");
    check(row_bytes(Type::Q8_0, 768) == 24 * 34 && row_bytes(Type::Q4_0, 64) == 36 && row_bytes(Type::F16, 7) == 14,
          "row_bytes");
    check(std::string(type_name(Type::Q4_0)) == "q4_0" && std::string(type_name(Type::BF16)) == "bf16", "type_name");
}

void test_block_range() {
    // q8_0 slice of elements [40, 100): blocks 1..3, starting 8 elements into block 1
    BlockRange r = block_range(Type::Q8_0, 40, 100);
    check(r.offset == 34 && r.bytes == 3 * 34 && r.skip == 8, "block_range q8_0 [40, 100)");
    r = block_range(Type::F16, 7, 19);
    check(r.offset == 14 && r.bytes == 24 && r.skip == 0, "block_range f16 [7, 19)");
    r = lut_layer_slice(Type::Q4_0, 2, 4, 33);   // elements [264, 396) of a row
    check(r.offset == 8 * 18 && r.bytes == 5 * 18 && r.skip == 8, "lut_layer_slice q4_0 layer 2, N 4, d 33");
}

}  // namespace

int main() {
    test_conversions();
    test_type_traits();
    test_block_range();
    std::printf("%d passed, %d failed\n", g_pass, g_fail);
    return g_fail == 0 ? 0 : 1;
}
