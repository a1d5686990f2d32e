// GGUF reader tests: builds valid and corrupted GGUF bytes in memory (truncations at every offset,
// bad magic/version, huge counts, bad types/shapes/alignment, overlaps, random byte flips) and
// checks the status and that the message names the problem. Must never crash.
#include <unistd.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gguf.h"
#include "mole.h"

#include "check.h"
using namespace mole;

// ---- a tiny GGUF writer ---------------------------------------------------------------------

struct Bytes {
    std::vector<uint8_t> b;
    void raw(const void *p, size_t n) {   // resize + memcpy: GCC 12 misreads insert's bounds here
        const size_t at = b.size();
        b.resize(at + n);
        if (n) std::memcpy(b.data() + at, p, n);
    }
    void u8(uint8_t v) { raw(&v, 1); }
    void u32(uint32_t v) { raw(&v, 4); }
    void u64(uint64_t v) { raw(&v, 8); }
    void f32(float v) { raw(&v, 4); }
    void str(const std::string &s) {
        u64(s.size());
        raw(s.data(), s.size());
    }
};

struct TensorSpec {
    std::string name;
    std::vector<uint64_t> ne;
    uint32_t type;
    uint64_t offset;   // relative to the data section
};

struct FileSpec {
    uint32_t version = 3;
    uint32_t alignment = 32;
    bool write_alignment = true;
    std::vector<std::pair<std::string, Bytes>> kv;   // key -> (type + value) bytes
    std::vector<TensorSpec> tensors;
    uint64_t data_bytes = 0;                         // data section length
    int64_t n_kv_override = -1, n_tensors_override = -1;
};

Bytes kv_u32(uint32_t v) {
    Bytes b;
    b.u32(4);
    b.u32(v);
    return b;
}
Bytes kv_f32(float v) {
    Bytes b;
    b.u32(6);
    b.f32(v);
    return b;
}
Bytes kv_str(const std::string &s) {
    Bytes b;
    b.u32(8);
    b.str(s);
    return b;
}
Bytes kv_str_array(const std::vector<std::string> &v) {
    Bytes b;
    b.u32(9);
    b.u32(8);
    b.u64(v.size());
    for (auto &s : v) b.str(s);
    return b;
}

std::vector<uint8_t> build(const FileSpec &f) {
    Bytes b;
    b.raw("GGUF", 4);
    b.u32(f.version);
    size_t n_kv = f.kv.size() + (f.write_alignment ? 1 : 0);
    b.u64(f.n_tensors_override >= 0 ? (uint64_t)f.n_tensors_override : f.tensors.size());
    b.u64(f.n_kv_override >= 0 ? (uint64_t)f.n_kv_override : n_kv);
    if (f.write_alignment) {
        b.str("general.alignment");
        Bytes v = kv_u32(f.alignment);
        b.raw(v.b.data(), v.b.size());
    }
    for (auto &kv : f.kv) {
        b.str(kv.first);
        b.raw(kv.second.b.data(), kv.second.b.size());
    }
    for (auto &t : f.tensors) {
        b.str(t.name);
        b.u32((uint32_t)t.ne.size());
        for (uint64_t n : t.ne) b.u64(n);
        b.u32(t.type);
        b.u64(t.offset);
    }
    uint32_t al = f.alignment ? f.alignment : 32;
    while (b.b.size() % al) b.u8(0);
    for (uint64_t i = 0; i < f.data_bytes; ++i) b.u8((uint8_t)(i * 7 + 1));
    return b.b;
}

// A valid file: scalars, strings, a nested array, and three tensors of different types.
FileSpec valid_spec() {
    FileSpec f;
    f.kv.push_back({"general.architecture", kv_str("mole")});
    f.kv.push_back({"mole.block_count", kv_u32(2)});
    f.kv.push_back({"mole.attention.layer_norm_rms_epsilon", kv_f32(1e-5f)});
    f.kv.push_back({"tokenizer.ggml.tokens", kv_str_array({"a", "b", "\xc4\xa0the"})});
    Bytes nested;   // array of 2 arrays of u32: [[1, 2], [3]]
    nested.u32(9);
    nested.u32(9);
    nested.u64(2);
    nested.u32(4);
    nested.u64(2);
    nested.u32(1);
    nested.u32(2);
    nested.u32(4);
    nested.u64(1);
    nested.u32(3);
    f.kv.push_back({"test.nested", nested});
    Bytes bools;
    bools.u32(9);
    bools.u32(7);
    bools.u64(3);
    bools.u8(1);
    bools.u8(0);
    bools.u8(1);
    f.kv.push_back({"test.bools", bools});
    // f32 [8, 2] = 64 bytes at 0; q8_0 [32, 2] = 68 bytes at 64; f16 [16] = 32 bytes at 160.
    f.tensors.push_back({"a.weight", {8, 2}, 0, 0});
    f.tensors.push_back({"b.weight", {32, 2}, 8, 64});
    f.tensors.push_back({"c.weight", {16}, 1, 160});
    f.data_bytes = 192;
    return f;
}

Status parse(const std::vector<uint8_t> &bytes, Gguf *g = nullptr) {
    Gguf local;
    return (g ? g : &local)->parse(bytes.data(), bytes.size(), "test.gguf");
}

bool msg_has(const char *needle) {
    bool ok = std::strstr(last_error(), needle) != nullptr;
    if (!ok) std::fprintf(stderr, "  message \"%s\" lacks \"%s\"\n", last_error(), needle);
    return ok;
}

// ---- tests ------------------------------------------------------------------------------------

void test_valid() {
    Gguf g;
    std::vector<uint8_t> bytes = build(valid_spec());
    CHECK(parse(bytes, &g) == MOLE_STATUS_OK);
    CHECK(g.version() == 3);
    CHECK(g.alignment() == 32);
    CHECK(g.kv().size() == 7);
    CHECK(g.tensors().size() == 3);
    std::string_view arch;
    bool found = false;
    CHECK(g.get_string("general.architecture", &arch, &found) == MOLE_STATUS_OK && found && arch == "mole");
    uint32_t n = 0;
    CHECK(g.get_u32("mole.block_count", &n, &found) == MOLE_STATUS_OK && n == 2);
    float eps = 0;
    CHECK(g.get_f32("mole.attention.layer_norm_rms_epsilon", &eps, &found) == MOLE_STATUS_OK && eps == 1e-5f);
    CHECK(g.get_u32("missing.key", &n, &found) == MOLE_STATUS_OK && !found);
    CHECK(g.get_u32("general.architecture", &n, &found) == MOLE_STATUS_FORMAT_ERROR && msg_has("general.architecture"));
    const GgufValue *tok = g.find("tokenizer.ggml.tokens");
    CHECK(tok && tok->count == 3 && tok->strings[2] == "\xc4\xa0the");
    const GgufValue *nested = g.find("test.nested");
    CHECK(nested && nested->count == 2 && nested->arrays[0].count == 2 && nested->arrays[0].elem_int(1) == 2 &&
          nested->arrays[1].elem_int(0) == 3);
    const GgufValue *bools = g.find("test.bools");
    CHECK(bools && bools->count == 3 && bools->elem_int(0) == 1 && bools->elem_int(1) == 0);
    const GgufTensor *b = g.find_tensor("b.weight");
    CHECK(b && b->nbytes == 68 && b->offset == g.data_offset() + 64 && b->ne[0] == 32 && b->ne[1] == 2);
    CHECK(b && b->offset % 32 == 0);
    const GgufTensor *c = g.find_tensor("c.weight");
    CHECK(c && c->nbytes == 32 && c->offset + c->nbytes == bytes.size());
    // Version 2 reads the same.
    FileSpec v2 = valid_spec();
    v2.version = 2;
    CHECK(parse(build(v2)) == MOLE_STATUS_OK);
    // Default alignment without the key.
    FileSpec noal = valid_spec();
    noal.write_alignment = false;
    CHECK(parse(build(noal), &g) == MOLE_STATUS_OK && g.alignment() == 32);
}

void test_truncations() {
    std::vector<uint8_t> bytes = build(valid_spec());
    for (size_t n = 0; n < bytes.size(); ++n) {
        std::vector<uint8_t> cut(bytes.begin(), bytes.begin() + n);
        clear_error();
        Status s = parse(cut);
        if (s != MOLE_STATUS_FORMAT_ERROR) {
            std::fprintf(stderr, "  truncation at %zu: status %d\n", n, (int)s);
            CHECK(false);
        }
        CHECK(last_error()[0] != '\0');
    }
}

void test_header_errors() {
    std::vector<uint8_t> bytes = build(valid_spec());
    std::vector<uint8_t> bad = bytes;
    bad[0] = 'X';
    CHECK(parse(bad) == MOLE_STATUS_FORMAT_ERROR && msg_has("bad magic"));
    for (uint32_t v : {0u, 1u, 4u, 0xffffffffu}) {
        FileSpec f = valid_spec();
        f.version = v;
        CHECK(parse(build(f)) == MOLE_STATUS_FORMAT_ERROR && msg_has("version"));
    }
    FileSpec f = valid_spec();
    f.n_kv_override = (int64_t)1 << 60;
    CHECK(parse(build(f)) == MOLE_STATUS_FORMAT_ERROR && msg_has("metadata entries"));
    f = valid_spec();
    f.n_tensors_override = (int64_t)1 << 40;
    CHECK(parse(build(f)) == MOLE_STATUS_FORMAT_ERROR && msg_has("tensors"));
    // More tensors claimed than present: the reader runs into the data and fails cleanly.
    f = valid_spec();
    f.n_tensors_override = 4;
    CHECK(parse(build(f)) == MOLE_STATUS_FORMAT_ERROR);
}

void test_value_errors() {
    FileSpec f = valid_spec();
    Bytes huge_str;
    huge_str.u32(8);
    huge_str.u64((uint64_t)1 << 62);
    f.kv.push_back({"test.huge", huge_str});
    CHECK(parse(build(f)) == MOLE_STATUS_FORMAT_ERROR && msg_has("test.huge"));

    f = valid_spec();
    Bytes huge_arr;
    huge_arr.u32(9);
    huge_arr.u32(10);
    huge_arr.u64((uint64_t)1 << 61);
    f.kv.push_back({"test.arr", huge_arr});
    CHECK(parse(build(f)) == MOLE_STATUS_FORMAT_ERROR && msg_has("test.arr"));

    f = valid_spec();
    Bytes bad_type;
    bad_type.u32(13);
    bad_type.u32(0);
    f.kv.push_back({"test.type", bad_type});
    CHECK(parse(build(f)) == MOLE_STATUS_FORMAT_ERROR && msg_has("unknown value type 13"));

    f = valid_spec();
    Bytes bad_elem;
    bad_elem.u32(9);
    bad_elem.u32(77);
    bad_elem.u64(1);
    f.kv.push_back({"test.elem", bad_elem});
    CHECK(parse(build(f)) == MOLE_STATUS_FORMAT_ERROR && msg_has("unknown array element type 77"));

    f = valid_spec();
    Bytes deep;   // 9 nested array levels
    deep.u32(9);
    for (int i = 0; i < 9; ++i) {
        deep.u32(9);
        deep.u64(1);
    }
    deep.u32(4);
    deep.u64(0);
    f.kv.push_back({"test.deep", deep});
    CHECK(parse(build(f)) == MOLE_STATUS_FORMAT_ERROR && msg_has("nested"));

    f = valid_spec();
    f.kv.push_back({"mole.block_count", kv_u32(3)});
    CHECK(parse(build(f)) == MOLE_STATUS_FORMAT_ERROR && msg_has("duplicate metadata key 'mole.block_count'"));

    f = valid_spec();
    f.kv.push_back({"", kv_u32(3)});
    CHECK(parse(build(f)) == MOLE_STATUS_FORMAT_ERROR && msg_has("invalid key"));

    for (uint32_t al : {0u, 3u, 48u}) {
        f = valid_spec();
        f.alignment = al;
        CHECK(parse(build(f)) == MOLE_STATUS_FORMAT_ERROR && msg_has("alignment"));
    }
    f = valid_spec();
    f.write_alignment = false;
    f.kv.push_back({"general.alignment", kv_f32(32.0f)});
    CHECK(parse(build(f)) == MOLE_STATUS_FORMAT_ERROR && msg_has("general.alignment"));
}

void test_tensor_errors() {
    FileSpec f = valid_spec();
    f.tensors[0].ne = {8, 1, 1, 1, 2};
    CHECK(parse(build(f)) == MOLE_STATUS_FORMAT_ERROR && msg_has("'a.weight'") && msg_has("5 dimensions"));

    f = valid_spec();
    f.tensors[0].ne = {};
    CHECK(parse(build(f)) == MOLE_STATUS_FORMAT_ERROR && msg_has("0 dimensions"));

    f = valid_spec();
    f.tensors[0].ne = {8, 0};
    CHECK(parse(build(f)) == MOLE_STATUS_FORMAT_ERROR && msg_has("invalid size 0"));

    f = valid_spec();
    f.tensors[0].ne = {(uint64_t)1 << 32, (uint64_t)1 << 32, (uint64_t)1 << 32};
    CHECK(parse(build(f)) == MOLE_STATUS_FORMAT_ERROR && msg_has("overflows"));

    f = valid_spec();
    f.tensors[0].ne = {(uint64_t)1 << 63, 1};
    CHECK(parse(build(f)) == MOLE_STATUS_FORMAT_ERROR && msg_has("'a.weight'"));

    f = valid_spec();
    f.tensors[1].type = 3;   // Q4_1: not supported
    CHECK(parse(build(f)) == MOLE_STATUS_FORMAT_ERROR && msg_has("'b.weight'") && msg_has("unsupported type 3"));

    f = valid_spec();
    f.tensors[1].type = 1000;
    CHECK(parse(build(f)) == MOLE_STATUS_FORMAT_ERROR && msg_has("unsupported type 1000"));

    f = valid_spec();
    f.tensors[1].ne = {33, 2};
    CHECK(parse(build(f)) == MOLE_STATUS_FORMAT_ERROR && msg_has("not a multiple of the q8_0 block size"));

    f = valid_spec();
    f.tensors[2].offset = 161;
    CHECK(parse(build(f)) == MOLE_STATUS_FORMAT_ERROR && msg_has("'c.weight'") && msg_has("alignment"));

    f = valid_spec();
    f.tensors[1].offset = 32;   // [32, 96) overlaps a.weight [0, 64)
    CHECK(parse(build(f)) == MOLE_STATUS_FORMAT_ERROR && msg_has("overlap") && msg_has("'a.weight'") &&
          msg_has("'b.weight'"));

    f = valid_spec();
    f.tensors[2].offset = 192;   // 32 bytes past the end
    CHECK(parse(build(f)) == MOLE_STATUS_FORMAT_ERROR && msg_has("tensor 'c.weight'") &&
          msg_has("32 B of data past end of file"));

    f = valid_spec();
    f.tensors[2].ne = {(uint64_t)1 << 30, 1024};   // 2 TB of f16
    CHECK(parse(build(f)) == MOLE_STATUS_FORMAT_ERROR && msg_has("TB of data past end of file"));

    f = valid_spec();
    f.tensors[2].offset = (uint64_t)1 << 63;
    CHECK(parse(build(f)) == MOLE_STATUS_FORMAT_ERROR && msg_has("past end of file"));

    f = valid_spec();
    f.tensors[2].offset = UINT64_MAX - 31;
    CHECK(parse(build(f)) == MOLE_STATUS_FORMAT_ERROR && msg_has("past end of file"));

    f = valid_spec();
    f.tensors[2].name = "a.weight";
    CHECK(parse(build(f)) == MOLE_STATUS_FORMAT_ERROR && msg_has("duplicate tensor name 'a.weight'"));
}

// Random corruptions of a valid file: any status is fine, crashing or reading out of bounds is not
// (run under ASan/UBSan to check the latter).
void test_fuzz() {
    std::vector<uint8_t> bytes = build(valid_spec());
    std::mt19937 rng(1234);
    int ok = 0;
    for (int iter = 0; iter < 20000; ++iter) {
        std::vector<uint8_t> m = bytes;
        int n_flips = 1 + (int)(rng() % 4);
        for (int k = 0; k < n_flips; ++k) {
            size_t pos = rng() % m.size();
            switch (rng() % 3) {
            case 0: m[pos] ^= (uint8_t)(1u << (rng() % 8)); break;
            case 1: m[pos] = (uint8_t)rng(); break;
            default: m[pos] = 0xff; break;
            }
        }
        if (rng() % 4 == 0) m.resize(rng() % m.size());
        // Copy into an exactly-sized heap block so ASan sees any over-read.
        std::unique_ptr<uint8_t[]> exact(new uint8_t[m.size() ? m.size() : 1]);
        if (!m.empty()) std::memcpy(exact.get(), m.data(), m.size());
        Gguf g;
        Status s = g.parse(exact.get(), m.size(), "fuzz.gguf");
        if (s == MOLE_STATUS_OK)
            ++ok;
        else
            CHECK(s == MOLE_STATUS_FORMAT_ERROR && last_error()[0] != '\0');
    }
    CHECK(ok > 0);   // some flips land in tensor data and leave the file valid
}

void test_files() {
    mole_model *m = nullptr;
    CHECK(mole_model_load("/nonexistent/dir/model.gguf", nullptr, &m) == MOLE_STATUS_FILE_NOT_FOUND && !m);
    CHECK(msg_has("/nonexistent/dir/model.gguf"));
    char dir[] = "/tmp/mole_test_gguf_XXXXXX";
    CHECK(mkdtemp(dir) != nullptr);
    std::string empty = std::string(dir) + "/empty.gguf";
    FILE *fp = std::fopen(empty.c_str(), "wb");
    std::fclose(fp);
    CHECK(mole_model_load(empty.c_str(), nullptr, &m) == MOLE_STATUS_FORMAT_ERROR && msg_has("empty"));
    CHECK(mole_model_load(dir, nullptr, &m) == MOLE_STATUS_IO_ERROR && msg_has("not a regular file"));
    // A valid GGUF that is not a mole model.
    std::string other = std::string(dir) + "/other.gguf";
    std::vector<uint8_t> bytes = build(valid_spec());
    fp = std::fopen(other.c_str(), "wb");
    std::fwrite(bytes.data(), 1, bytes.size(), fp);
    std::fclose(fp);
    CHECK(mole_model_load(other.c_str(), nullptr, &m) == MOLE_STATUS_FORMAT_ERROR &&
          msg_has("missing required key 'mole.vocab_size'"));
    CHECK(mole_model_load(nullptr, nullptr, &m) == MOLE_STATUS_INVALID_ARGUMENT);
    unlink(empty.c_str());
    unlink(other.c_str());
    rmdir(dir);
}

int main() {
    test_valid();
    test_truncations();
    test_header_errors();
    test_value_errors();
    test_tensor_errors();
    test_fuzz();
    test_files();
    if (g_failures) {
        std::fprintf(stderr, "test_gguf: %d check(s) failed\n", g_failures);
        return 1;
    }
    std::printf("test_gguf: all passed\n");
    return 0;
}
