"""Streaming re-parameterization: the LUT [V, L*N*d] computed (or copied) a chunk of tokens at a time,
quantized, and written straight to the GGUF file. Memory depends on the chunk size and on one layer's
experts, never on V, L or N as a whole; the chunk size comes from a memory budget."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from .checkpoint import Checkpoint
from .errors import ConvertError
from . import checkpoint_names as C
from .model import compute_lut_rows, expert_params
from .progress import Progress
from .quantize import block_size, quantize, row_bytes

DEFAULT_MEMORY_BUDGET = 1536 << 20   # bytes for weights held + chunk buffers (peak RSS adds ~0.5 GB of runtime)

_F32 = 4


@dataclass
class LutPlan:
    """How the LUT is produced: chunk of tokens, layers computed together, whether experts stay loaded."""
    vocab: int                 # V
    row_len: int               # L*N*d, f32 elements of one token's row
    lut_type: str
    row_bytes: int             # bytes of one quantized row
    chunk_tokens: int          # T
    layers_per_group: int      # layers computed and quantized together (their width is whole blocks)
    keep_weights: bool         # all experts held in memory for the whole run (small models)
    est_bytes: int             # estimated working set


def _lut_shape(ckpt: Checkpoint) -> tuple[int, int, int, int, int]:
    c = ckpt.config
    return c.vocab_size, c.num_hidden_layers, c.num_experts, c.hidden_size, c.n_ff_expert


def plan_lut(ckpt: Checkpoint, lut_type: str, chunk_tokens: int | None = None,
             memory_budget: int | None = None) -> LutPlan:
    """Pick the chunk size (tokens per step) from the memory budget; chunk_tokens forces it."""
    if ckpt.form not in ("training", "reparam"):
        raise ConvertError(f"a {ckpt.form} checkpoint has no LUT")
    V, L, N, d, De = _lut_shape(ckpt)
    row_len = L * N * d
    rb = row_bytes(lut_type, row_len)
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else int(memory_budget)
    if ckpt.form == "training":
        bs = block_size(lut_type)
        g = bs // math.gcd(N * d, bs)          # layers whose joint width is a whole number of blocks
        g = min(g, L)
        layer_w = N * 2 * d * De * _F32        # one layer's experts in f32
        embed_b = V * d * _F32
        keep = L * layer_w + embed_b <= budget // 2
        fixed = embed_b + (L if keep else g + 1) * layer_w   # +1: the next tensor read while converting
        # per token: quantized row, group rows (list + stacked copy), expert hidden [De] x2, normed embed
        per_token = rb + 2 * g * N * d * _F32 + 2 * De * _F32 + 2 * d * _F32
    else:
        g, keep = L, False
        src = ckpt.dtype(C.MOE_TABLE).itemsize
        fixed = 0
        per_token = rb + row_len * (src + _F32)
    if chunk_tokens is None:
        chunk_tokens = max(1, (budget - fixed) // per_token)
        if chunk_tokens > 64:
            chunk_tokens -= chunk_tokens % 64    # keep matmul batches regular
    elif chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    chunk_tokens = int(min(chunk_tokens, V))
    return LutPlan(V, row_len, lut_type, rb, chunk_tokens, g, keep, fixed + chunk_tokens * per_token)


class _Experts:
    """compute_lut_rows' layer_params for layer l, read through Checkpoint.get (kept only if planned)."""

    def __init__(self, ckpt: Checkpoint, keep: bool):
        self.ckpt, self.keep, self._cache = ckpt, keep, {}

    def layer(self, i: int) -> dict:
        if i in self._cache:
            return self._cache[i]
        p = expert_params(self.ckpt.get, self.ckpt.config, i)
        if self.keep:
            self._cache[i] = p
        return p


class LutStream:
    """The LUT tensor as GGUFWriter.write_tensor_data wants it: nbytes and tofile(fout), computed on the fly.

    Rows are LUT[v] = concat_{l, j} FFN_expert_{l,j}(RMSNorm_expert_l(E[v])) (fp32, via
    model.compute_lut_rows) or the checkpoint's moe_table rows, quantized with quantize.quantize.
    """

    def __init__(self, ckpt: Checkpoint, lut_type: str, *, chunk_tokens: int | None = None,
                 memory_budget: int | None = None, progress: bool = False):
        self.ckpt = ckpt
        self.plan = plan_lut(ckpt, lut_type, chunk_tokens, memory_budget)
        self.progress = progress
        self.nbytes = self.plan.vocab * self.plan.row_bytes
        self.seconds = 0.0

    def byteswap(self, inplace=False):
        raise ConvertError("the LUT is written little-endian only")

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first token id, quantized rows uint8 [T, row_bytes]) for consecutive chunks covering 0..V-1."""
        p = self.plan
        bar = Progress(p.vocab, f"LUT {p.lut_type}", "rows", self.progress)
        try:
            if self.ckpt.form == "training":
                yield from self._computed(bar)
            else:
                yield from self._copied(bar)
        finally:
            bar.close()

    def f32_chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """The exact f32 rows [T, L*N*d] before quantization, chunked as chunks() (for checks)."""
        saved, self.plan = self.plan, plan_lut(self.ckpt, "f32", self.plan.chunk_tokens)
        try:
            for a, rows in self.chunks():
                yield a, rows.view(np.float32)
        finally:
            self.plan = saved

    def _computed(self, bar: Progress):
        p, ckpt = self.plan, self.ckpt
        V, L, N, d, De = _lut_shape(ckpt)
        experts = _Experts(ckpt, p.keep_weights)
        embed = ckpt.get(C.EMBED)                     # [V, d] f32
        groups = [(l0, min(l0 + p.layers_per_group, L)) for l0 in range(0, L, p.layers_per_group)]
        with torch.no_grad():
            for a in range(0, V, p.chunk_tokens):
                b = min(a + p.chunk_tokens, V)
                e = embed[a:b]                                            # [T, d]
                out = np.empty((b - a, p.row_bytes), dtype=np.uint8)      # [T, row_bytes]
                for l0, l1 in groups:
                    rows = compute_lut_rows(e, [experts.layer(i) for i in range(l0, l1)])  # [T, (l1-l0)*N*d]
                    c0 = row_bytes(p.lut_type, l0 * N * d)
                    c1 = row_bytes(p.lut_type, l1 * N * d)
                    quantize(rows.numpy(), p.lut_type, out=out[:, c0:c1])
                    del rows
                    bar.update((b - a) * (l1 - l0) / L)
                yield a, out

    def _copied(self, bar: Progress):
        p = self.plan
        for a in range(0, p.vocab, p.chunk_tokens):
            b = min(a + p.chunk_tokens, p.vocab)
            rows = self.ckpt.get_rows(C.MOE_TABLE, a, b)                    # [T, L*N*d] f32
            out = quantize(rows.numpy(), p.lut_type)                      # [T, row_bytes]
            del rows
            bar.update(b - a)
            yield a, out

    def tofile(self, fout) -> None:
        """Write every row in order (GGUFWriter calls this once, after aligning the file position)."""
        t0 = time.perf_counter()
        written = 0
        for _, rows in self.chunks():
            fout.write(memoryview(rows).cast("B"))
            written += rows.nbytes
        if written != self.nbytes:
            raise ConvertError(f"LUT stream wrote {written} bytes, expected {self.nbytes}")
        self.seconds = time.perf_counter() - t0
