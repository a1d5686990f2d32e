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
    check(type_traits(20, &e, &b) && e == 32 && b == 18, "iq4_nl traits 32/18");
    check(type_traits(11, &e, &b) && e == 256 && b == 110, "q3_k traits 256/110");
    check(row_bytes(Type::IQ4_NL, 768) == 24 * 18 && row_bytes(Type::Q3_K, 768) == 3 * 110, "row_bytes iq4_nl, q3_k");
    check(std::string(type_name(Type::IQ4_NL)) == "iq4_nl" && std::string(type_name(Type::Q3_K)) == "q3_k",
          "type_name iq4_nl, q3_k");
}

void test_block_range() {
    // q8_0 slice of elements [40, 100): blocks 1..3, starting 8 elements into block 1
    BlockRange r = block_range(Type::Q8_0, 40, 100);
    check(r.offset == 34 && r.bytes == 3 * 34 && r.skip == 8, "block_range q8_0 [40, 100)");
    r = block_range(Type::F16, 7, 19);
    check(r.offset == 14 && r.bytes == 24 && r.skip == 0, "block_range f16 [7, 19)");
    r = lut_layer_slice(Type::Q4_0, 2, 4, 33);   // elements [264, 396) of a row
    check(r.offset == 8 * 18 && r.bytes == 5 * 18 && r.skip == 8, "lut_layer_slice q4_0 layer 2, N 4, d 33");
    r = lut_layer_slice(Type::Q3_K, 1, 4, 96);   // elements [384, 768): super-blocks 1..2, 128 into block 1
    check(r.offset == 110 && r.bytes == 2 * 110 && r.skip == 128, "lut_layer_slice q3_k layer 1, N 4, d 96");
}

// The reference decoders on hand-made blocks (values worked out from ggml's layouts by hand).
void test_lut_type_decoders() {
    BlockIQ4_NL q{};
    q.d = f32_to_f16(0.5f);
    q.qs[0] = 0x0f | (0x00 << 4);   // element 0: entry 15 (113), element 16: entry 0 (-127)
    q.qs[3] = 0x08 | (0x07 << 4);   // element 3: entry 8 (1), element 19: entry 7 (-10)
    float v[256];
    dequantize_row_ref(Type::IQ4_NL, &q, v, 32);
    check(v[0] == 56.5f && v[16] == -63.5f && v[3] == 0.5f && v[19] == -5.0f && v[1] == -63.5f, "iq4_nl decode");

    BlockQ3_K k{};
    k.d = f32_to_f16(0.25f);
    for (int s = 0; s < 8; ++s) k.scales[s] = 0x22;   // every sub-block: low nibble 2 -> 6-bit 2 + 16*hi
    k.scales[8 + 1] = 0x3 << 2;   // sub-block 5: high bits 3 -> 2 + 48 = 50 -> scale 18; others 2 - 32 = -30
    k.qs[32 + 5] = 0x3 << 6;      // element 128 + 3*32 + 5 = 229 (sub-block 14): low bits 3
    k.hmask[5] = 1 << 7;          // ... and its high bit set: q = 3
    k.qs[16 + 2] = 0x2 << 2;      // element 1*32 + 18 = 50 (sub-block 3): low bits 2, high bit 0: q = -2
    k.hmask[21] = 1 << 2;         // element 2*32 + 21 = 85 (sub-block 5): low bits 0, high bit 1: q = 0
    dequantize_row_ref(Type::Q3_K, &k, v, 256);
    check(v[229] == 0.25f * -30 * 3 && v[50] == 0.25f * -30 * -2 && v[85] == 0.0f && v[84] == 0.25f * 18 * -4 &&
              v[0] == 0.25f * -30 * -4,
          "q3_k decode");
    check(q3k_scale(k.scales, 5) == 18 && q3k_scale(k.scales, 13) == -30, "q3k_scale");
}

}  // namespace

int main() {
    test_conversions();
    test_type_traits();
    test_block_range();
    test_lut_type_decoders();
    std::printf("%d passed, %d failed\n", g_pass, g_fail);
    return g_fail == 0 ? 0 : 1;
}
