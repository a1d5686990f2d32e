// LutReader: pread with a mapping fallback, and page release widened to fault-around windows.
#include "lut_reader.h"

#include <algorithm>
#include <cstring>

namespace mole {

namespace {
constexpr uint64_t kFaultAround = 65536;   // Linux's default fault_around_bytes
}

void LutReader::init(const MappedFile &file, uint64_t lut_offset, uint64_t row_bytes) {
    file_ = &file;
    lut_offset_ = lut_offset;
    row_bytes_ = row_bytes;
}

void LutReader::read(uint64_t offset, void *dst, uint64_t len) const {
    if (!file_->read_at(offset, dst, len)) std::memcpy(dst, file_->data() + offset, len);
}

void LutReader::read_auto(uint64_t offset, void *dst, uint64_t len) const {
    if (file_->all_resident(offset, len))
        std::memcpy(dst, file_->data() + offset, len);
    else
        read(offset, dst, len);
}

void LutReader::release(uint64_t offset, uint64_t len) const {
    // The kernel maps up to 64 KiB of already cached neighbours on each fault (MADV_RANDOM does
    // not stop that), aligned in virtual addresses. Neighbours still in use only fault in again.
    const uint64_t base = reinterpret_cast<uintptr_t>(file_->data());
    const uint64_t lo = base + offset, hi = lo + len;
    const uint64_t a = std::max(base, lo / kFaultAround * kFaultAround) - base;
    const uint64_t e = (hi + kFaultAround - 1) / kFaultAround * kFaultAround - base;
    file_->advise_release(a, e - a);
}

}  // namespace mole
