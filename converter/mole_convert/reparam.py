"""Streaming re-parameterization: the LUT [V, L*N*d] computed (or copied) a chunk of tokens at a time,
quantized, and written straight to the GGUF file. Memory depends on the chunk size and on one layer's
experts, never on V, L or N as a whole; the chunk size comes from a memory budget (VRAM on a GPU).
The chunks are fixed by the plan, so any subset of them (one rank's share) gives the same bytes."""
from __future__ import annotations

import contextlib
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
from .quantize import TORCH_QUANT_TYPES, block_size, quantize, quantize_torch, row_bytes

DEFAULT_MEMORY_BUDGET = 1536 << 20   # bytes for weights held + chunk buffers (peak RSS adds ~0.5 GB of runtime)
DEFAULT_CUDA_MEMORY_BUDGET = 8 << 30  # VRAM for weights held + chunk buffers on a GPU (convert clips it to free VRAM)
_DEVICE_QUANT_ELEMENTS = 1 << 24      # f32 values quantized per quantize_torch call on a device (64 MB)

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


def default_budget(device: str) -> int:
    """The working-set budget when none is given: host RAM for "cpu", VRAM for "cuda"."""
    return DEFAULT_CUDA_MEMORY_BUDGET if torch.device(device).type == "cuda" else DEFAULT_MEMORY_BUDGET


def plan_lut(ckpt: Checkpoint, lut_type: str, chunk_tokens: int | None = None,
             memory_budget: int | None = None, device: str = "cpu") -> LutPlan:
    """Pick the chunk size (tokens per step) from the memory budget; chunk_tokens forces it. On a GPU the
    budget is VRAM: the chunk's rows are quantized there too (temporaries of a few times one layer group's
    f32 rows), and only the quantized rows come back to the host."""
    if ckpt.form not in ("training", "reparam"):
        raise ConvertError(f"a {ckpt.form} checkpoint has no LUT")
    V, L, N, d, De = _lut_shape(ckpt)
    row_len = L * N * d
    rb = row_bytes(lut_type, row_len)
    budget = default_budget(device) if memory_budget is None else int(memory_budget)
    on_gpu = torch.device(device).type != "cpu"
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
        if on_gpu:   # quantize_torch's temporaries: a few f32 copies of one slice of rows
            fixed += 6 * _DEVICE_QUANT_ELEMENTS * _F32
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
    if on_gpu and fixed + chunk_tokens * per_token > budget:
        raise ConvertError(f"the VRAM budget of {budget / 2**30:.2f} GiB cannot hold the experts' weights and "
                           f"quantizer temporaries ({fixed / 2**30:.2f} GiB) and {chunk_tokens} tokens' rows "
                           f"({per_token * chunk_tokens / 2**30:.2f} GiB): give --memory-mb at least "
                           f"{-(-(fixed + chunk_tokens * per_token) // 2**20)}")
    return LutPlan(V, row_len, lut_type, rb, chunk_tokens, g, keep, fixed + chunk_tokens * per_token)


class _Experts:
    """compute_lut_rows' layer_params for layer l, read through Checkpoint.get onto the device (kept there
    only if planned)."""

    def __init__(self, ckpt: Checkpoint, keep: bool, device: torch.device):
        self.ckpt, self.keep, self.device, self._cache = ckpt, keep, device, {}

    def layer(self, i: int) -> dict:
        if i in self._cache:
            return self._cache[i]
        def get(name):   # to the device in the stored dtype (bf16: half the bytes), widened there (exactly)
            return self.ckpt.get(name, dtype=None).to(self.device).to(torch.float32)
        p = expert_params(get, self.ckpt.config, i)
        if self.keep:
            self._cache[i] = p
        return p


class LutStream:
    """The LUT tensor as GGUFWriter.write_tensor_data wants it: nbytes and tofile(fout), computed on the fly.

    Rows are LUT[v] = concat_{l, j} FFN_expert_{l,j}(RMSNorm_expert_l(E[v])) (fp32, via
    model.compute_lut_rows) or the checkpoint's moe_table rows, quantized with quantize.quantize.
    """

    def __init__(self, ckpt: Checkpoint, lut_type: str, *, chunk_tokens: int | None = None,
                 memory_budget: int | None = None, progress: bool = False, device: str = "cpu",
                 device_quantize: bool | None = None):
        self.ckpt = ckpt
        self.device = torch.device(device)
        self.plan = plan_lut(ckpt, lut_type, chunk_tokens, memory_budget, device=str(self.device))
        self.progress = progress
        self.nbytes = self.plan.vocab * self.plan.row_bytes
        self.seconds = 0.0
        # rows are quantized where they are computed (a GPU sends back quantized bytes); numpy on the CPU
        # (iq4_nl and q3_k have numpy quantizers only: their rows come back f32 and are quantized here)
        if device_quantize is None:
            device_quantize = self.device.type != "cpu" and lut_type in TORCH_QUANT_TYPES
        elif device_quantize and lut_type not in TORCH_QUANT_TYPES:
            raise ValueError(f"device_quantize: quantize_torch has no {lut_type} quantizer")
        self.device_quantize = device_quantize

    def byteswap(self, inplace=False):
        raise ConvertError("the LUT is written little-endian only")

    def chunk_ranges(self) -> list[tuple[int, int]]:
        """Every chunk's token range [a, b), in order: the plan's chunk_tokens tiles 0..V-1."""
        V, T = self.plan.vocab, self.plan.chunk_tokens
        return [(a, min(a + T, V)) for a in range(0, V, T)]

    def chunks(self, ranges: list[tuple[int, int]] | None = None, desc: str = "") -> Iterator[tuple[int, np.ndarray]]:
        """(first token id, quantized rows uint8 [T, row_bytes]) for the given chunks of chunk_ranges()
        (default: all of them, covering 0..V-1). Each chunk's bytes depend only on the chunk itself."""
        p = self.plan
        ranges = self.chunk_ranges() if ranges is None else ranges
        bar = Progress(sum(b - a for a, b in ranges), f"LUT {p.lut_type}{desc}", "rows", self.progress)
        try:
            if self.ckpt.form == "training":
                yield from self._computed(bar, ranges)
            else:
                yield from self._copied(bar, ranges)
        finally:
            bar.close()

    def f32_chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """The exact f32 rows [T, L*N*d] before quantization, chunked as chunks() (for checks)."""
        saved, self.plan = self.plan, plan_lut(self.ckpt, "f32", self.plan.chunk_tokens, device=str(self.device))
        try:
            for a, rows in self.chunks():
                yield a, rows.view(np.float32)
        finally:
            self.plan = saved

    def _computed(self, bar: Progress, ranges: list[tuple[int, int]]):
        p, ckpt = self.plan, self.ckpt
        V, L, N, d, De = _lut_shape(ckpt)
        experts = _Experts(ckpt, p.keep_weights, self.device)
        embed = ckpt.get(C.EMBED)                     # [V, d] f32, on the host
        groups = [(l0, min(l0 + p.layers_per_group, L)) for l0 in range(0, L, p.layers_per_group)]
        with torch.no_grad(), self._out_of_memory():
            for a, b in ranges:
                e = embed[a:b].to(self.device)                            # [T, d]
                out = np.empty((b - a, p.row_bytes), dtype=np.uint8)      # [T, row_bytes], host
                for l0, l1 in groups:
                    rows = compute_lut_rows(e, [experts.layer(i) for i in range(l0, l1)])  # [T, (l1-l0)*N*d]
                    c0 = row_bytes(p.lut_type, l0 * N * d)
                    c1 = row_bytes(p.lut_type, l1 * N * d)
                    if self.device_quantize:   # in slices of rows, so the temporaries stay bounded
                        step = max(1, _DEVICE_QUANT_ELEMENTS // rows.shape[1])
                        for r0 in range(0, b - a, step):
                            q = quantize_torch(rows[r0:r0 + step], p.lut_type, first_row=a + r0)
                            out[r0:r0 + step, c0:c1] = q.cpu().numpy()
                    else:
                        quantize(rows.cpu().numpy(), p.lut_type, out=out[:, c0:c1])
                    del rows
                    bar.update((b - a) * (l1 - l0) / L)
                yield a, out

    @contextlib.contextmanager
    def _out_of_memory(self):
        """A device that runs out of memory (another process took some) is a ConvertError naming the budget."""
        try:
            yield
        except torch.OutOfMemoryError as e:
            if self.device.type == "cpu":
                raise
            raise ConvertError(f"{self.device} ran out of memory computing the LUT with {self.plan.chunk_tokens} "
                               f"tokens per chunk (working set {self.plan.est_bytes / 2**30:.2f} GiB): give a "
                               f"smaller --memory-mb, or free the device ({str(e).splitlines()[0]})") from None

    def _copied(self, bar: Progress, ranges: list[tuple[int, int]]):
        p = self.plan
        for a, b in ranges:
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
