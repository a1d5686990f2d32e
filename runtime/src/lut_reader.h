// Host reads of LUT rows from the file, backend-free: positioned reads (no mapping, so the pages
// never count in RSS), page-cache residency, readahead hints over exactly a row's pages, and
// the release of mapped pages a mix read in place.
#pragma once

#include <cstdint>

#include "mmap.h"

namespace mole {

class LutReader {
public:
    // Rows of row_bytes from file offset lut_offset on (row v at lut_offset + v * row_bytes).
    void init(const MappedFile &file, uint64_t lut_offset, uint64_t row_bytes);
    uint64_t row_offset(int32_t token) const { return lut_offset_ + uint64_t(token) * row_bytes_; }
    const uint8_t *mapped(uint64_t offset) const { return file_->data() + offset; }
    uint64_t row_bytes() const { return row_bytes_; }

    // Whether every page of file bytes [offset, offset + len) is in the page cache now.
    bool resident(uint64_t offset, uint64_t len) const { return file_->all_resident(offset, len); }
    // Starts reading the pages of [offset, offset + len) in now (no readahead around them).
    void willneed(uint64_t offset, uint64_t len) const { file_->advise_willneed(offset, len); }
    // dst = file bytes [offset, offset + len): pread, or the mapping on a read error (where the
    // OS reports a real I/O error itself).
    void read(uint64_t offset, void *dst, uint64_t len) const;
    // The same bytes, copied from the mapping when every page is resident (no system call), else
    // read as above (bench_ops --lut-read measures the two).
    void read_auto(uint64_t offset, void *dst, uint64_t len) const;
    // Unmaps this process's pages of [offset, offset + len), widened to the kernel's fault-around
    // window (they stay in the page cache): pages a mix read in place stop counting in RSS.
    void release(uint64_t offset, uint64_t len) const;

private:
    const MappedFile *file_ = nullptr;
    uint64_t lut_offset_ = 0, row_bytes_ = 0;
};

}  // namespace mole
