"""Speed of the CUDA backend on one model and its dense twin, for bench/gpu_check.sh: decode at batch
1, 8 and 32 (B sequences, one token each per step) and a 512-token prompt, MoLE and dense steps
interleaved in one process, with the LUT warm (every row in the VRAM cache and the page cache) and
evicted (a fresh context, the LUT's pages dropped from the page cache). Also: LUT bytes copied to
the device per step, VRAM used (device-wide, before and after the contexts exist), and host CPU
time per step. Prints one JSON object.

    MOLE_LIB=build/libmole.so python bench/gpu_bench.py MOLE.gguf DENSE.gguf [--batches 1 8 32]
        [--steps 64] [--prompt 512] [--device cuda]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
from mole import _ffi  # noqa: E402


def device_free_bytes():
    """Free and total device memory (torch's view of the same GPU), or None without torch/CUDA."""
    try:
        import torch
        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            return int(free), int(total)
    except Exception:   # noqa: BLE001 - no torch, or a torch without CUDA: report nothing
        pass
    return None


def evict(path: str) -> None:
    """Drop the file's pages from the page cache (they are read from storage again)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


class Ctx:
    """A model and one context of n_seq sequences, over the C API."""

    def __init__(self, path: str, device: str, n_seq: int, n_ctx: int, lut_cache_mb: int = -1):
        L = _ffi.get()
        self.ffi, self.lib = L.ffi, L.lib
        mp = self.ffi.new("struct mole_model_params *")
        self.lib.mole_model_default_params(mp)
        mp.device = self.lib.MOLE_DEVICE_CUDA if device == "cuda" else self.lib.MOLE_DEVICE_CPU
        out = self.ffi.new("struct mole_model **")
        _ffi.check(self.lib.mole_model_load(path.encode(), mp, out), path)
        self.model = self.ffi.gc(out[0], self.lib.mole_model_free)
        info = self.ffi.new("struct mole_model_info *")
        _ffi.check(self.lib.mole_model_get_info(self.model, info))
        self.n_vocab, self.row_bytes, self.dense_bytes = info.n_vocab, info.lut_row_bytes, info.dense_bytes
        p = self.ffi.new("struct mole_context_params *")
        self.lib.mole_context_default_params(p)
        p.n_ctx, p.n_seq_max, p.n_batch, p.lut_cache_mb = n_ctx, n_seq, 512, lut_cache_mb
        c = self.ffi.new("struct mole_context **")
        _ffi.check(self.lib.mole_context_new(self.model, p, c), "context")
        self.ctx = self.ffi.gc(c[0], self.lib.mole_context_free)
        got = self.ffi.new("struct mole_context_params *")
        _ffi.check(self.lib.mole_context_get_params(self.ctx, got))
        self.cache_mb = int(got.lut_cache_mb)
        self.logits = np.empty((max(n_seq, 1), self.n_vocab), np.float32)

    def decode(self, tokens, seqs, want_last_only=False):
        tokens = np.ascontiguousarray(tokens, np.int32)
        seqs = np.ascontiguousarray(seqs, np.int32)
        want = np.zeros(len(tokens), np.int8)
        if want_last_only:
            want[-1] = 1
        else:
            want[:] = 1
        n_out = int(want.sum())
        out = self.logits if n_out <= len(self.logits) else np.empty((n_out, self.n_vocab), np.float32)
        _ffi.check(self.lib.mole_decode(self.ctx, len(tokens), self.ffi.from_buffer("int32_t[]", tokens),
                                        self.ffi.from_buffer("int32_t[]", seqs), self.ffi.from_buffer("int8_t[]", want),
                                        self.ffi.from_buffer("float[]", out), out.size))

    def clear(self, n_seq):
        for s in range(n_seq):
            self.lib.mole_seq_truncate(self.ctx, s, 0)

    def stats(self):
        s = self.ffi.new("struct mole_stats *")
        _ffi.check(self.lib.mole_context_get_stats(self.ctx, s))
        return {k: getattr(s, k) for k in dir(s)}


def cpu_s():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def measure(moe: Ctx, dense: Ctx, B: int, steps: int, rng) -> dict:
    """B sequences: an 8-token prompt each, then `steps` decode steps of B tokens; the two models'
    steps alternate. Per model: tok/s, ms per step, host CPU ms per step, LUT bytes to device per step."""
    res = {}
    for c in (moe, dense):
        c.clear(B)
        c.decode(rng.integers(1, c.n_vocab, 8 * B), np.repeat(np.arange(B), 8))
    t = {id(moe): 0.0, id(dense): 0.0}
    cpu = {id(moe): 0.0, id(dense): 0.0}
    before = {id(c): c.stats() for c in (moe, dense)}
    for _ in range(steps):
        for c in (moe, dense):
            toks = rng.integers(1, c.n_vocab, B)
            c0, t0 = cpu_s(), time.perf_counter()
            c.decode(toks, np.arange(B))
            t[id(c)] += time.perf_counter() - t0
            cpu[id(c)] += cpu_s() - c0
    for name, c in (("mole", moe), ("dense", dense)):
        s = c.stats()
        b = before[id(c)]
        res[name] = {"tok_s": B * steps / t[id(c)], "ms_per_step": t[id(c)] / steps * 1e3,
                     "host_cpu_ms_per_step": cpu[id(c)] / steps * 1e3,
                     "lut_bytes_to_device_per_step": (s["lut_bytes_to_device"] - b["lut_bytes_to_device"]) / steps,
                     "lut_rows_fetched_per_step": (s["lut_rows_fetched"] - b["lut_rows_fetched"]) / steps,
                     "lut_wait_ms_per_step": (s["t_lut_wait_ms"] - b["t_lut_wait_ms"]) / steps}
    res["mole_over_dense_step"] = res["mole"]["ms_per_step"] / res["dense"]["ms_per_step"]
    return res


def prompt(moe: Ctx, dense: Ctx, P: int, rng) -> dict:
    out = {}
    for name, c in (("mole", moe), ("dense", dense)):
        ids = rng.integers(1, c.n_vocab, P)
        c.clear(1)
        t0 = time.perf_counter()
        c.decode(ids, np.zeros(P, np.int32), want_last_only=True)
        out[name] = {"tok_s": P / (time.perf_counter() - t0)}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("moe")
    ap.add_argument("dense")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--no-vram", action="store_true", help="skip the VRAM reading (it imports torch)")
    a = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    n_ctx = a.prompt + 8 + a.steps + 8
    B_max = max(a.batches)
    report = {"model": a.moe, "dense": a.dense, "device": a.device, "steps": a.steps}
    free0 = None if a.no_vram else device_free_bytes()
    for mode in ("evicted", "warm"):
        evict(a.moe)
        moe, dense = Ctx(a.moe, a.device, B_max, n_ctx), Ctx(a.dense, a.device, B_max, n_ctx)
        free1 = None if a.no_vram else device_free_bytes()
        if mode == "evicted":
            report["dense_bytes"] = moe.dense_bytes + dense.dense_bytes
            report["lut_cache_mb"] = moe.cache_mb
            if free0 and free1:
                report["vram_used_bytes"] = free0[0] - free1[0]
        if mode == "warm":   # every row of the vocabulary through the cache once
            chunk = min(512, n_ctx)
            for s in range(0, moe.n_vocab, chunk):
                moe.clear(1)
                ids = np.arange(s, min(moe.n_vocab, s + chunk))
                moe.decode(ids, np.zeros(len(ids), np.int32), want_last_only=True)
        report[mode] = {f"batch{B}": measure(moe, dense, B, a.steps, rng) for B in a.batches}
        report[mode]["prompt"] = prompt(moe, dense, a.prompt, rng)
        report[mode]["row_bytes"] = moe.row_bytes
        del moe, dense
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
