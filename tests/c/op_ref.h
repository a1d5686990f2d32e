// Shared by the op tests: a reporting check, printf-style names, a seeded generator, and the
// double-precision reference quantizers and decoders (ggml rounding), written independently of
// the library.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "types.h"

namespace opref {

using mole::Type;

inline int g_pass = 0, g_fail = 0;

inline void check(bool ok, const std::string &what) {
    if (ok) {
        ++g_pass;
    } else {
        ++g_fail;
        std::printf("FAIL: %s\n", what.c_str());
    }
}

template <class... A> inline std::string fmt(const char *f, A... a) {
    char buf[512];
    std::snprintf(buf, sizeof buf, f, a...);
    return buf;
}

struct Rng {
    uint64_t s;
    explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
    uint64_t next() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        return s;
    }
    float uniform(float lo, float hi) { return lo + (hi - lo) * float(double(next() >> 11) / 9007199254740992.0); }
    std::vector<float> vec(size_t n, float lo = -1.0f, float hi = 1.0f) {
        std::vector<float> v(n);
        for (auto &x : v) x = uniform(lo, hi);
        return v;
    }
};

// ---- reference quantizers and decoders (ggml rounding) --------------------------------------

inline constexpr int kIq4nl[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
inline double half_to_double(const uint8_t *p);

// Quantizes rows x[rows, k] to the file layout of `t`.
inline std::vector<uint8_t> ref_quantize(Type t, const float *x, int64_t rows, int64_t k) {
    std::vector<uint8_t> out(size_t(rows * mole::row_bytes(t, k)));
    uint8_t *p = out.data();
    for (int64_t r = 0; r < rows; ++r) {
        const float *xr = x + r * k;
        for (int64_t i = 0; i < k;) {
            switch (t) {
            case Type::F32:
                std::memcpy(p, &xr[i], 4);
                p += 4;
                ++i;
                break;
            case Type::F16: {
                uint16_t h = mole::f32_to_f16(xr[i]);
                std::memcpy(p, &h, 2);
                p += 2;
                ++i;
                break;
            }
            case Type::BF16: {
                uint16_t h = mole::f32_to_bf16(xr[i]);
                std::memcpy(p, &h, 2);
                p += 2;
                ++i;
                break;
            }
            case Type::Q8_0: {
                float amax = 0;
                for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(xr[i + j]));
                const float d = amax / 127.0f, id = d != 0 ? 1.0f / d : 0.0f;
                uint16_t dh = mole::f32_to_f16(d);
                std::memcpy(p, &dh, 2);
                for (int j = 0; j < 32; ++j) p[2 + j] = uint8_t(int8_t(std::roundf(xr[i + j] * id)));
                p += 34;
                i += 32;
                break;
            }
            case Type::Q4_0: {
                float amax = 0, mx = 0;
                for (int j = 0; j < 32; ++j)
                    if (std::fabs(xr[i + j]) > amax) {
                        amax = std::fabs(xr[i + j]);
                        mx = xr[i + j];
                    }
                const float d = mx / -8.0f, id = d != 0 ? 1.0f / d : 0.0f;
                uint16_t dh = mole::f32_to_f16(d);
                std::memcpy(p, &dh, 2);
                for (int j = 0; j < 16; ++j) {
                    const uint8_t lo = uint8_t(std::min(15, int(int8_t(xr[i + j] * id + 8.5f))));
                    const uint8_t hi = uint8_t(std::min(15, int(int8_t(xr[i + 16 + j] * id + 8.5f))));
                    p[2 + j] = uint8_t(lo | (hi << 4));
                }
                p += 18;
                i += 32;
                break;
            }
            case Type::IQ4_NL: {   // d = (largest-|x| value) / -127, then the nearest codebook entry
                float amax = 0, mx = 0;
                for (int j = 0; j < 32; ++j)
                    if (std::fabs(xr[i + j]) > amax) amax = std::fabs(xr[i + j]), mx = xr[i + j];
                const float d = mx / -127.0f, id = d != 0 ? 1.0f / d : 0.0f;
                uint16_t dh = mole::f32_to_f16(d);
                std::memcpy(p, &dh, 2);
                auto nearest = [&](float v) {
                    int best = 0;
                    for (int c = 1; c < 16; ++c)
                        if (std::fabs(v - kIq4nl[c]) < std::fabs(v - kIq4nl[best])) best = c;
                    return uint8_t(best);
                };
                for (int j = 0; j < 16; ++j)
                    p[2 + j] = uint8_t(nearest(xr[i + j] * id) | (nearest(xr[i + 16 + j] * id) << 4));
                p += 18;
                i += 32;
                break;
            }
            case Type::Q3_K: {   // sub-block scale = (largest-|x| value) / -4, six bits of the largest
                uint8_t *blk = p;
                std::memset(blk, 0, 110);
                float sub[16], smax = 0;
                for (int sb = 0; sb < 16; ++sb) {
                    float amax = 0, mx = 0;
                    for (int j = 0; j < 16; ++j)
                        if (std::fabs(xr[i + 16 * sb + j]) > amax)
                            amax = std::fabs(xr[i + 16 * sb + j]), mx = xr[i + 16 * sb + j];
                    sub[sb] = mx / -4.0f;
                    if (std::fabs(sub[sb]) > std::fabs(smax)) smax = sub[sb];
                }
                const float iscale = smax != 0 ? -32.0f / smax : 0.0f;
                uint16_t dh = mole::f32_to_f16(iscale != 0 ? 1.0f / iscale : 0.0f);
                std::memcpy(blk + 108, &dh, 2);
                const double dd = half_to_double(blk + 108);
                for (int sb = 0; sb < 16; ++sb) {
                    const int l = std::clamp(int(std::lround(iscale * sub[sb])), -32, 31), u = l + 32;
                    blk[96 + sb % 8] |= uint8_t((u & 15) << (sb < 8 ? 0 : 4));
                    blk[96 + 8 + sb % 4] |= uint8_t(((u >> 4) & 3) << (2 * (sb / 4)));
                    const double dl = dd * l;
                    for (int j = 0; j < 16; ++j) {
                        const int k = 16 * sb + j, n = k / 128, jj = (k % 128) / 32, e = k % 32;
                        const int q = dl != 0 ? std::clamp(int(std::lround(xr[i + k] / dl)), -4, 3) : 0, v = q + 4;
                        blk[32 + n * 32 + e] |= uint8_t((v & 3) << (2 * jj));
                        blk[e] |= uint8_t((v >> 2) << (4 * n + jj));
                    }
                }
                p += 110;
                i += 256;
                break;
            }
            }
        }
    }
    return out;
}

inline double half_to_double(const uint8_t *p) {
    uint16_t h;
    std::memcpy(&h, p, 2);
    const int e = (h >> 10) & 31, m = h & 1023;
    const double sign = (h & 0x8000) ? -1.0 : 1.0;
    if (e == 0) return sign * std::ldexp(double(m), -24);
    if (e == 31) return m ? NAN : sign * INFINITY;
    return sign * std::ldexp(double(1024 + m), e - 25);
}

// Decodes one row of `t` (k elements) to double, independently of the library.
inline std::vector<double> ref_dequantize(Type t, const uint8_t *p, int64_t k) {
    std::vector<double> v(static_cast<size_t>(k));
    for (int64_t i = 0; i < k;) {
        switch (t) {
        case Type::F32: {
            float f;
            std::memcpy(&f, p, 4);
            v[size_t(i++)] = f;
            p += 4;
            break;
        }
        case Type::F16:
            v[size_t(i++)] = half_to_double(p);
            p += 2;
            break;
        case Type::BF16: {
            uint32_t b = uint32_t(p[0] | (p[1] << 8)) << 16;
            float f;
            std::memcpy(&f, &b, 4);
            v[size_t(i++)] = f;
            p += 2;
            break;
        }
        case Type::Q8_0: {
            const double d = half_to_double(p);
            for (int j = 0; j < 32; ++j) v[size_t(i + j)] = d * double(int8_t(p[2 + j]));
            p += 34;
            i += 32;
            break;
        }
        case Type::Q4_0: {
            const double d = half_to_double(p);
            for (int j = 0; j < 16; ++j) {
                v[size_t(i + j)] = d * double(int(p[2 + j] & 15) - 8);
                v[size_t(i + 16 + j)] = d * double(int(p[2 + j] >> 4) - 8);
            }
            p += 18;
            i += 32;
            break;
        }
        case Type::IQ4_NL: {
            const double d = half_to_double(p);
            for (int j = 0; j < 16; ++j) {
                v[size_t(i + j)] = d * kIq4nl[p[2 + j] & 15];
                v[size_t(i + 16 + j)] = d * kIq4nl[p[2 + j] >> 4];
            }
            p += 18;
            i += 32;
            break;
        }
        case Type::Q3_K: {   // hmask [32], qs [64], scales [12], d: ggml's block_q3_K
            const double d = half_to_double(p + 108);
            for (int k = 0; k < 256; ++k) {
                const int sb = k / 16, n = k / 128, jj = (k % 128) / 32, e = k % 32;
                const int lo = sb < 8 ? p[96 + sb] & 15 : p[96 + sb - 8] >> 4;
                const int hi = (p[104 + sb % 4] >> (2 * (sb / 4))) & 3;
                const int low2 = (p[32 + n * 32 + e] >> (2 * jj)) & 3, high = (p[e] >> (4 * n + jj)) & 1;
                v[size_t(i + k)] = d * ((lo | (hi << 4)) - 32) * (low2 + 4 * high - 4);
            }
            p += 110;
            i += 256;
            break;
        }
        }
    }
    return v;
}

// Reference q8 activation quantization: d = amax / 127, q = roundf(x * (1/d)).
inline void ref_quantize_act(const float *x, int64_t k, std::vector<int8_t> &q, std::vector<float> &d) {
    q.assign(size_t(k), 0);
    d.assign(size_t(k / 32), 0.0f);
    for (int64_t b = 0; b < k / 32; ++b) {
        float amax = 0;
        for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[b * 32 + j]));
        const float db = amax / 127.0f, id = db != 0 ? 1.0f / db : 0.0f;
        d[size_t(b)] = db;
        for (int j = 0; j < 32; ++j) q[size_t(b * 32 + j)] = int8_t(std::roundf(x[b * 32 + j] * id));
    }
}

}  // namespace opref
