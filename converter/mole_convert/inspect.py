"""`mole inspect FILE`: a GGUF file's metadata (long arrays summarised), tensor table, and LUT size versus
the dense weights. Reads with gguf.GGUFReader only (no torch, no tensor data touched)."""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

from mole import gguf_names as G

_SHOWN_ITEMS = 8   # array items printed before "... (N items)"


def _value(field):
    """A ReaderField as plain Python (str, int, float, bool or list)."""
    from gguf import GGUFValueType

    if not field.types:
        return None
    if field.types[0] == GGUFValueType.ARRAY:
        return list(field.contents())
    v = field.contents()
    return v.item() if isinstance(v, np.generic) else v


def inspect(path) -> dict:
    """{"path", "file_bytes", "metadata": {key: value}, "tensors": [{name, type, shape (ggml, ne0 first),
    bytes, offset}], "lut": {...} or None, "dense_bytes"}. Arrays in metadata are complete lists."""
    from gguf import GGUFReader

    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        r = GGUFReader(path)
        meta = {name: _value(f) for name, f in r.fields.items() if not name.startswith("GGUF.")}
        tensors = [{"name": t.name, "type": t.tensor_type.name, "shape": [int(x) for x in t.shape],
                    "bytes": int(t.n_bytes), "offset": int(t.data_offset)} for t in r.tensors]
        version = int(r.fields["GGUF.version"].contents())
    except (ValueError, KeyError, IndexError, OverflowError, TypeError) as e:
        raise ValueError(f"{path}: not a readable GGUF file: {type(e).__name__}: {e}") from None
    lut = next((t for t in tensors if t["name"] == G.TENSOR_LUT), None)
    dense = sum(t["bytes"] for t in tensors if t["name"] != G.TENSOR_LUT)
    info = {"path": str(path), "file_bytes": path.stat().st_size, "gguf_version": version,
            "metadata": meta, "tensors": tensors, "dense_bytes": dense, "lut": None}
    if lut is not None:
        n_rows = lut["shape"][1] if len(lut["shape"]) > 1 else 1
        info["lut"] = {"type": lut["type"], "row_elements": lut["shape"][0], "rows": n_rows,
                       "row_bytes": lut["bytes"] // max(n_rows, 1), "bytes": lut["bytes"],
                       "is_last": tensors[-1]["name"] == G.TENSOR_LUT,
                       "lut_to_dense": lut["bytes"] / dense if dense else None}
    return info


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
                   f"(one read per token), {_size(lut['bytes'])} total"
                   + ("" if lut["is_last"] else "  [WARNING: not the last tensor]"))
        ratio = f"{lut['lut_to_dense']:.1f}x" if lut["lut_to_dense"] is not None else "n/a"
        out.append(f"dense weights: {_size(info['dense_bytes'])}; LUT / dense = {ratio}")
    return "\n".join(out)


def main_inspect(argv=None) -> int:
    """`mole inspect FILE [--json]`; returns the exit status."""
    p = argparse.ArgumentParser(prog="mole inspect", description="Show a GGUF file's metadata, tensors and LUT size.")
    p.add_argument("file", metavar="FILE", help=".gguf file")
    p.add_argument("--json", action="store_true", help="print JSON (arrays in full) instead of the report")
    a = p.parse_args(argv)
    try:
        info = inspect(a.file)
    except (OSError, ValueError) as e:
        print(f"mole inspect: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(info, indent=1, ensure_ascii=False) if a.json else format_inspect(info))
    return 0


if __name__ == "__main__":
    sys.exit(main_inspect())
