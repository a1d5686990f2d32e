"""Conversion at real scale: build a random-weight MoLE checkpoint shard by shard (never whole in memory),
convert it to a GGUF with a q8_0 LUT in a child process (or --ranks N under torchrun, each rank writing its
token ranges), and report wall time, rows/s, peak RSS, file size.

    PYTHONPATH=python:converter python bench/convert_scale.py --shape small          # quick check
    PYTHONPATH=python:converter nice -n 10 python bench/convert_scale.py --shape 160m-16e --workdir /tmp
    PYTHONPATH=python:converter nice -n 10 python bench/convert_scale.py --shape 160m-16e --ranks 2 \
        --ckpt /tmp/ckpt-160m-16e      # reuse (or build once and keep) the checkpoint
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import time

import numpy as np
import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO / "bench") not in sys.path:
    sys.path.insert(0, str(REPO / "bench"))
import common  # noqa: E402,F401  (puts the source tree's packages on sys.path when none is installed)

from mole import gguf_names as G  # noqa: E402
from mole_convert import checkpoint_names as C  # noqa: E402
from mole_convert.config import MoleConfig  # noqa: E402
from mole_convert.testing import make_tiny_tokenizer_json, neox_tokenizer_path, NEOX_VOCAB  # noqa: E402

# The paper's 160M-16E: d=768, L=12, 12 heads, FFN 3072 for shared and experts, N=16, V=50304.
SHAPES = {
    "160m-16e": dict(vocab_size=50304, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                     num_attention_heads=12, num_key_value_heads=12, num_experts=16, max_position_embeddings=2048),
    "small": dict(vocab_size=4096, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=4, num_experts=8, max_position_embeddings=512),
}
_DTYPES = {"bf16": torch.bfloat16, "f32": torch.float32, "f16": torch.float16}


def build_checkpoint(directory: pathlib.Path, cfg: MoleConfig, dtype: torch.dtype, seed: int = 0) -> int:
    """Training-form checkpoint, one safetensors shard per layer (+ one for embeddings/head); returns bytes."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)

    def rand(shape):
        if len(shape) == 1:
            return (1.0 + 0.1 * torch.randn(shape, generator=gen)).to(dtype)
        return (torch.randn(shape, generator=gen) / math.sqrt(shape[1])).to(dtype)

    V, d = cfg.vocab_size, cfg.hidden_size
    shards = {}   # file name -> {tensor name: shape}: the tensors outside the layers, then one file per layer
    for t in C.tensors(cfg, "training" if cfg.num_experts else "dense"):
        fname = "model-embed.safetensors" if t.layer is None else f"model-layer{t.layer:03d}.safetensors"
        shards.setdefault(fname, {})[t.name] = t.shape
    weight_map, total = {}, 0
    for fname, spec in shards.items():
        tensors = {}
        for n, shape in spec.items():
            t = rand(shape)
            if n == C.EMBED:
                t = (t.float() * math.sqrt(d)).to(dtype)   # unit-scale embeddings, as trained models have
            tensors[n] = t
        save_file(tensors, str(directory / fname), metadata={"format": "pt"})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        weight_map.update({n: fname for n in tensors})
        del tensors
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    hf = cfg.to_hf_dict()
    hf["torch_dtype"] = str(dtype).removeprefix("torch.")
    (directory / "config.json").write_text(json.dumps(hf, indent=2))
    neox = neox_tokenizer_path()
    if neox is not None and V >= NEOX_VOCAB:
        shutil.copyfile(neox, directory / "tokenizer.json")
    else:
        (directory / "tokenizer.json").write_text(make_tiny_tokenizer_json(min(V, 384)))
    return total


def run_convert(ckpt: pathlib.Path, out: pathlib.Path, lut_type: str, threads: int | None,
                memory_mb: int | None, ranks: int = 1, device: str = "cpu") -> dict:
    """Convert in a child process (ranks > 1: torchrun with that many ranks on this machine); wall time and
    the peak RSS of the largest process (ru_maxrss of wait4 covers the child and its waited-for descendants)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"] \
        if ranks > 1 else [sys.executable]
    cmd = [*launcher, "-m", "mole_convert.convert", str(ckpt), str(out), "--lut-type", lut_type]
    if device != "cpu":
        cmd += ["--device", device]
    if threads:
        cmd += ["--threads", str(threads)]
    if memory_mb:
        cmd += ["--memory-mb", str(memory_mb)]
    env = dict(os.environ)
    import mole
    import mole_convert
    roots = [str(pathlib.Path(pkg.__file__).resolve().parents[1]) for pkg in (mole, mole_convert)]
    env["PYTHONPATH"] = os.pathsep.join(roots + [env.get("PYTHONPATH", "")])   # the packages this process uses
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"conversion failed with exit status {proc.returncode}: {' '.join(cmd)}")
    return {"cmd": " ".join(cmd), "wall_s": wall, "peak_rss_bytes": ru.ru_maxrss * 1024,
            "user_s": ru.ru_utime, "sys_s": ru.ru_stime}


def verify(out: pathlib.Path, ckpt: pathlib.Path, ids: list[int]) -> float:
    """Dequantized LUT rows of a few tokens vs the exact fp32 rows; returns max |error| / max |row|."""
    import gguf
    from mole_convert.checkpoint import load_checkpoint
    from mole_convert.model import compute_lut_rows, expert_params
    from mole_convert.quantize import dequantize

    ck = load_checkpoint(ckpt)
    r = gguf.GGUFReader(out)
    lut = next(t for t in r.tensors if t.name == G.TENSOR_LUT)
    if r.tensors[-1].name != G.TENSOR_LUT:
        raise SystemExit(f"{G.TENSOR_LUT} is not the last tensor")
    n = int(lut.shape[0])
    data = np.asarray(lut.data).view(np.uint8).reshape(int(lut.shape[1]), -1)
    got = dequantize(data[ids], lut.tensor_type.name.lower(), n)
    embed = ck.get(C.EMBED)[ids]
    rows = [compute_lut_rows(embed, [expert_params(ck.get, ck.config, i)])   # one layer's experts at a time
            for i in range(ck.config.num_hidden_layers)]
    exact = torch.cat(rows, dim=1).numpy()
    return float(np.abs(got - exact).max() / np.abs(exact).max())


def cpu_name() -> str:
    """The CPU's model name and logical core count (/proc/cpuinfo), e.g. "AMD EPYC (family 26), 2 cores"."""
    try:
        info = pathlib.Path("/proc/cpuinfo").read_text()
        name = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name"))
        family = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                       if line.startswith("cpu family")), None)
        name += f" (family {family})" if family else ""
    except (OSError, StopIteration):
        name = platform.processor() or platform.machine()
    return f"{name}, {os.cpu_count()} cores"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=SHAPES, default="small")
    ap.add_argument("--workdir", default="/tmp", help="where the checkpoint and the GGUF go (default /tmp)")
    ap.add_argument("--dtype", choices=_DTYPES, default="bf16", help="checkpoint dtype (default bf16)")
    ap.add_argument("--lut-type", default="q8_0")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--memory-mb", type=int, default=None, help="converter working-set budget (default its own)")
    ap.add_argument("--ranks", type=int, default=1, help="convert under torchrun with this many ranks (default 1)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where the LUT is computed")
    ap.add_argument("--vocab", type=int, default=None,
                    help="vocabulary size instead of the shape's: fewer LUT rows, each the same work (a shorter run)")
    ap.add_argument("--ckpt", type=pathlib.Path, default=None,
                    help="checkpoint directory: reused when it holds config.json, else built there and kept")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoint and the GGUF afterwards")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    a = ap.parse_args(argv)

    shape = SHAPES[a.shape] | ({} if a.vocab is None else {"vocab_size": a.vocab})
    cfg = MoleConfig(**shape, rms_norm_eps=1e-5)
    work = pathlib.Path(a.workdir) / f"mole-convert-scale-{a.shape}-{os.getpid()}"
    ckpt, out = a.ckpt or work / "ckpt", work / "model.gguf"
    work.mkdir(parents=True, exist_ok=True)
    try:
        if (ckpt / "config.json").is_file():
            held = json.loads((ckpt / "config.json").read_text())
            if any(held.get(k) != v for k, v in shape.items()):
                raise SystemExit(f"{ckpt} holds another shape than {a.shape} (vocab {cfg.vocab_size})")
            ckpt_bytes = json.loads((ckpt / "model.safetensors.index.json").read_text())["metadata"]["total_size"]
            print(f"checkpoint: reusing {ckpt} ({ckpt_bytes / 2**30:.2f} GiB)", file=sys.stderr)
        else:
            t0 = time.perf_counter()
            ckpt_bytes = build_checkpoint(ckpt, cfg, _DTYPES[a.dtype])
            print(f"checkpoint: {ckpt_bytes / 2**30:.2f} GiB {a.dtype} in {time.perf_counter() - t0:.0f} s",
                  file=sys.stderr)
        res = run_convert(ckpt, out, a.lut_type, a.threads, a.memory_mb, a.ranks, a.device)
        V = cfg.vocab_size
        res.update(shape=a.shape, vocab=V, lut_type=a.lut_type, ckpt_dtype=a.dtype, ckpt_bytes=ckpt_bytes,
                   gguf_bytes=out.stat().st_size, rows_per_s=V / res["wall_s"], ranks=a.ranks, device=a.device,
                   lut_row_len=cfg.num_hidden_layers * cfg.num_experts * cfg.hidden_size,
                   threads=a.threads or os.cpu_count(), cpu=cpu_name(),
                   rel_err=verify(out, ckpt, [0, 1, V // 2, V - 1]))
        if a.keep:
            print(f"kept {out}", file=sys.stderr)
    finally:
        if not a.keep:
            out.unlink(missing_ok=True)
            if a.ckpt is None:
                shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(res, indent=1))
    print(f"\n| {a.shape} (V={cfg.vocab_size}) | {a.ranks} | {a.lut_type} | {res['wall_s']:.0f} s | "
          f"{res['rows_per_s']:.1f} | "
          f"{res['peak_rss_bytes'] / 2**30:.2f} GiB | {res['gguf_bytes'] / 2**30:.2f} GiB | {res['rel_err']:.2e} |")
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
