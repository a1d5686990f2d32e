"""Benchmark models shared by the bench/ scripts: the paper's shapes and build_model, which writes a
random-weight checkpoint and converts it to GGUF once into a work folder (the checkpoint is deleted after)."""
from __future__ import annotations

import importlib.util
import json
import math
import pathlib
import shutil
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO / "bench") not in sys.path:
    sys.path.insert(0, str(REPO / "bench"))
# The source tree's packages only when none is installed: an installed mole carries its libmole,
# the tree's python/mole needs MOLE_LIB (dev builds set PYTHONPATH and MOLE_LIB themselves).
for _pkg, _dir in (("mole", "python"), ("mole_convert", "converter")):
    if importlib.util.find_spec(_pkg) is None:
        sys.path.append(str(REPO / _dir))

# The paper's shapes (d, L, heads, FFN for shared and experts, N, V=50304) plus a quick one.
SHAPES = {
    "160m-4e": dict(vocab_size=50304, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                    num_attention_heads=12, num_key_value_heads=12, num_experts=4),
    "160m-16e": dict(vocab_size=50304, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                     num_attention_heads=12, num_key_value_heads=12, num_experts=16),
    "410m-4e": dict(vocab_size=50304, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                    num_attention_heads=16, num_key_value_heads=16, num_experts=4),
    "d512": dict(vocab_size=50304, hidden_size=512, intermediate_size=2048, num_hidden_layers=8,
                 num_attention_heads=8, num_key_value_heads=8, num_experts=4),
}


def write_random_table(path: pathlib.Path, name: str, rows: int, cols: int, seed: int = 0,
                       chunk_rows: int = 256) -> int:
    """A safetensors file holding one bf16 tensor `name` [rows, cols] of N(0, 1) values, written in chunks
    of rows so memory stays bounded whatever the size; returns its data bytes."""
    import torch

    nbytes = rows * cols * 2
    header = {"__metadata__": {"format": "pt"},
              name: {"dtype": "BF16", "shape": [rows, cols], "data_offsets": [0, nbytes]}}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    gen = torch.Generator().manual_seed(seed)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for r0 in range(0, rows, chunk_rows):
            n = min(chunk_rows, rows - r0)
            f.write(torch.randn(n, cols, generator=gen).to(torch.bfloat16).view(torch.int16).numpy().tobytes())
    return nbytes


def build_reparam_checkpoint(directory: pathlib.Path, cfg, seed: int = 0) -> None:
    """Re-parameterized-form checkpoint with random weights and a random moe_table [V, L*N*d]: converting it
    only quantizes the table (no expert FFNs to run), and a LUT's values do not change its speed."""
    import torch
    from safetensors.torch import save_file

    from convert_scale import build_checkpoint
    from mole_convert import checkpoint_names as C
    from mole_convert.config import MoleConfig

    spec = {k: v for k, v in vars(cfg).items() if k != "extra"}
    build_checkpoint(directory, MoleConfig(**dict(spec, num_experts=0)), torch.bfloat16, seed=seed)   # no router
    V, d, L, N = cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers, cfg.num_experts
    gen = torch.Generator().manual_seed(seed + 1)
    routers = {C.name(C.ROUTER, i): (torch.randn(N, d, generator=gen) / math.sqrt(d)).to(torch.bfloat16)
               for i in range(L)}                                                                  # [N, d] each
    save_file(routers, str(directory / "model-router.safetensors"), metadata={"format": "pt"})
    table_bytes = write_random_table(directory / "model-moe-table.safetensors", C.MOE_TABLE,
                                     V, L * N * d, seed=seed + 2)   # [V, L*N*d]
    index_path = directory / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"].update({n: "model-router.safetensors" for n in routers})
    index["weight_map"][C.MOE_TABLE] = "model-moe-table.safetensors"
    index["metadata"]["total_size"] += table_bytes + sum(t.numel() * 2 for t in routers.values())
    index_path.write_text(json.dumps(index, indent=1))
    hf = cfg.to_hf_dict()
    hf["torch_dtype"] = "bfloat16"
    (directory / "config.json").write_text(json.dumps(hf, indent=2))


def build_model(workdir: pathlib.Path, shape: str, dense: bool, lut_type: str, weight_type: str,
                keep_checkpoint: bool = False) -> pathlib.Path:
    """The converted .gguf for (shape, dense, types), built on first use from a random re-parameterized
    checkpoint (MoLE) or a random dense one; the checkpoint is deleted afterwards unless keep_checkpoint."""
    import torch  # noqa: F401  (the converter needs it; fail here with a clear ImportError)
    from convert_scale import build_checkpoint
    from mole_convert.config import MoleConfig

    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r} (one of {sorted(SHAPES)})")
    spec = dict(SHAPES[shape], max_position_embeddings=2048)
    if dense:
        spec["num_experts"] = 0
    tag = f"{shape.split('-')[0]}-dense" if dense else shape   # 160m-4e and 160m-16e share one dense twin
    out = workdir / f"{tag}-w{weight_type}-l{lut_type}.gguf"
    if out.exists():
        return out
    ckpt = workdir / f"{tag}-ckpt"
    shutil.rmtree(ckpt, ignore_errors=True)
    print(f"building random checkpoint {ckpt}", file=sys.stderr)
    cfg = MoleConfig(**spec)
    if dense:
        build_checkpoint(ckpt, cfg, torch.bfloat16, seed=0)
    else:
        build_reparam_checkpoint(ckpt, cfg, seed=0)
    print(f"converting {ckpt} -> {out}", file=sys.stderr)
    part = out.with_name(out.name + ".part")
    try:
        subprocess.run([sys.executable, "-m", "mole", "convert", str(ckpt), str(part), "--lut-type", lut_type,
                        "--weight-type", weight_type], check=True)
        part.rename(out)
    finally:
        part.unlink(missing_ok=True)
        if not keep_checkpoint:
            shutil.rmtree(ckpt, ignore_errors=True)
    return out
