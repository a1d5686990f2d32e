// Read-only file mapping (POSIX mmap) plus madvise/mincore hints and core counting.
// This is the only file of the runtime with platform #ifdefs.
#include "mmap.h"

#include "error.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <set>
#include <thread>
#include <utility>

#if defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>
#if defined(__linux__)
#include <sched.h>
#endif
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#define MOLE_POSIX 1
#else
#error "mole.cpp needs a POSIX system (mmap); port mmap.cpp to add another"
#endif

namespace mole {

namespace {
// A stat's modification time in nanoseconds.
int64_t mtime_ns(const struct stat &st) {
#if defined(__APPLE__)
    return int64_t(st.st_mtimespec.tv_sec) * 1000000000 + st.st_mtimespec.tv_nsec;
#else
    return int64_t(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
#endif
}
}  // namespace

uint64_t page_size() {
    static const uint64_t size = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
    return size;
}

Status LargeBuffer::allocate(uint64_t bytes, bool huge, const char *what, std::unique_ptr<LargeBuffer> *out) {
    // Whole pages only: a partial last 2 MB stays in small pages rather than costing a huge one
    // (Linux places anonymous mappings of 2 MB and more on huge-page boundaries itself).
    const uint64_t ps = page_size(), len = (std::max<uint64_t>(bytes, 1) + ps - 1) / ps * ps;
    void *p = mmap(nullptr, static_cast<size_t>(len), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return set_error(MOLE_STATUS_OUT_OF_MEMORY, "cannot allocate %s (%s)", what, human_bytes(bytes).c_str());
#if defined(MADV_HUGEPAGE)
    if (huge) madvise(p, static_cast<size_t>(len), MADV_HUGEPAGE);   // a hint: fine if refused
#endif
    std::unique_ptr<LargeBuffer> b(new LargeBuffer());
    b->data_ = static_cast<uint8_t *>(p);
    b->size_ = bytes;
    b->mapped_ = len;
    *out = std::move(b);
    return MOLE_STATUS_OK;
}

void LargeBuffer::populate(uint64_t offset, uint64_t len) {
    if (offset >= size_) return;
    len = std::min(len, size_ - offset);
    const uint64_t ps = page_size(), s = offset / ps * ps, e = (offset + len + ps - 1) / ps * ps;
#if defined(MADV_POPULATE_WRITE)
    if (madvise(data_ + s, static_cast<size_t>(e - s), MADV_POPULATE_WRITE) == 0) return;
#endif
    for (uint64_t a = s; a < e; a += ps) data_[a] = 0;   // older kernels: one write per page
}

LargeBuffer::~LargeBuffer() {
    if (data_) munmap(data_, static_cast<size_t>(mapped_));
}

Status MappedFile::open(const std::string &path, std::unique_ptr<MappedFile> *out) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int err = errno;
        if (err == ENOENT || err == ENOTDIR)
            return set_error(MOLE_STATUS_FILE_NOT_FOUND, "%s: no such file", path.c_str());
        return set_error(MOLE_STATUS_IO_ERROR, "%s: cannot open: %s", path.c_str(), std::strerror(err));
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int err = errno;
        ::close(fd);
        return set_error(MOLE_STATUS_IO_ERROR, "%s: cannot stat: %s", path.c_str(), std::strerror(err));
    }
    if (!S_ISREG(st.st_mode)) {
        ::close(fd);
        return set_error(MOLE_STATUS_IO_ERROR, "%s: not a regular file", path.c_str());
    }
    if (st.st_size == 0) {
        ::close(fd);
        return set_error(MOLE_STATUS_FORMAT_ERROR, "%s: the file is empty, not a GGUF file", path.c_str());
    }
    void *p = mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        int err = errno;
        ::close(fd);
        return set_error(err == ENOMEM ? MOLE_STATUS_OUT_OF_MEMORY : MOLE_STATUS_IO_ERROR, "%s: mmap failed: %s",
                         path.c_str(), std::strerror(err));
    }
    // No readahead anywhere in the file: a fault (the header parse, a dense page after eviction)
    // would otherwise read up to read_ahead_kb around it, spilling into the LUT. Dense weights are
    // prefetched explicitly (advise_willneed) over exactly their range.
    madvise(p, static_cast<size_t>(st.st_size), MADV_RANDOM);
#if defined(POSIX_FADV_RANDOM)
    posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM);
#endif
    std::unique_ptr<MappedFile> f(new MappedFile());
    f->path_ = path;
    f->data_ = static_cast<const uint8_t *>(p);
    f->size_ = static_cast<uint64_t>(st.st_size);
    f->mtime_ns_ = mtime_ns(st);
    f->fd_ = fd;
    *out = std::move(f);
    return MOLE_STATUS_OK;
}

MappedFile::~MappedFile() {
    if (data_) munmap(const_cast<uint8_t *>(data_), static_cast<size_t>(size_));
    if (fd_ >= 0) ::close(fd_);
}

namespace {
// [offset, offset+len) clipped to the file and widened to pages; false if empty.
bool page_range(uint64_t file_size, uint64_t offset, uint64_t len, uint64_t *start, uint64_t *end) {
    if (offset >= file_size || len == 0) return false;
    uint64_t e = len > file_size - offset ? file_size : offset + len;
    uint64_t ps = page_size();
    *start = offset / ps * ps;
    *end = (e + ps - 1) / ps * ps;
    return true;
}
}  // namespace

void MappedFile::advise_willneed(uint64_t offset, uint64_t len) const {
    uint64_t s, e;
    if (page_range(size_, offset, len, &s, &e))
        madvise(const_cast<uint8_t *>(data_) + s, static_cast<size_t>(e - s), MADV_WILLNEED);
}

void MappedFile::advise_random(uint64_t offset, uint64_t len) const {
    uint64_t s, e;
    if (page_range(size_, offset, len, &s, &e))
        madvise(const_cast<uint8_t *>(data_) + s, static_cast<size_t>(e - s), MADV_RANDOM);
}

void MappedFile::advise_release(uint64_t offset, uint64_t len) const {
    uint64_t s, e;
    if (page_range(size_, offset, len, &s, &e))
        madvise(const_cast<uint8_t *>(data_) + s, static_cast<size_t>(e - s), MADV_DONTNEED);
}

bool MappedFile::read_at(uint64_t offset, void *dst, uint64_t len) const {
    if (offset > size_ || len > size_ - offset) return false;
    uint8_t *p = static_cast<uint8_t *>(dst);
    while (len > 0) {
        const ssize_t n = pread(fd_, p, static_cast<size_t>(len), static_cast<off_t>(offset));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return false;
        p += n;
        offset += static_cast<uint64_t>(n);
        len -= static_cast<uint64_t>(n);
    }
    return true;
}

bool MappedFile::all_resident(uint64_t offset, uint64_t len) const {
    uint64_t s, e;
    if (!page_range(size_, offset, len, &s, &e)) return false;
#if defined(__linux__) || defined(__APPLE__)
    const uint64_t ps = page_size();
    constexpr uint64_t kPages = 256;
    unsigned char vec[kPages];
    for (uint64_t a = s; a < e; a += kPages * ps) {
        const uint64_t n = std::min<uint64_t>(kPages, (e - a) / ps);
#if defined(__APPLE__)
        if (mincore(const_cast<uint8_t *>(data_) + a, static_cast<size_t>(n * ps), reinterpret_cast<char *>(vec)) != 0)
            return false;
#else
        if (mincore(const_cast<uint8_t *>(data_) + a, static_cast<size_t>(n * ps), vec) != 0) return false;
#endif
        for (uint64_t i = 0; i < n; ++i)
            if (!(vec[i] & 1)) return false;
    }
    return true;
#else
    return false;
#endif
}

Status MappedFile::check_unchanged() const {
    struct stat st;
    if (fstat(fd_, &st) != 0)
        return set_error(MOLE_STATUS_IO_ERROR, "%s: cannot stat the loaded file: %s", path_.c_str(),
                         std::strerror(errno));
    const uint64_t size = static_cast<uint64_t>(st.st_size);
    if (size < size_)
        return set_error(MOLE_STATUS_IO_ERROR,
                         "%s: the file was truncated after it was loaded (%llu bytes, was %llu); load it again",
                         path_.c_str(), static_cast<unsigned long long>(size), static_cast<unsigned long long>(size_));
    if (size != size_ || mtime_ns(st) != mtime_ns_)
        return set_error(MOLE_STATUS_IO_ERROR,
                         "%s: the file was modified after it was loaded (%s); load it again, or replace model files "
                         "by renaming a new file over them",
                         path_.c_str(), size != size_ ? "its size changed" : "its modification time changed");
    return MOLE_STATUS_OK;
}

uint64_t physical_memory_bytes() {
#if defined(_SC_PHYS_PAGES)
    const long pages = sysconf(_SC_PHYS_PAGES);
    return pages > 0 ? static_cast<uint64_t>(pages) * page_size() : 0;
#else
    return 0;
#endif
}

int physical_core_count() {
    int logical = static_cast<int>(std::thread::hardware_concurrency());
#if defined(__linux__)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0) logical = CPU_COUNT(&set);

    // Distinct (physical id, core id) pairs of /proc/cpuinfo.
    std::ifstream in("/proc/cpuinfo");
    std::set<std::pair<std::string, std::string>> cores;
    std::string line, phys = "0";
    while (std::getline(in, line)) {
        auto colon = line.find(':');
        if (colon == std::string::npos) continue;
        std::string key = line.substr(0, line.find_last_not_of(" \t", colon - 1) + 1);
        std::string value = colon + 2 <= line.size() ? line.substr(colon + 2) : "";
        if (key == "physical id")
            phys = value;
        else if (key == "core id")
            cores.insert({phys, value});
    }
    if (!cores.empty() && logical > 0) return std::min(static_cast<int>(cores.size()), logical);
#endif
    return logical > 0 ? logical : 1;
}

}  // namespace mole
