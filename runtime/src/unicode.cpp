// Unicode helpers for the tokenizer: strict UTF-8 decoding, GPT-2 regex pre-tokenization written
// as a hand-coded scanner, and NFC (decompose, canonical order, compose) over generated tables.
#include "unicode.h"

#include <algorithm>

namespace mole::unicode {

namespace tables {
extern const uint32_t kClassRanges[][3];
extern const uint32_t kClassRangeCount;
extern const uint32_t kCccRanges[][3];
extern const uint32_t kCccRangeCount;
extern const uint32_t kDecomp[][3];
extern const uint32_t kDecompCount;
extern const uint64_t kComp[][2];
extern const uint32_t kCompCount;
}  // namespace tables

namespace {

// Hangul syllables are composed and decomposed algorithmically (Unicode ch. 3.12).
constexpr uint32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr uint32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount, kSCount = kLCount * kNCount;
// Invalid input bytes travel through NFC as this marker | byte: ccc 0, never composes.
constexpr uint32_t kRawByte = 0x80000000u;

// Value of the range containing cp in a sorted [first, last, value] table, or 0.
uint32_t range_lookup(const uint32_t (*table)[3], uint32_t count, uint32_t cp) {
    uint32_t lo = 0, hi = count;
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        if (table[mid][1] < cp)
            lo = mid + 1;
        else
            hi = mid;
    }
    return (lo < count && table[lo][0] <= cp) ? table[lo][2] : 0;
}

struct AsciiClasses {
    uint8_t c[128];
    AsciiClasses() {
        for (uint32_t i = 0; i < 128; i++)
            c[i] = (uint8_t)range_lookup(tables::kClassRanges, tables::kClassRangeCount, i);
    }
};
const AsciiClasses g_ascii;

}  // namespace

uint32_t decode_utf8(std::string_view s, size_t *i) {
    const auto *p = reinterpret_cast<const unsigned char *>(s.data());
    size_t n = s.size(), k = *i;
    unsigned char b0 = p[k];
    if (b0 < 0x80) {
        *i = k + 1;
        return b0;
    }
    int len;
    uint32_t cp, min;
    if (b0 >= 0xC2 && b0 <= 0xDF) {
        len = 2;
        cp = b0 & 0x1F;
        min = 0x80;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
        len = 3;
        cp = b0 & 0x0F;
        min = 0x800;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
        len = 4;
        cp = b0 & 0x07;
        min = 0x10000;
    } else {
        *i = k + 1;
        return kInvalid;
    }
    if (k + (size_t)len > n) {
        *i = k + 1;
        return kInvalid;
    }
    for (int j = 1; j < len; j++) {
        unsigned char b = p[k + (size_t)j];
        if ((b & 0xC0) != 0x80) {
            *i = k + 1;
            return kInvalid;
        }
        cp = (cp << 6) | (b & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
        *i = k + 1;
        return kInvalid;
    }
    *i = k + (size_t)len;
    return cp;
}

void append_utf8(uint32_t cp, std::string &out) {
    if (cp < 0x80) {
        out += (char)cp;
    } else if (cp < 0x800) {
        out += (char)(0xC0 | (cp >> 6));
        out += (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        out += (char)(0xE0 | (cp >> 12));
        out += (char)(0x80 | ((cp >> 6) & 0x3F));
        out += (char)(0x80 | (cp & 0x3F));
    } else {
        out += (char)(0xF0 | (cp >> 18));
        out += (char)(0x80 | ((cp >> 12) & 0x3F));
        out += (char)(0x80 | ((cp >> 6) & 0x3F));
        out += (char)(0x80 | (cp & 0x3F));
    }
}

CharClass char_class(uint32_t cp) {
    if (cp < 128) return (CharClass)g_ascii.c[cp];
    if (cp == kInvalid) return CLASS_OTHER;
    return (CharClass)range_lookup(tables::kClassRanges, tables::kClassRangeCount, cp);
}

void gpt2_split(std::string_view text, std::vector<size_t> &ends) {
    // Code points of text: class, value and byte offset ([n + 1] offsets).
    struct Cp {
        uint32_t cp;
        uint32_t off;
        CharClass cls;
    };
    thread_local std::vector<Cp> cps;
    cps.clear();
    for (size_t i = 0; i < text.size();) {
        size_t start = i;
        uint32_t cp = decode_utf8(text, &i);
        cps.push_back({cp, (uint32_t)start, char_class(cp)});
    }
    const size_t n = cps.size();
    auto off = [&](size_t k) { return k < n ? (size_t)cps[k].off : text.size(); };
    auto cls = [&](size_t k) { return k < n ? cps[k].cls : CLASS_OTHER; };
    size_t k = 0;
    while (k < n) {
        const uint32_t c = cps[k].cp;
        size_t end = k + 1;
        // 's|'t|'re|'ve|'m|'ll|'d (case-sensitive, as GPT-2's regex)
        if (c == '\'' && k + 1 < n) {
            uint32_t c1 = cps[k + 1].cp, c2 = k + 2 < n ? cps[k + 2].cp : 0;
            if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') {
                ends.push_back(off(k + 2));
                k += 2;
                continue;
            }
            if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) {
                ends.push_back(off(k + 3));
                k += 3;
                continue;
            }
        }
        // ' ?' then a run of one class: letters, numbers, or other (not space/letter/number).
        size_t body = (c == ' ' && k + 1 < n && cls(k + 1) != CLASS_SPACE) ? k + 1 : k;
        CharClass bc = cls(body);
        if (bc != CLASS_SPACE) {
            end = body + 1;
            while (end < n && cps[end].cls == bc) end++;
            ends.push_back(off(end));
            k = end;
            continue;
        }
        // \s+(?!\S) | \s+ : a whitespace run leaves its last char to the next piece when a
        // non-space follows and the run is longer than one.
        end = k + 1;
        while (end < n && cps[end].cls == CLASS_SPACE) end++;
        if (end < n && end - k >= 2) end--;
        ends.push_back(off(end));
        k = end;
    }
}

uint8_t combining_class(uint32_t cp) {
    if (cp < 0x300 || cp >= kRawByte) return 0;
    return (uint8_t)range_lookup(tables::kCccRanges, tables::kCccRangeCount, cp);
}

int canonical_decomposition(uint32_t cp, uint32_t out[2]) {
    if (cp >= kSBase && cp < kSBase + kSCount) {
        uint32_t s = cp - kSBase, t = s % kTCount;
        if (t != 0) {
            out[0] = cp - t;
            out[1] = kTBase + t;
        }  // LVT -> LV + T
        else {
            out[0] = kLBase + s / kNCount;
            out[1] = kVBase + (s % kNCount) / kTCount;
        }
        return 2;
    }
    if (cp < 0xC0) return 0;
    uint32_t lo = 0, hi = tables::kDecompCount;
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        if (tables::kDecomp[mid][0] < cp)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == tables::kDecompCount || tables::kDecomp[lo][0] != cp) return 0;
    out[0] = tables::kDecomp[lo][1];
    out[1] = tables::kDecomp[lo][2];
    return out[1] ? 2 : 1;
}

uint32_t compose_pair(uint32_t a, uint32_t b) {
    if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount)
        return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
    if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase && b < kTBase + kTCount)
        return a + (b - kTBase);
    if (a >= kRawByte || b >= kRawByte) return 0;
    const uint64_t key = ((uint64_t)a << 21) | b;
    uint32_t lo = 0, hi = tables::kCompCount;
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        if (tables::kComp[mid][0] < key)
            lo = mid + 1;
        else
            hi = mid;
    }
    return (lo < tables::kCompCount && tables::kComp[lo][0] == key) ? (uint32_t)tables::kComp[lo][1] : 0;
}

namespace {
void decompose_into(uint32_t cp, std::vector<uint32_t> &out) {
    uint32_t d[2];
    int n = canonical_decomposition(cp, d);
    if (n == 0) {
        out.push_back(cp);
        return;
    }
    decompose_into(d[0], out);
    if (n == 2) decompose_into(d[1], out);
}
}  // namespace

bool nfc_quick_yes(std::string_view text) {
    // Every byte below 0xCC means every code point is below U+0300 (NFC_QC = Yes, ccc = 0).
    for (unsigned char b : text)
        if (b >= 0xCC) return false;
    return true;
}

void nfc(std::string_view text, std::string &out) {
    thread_local std::vector<uint32_t> buf;
    buf.clear();
    for (size_t i = 0; i < text.size();) {
        size_t start = i;
        uint32_t cp = decode_utf8(text, &i);
        if (cp == kInvalid)
            buf.push_back(kRawByte | (unsigned char)text[start]);
        else
            decompose_into(cp, buf);
    }
    // Canonical ordering: stable sort of each run of non-starters by combining class.
    for (size_t i = 0; i < buf.size();) {
        if (combining_class(buf[i]) == 0) {
            i++;
            continue;
        }
        size_t j = i;
        while (j < buf.size() && combining_class(buf[j]) != 0) j++;
        if (j - i > 1)
            std::stable_sort(buf.begin() + (long)i, buf.begin() + (long)j,
                             [](uint32_t a, uint32_t b) { return combining_class(a) < combining_class(b); });
        i = j;
    }
    // Canonical composition: combine each char with the last starter unless blocked.
    size_t w = 0;            // write index into buf (composition happens in place)
    long starter = -1;       // index of the last starter in buf[0..w)
    int last_ccc = -1;       // ccc of the last char written after the starter; -1: none
    for (size_t r = 0; r < buf.size(); r++) {
        uint32_t c = buf[r];
        int ccc = combining_class(c);
        if (starter >= 0 && (last_ccc == -1 || (last_ccc != 0 && last_ccc < ccc))) {
            uint32_t comp = compose_pair(buf[(size_t)starter], c);
            if (comp) {
                buf[(size_t)starter] = comp;
                continue;
            }
        }
        if (ccc == 0) {
            starter = (long)w;
            last_ccc = -1;
        } else
            last_ccc = ccc;
        buf[w++] = c;
    }
    for (size_t i = 0; i < w; i++) {
        if (buf[i] >= kRawByte)
            out += (char)(buf[i] & 0xFF);
        else
            append_utf8(buf[i], out);
    }
}

}  // namespace mole::unicode
