"""`mole inspect FILE`: a .gguf file's metadata (long arrays summarised), tensor table, and LUT size versus the
dense weights. Reads through libmole's validated loader, so a bad file gets the runtime's message (the same as
mole.Model's) and the base install needs neither the gguf package nor torch."""
from __future__ import annotations

import argparse
import json
import pathlib
import struct
import sys

from . import _ffi, errors
from . import gguf_names as G

_SHOWN_ITEMS = 8   # array items printed before "... (N items)"


def _type_names(L) -> dict[int, str]:
    """{enum mole_type value: "F16", "Q8_0", ...}, read from mole.h (ggml's names)."""
    return {v: k.removeprefix("MOLE_TYPE_") for v, k in L.ffi.typeof("enum mole_type").elements.items()}


def inspect(path) -> dict:
    """{"path", "file_bytes", "gguf_version", "metadata": {key: value}, "tensors": [{name, type, shape (ggml, ne0
    first), bytes, offset}], "lut": {...} or None, "dense_bytes"}. Arrays in metadata are complete lists.
    A file libmole does not load raises the library's exception (mole.FormatError for a malformed file)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    L = _ffi.get()
    ffi, lib = L.ffi, L.lib
    out = ffi.new("struct mole_model **")
    _ffi.check(lib.mole_model_load(str(path).encode(), ffi.NULL, out))
    model = out[0]
    try:
        buf, n = _ffi.call_sized(lib.mole_model_metadata_json, model, initial=1 << 20)
        meta = json.loads(ffi.unpack(buf, n).decode("utf-8", "replace"))
        info = ffi.new("struct mole_model_info *")
        _ffi.check(lib.mole_model_get_info(model, info))
        count = ffi.new("size_t *")
        _ffi.check(lib.mole_model_n_tensors(model, count))
        names = _type_names(L)
        t = ffi.new("struct mole_tensor_info *")
        tensors = []
        for i in range(count[0]):
            _ffi.check(lib.mole_model_tensor_info(model, i, t))
            tensors.append({"name": ffi.string(t.name).decode("utf-8", "replace"),
                            "type": names.get(t.type, str(t.type)), "shape": [int(x) for x in t.ne[0:t.n_dims]],
                            "bytes": int(t.nbytes), "offset": int(t.offset)})
        lut_row_bytes, lut_bytes, dense = int(info.lut_row_bytes), int(info.lut_bytes), int(info.dense_bytes)
    finally:
        lib.mole_model_free(model)
    with open(path, "rb") as f:   # "GGUF", u32 version: libmole checked both
        version = struct.unpack("<I", f.read(8)[4:])[0]
    res = {"path": str(path), "file_bytes": path.stat().st_size, "gguf_version": version,
           "metadata": meta, "tensors": tensors, "dense_bytes": dense, "lut": None}
    lut = next((t for t in tensors if t["name"] == G.TENSOR_LUT), None)
    if lut is not None:
        rows = lut["shape"][1] if len(lut["shape"]) > 1 else 1
        res["lut"] = {"type": lut["type"], "row_elements": lut["shape"][0], "rows": rows, "row_bytes": lut_row_bytes,
                      "bytes": lut_bytes, "is_last": tensors[-1]["name"] == G.TENSOR_LUT,
                      "lut_to_dense": lut_bytes / dense if dense else None,
                      "bits_per_value": 8 * lut_row_bytes / lut["shape"][0] if lut["shape"][0] else None,
                      "kl_vs_q8_0": meta.get(G.KEY_LUT_KL_VS_Q8_0),
                      "ppl_ratio_vs_q8_0": meta.get(G.KEY_LUT_PPL_RATIO_VS_Q8_0),
                      "calibration": meta.get(G.KEY_LUT_CALIBRATION)}
    return res


def _short(v) -> str:
    if isinstance(v, list):
        head = ", ".join(repr(x) for x in v[:_SHOWN_ITEMS])
        more = f", ... ({len(v)} items)" if len(v) > _SHOWN_ITEMS else ""
        return f"[{head}{more}]"
    if isinstance(v, str) and len(v) > 120:
        return repr(v[:117] + "...") + f" ({len(v)} chars)"
    return repr(v)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


def format_inspect(info: dict) -> str:
    """The human-readable report of inspect()."""
    out = [f"{info['path']}: GGUF v{info['gguf_version']}, {_size(info['file_bytes'])}", "", "metadata:"]
    width = max((len(k) for k in info["metadata"]), default=0)
    out += [f"  {k:<{width}}  {_short(v)}" for k, v in info["metadata"].items()]
    out += ["", f"tensors ({len(info['tensors'])}):"]
    rows = [("name", "type", "shape", "bytes", "offset")]
    rows += [(t["name"], t["type"], "[" + ", ".join(map(str, t["shape"])) + "]", str(t["bytes"]), str(t["offset"]))
             for t in info["tensors"]]
    w = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        out.append(f"  {r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:<{w[2]}}  {r[3]:>{w[3]}}  {r[4]:>{w[4]}}")
    out.append("")
    lut = info["lut"]
    if lut is None:
        out.append(f"no LUT (dense model); weights {_size(info['dense_bytes'])}")
    else:
        out.append(f"LUT: {lut['rows']} rows x {lut['row_elements']} {lut['type']}, {lut['row_bytes']} bytes per row "
                   f"({lut['bits_per_value']:.4g} bits per value, one read per token), {_size(lut['bytes'])} total"
                   + ("" if lut["is_last"] else "  [WARNING: not the last tensor]"))
        ratio = f"{lut['lut_to_dense']:.1f}x" if lut["lut_to_dense"] is not None else "n/a"
        out.append(f"dense weights: {_size(info['dense_bytes'])}; LUT / dense = {ratio}")
        if lut["kl_vs_q8_0"] is not None:
            ppl = "" if lut["ppl_ratio_vs_q8_0"] is None else f", perplexity x{lut['ppl_ratio_vs_q8_0']:.4f}"
            out.append(f"LUT cost against q8_0 (measured at conversion): KL {lut['kl_vs_q8_0']:.5f} nats/token{ppl} "
                       f"on {lut['calibration'] or 'unknown calibration'}")
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mole inspect", description="Show a GGUF file's metadata, tensors and LUT size.")
    p.add_argument("file", metavar="FILE", help=".gguf file")
    p.add_argument("--json", action="store_true", help="print JSON (arrays in full) instead of the report")
    return p


def main_inspect(argv=None) -> int:
    """`mole inspect FILE [--json]`; returns the exit status (1: the file does not load, message on stderr)."""
    a = build_parser().parse_args(argv)
    try:
        info = inspect(a.file)
    except (errors.MoleError, OSError, ValueError) as e:
        print(f"mole inspect: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(info, indent=1, ensure_ascii=False) if a.json else format_inspect(info))
    return 0


if __name__ == "__main__":
    sys.exit(main_inspect())
