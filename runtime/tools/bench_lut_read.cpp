// bench_lut_read: how the host should read a missed LUT row's layer slice into staging when its
// pages are already in the page cache: pread, or a copy from the file mapping (LutReader::read vs a
// memcpy from MappedFile::data()), for the first touch of the mapping's pages and when they are
// mapped already. Writes a file of V rows, reads it once so it is resident, then times random
// slices of each size (median of repeats).
// Usage: bench_lut_read [--file-mb 256] [--slices 2176,13056,26112] [--reads 4096] [--reps 5]
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "lut_reader.h"
#include "mmap.h"

using namespace mole;

namespace {

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

std::vector<uint64_t> list(const char *s) {
    std::vector<uint64_t> out;
    for (const char *p = s; *p;) {
        out.push_back(std::strtoull(p, nullptr, 10));
        p = std::strchr(p, ',');
        if (!p) break;
        ++p;
    }
    return out;
}

}  // namespace

int main(int argc, char **argv) {
    uint64_t file_mb = 256, reads = 4096;
    int reps = 5;
    std::vector<uint64_t> slices = {2176, 13056, 26112};   // d512 4E, 160M-16E, 160M-32E layer slices (q8_0)
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string a = argv[i];
        if (a == "--file-mb")
            file_mb = std::strtoull(argv[i + 1], nullptr, 10);
        else if (a == "--slices")
            slices = list(argv[i + 1]);
        else if (a == "--reads")
            reads = std::strtoull(argv[i + 1], nullptr, 10);
        else if (a == "--reps")
            reps = std::atoi(argv[i + 1]);
        else {
            std::fprintf(stderr, "usage: bench_lut_read [--file-mb N] [--slices B,...] [--reads N] [--reps N]\n");
            return 2;
        }
    }
    char path[] = "/tmp/mole-bench-lut-read-XXXXXX";
    const int fd = mkstemp(path);
    if (fd < 0) return 1;
    std::vector<uint8_t> chunk(1 << 20, 0x5a);
    for (uint64_t i = 0; i < file_mb; ++i)
        if (write(fd, chunk.data(), chunk.size()) != ssize_t(chunk.size())) return 1;
    close(fd);
    std::unique_ptr<MappedFile> file;
    if (MappedFile::open(path, &file) != MOLE_STATUS_OK) return 1;
    unlink(path);
    const uint64_t size = file->size();
    for (uint64_t at = 0; at < size; at += chunk.size())
        file->read_at(at, chunk.data(), std::min<uint64_t>(chunk.size(), size - at));
    LutReader reader;
    reader.init(*file, 0, size);
    std::mt19937_64 rng(1);
    std::printf("file %llu MB, all pages resident; %llu random reads per measurement, median of %d\n",
                (unsigned long long)file_mb, (unsigned long long)reads, reps);
    std::printf(
        "| slice bytes | pread us/read | mapping, first touch us/read | mapping, mapped us/read |\n|---|---|---|---|\n");
    for (uint64_t len : slices) {
        std::vector<uint8_t> dst(len * 64);
        std::vector<uint64_t> offs(reads);
        double t[3][64] = {};
        for (int rep = 0; rep < reps; ++rep) {
            for (auto &o : offs) o = rng() % (size - len);
            for (int mode = 0; mode < 3; ++mode) {
                if (mode == 1) file->advise_release(0, size);   // the mapping's pages unmapped (still cached)
                const double t0 = now();
                for (uint64_t i = 0; i < reads; ++i) {
                    uint8_t *d = dst.data() + (i % 64) * len;
                    if (mode == 0)
                        reader.read(offs[i], d, len);
                    else
                        std::memcpy(d, file->data() + offs[i], len);
                }
                t[mode][rep] = (now() - t0) / double(reads) * 1e6;
            }
        }
        double med[3];
        for (int m = 0; m < 3; ++m) {
            std::sort(t[m], t[m] + reps);
            med[m] = t[m][reps / 2];
        }
        std::printf("| %llu | %.2f | %.2f | %.2f |\n", (unsigned long long)len, med[0], med[1], med[2]);
    }
    return 0;
}
