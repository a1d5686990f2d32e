// Read-only file mapping and the few OS calls around it (madvise, mincore, core count).
// Every platform #ifdef of the runtime lives in mmap.cpp.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "error.h"

namespace mole {

class MappedFile {
public:
    // Maps the whole file read-only. Missing file -> MOLE_STATUS_FILE_NOT_FOUND; an empty file ->
    // MOLE_STATUS_FORMAT_ERROR; other failures -> MOLE_STATUS_IO_ERROR (message names the path).
    static Status open(const std::string &path, std::unique_ptr<MappedFile> *out);
    ~MappedFile();
    MappedFile(const MappedFile &) = delete;
    MappedFile &operator=(const MappedFile &) = delete;

    const uint8_t *data() const { return data_; }
    uint64_t size() const { return size_; }
    const std::string &path() const { return path_; }

    // Hints for byte range [offset, offset + len) of the file; ranges are widened to whole pages.
    void advise_willneed(uint64_t offset, uint64_t len) const;   // start reading it in now
    void advise_random(uint64_t offset, uint64_t len) const;     // no readahead around faults
    // Drops this process's mapping of the pages (they stay in the page cache; a later touch is a
    // minor fault): bytes already copied elsewhere stop counting in our RSS.
    void advise_release(uint64_t offset, uint64_t len) const;
    // Copies file bytes [offset, offset + len) into dst with pread (no mapping of the pages, so
    // they never count in RSS); false on an I/O error or a short read.
    bool read_at(uint64_t offset, void *dst, uint64_t len) const;
    // Whether every page of the range is in memory now (false if the platform cannot tell).
    // Allocation-free, for the decode loop.
    bool all_resident(uint64_t offset, uint64_t len) const;
    // OK while the file has the size and modification time it had when it was mapped; else
    // MOLE_STATUS_IO_ERROR naming what changed. A file cut short under the mapping faults
    // (SIGBUS) where the pages are gone and one rewritten in place gives other bytes, so callers
    // check this before they read weights or metadata. One fstat; a file replaced by a rename is
    // not a change (the mapping keeps the old file).
    Status check_unchanged() const;

private:
    MappedFile() = default;
    std::string path_;
    const uint8_t *data_ = nullptr;
    uint64_t size_ = 0;
    int64_t mtime_ns_ = 0;   // when it was mapped
    int fd_ = -1;
};

// Anonymous zero-filled memory for a large, long-lived buffer (repacked weights, the LUT row
// cache): page aligned; with `huge`, backed by transparent huge pages where the OS offers them,
// so filling it takes few faults and streaming through it few TLB misses (a huge-page fault may
// compact memory first: for buffers filled at load, not in the decode loop).
class LargeBuffer {
public:
    // MOLE_STATUS_OUT_OF_MEMORY naming `what` when the memory is not there.
    static Status allocate(uint64_t bytes, bool huge, const char *what, std::unique_ptr<LargeBuffer> *out);
    ~LargeBuffer();
    LargeBuffer(const LargeBuffer &) = delete;
    LargeBuffer &operator=(const LargeBuffer &) = delete;
    uint8_t *data() const { return data_; }
    uint64_t size() const { return size_; }
    // Faults in [offset, offset + len) now, in one call where the OS has one (Linux
    // MADV_POPULATE_WRITE), instead of one fault per page as it is first written.
    void populate(uint64_t offset, uint64_t len);

private:
    LargeBuffer() = default;
    uint8_t *data_ = nullptr;
    uint64_t size_ = 0, mapped_ = 0;
};

// Bytes of one virtual memory page.
uint64_t page_size();
// Physical CPU cores (falls back to logical ones), at least 1.
int physical_core_count();
// Bytes of physical memory of the machine (0 if the platform cannot tell).
uint64_t physical_memory_bytes();

}  // namespace mole
