// GGUF parsing and validation: every count, length, shape and offset is checked against the
// file size before it is used, and every failure names what was wrong and where.
#include "gguf.h"

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstring>

#include "types.h"

namespace mole {

namespace {

constexpr uint32_t kMaxDims = 4;
constexpr int kMaxArrayDepth = 8;
constexpr uint64_t kMaxNameLen = 65535;   // tensor names and keys

// Size of a fixed-width scalar type; 0 for STRING/ARRAY/unknown.
uint64_t scalar_size(GgufType t) {
    switch (t) {
    case GgufType::UINT8:
    case GgufType::INT8:
    case GgufType::BOOL: return 1;
    case GgufType::UINT16:
    case GgufType::INT16: return 2;
    case GgufType::UINT32:
    case GgufType::INT32:
    case GgufType::FLOAT32: return 4;
    case GgufType::UINT64:
    case GgufType::INT64:
    case GgufType::FLOAT64: return 8;
    default: return 0;
    }
}

bool known_value_type(uint32_t t) { return t <= static_cast<uint32_t>(GgufType::FLOAT64); }

template <typename T> T load(const uint8_t *p) {
    T v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

// Reads a scalar of type t at p into the integer and float fields of v.
void decode_scalar(GgufType t, const uint8_t *p, GgufValue *v) {
    switch (t) {
    case GgufType::UINT8:
        v->u64 = load<uint8_t>(p);
        v->i64 = static_cast<int64_t>(v->u64);
        break;
    case GgufType::INT8: v->i64 = load<int8_t>(p); break;
    case GgufType::BOOL:
        v->u64 = load<uint8_t>(p) != 0;
        v->i64 = static_cast<int64_t>(v->u64);
        break;
    case GgufType::UINT16:
        v->u64 = load<uint16_t>(p);
        v->i64 = static_cast<int64_t>(v->u64);
        break;
    case GgufType::INT16: v->i64 = load<int16_t>(p); break;
    case GgufType::UINT32:
        v->u64 = load<uint32_t>(p);
        v->i64 = static_cast<int64_t>(v->u64);
        break;
    case GgufType::INT32: v->i64 = load<int32_t>(p); break;
    case GgufType::UINT64:
        v->u64 = load<uint64_t>(p);
        v->i64 = static_cast<int64_t>(v->u64);
        break;
    case GgufType::INT64: v->i64 = load<int64_t>(p); break;
    case GgufType::FLOAT32: v->f64 = load<float>(p); break;
    case GgufType::FLOAT64: v->f64 = load<double>(p); break;
    default: break;
    }
    if (t == GgufType::INT8 || t == GgufType::INT16 || t == GgufType::INT32 || t == GgufType::INT64)
        v->u64 = static_cast<uint64_t>(v->i64);
}

// Cursor over the file bytes; every read checks the bytes left first.
struct Reader {
    const uint8_t *data;
    uint64_t size;
    uint64_t pos = 0;
    const std::string &what;

    uint64_t left() const { return size - pos; }

    Status need(uint64_t n, const char *item) {
        if (n > left())
            return set_error(MOLE_STATUS_FORMAT_ERROR,
                             "%s: truncated file: %s needs %" PRIu64 " bytes at offset %" PRIu64
                             " but the file ends at %" PRIu64,
                             what.c_str(), item, n, pos, size);
        return MOLE_STATUS_OK;
    }
    Status u32(uint32_t *out, const char *item) {
        if (Status s = need(4, item)) return s;
        *out = load<uint32_t>(data + pos);
        pos += 4;
        return MOLE_STATUS_OK;
    }
    Status u64(uint64_t *out, const char *item) {
        if (Status s = need(8, item)) return s;
        *out = load<uint64_t>(data + pos);
        pos += 8;
        return MOLE_STATUS_OK;
    }
    Status str(std::string_view *out, const char *item) {
        uint64_t len;
        if (Status s = u64(&len, item)) return s;
        if (len > left())
            return set_error(MOLE_STATUS_FORMAT_ERROR,
                             "%s: %s at offset %" PRIu64 " claims %" PRIu64 " bytes but only %" PRIu64
                             " remain in the file (truncated file or corrupt length)",
                             what.c_str(), item, pos - 8, len, left());
        *out = std::string_view(reinterpret_cast<const char *>(data + pos), static_cast<size_t>(len));
        pos += len;
        return MOLE_STATUS_OK;
    }
};

bool valid_utf8_name(std::string_view s) {
    for (unsigned char c : s)
        if (c == 0) return false;
    return true;
}

// Parses a value of type t (already read) for key `key` into v.
Status read_value(Reader &r, GgufType t, const std::string &key, int depth, GgufValue *v) {
    v->type = t;
    if (t == GgufType::STRING) {
        std::string item = "value of key '" + key + "'";
        return r.str(&v->str, item.c_str());
    }
    if (t != GgufType::ARRAY) {
        uint64_t n = scalar_size(t);
        std::string item = "value of key '" + key + "'";
        if (Status s = r.need(n, item.c_str())) return s;
        decode_scalar(t, r.data + r.pos, v);
        r.pos += n;
        return MOLE_STATUS_OK;
    }
    if (depth >= kMaxArrayDepth)
        return set_error(MOLE_STATUS_FORMAT_ERROR, "%s: key '%s': arrays nested deeper than %d levels", r.what.c_str(),
                         key.c_str(), kMaxArrayDepth);
    uint32_t et;
    std::string item = "array header of key '" + key + "'";
    if (Status s = r.u32(&et, item.c_str())) return s;
    if (!known_value_type(et))
        return set_error(MOLE_STATUS_FORMAT_ERROR, "%s: key '%s': unknown array element type %u", r.what.c_str(),
                         key.c_str(), et);
    if (Status s = r.u64(&v->count, item.c_str())) return s;
    v->elem_type = static_cast<GgufType>(et);
    // Smallest possible encoding of one element: strings and arrays carry an 8/12-byte header.
    uint64_t min_elem = v->elem_type == GgufType::STRING ? 8
        : v->elem_type == GgufType::ARRAY                ? 12
                                                         : scalar_size(v->elem_type);
    if (v->count > r.left() / min_elem)
        return set_error(MOLE_STATUS_FORMAT_ERROR,
                         "%s: key '%s': array of %" PRIu64 " %s elements does not fit in the %" PRIu64
                         " bytes left in the file (truncated file or corrupt count)",
                         r.what.c_str(), key.c_str(), v->count, gguf_type_name(v->elem_type), r.left());
    if (v->elem_type == GgufType::STRING) {
        v->strings.resize(static_cast<size_t>(v->count));
        std::string elem = "string element of array '" + key + "'";
        for (uint64_t i = 0; i < v->count; ++i)
            if (Status s = r.str(&v->strings[i], elem.c_str())) return s;
    } else if (v->elem_type == GgufType::ARRAY) {
        v->arrays.resize(static_cast<size_t>(v->count));
        for (uint64_t i = 0; i < v->count; ++i)
            if (Status s = read_value(r, GgufType::ARRAY, key, depth + 1, &v->arrays[i])) return s;
    } else {
        v->raw = r.data + r.pos;
        r.pos += v->count * min_elem;
    }
    return MOLE_STATUS_OK;
}

bool mul_overflows(uint64_t a, uint64_t b, uint64_t *out) {
    if (a != 0 && b > UINT64_MAX / a) return true;
    *out = a * b;
    return false;
}

}  // namespace

const char *gguf_type_name(GgufType t) {
    switch (t) {
    case GgufType::UINT8: return "uint8";
    case GgufType::INT8: return "int8";
    case GgufType::UINT16: return "uint16";
    case GgufType::INT16: return "int16";
    case GgufType::UINT32: return "uint32";
    case GgufType::INT32: return "int32";
    case GgufType::FLOAT32: return "float32";
    case GgufType::BOOL: return "bool";
    case GgufType::STRING: return "string";
    case GgufType::ARRAY: return "array";
    case GgufType::UINT64: return "uint64";
    case GgufType::INT64: return "int64";
    case GgufType::FLOAT64: return "float64";
    }
    return "unknown";
}

bool GgufValue::is_integer() const {
    switch (type) {
    case GgufType::UINT8:
    case GgufType::INT8:
    case GgufType::UINT16:
    case GgufType::INT16:
    case GgufType::UINT32:
    case GgufType::INT32:
    case GgufType::UINT64:
    case GgufType::INT64: return true;
    default: return false;
    }
}

int64_t GgufValue::elem_int(uint64_t i) const {
    GgufValue v;
    decode_scalar(elem_type, raw + i * scalar_size(elem_type), &v);
    if (elem_type != GgufType::FLOAT32 && elem_type != GgufType::FLOAT64) return v.i64;
    // a float element as an integer: truncated; NaN and values past int64's range give 0 (a cast
    // of those would be undefined behaviour)
    return v.f64 > -9.2e18 && v.f64 < 9.2e18 ? static_cast<int64_t>(v.f64) : 0;
}

double GgufValue::elem_float(uint64_t i) const {
    GgufValue v;
    decode_scalar(elem_type, raw + i * scalar_size(elem_type), &v);
    if (elem_type == GgufType::FLOAT32 || elem_type == GgufType::FLOAT64) return v.f64;
    if (elem_type == GgufType::UINT64) return static_cast<double>(v.u64);
    return static_cast<double>(v.i64);
}

std::string GgufTensor::shape_string() const {
    std::string s = "[";
    for (uint32_t i = 0; i < n_dims; ++i) {
        if (i) s += ", ";
        s += std::to_string(ne[i]);
    }
    return s + "]";
}

Status Gguf::parse(const uint8_t *data, uint64_t size, const std::string &what) {
    what_copy_ = what;
    const std::string &w = what_copy_;
    Reader r{data, size, 0, w};
    kv_.clear();
    kv_index_.clear();
    tensors_.clear();
    tensor_index_.clear();

    if (size < 4 || std::memcmp(data, "GGUF", 4) != 0)
        return set_error(MOLE_STATUS_FORMAT_ERROR, "%s: not a GGUF file (bad magic; expected \"GGUF\")", w.c_str());
    r.pos = 4;
    if (Status s = r.u32(&version_, "version")) return s;
    if (version_ != 2 && version_ != 3)
        return set_error(MOLE_STATUS_FORMAT_ERROR, "%s: unsupported GGUF version %u (supported: 2, 3)", w.c_str(),
                         version_);
    uint64_t n_tensors, n_kv;
    if (Status s = r.u64(&n_tensors, "tensor count")) return s;
    if (Status s = r.u64(&n_kv, "metadata count")) return s;
    // A key/value takes at least 14 bytes (8 key length + 1 key byte + 4 type + 1 value); the
    // tensor count is checked the same way once the metadata is read.
    if (n_kv > r.left() / 14)
        return set_error(MOLE_STATUS_FORMAT_ERROR,
                         "%s: header claims %" PRIu64 " metadata entries, more than the %" PRIu64
                         "-byte file can hold (truncated file or corrupt count)",
                         w.c_str(), n_kv, size);

    kv_.reserve(static_cast<size_t>(n_kv));
    for (uint64_t i = 0; i < n_kv; ++i) {
        std::string_view key;
        std::string item = "key of metadata entry " + std::to_string(i);
        if (Status s = r.str(&key, item.c_str())) return s;
        if (key.empty() || key.size() > kMaxNameLen || !valid_utf8_name(key))
            return set_error(MOLE_STATUS_FORMAT_ERROR, "%s: metadata entry %" PRIu64 " has an invalid key (%zu bytes)",
                             w.c_str(), i, key.size());
        std::string k(key);
        uint32_t t;
        std::string titem = "type of key '" + k + "'";
        if (Status s = r.u32(&t, titem.c_str())) return s;
        if (!known_value_type(t))
            return set_error(MOLE_STATUS_FORMAT_ERROR, "%s: key '%s' has unknown value type %u", w.c_str(), k.c_str(),
                             t);
        GgufValue v;
        if (Status s = read_value(r, static_cast<GgufType>(t), k, 0, &v)) return s;
        if (kv_index_.count(k))
            return set_error(MOLE_STATUS_FORMAT_ERROR, "%s: duplicate metadata key '%s'", w.c_str(), k.c_str());
        kv_index_[k] = kv_.size();
        kv_.emplace_back(std::move(k), std::move(v));
    }

    alignment_ = 32;
    if (const GgufValue *a = find("general.alignment")) {
        if (a->type != GgufType::UINT32)
            return set_error(MOLE_STATUS_FORMAT_ERROR, "%s: key 'general.alignment' must be uint32, got %s", w.c_str(),
                             gguf_type_name(a->type));
        if (a->u64 == 0 || (a->u64 & (a->u64 - 1)) != 0)
            return set_error(MOLE_STATUS_FORMAT_ERROR, "%s: general.alignment = %" PRIu64 " is not a power of two",
                             w.c_str(), a->u64);
        alignment_ = a->u64;
    }

    // A tensor info takes at least 33 bytes (8 name length + 1 name byte + 4 n_dims + 8 ne[0] +
    // 4 type + 8 offset).
    if (n_tensors > r.left() / 33)
        return set_error(MOLE_STATUS_FORMAT_ERROR,
                         "%s: header claims %" PRIu64 " tensors, more than the %" PRIu64
                         " bytes after the metadata can hold (truncated file or corrupt count)",
                         w.c_str(), n_tensors, r.left());
    tensors_.reserve(static_cast<size_t>(n_tensors));
    for (uint64_t i = 0; i < n_tensors; ++i) {
        GgufTensor t;
        std::string_view name;
        std::string item = "name of tensor " + std::to_string(i);
        if (Status s = r.str(&name, item.c_str())) return s;
        if (name.empty() || name.size() > kMaxNameLen || !valid_utf8_name(name))
            return set_error(MOLE_STATUS_FORMAT_ERROR, "%s: tensor %" PRIu64 " has an invalid name (%zu bytes)",
                             w.c_str(), i, name.size());
        t.name = std::string(name);
        const char *tn = t.name.c_str();
        std::string info = "info of tensor '" + t.name + "'";
        if (Status s = r.u32(&t.n_dims, info.c_str())) return s;
        if (t.n_dims < 1 || t.n_dims > kMaxDims)
            return set_error(MOLE_STATUS_FORMAT_ERROR, "%s: tensor '%s': %u dimensions (must be 1 to %u)", w.c_str(),
                             tn, t.n_dims, kMaxDims);
        for (uint32_t d = 0; d < t.n_dims; ++d) {
            uint64_t ne;
            if (Status s = r.u64(&ne, info.c_str())) return s;
            if (ne == 0 || ne > static_cast<uint64_t>(INT64_MAX))
                return set_error(MOLE_STATUS_FORMAT_ERROR, "%s: tensor '%s': dimension %u has invalid size %" PRIu64,
                                 w.c_str(), tn, d, ne);
            t.ne[d] = static_cast<int64_t>(ne);
        }
        if (Status s = r.u32(&t.type, info.c_str())) return s;
        if (Status s = r.u64(&t.offset, info.c_str())) return s;

        int64_t block_elems, block_bytes;
        if (!type_traits(t.type, &block_elems, &block_bytes))
            return set_error(
                MOLE_STATUS_FORMAT_ERROR,
                "%s: tensor '%s': unsupported type %u (supported: f32, f16, bf16, q8_0, q4_0, iq4_nl, q3_k)", w.c_str(),
                tn, t.type);
        if (t.ne[0] % block_elems != 0)
            return set_error(MOLE_STATUS_FORMAT_ERROR,
                             "%s: tensor '%s': row length %" PRId64 " is not a multiple of the %s block size %" PRId64,
                             w.c_str(), tn, t.ne[0], type_name(static_cast<Type>(t.type)), block_elems);
        uint64_t n_rows = 1, bytes;
        bool overflow = false;
        for (uint32_t d = 1; d < t.n_dims; ++d)
            overflow |= mul_overflows(n_rows, static_cast<uint64_t>(t.ne[d]), &n_rows);
        uint64_t elems = 0;
        overflow |= mul_overflows(n_rows, static_cast<uint64_t>(t.ne[0]), &elems);
        overflow |= elems > static_cast<uint64_t>(INT64_MAX);
        uint64_t bytes_per_row = static_cast<uint64_t>(t.ne[0] / block_elems) * static_cast<uint64_t>(block_bytes);
        overflow |= mul_overflows(bytes_per_row, n_rows, &bytes);
        if (overflow)
            return set_error(MOLE_STATUS_FORMAT_ERROR, "%s: tensor '%s': shape %s overflows 64-bit sizes", w.c_str(),
                             tn, t.shape_string().c_str());
        t.nbytes = bytes;
        if (t.offset % alignment_ != 0)
            return set_error(MOLE_STATUS_FORMAT_ERROR,
                             "%s: tensor '%s': data offset %" PRIu64 " is not a multiple of the alignment %" PRIu64,
                             w.c_str(), tn, t.offset, alignment_);
        if (tensor_index_.count(t.name))
            return set_error(MOLE_STATUS_FORMAT_ERROR, "%s: duplicate tensor name '%s'", w.c_str(), tn);
        tensor_index_[t.name] = tensors_.size();
        tensors_.push_back(std::move(t));
    }

    // Data section: after the infos, padded to the alignment.
    uint64_t pad = (alignment_ - r.pos % alignment_) % alignment_;
    data_offset_ = r.pos + pad;
    if (!tensors_.empty() && data_offset_ > size)
        return set_error(MOLE_STATUS_FORMAT_ERROR,
                         "%s: truncated file: the data section starts at offset %" PRIu64
                         " but the file ends at %" PRIu64,
                         w.c_str(), data_offset_, size);
    uint64_t data_size = size - std::min(size, data_offset_);
    for (GgufTensor &t : tensors_) {
        uint64_t rel = t.offset;
        if (rel > data_size || t.nbytes > data_size - rel) {
            uint64_t end_rel = rel > UINT64_MAX - t.nbytes ? UINT64_MAX : rel + t.nbytes;
            uint64_t past = end_rel == UINT64_MAX ? UINT64_MAX : end_rel - data_size;
            return set_error(MOLE_STATUS_FORMAT_ERROR,
                             "%s: tensor '%s': %s of data past end of file (truncated file, or a corrupt "
                             "offset or shape: %" PRIu64 " bytes for shape %s at data offset %" PRIu64
                             ", file offset %" PRIu64 "; file size %" PRIu64 ")",
                             w.c_str(), t.name.c_str(), human_bytes(past).c_str(), t.nbytes, t.shape_string().c_str(),
                             rel, data_offset_ + std::min(rel, UINT64_MAX - data_offset_), size);
        }
        t.offset = data_offset_ + rel;
    }
    // No two tensors may share bytes.
    std::vector<const GgufTensor *> order;
    order.reserve(tensors_.size());
    for (const GgufTensor &t : tensors_) order.push_back(&t);
    std::sort(order.begin(), order.end(),
              [](const GgufTensor *a, const GgufTensor *b) { return a->offset < b->offset; });
    for (size_t i = 1; i < order.size(); ++i) {
        const GgufTensor *a = order[i - 1], *b = order[i];
        if (a->offset + a->nbytes > b->offset)
            return set_error(MOLE_STATUS_FORMAT_ERROR,
                             "%s: tensors '%s' (offset %" PRIu64 ", %" PRIu64 " bytes) and '%s' (offset %" PRIu64
                             ") overlap",
                             w.c_str(), a->name.c_str(), a->offset, a->nbytes, b->name.c_str(), b->offset);
    }
    return MOLE_STATUS_OK;
}

const GgufValue *Gguf::find(const std::string &key) const {
    auto it = kv_index_.find(key);
    return it == kv_index_.end() ? nullptr : &kv_[it->second].second;
}

const GgufTensor *Gguf::find_tensor(const std::string &name) const {
    auto it = tensor_index_.find(name);
    return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

Status Gguf::get_u32(const std::string &key, uint32_t *out, bool *found) const {
    const GgufValue *v = find(key);
    if (found) *found = v != nullptr;
    if (!v) return MOLE_STATUS_OK;
    bool neg = (v->type == GgufType::INT8 || v->type == GgufType::INT16 || v->type == GgufType::INT32 ||
                v->type == GgufType::INT64) &&
        v->i64 < 0;
    if (!v->is_integer())
        return set_error(MOLE_STATUS_FORMAT_ERROR, "%s: key '%s' must be an integer, got %s", what_copy_.c_str(),
                         key.c_str(), gguf_type_name(v->type));
    if (neg || v->u64 > UINT32_MAX)
        return set_error(MOLE_STATUS_FORMAT_ERROR, "%s: key '%s' = %" PRId64 " is out of range", what_copy_.c_str(),
                         key.c_str(), v->i64);
    *out = static_cast<uint32_t>(v->u64);
    return MOLE_STATUS_OK;
}

Status Gguf::get_f32(const std::string &key, float *out, bool *found) const {
    const GgufValue *v = find(key);
    if (found) *found = v != nullptr;
    if (!v) return MOLE_STATUS_OK;
    if (!v->is_float())
        return set_error(MOLE_STATUS_FORMAT_ERROR, "%s: key '%s' must be a float, got %s", what_copy_.c_str(),
                         key.c_str(), gguf_type_name(v->type));
    *out = static_cast<float>(v->f64);
    return MOLE_STATUS_OK;
}

Status Gguf::get_string(const std::string &key, std::string_view *out, bool *found) const {
    const GgufValue *v = find(key);
    if (found) *found = v != nullptr;
    if (!v) return MOLE_STATUS_OK;
    if (v->type != GgufType::STRING)
        return set_error(MOLE_STATUS_FORMAT_ERROR, "%s: key '%s' must be a string, got %s", what_copy_.c_str(),
                         key.c_str(), gguf_type_name(v->type));
    *out = v->str;
    return MOLE_STATUS_OK;
}

}  // namespace mole
