"""Sharded conversion under torchrun: the LUT's chunks are split among the ranks, and each rank writes its
rows at their final offsets in the one output file. Rank 0 writes the header and the dense tensors and
preallocates the file; it renames the file into place once every rank has reported success. The chunks are
the single-process conversion's, so the file is byte-identical to it (on the same kind of device).

On a shared filesystem (every rank writes the same path) no two ranks ever write into the same
SHARED_BLOCK-aligned block: a rank writes the whole blocks inside its byte range itself and hands the
partial blocks at the range's two ends to rank 0, which writes them after the others have closed the file.
What the filesystem must provide is in docs/scaling.md."""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import pathlib

from .dist import RankError, World
from .errors import ConvertError
from .gguf_out import FileLayout, start_gguf, write_dense

SHARED_BLOCK = 1 << 20   # bytes: the unit no two ranks share (covers 4 KiB and 64 KiB pages, NFS wsize)


def share(n_chunks: int, rank: int, size: int) -> range:
    """Rank's chunk indices: contiguous, sizes differing by at most one, rank 0 first."""
    return range(n_chunks * rank // size, n_chunks * (rank + 1) // size)


def _pwrite_all(fd: int, data, offset: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _preallocate(fd: int, size: int) -> None:
    """Set the file's size, and reserve its blocks where the filesystem can (Linux fallocate; a full disk
    fails here, before any LUT work). No zero-writing emulation: on NFSv3 and the like the file stays sparse."""
    os.ftruncate(fd, size)
    name = ctypes.util.find_library("c")
    fallocate = getattr(ctypes.CDLL(name, use_errno=True), "fallocate", None) if name else None
    if fallocate is None:
        return
    fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    if fallocate(fd, 0, 0, size) != 0:
        err = ctypes.get_errno()
        if err == errno.ENOSPC:
            raise OSError(err, f"not enough space for the {size}-byte output file")
        if err not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise OSError(err, f"fallocate of the output file: {os.strerror(err)}")


class _ShareWriter:
    """Writes one rank's LUT rows into [start, end) of the file. Rank 0 writes every byte itself; other ranks
    write only whole SHARED_BLOCK blocks and keep the bytes of the partial blocks at both ends as fragments."""

    def __init__(self, fd: int, start: int, end: int, whole: bool):
        self.fd = fd
        lo = -(-start // SHARED_BLOCK) * SHARED_BLOCK
        hi = end // SHARED_BLOCK * SHARED_BLOCK
        self.lo, self.hi = (start, end) if whole else ((lo, hi) if lo < hi else (end, end))
        self.fragments: list[tuple[int, bytes]] = []     # (offset, bytes) for rank 0 to write

    def write(self, offset: int, data: memoryview) -> None:
        end = offset + len(data)
        a, b = max(offset, self.lo), min(end, self.hi)
        if a >= b:                      # nothing of it in a whole block of this rank's own
            self.fragments.append((offset, bytes(data)))
            return
        _pwrite_all(self.fd, data[a - offset:b - offset], a)
        if offset < a:
            self.fragments.append((offset, bytes(data[:a - offset])))
        if b < end:
            self.fragments.append((b, bytes(data[b - offset:])))


def convert_sharded(world: World, src_dir, dst: pathlib.Path, lut_type: str, weight_type: str, *,
                    chunk_tokens: int | None, memory_budget: int | None, progress: bool,
                    device: str, gate=None) -> pathlib.Path:
    """convert() on every rank of world (size > 1); returns dst on every rank or raises RankError on every rank.
    gate: the low-bit LUT's measurement (convert.quality_gate), written into the header by rank 0."""
    from .convert import _remove_stale_temps, _say, check_destination, check_device, describe_lut, prepare, \
        temp_path

    main = world.is_main
    say = progress and main
    tmp: pathlib.Path | None = None
    writer = None
    fd = -1
    try:
        with world.step("reading the checkpoint"):
            device = check_device(device, world.local_rank)
            check_destination(dst)
            p = prepare(src_dir, lut_type, weight_type, chunk_tokens=chunk_tokens, memory_budget=memory_budget,
                        progress=say, device=device, header=main)
        lut = p.lut
        with world.step("planning the LUT"):
            # every rank must see the same model; the chunk is the smallest any rank can hold
            mine = None if lut is None else (p.ckpt.form, lut.plan.lut_type, lut.nbytes, lut.plan.chunk_tokens)
            plans = world.all_gather(mine)
            if len({q and q[:3] for q in plans}) > 1:
                raise ConvertError(f"the ranks read different checkpoints: (form, LUT type, LUT bytes, chunk) "
                                   f"by rank: {plans}")
            if lut is not None and min(q[3] for q in plans) != lut.plan.chunk_tokens:
                p = prepare(src_dir, lut_type, weight_type, chunk_tokens=min(q[3] for q in plans),
                            memory_budget=memory_budget, progress=say, device=device, header=main)
                lut = p.lut
        for n in p.notes:
            _say(f"note: {n}", say)
        if lut is not None:
            _say(describe_lut(p, world.size), say)

        layout: FileLayout | None = None
        with world.step("creating the output file"):
            if main:
                _remove_stale_temps(dst)
                tmp = temp_path(dst)
                writer, layout = start_gguf(tmp, p.ckpt, p.plan, p.tok, lut, name=p.ckpt.directory.resolve().name,
                                            gate=gate)
                writer.flush()
                if layout is not None:
                    _preallocate(writer.fout[0].fileno(), layout.file_size)
                os.fsync(writer.fout[0].fileno())
        tmp_name, layout = world.broadcast((str(tmp), layout) if main else None)
        tmp = pathlib.Path(tmp_name)

        with world.step("opening the output file"):
            if layout is not None:
                try:
                    fd = os.open(tmp, os.O_WRONLY)
                except FileNotFoundError:
                    raise ConvertError(f"{tmp}, which rank 0 created, is not there: the output must be on a "
                                       "filesystem every rank shares, at the same path") from None
                size = os.fstat(fd).st_size
                if size != layout.file_size:
                    raise ConvertError(f"{tmp} is {size} bytes here, {layout.file_size} on rank 0: the output must "
                                       "be on a filesystem every rank shares, at the same path")
        with world.step("writing the dense tensors"):
            if main:
                write_dense(writer, p.ckpt, p.plan, progress=say)
                writer.flush()
                if layout is not None and writer.fout[0].tell() != layout.lut_offset:
                    raise ConvertError(f"dense tensors end at {writer.fout[0].tell()}, the LUT starts at "
                                       f"{layout.lut_offset}")
                os.fsync(writer.fout[0].fileno())
                writer.close()
                writer = None

        fragments: list[tuple[int, bytes]] = []
        if lut is not None:
            fragments = _write_lut_share(world, lut, fd, layout, say)
        err: BaseException | None = None
        try:
            if fd >= 0:
                os.fsync(fd)     # a rank reports success only once its rows are on the server (NFS: on close)
                os.close(fd)
                fd = -1
        except OSError as e:
            err = e
        reports = world.gather(fragments if err is None else None)
        world.agree(err, "flushing the LUT")

        verdict = None
        if main:
            try:
                if any(frags for frags in reports) and fd < 0:
                    fd = os.open(tmp, os.O_WRONLY)
                for frags in reports:
                    for offset, data in frags:
                        _pwrite_all(fd, data, offset)
                if fd >= 0:
                    os.fsync(fd)
                    os.close(fd)
                    fd = -1
                os.replace(tmp, dst)
                tmp = None
                _fsync_dir(dst.parent)
            except Exception as e:
                verdict = f"rank 0 of {world.size}: {e}"
        verdict = world.broadcast(verdict)
        if verdict is not None:
            raise RankError(f"finishing the file failed on {verdict}", [0])
        return dst
    except BaseException:
        if main and tmp is not None:
            tmp.unlink(missing_ok=True)
        raise
    finally:
        if writer is not None:
            writer.close()
        if fd >= 0:
            os.close(fd)


def _write_lut_share(world: World, lut, fd: int, layout: FileLayout, progress: bool) -> list[tuple[int, bytes]]:
    """Compute and write this rank's chunks; every rank checks in after each chunk, so a failure anywhere
    stops the others at their next chunk. Returns this rank's fragments (rank 0 writes them at the end)."""
    rb = lut.plan.row_bytes
    ranges = lut.chunk_ranges()
    counts = [len(share(len(ranges), r, world.size)) for r in range(world.size)]
    mine = [ranges[i] for i in share(len(ranges), world.rank, world.size)]
    start = layout.lut_offset + (mine[0][0] if mine else 0) * rb
    end = layout.lut_offset + (mine[-1][1] if mine else 0) * rb
    out = _ShareWriter(fd, start, end, whole=world.is_main)
    chunks = lut.chunks(mine, desc=f" (rank 0 of {world.size}, {sum(b - a for a, b in mine)} rows)") \
        if progress else lut.chunks(mine)
    err: BaseException | None = None
    try:
        for i in range(max(counts)):
            if err is None and i < len(mine):
                try:
                    a, rows = next(chunks)
                    out.write(layout.lut_offset + a * rb, memoryview(rows).cast("B"))
                except Exception as e:
                    err = e
            if world.any(err is not None):
                break
    finally:
        chunks.close()
    world.agree(err, "writing the LUT")
    return out.fragments


def _fsync_dir(directory: pathlib.Path) -> None:
    """Make the rename durable (best effort: some filesystems refuse to open or sync a directory)."""
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)
