"""The LUT quantization study: one checkpoint converted with each LUT type (same dense weights), held-out bits per
byte of each from the runtime's `mole perplexity`, and each LUT's bits per value, bytes per row, its error against
the f32 LUT and the converter's KL against q8_0.

    PYTHONPATH=python:converter python bench/lut_quant_study.py --checkpoint CKPT_DIR --text HELD_OUT.txt ... \
        [-c 512] [--types f32 f16 bf16 q8_0 q4_0 iq4_nl q3_k] [--weight-type f16] [--work DIR]

Without a checkpoint, `--lut-error FILE.gguf` re-quantizes the LUT rows of a converted file (dequantized from its
own type; a q8_0 LUT is a close proxy of the trained values) to each block type and reports the error alone, and
`--from-gguf FILE.gguf --text ...` also writes each re-quantized file (the same bytes but the LUT's) and scores it
with `mole perplexity` (the stored type's own file is the baseline).
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import re
import struct
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import common  # noqa: E402,F401  (puts the source tree's packages on sys.path when none is installed)

import numpy as np  # noqa: E402

ALL_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "iq4_nl", "q3_k")
BLOCK_TYPES = ("q8_0", "q4_0", "iq4_nl", "q3_k")
_BPB = re.compile(r"bits/byte\s+([0-9.]+)")


def read_lut(path: pathlib.Path, max_rows: int | None = None) -> tuple[np.ndarray, str]:
    """f32 LUT rows [V, L*N*d] of a .gguf file (dequantized from its stored type) and that type's name."""
    import gguf
    import gguf.quants

    r = gguf.GGUFReader(path)
    t = next((t for t in r.tensors if t.name == "lut.weight"), None)
    if t is None:
        raise SystemExit(f"{path}: no lut.weight (a dense model?)")
    n, rows = int(t.shape[0]), int(t.shape[-1])
    rows = min(rows, max_rows) if max_rows else rows
    data = np.asarray(t.data)
    name = t.tensor_type.name.lower()
    if name in ("f32", "f16"):
        x = data.reshape(-1, n)[:rows].astype(np.float32)
    else:
        raw = data.view(np.uint8).reshape(int(t.shape[-1]), -1)[:rows]
        x = gguf.quants.dequantize(raw, t.tensor_type).reshape(rows, n).astype(np.float32)
    return x, name


def requantized_copy(src: pathlib.Path, dst: pathlib.Path, rows: np.ndarray, lut_type: str) -> None:
    """dst = src with its LUT (the last tensor) replaced by rows quantized to lut_type: the header's type field
    patched, the data after the LUT's offset rewritten; every other byte as in src."""
    import gguf
    from mole_convert.quantize import ggml_type, quantize

    r = gguf.GGUFReader(src)
    t = next(t for t in r.tensors if t.name == "lut.weight")
    if t.data_offset + t.n_bytes != src.stat().st_size or r.tensors[-1].name != "lut.weight":
        raise SystemExit(f"{src}: the LUT is not the last bytes of the file")
    type_at = t.field.offset + sum(p.nbytes for p in t.field.parts[:4])   # name length, name, n_dims, dims
    with open(src, "rb") as f:
        head = bytearray(f.read(t.data_offset))
    if struct.unpack_from("<I", head, type_at)[0] != int(t.tensor_type):
        raise SystemExit(f"{src}: could not find the LUT's type field")
    struct.pack_into("<I", head, type_at, int(ggml_type(lut_type)))
    with open(dst, "wb") as f:
        f.write(head)
        f.write(memoryview(quantize(rows, lut_type)).cast("B"))


def from_gguf(a) -> dict:
    """--from-gguf: the file's LUT re-quantized to each block type, perplexity of each (same dense bytes)."""
    from mole import inspect as mi

    work = pathlib.Path(a.work or tempfile.mkdtemp(prefix="lut-study-"))
    work.mkdir(parents=True, exist_ok=True)
    x, stored = read_lut(a.from_gguf)
    errs = lut_errors(x)
    res = {"source": str(a.from_gguf), "stored": stored, "ctx": a.ctx, "texts": [t.name for t in a.text],
           "types": {}}
    for t in [stored] + [t for t in BLOCK_TYPES if t != stored]:
        path = a.from_gguf if t == stored else work / f"{a.from_gguf.stem}-{t}.gguf"
        if t != stored:
            requantized_copy(a.from_gguf, path, x, t)
        lut = mi.inspect(path)["lut"]
        res["types"][t] = {"bits_per_value": lut["bits_per_value"], "row_bytes": lut["row_bytes"],
                           "lut_bytes": lut["bytes"], "kl_vs_q8_0": None,
                           f"rel_rmse_vs_{stored}": errs[t]["rel_rmse"] if t in errs else 0.0,
                           "bpb": {x_.name: perplexity_bpb(path, x_, a.ctx, a.threads, a.chars) for x_ in a.text}}
        print(f"{t}: {json.dumps(res['types'][t])}", file=sys.stderr, flush=True)
    return res


def lut_errors(x: np.ndarray, types=BLOCK_TYPES) -> dict[str, dict]:
    """Per type: bits per value, bytes per row, relative RMSE |x - x'| / |x| and the worst row's relative RMSE."""
    from mole_convert.quantize import BITS, dequantize, quantize, row_bytes

    out = {}
    for t in types:
        back = dequantize(quantize(x, t), t, x.shape[1])
        err = ((back - x) ** 2).sum(axis=1)
        ref = np.maximum((x ** 2).sum(axis=1), 1e-30)
        out[t] = {"bits_per_value": BITS[t], "row_bytes": row_bytes(t, x.shape[1]),
                  "rel_rmse": float(math.sqrt(err.sum() / ref.sum())),
                  "worst_row_rel_rmse": float(np.sqrt(err / ref).max())}
    return out


def perplexity_bpb(model: pathlib.Path, text: pathlib.Path, ctx: int, threads: int | None, chars: int | None) -> float:
    """Bits per byte from `mole perplexity` (the runtime's tool, as a user runs it)."""
    cmd = [sys.executable, "-m", "mole", "perplexity", "-m", str(model), "-f", str(text), "-c", str(ctx)]
    if threads:
        cmd += ["-t", str(threads)]
    if chars:
        cmd += ["--chars", str(chars)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    m = _BPB.search(r.stdout)
    if r.returncode != 0 or m is None:
        raise SystemExit(f"mole perplexity failed on {model.name} / {text.name}:\n{r.stdout}{r.stderr}")
    return float(m.group(1))


def study(a) -> dict:
    from mole import inspect as mi
    from mole_convert.convert import convert

    work = pathlib.Path(a.work or tempfile.mkdtemp(prefix="lut-study-"))
    work.mkdir(parents=True, exist_ok=True)
    res = {"checkpoint": str(a.checkpoint), "weight_type": a.weight_type, "ctx": a.ctx,
           "texts": [t.name for t in a.text], "types": {}}
    f32_rows = None
    for t in a.types:
        path = work / f"lut-{t}.gguf"
        convert(a.checkpoint, path, lut_type=t, weight_type=a.weight_type, progress=False, force=True,
                calibration=a.calibration, threads=a.threads)
        info = mi.inspect(path)
        lut = info["lut"]
        row = {"bits_per_value": lut["bits_per_value"], "row_bytes": lut["row_bytes"], "lut_bytes": lut["bytes"],
               "file_bytes": info["file_bytes"], "kl_vs_q8_0": lut["kl_vs_q8_0"],
               "bpb": {x.name: perplexity_bpb(path, x, a.ctx, a.threads, a.chars) for x in a.text}}
        rows, _ = read_lut(path, a.error_rows)
        if t == "f32":
            f32_rows = rows
        if f32_rows is not None:
            row["rel_rmse_vs_f32"] = float(np.sqrt(((rows - f32_rows) ** 2).sum() / (f32_rows ** 2).sum()))
        res["types"][t] = row
        print(f"{t}: {json.dumps(row)}", file=sys.stderr, flush=True)
    return res


def table(res: dict) -> str:
    texts = res["texts"]
    ref_type = res.get("stored", "f32")
    base = res["types"].get(ref_type)
    head = ["LUT type", "bits/value", "bytes/row", "LUT MiB", f"rel. RMSE vs {ref_type}", "KL vs q8_0"]
    head += [f"{x} bits/byte" for x in texts] + ([f"vs {ref_type}"] if base else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t, r in res["types"].items():
        mean = sum(r["bpb"].values()) / len(texts)
        cells = [t, f"{r['bits_per_value']:.4g}", str(r["row_bytes"]), f"{r['lut_bytes'] / 2**20:.2f}",
                 f"{r[f'rel_rmse_vs_{ref_type}']:.4f}" if f"rel_rmse_vs_{ref_type}" in r else "",
                 f"{r['kl_vs_q8_0']:.5f}" if r["kl_vs_q8_0"] is not None else ""]
        cells += [f"{r['bpb'][x]:.4f}" for x in texts]
        if base:
            ref = sum(base["bpb"].values()) / len(texts)
            cells.append(f"{100 * (mean / ref - 1):+.2f}%")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def error_table(errs: dict, source: str) -> str:
    lines = [f"LUT rows of {source}, re-quantized:", "",
             "| type | bits/value | bytes/row | rel. RMSE | worst row rel. RMSE |", "|---|---|---|---|---|"]
    for t, e in errs.items():
        lines.append(f"| {t} | {e['bits_per_value']:.4g} | {e['row_bytes']} | {e['rel_rmse']:.4f} | "
                     f"{e['worst_row_rel_rmse']:.4f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=pathlib.Path, help="trained checkpoint directory (mole train's output)")
    p.add_argument("--text", nargs="+", type=pathlib.Path, default=[], help="held-out text files")
    p.add_argument("--types", nargs="+", choices=ALL_TYPES, default=list(ALL_TYPES))
    p.add_argument("--weight-type", default="f16", help="dense weights' type, the same for every LUT type")
    p.add_argument("-c", "--ctx", type=int, default=512, help="perplexity window (default 512)")
    p.add_argument("--chars", type=int, default=None, help="only the first N characters of each text")
    p.add_argument("--calibration", type=pathlib.Path, default=None, help="the converter's gate text (optional)")
    p.add_argument("--work", type=pathlib.Path, default=None, help="folder for the converted files")
    p.add_argument("--error-rows", type=int, default=None, help="LUT rows compared for the error (default all)")
    p.add_argument("-t", "--threads", type=int, default=None)
    p.add_argument("--lut-error", type=pathlib.Path, default=None, metavar="GGUF",
                   help="only re-quantize this file's LUT to each block type and report the error")
    p.add_argument("--from-gguf", type=pathlib.Path, default=None, metavar="GGUF",
                   help="no checkpoint: re-quantize this file's LUT to each block type and score each on --text")
    p.add_argument("--json", type=pathlib.Path, default=None, help="also write the results here")
    a = p.parse_args(argv)
    if a.from_gguf:
        if not a.text:
            p.error("--from-gguf needs --text")
        res = from_gguf(a)
        print(table(res))
        if a.json:
            a.json.write_text(json.dumps(res, indent=1))
        return 0
    if a.lut_error:
        x, stored = read_lut(a.lut_error, a.error_rows)
        errs = lut_errors(x)
        print(error_table(errs, f"{a.lut_error.name} ({x.shape[0]} x {x.shape[1]}, stored {stored})"))
        if a.json:
            a.json.write_text(json.dumps(errs, indent=1))
        return 0
    if not a.checkpoint or not a.text:
        p.error("--checkpoint and --text are required (or --lut-error GGUF)")
    res = study(a)
    print(table(res))
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
