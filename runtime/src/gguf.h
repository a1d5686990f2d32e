// GGUF (v2/v3) reader over bytes that stay in a read-only mapping; nothing is copied but names.
//
// Layout (little-endian): "GGUF" u32 version, u64 n_tensors, u64 n_kv,
//   n_kv x { string key, u32 value_type, value },
//   n_tensors x { string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset },
//   padding to general.alignment (default 32), then the data section; tensor offsets are
//   relative to it and aligned. string = u64 length + bytes (no NUL).
//   array value = u32 element_type, u64 count, elements (arrays may nest).
// Everything is validated before use (see gguf.cpp); failures name the problem and return
// MOLE_STATUS_FORMAT_ERROR.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "error.h"

namespace mole {

enum class GgufType : uint32_t {
    UINT8 = 0,
    INT8 = 1,
    UINT16 = 2,
    INT16 = 3,
    UINT32 = 4,
    INT32 = 5,
    FLOAT32 = 6,
    BOOL = 7,
    STRING = 8,
    ARRAY = 9,
    UINT64 = 10,
    INT64 = 11,
    FLOAT64 = 12
};
const char *gguf_type_name(GgufType t);

// One metadata value. Scalars: the field matching `type` (integers in i64/u64, floats in f64).
// Arrays: elem_type + count; numeric elements stay in the file (raw, read them with elem_*()),
// strings are views into the file, nested arrays are parsed recursively.
struct GgufValue {
    GgufType type = GgufType::UINT8;
    uint64_t u64 = 0;
    int64_t i64 = 0;
    double f64 = 0;
    std::string_view str;
    GgufType elem_type = GgufType::UINT8;
    uint64_t count = 0;
    const uint8_t *raw = nullptr;                 // numeric array elements
    std::vector<std::string_view> strings;        // string array elements
    std::vector<GgufValue> arrays;                // nested array elements

    bool is_integer() const;
    bool is_float() const { return type == GgufType::FLOAT32 || type == GgufType::FLOAT64; }
    // Element i of a numeric array as integer / double (i < count, elem_type numeric).
    int64_t elem_int(uint64_t i) const;   // a float element: truncated (NaN, out of range: 0)
    double elem_float(uint64_t i) const;
};

struct GgufTensor {
    std::string name;
    uint32_t n_dims = 0;
    int64_t ne[4] = {1, 1, 1, 1};   // ggml order: ne[0] is the row length
    uint32_t type = 0;              // ggml type id (F32/F16/BF16/Q8_0/Q4_0; IQ4_NL/Q3_K)
    uint64_t offset = 0;            // absolute file offset of the data
    uint64_t nbytes = 0;
    int64_t n_elements() const { return ne[0] * ne[1] * ne[2] * ne[3]; }
    std::string shape_string() const;   // "[64, 512]"
};

class Gguf {
public:
    // Parses and validates data[0, size). `what` names the source in messages (a path).
    Status parse(const uint8_t *data, uint64_t size, const std::string &what);

    uint32_t version() const { return version_; }
    uint64_t alignment() const { return alignment_; }
    uint64_t data_offset() const { return data_offset_; }
    const std::vector<std::pair<std::string, GgufValue>> &kv() const { return kv_; }
    const std::vector<GgufTensor> &tensors() const { return tensors_; }

    const GgufValue *find(const std::string &key) const;
    const GgufTensor *find_tensor(const std::string &name) const;

    // Typed getters: MOLE_STATUS_FORMAT_ERROR naming the key if it is present with the wrong
    // type or out of range; `found` (may be null) tells presence; absent + !found ok -> OK.
    Status get_u32(const std::string &key, uint32_t *out, bool *found) const;
    Status get_f32(const std::string &key, float *out, bool *found) const;
    Status get_string(const std::string &key, std::string_view *out, bool *found) const;

private:
    std::string what_copy_;
    uint32_t version_ = 0;
    uint64_t alignment_ = 32;
    uint64_t data_offset_ = 0;
    std::vector<std::pair<std::string, GgufValue>> kv_;
    std::unordered_map<std::string, size_t> kv_index_;
    std::vector<GgufTensor> tensors_;
    std::unordered_map<std::string, size_t> tensor_index_;
};

}  // namespace mole
