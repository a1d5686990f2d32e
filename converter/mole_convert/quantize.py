"""Row quantization into GGML layouts (f32, f16, bf16, q8_0, q4_0), vectorised numpy.

Byte-identical to gguf.quants.quantize on the same rows; rows are processed in bounded groups so
temporaries stay small whatever the input size.
"""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType

# type name -> (GGML type, elements per block, bytes per block)
TYPES: dict[str, tuple[GGMLQuantizationType, int, int]] = {
    "f32": (GGMLQuantizationType.F32, 1, 4),
    "f16": (GGMLQuantizationType.F16, 1, 2),
    "bf16": (GGMLQuantizationType.BF16, 1, 2),
    "q8_0": (GGMLQuantizationType.Q8_0, 32, 34),
    "q4_0": (GGMLQuantizationType.Q4_0, 32, 18),
}

# Elements quantized per inner step (1 MB of f32): temporaries stay in cache and bounded.
_GROUP_ELEMENTS = 1 << 18


def _check_type(type_name: str) -> tuple[GGMLQuantizationType, int, int]:
    try:
        return TYPES[type_name]
    except KeyError:
        raise ValueError(f"unknown tensor type {type_name!r}; expected one of {', '.join(TYPES)}") from None


def ggml_type(type_name: str) -> GGMLQuantizationType:
    """The GGML type enum of a type name."""
    return _check_type(type_name)[0]


def block_size(type_name: str) -> int:
    """Elements per quantization block (1 for float types)."""
    return _check_type(type_name)[1]


def can_quantize(type_name: str, n: int) -> bool:
    """True when a row of n elements is a whole number of blocks of this type."""
    return n > 0 and n % block_size(type_name) == 0


def row_bytes(type_name: str, n: int) -> int:
    """Bytes of one quantized row of n elements."""
    _, bs, ts = _check_type(type_name)
    if n % bs != 0:
        raise ValueError(f"row length {n} is not a multiple of the {type_name} block size {bs}")
    return n // bs * ts


def _bf16(x: np.ndarray) -> np.ndarray:
    """f32 [R, n] -> bf16 bits as uint8 [R, 2n]: NaN made quiet, round to nearest even."""
    bits = x.view(np.uint32)
    nan = (bits & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    bits = np.where(nan, (bits & np.uint32(0xFFFF0000)) | np.uint32(0x00400000), bits)
    # no overflow in uint32: the largest finite or quieted-NaN input plus 0x8000 stays below 2**32
    rounded = (bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)
    return rounded.astype(np.uint16).view(np.uint8)


def _round_half_away(x: np.ndarray) -> np.ndarray:
    """Exact round-half-away-from-zero of f32 values (ggml's roundf), as f32."""
    a = np.abs(x)
    r = np.floor(a)
    r += (a - r) >= np.float32(0.5)  # a - r is exact for |a| < 2**24
    return np.copysign(r, x)


def _check_scale(scale: np.ndarray, n: int, type_name: str, first_row: int) -> None:
    """A block holding NaN or inf has a non-finite scale [B, 1]; name the first bad row."""
    bad = ~np.isfinite(scale[:, 0])
    if bad.any():
        row = first_row + int(np.argmax(bad)) * 32 // n
        raise ValueError(f"row {row} holds a non-finite value (NaN or inf); cannot quantize to {type_name}")


def _q8_0(x: np.ndarray, first_row: int) -> np.ndarray:
    """f32 [R, n] -> q8_0 blocks uint8 [R, n/32*34]: f16 scale amax/127, then 32 int8."""
    rows, n = x.shape
    blocks = x.reshape(-1, 32)                                    # [B, 32]
    amax = np.abs(blocks).max(axis=1, keepdims=True)              # [B, 1]
    _check_scale(amax, n, "q8_0", first_row)
    d = amax / np.float32(127)
    inv = np.zeros_like(d)
    np.divide(np.float32(1), d, out=inv, where=d != 0)
    q = _round_half_away(blocks * inv).astype(np.int8)            # [B, 32]
    out = np.empty((blocks.shape[0], 34), dtype=np.uint8)
    out[:, :2] = d.astype(np.float16).view(np.uint8)
    out[:, 2:] = q.view(np.uint8)
    return out.reshape(rows, n // 32 * 34)


def _q4_0(x: np.ndarray, first_row: int) -> np.ndarray:
    """f32 [R, n] -> q4_0 blocks uint8 [R, n/32*18]: f16 scale max/-8, then 16 bytes of nibbles."""
    rows, n = x.shape
    blocks = x.reshape(-1, 32)                                    # [B, 32]
    imax = np.abs(blocks).argmax(axis=1)[:, None]                 # first element of largest |x|
    vmax = np.take_along_axis(blocks, imax, axis=1)               # [B, 1], keeps the sign
    _check_scale(vmax, n, "q4_0", first_row)
    d = vmax / np.float32(-8)
    inv = np.zeros_like(d)
    np.divide(np.float32(1), d, out=inv, where=d != 0)
    q = np.trunc(blocks * inv + np.float32(8.5))                  # in [0, 16.5]
    q = np.minimum(q, np.float32(15)).astype(np.uint8)
    out = np.empty((blocks.shape[0], 18), dtype=np.uint8)
    out[:, :2] = d.astype(np.float16).view(np.uint8)
    out[:, 2:] = q[:, :16] | (q[:, 16:] << np.uint8(4))           # low nibbles: 0..15, high: 16..31
    return out.reshape(rows, n // 32 * 18)


def quantize(rows: np.ndarray, type_name: str, out: np.ndarray | None = None) -> np.ndarray:
    """Quantize rows f32 [T, n] into GGML bytes uint8 [T, row_bytes(type_name, n)].

    `out` (uint8 [T, row_bytes], may be a strided view) receives the bytes in place when given.
    Byte-identical to gguf.quants.quantize(rows, type). q8_0/q4_0 reject NaN and inf.
    """
    _check_type(type_name)
    rows = np.asarray(rows)
    if rows.ndim == 1:
        rows = rows[None, :]
    if rows.ndim != 2:
        raise ValueError(f"quantize expects rows of shape [T, n], got shape {rows.shape}")
    t, n = rows.shape
    rb = row_bytes(type_name, n)
    if out is None:
        out = np.empty((t, rb), dtype=np.uint8)
    elif out.shape != (t, rb) or out.dtype != np.uint8:
        raise ValueError(f"out must be uint8 {(t, rb)}, got {out.dtype} {out.shape}")
    step = max(1, _GROUP_ELEMENTS // max(n, 1))
    with np.errstate(all="ignore"):  # overflow to inf in f16 scales is what gguf does too
        _quantize_into(rows, type_name, out, step)
    return out


def _quantize_into(rows: np.ndarray, type_name: str, out: np.ndarray, step: int) -> None:
    for r0 in range(0, rows.shape[0], step):
        x = np.ascontiguousarray(rows[r0:r0 + step], dtype=np.float32)
        if type_name == "f32":
            out[r0:r0 + step] = x.view(np.uint8)
        elif type_name == "f16":
            out[r0:r0 + step] = x.astype(np.float16).view(np.uint8)
        elif type_name == "bf16":
            out[r0:r0 + step] = _bf16(x)
        else:
            out[r0:r0 + step] = _q8_0(x, r0) if type_name == "q8_0" else _q4_0(x, r0)


def dequantize(data: np.ndarray, type_name: str, n: int) -> np.ndarray:
    """GGML bytes uint8 [T, row_bytes] -> f32 [T, n] (for checks; the runtime has its own)."""
    import gguf.quants

    data = np.ascontiguousarray(data, dtype=np.uint8).reshape(-1, row_bytes(type_name, n))
    if type_name == "f32":
        return data.view(np.float32).copy()
    if type_name == "f16":
        return data.view(np.float16).astype(np.float32)
    return gguf.quants.dequantize(data, ggml_type(type_name)).reshape(-1, n)


def quantize_torch(rows, type_name: str, first_row: int = 0):
    """quantize() in torch, on the rows' own device (the LUT computed on a GPU comes back quantized):
    f32 [T, n] -> uint8 [T, row_bytes], byte-identical to quantize() on the same f32 values.

    The same IEEE operations in the same order as the numpy code; every divisor is a tensor on the rows'
    device, never a Python scalar (CUDA turns division by a scalar into a multiply by its reciprocal).
    """
    import torch

    _check_type(type_name)
    if rows.dim() != 2 or rows.dtype != torch.float32:
        raise ValueError(f"quantize_torch expects f32 rows [T, n], got {rows.dtype} {tuple(rows.shape)}")
    t, n = rows.shape
    rb = row_bytes(type_name, n)
    rows = rows.contiguous()
    if type_name == "f32":
        return rows.view(torch.uint8).view(t, rb)
    if type_name == "f16":
        half = rows.to(torch.float16).view(torch.int16)                              # [T, n]
        nan = torch.isnan(rows)
        if bool(nan.any()):   # numpy keeps a NaN's sign and top 10 payload bits (torch makes them 0x7E00)
            bits = rows.view(torch.int32)
            sig = (bits & 0x7FFFFF) >> 13
            keep = ((bits >> 16) & 0x8000) | 0x7C00 | torch.where(sig == 0, torch.ones_like(sig), sig)
            keep = torch.where(keep >= 0x8000, keep - 0x10000, keep).to(torch.int16)  # as int16 bits
            half = torch.where(nan, keep, half)
        return half.view(torch.uint8).view(t, rb)
    if type_name == "bf16":
        # _bf16's uint32 steps on the same bits as int32 (torch has no uint32 arithmetic): no step overflows
        # either way, so the low 32 bits agree, and an arithmetic shift keeps the low 16 bits a logical one gives
        bits = rows.view(torch.int32)                                                # [T, n], no copy
        nan = (bits & 0x7FFFFFFF) > 0x7F800000
        bits = torch.where(nan, (bits & -0x10000) | 0x00400000, bits)                # -0x10000 = 0xFFFF0000
        rounded = (bits + (0x7FFF + ((bits >> 16) & 1))) >> 16                      # the bf16 bits, sign-extended
        return rounded.to(torch.int16).view(torch.uint8).view(t, rb)
    blocks = rows.view(-1, 32)                                                       # [B, 32]
    if type_name == "q8_0":
        scale = blocks.abs().amax(dim=1, keepdim=True)                               # [B, 1] amax
        divisor = 127.0
    else:
        imax = blocks.abs().argmax(dim=1, keepdim=True)                              # first largest |x|
        scale = torch.gather(blocks, 1, imax)                                        # [B, 1], signed
        divisor = -8.0
    bad = ~torch.isfinite(scale[:, 0])
    if bool(bad.any()):
        row = first_row + int(torch.argmax(bad.to(torch.uint8))) * 32 // n
        raise ValueError(f"row {row} holds a non-finite value (NaN or inf); cannot quantize to {type_name}")
    d = scale / torch.full_like(scale, divisor)
    inv = torch.where(d != 0, torch.ones_like(d) / torch.where(d != 0, d, torch.ones_like(d)), torch.zeros_like(d))
    x = blocks * inv
    if type_name == "q8_0":
        a = x.abs()
        r = torch.floor(a)
        r = r + ((a - r) >= 0.5).to(torch.float32)                                   # round half away from 0
        q = torch.copysign(r, x).to(torch.int8).view(torch.uint8)                    # [B, 32]
    else:
        q = torch.clamp_max(torch.trunc(x + 8.5), 15.0).to(torch.uint8)              # [B, 32] in 0..15
        q = q[:, :16] | (q[:, 16:] << 4)                                             # [B, 16]
    out = torch.cat([d.to(torch.float16).view(torch.uint8), q], dim=1)              # [B, 2 + 32 | 16]
    return out.view(t, rb)
