"""What building a LUT costs at the paper's shapes, for docs/scaling.md: FLOP, bytes, the converter's own chunk
plan on a GPU (reparam.plan_lut), and the rows/s, write bandwidth and bus traffic per GPU that follow from a
FLOP rate. Measured here: the quantizers' speed on this CPU, and (--measured) a bench/convert_scale.py run's
rows/s. Everything about GPUs is an estimate from the rates given on the command line.

    PYTHONPATH=python:converter python bench/lut_cost.py --measured /tmp/scale-bench-1.json
"""
from __future__ import annotations

import argparse
import json
import pathlib
import time
from types import SimpleNamespace

import numpy as np
import torch

from mole_convert.quantize import quantize, quantize_torch, row_bytes
from mole_convert.reparam import plan_lut

# (d, L, N, D_e, V). 1b-16e: Pythia-1B's trunk (d 2048, 16 layers, FFN 8192); 1.4b-16e: 24 layers, which is the
# shape the "about 1.3 PFLOP" implies.
SHAPES = {
    "160m-16e": (768, 12, 16, 3072, 50304),
    "1b-16e": (2048, 16, 16, 8192, 50304),
    "1.4b-16e": (2048, 24, 16, 8192, 50304),
}


def flop_per_row(d: int, L: int, N: int, De: int) -> int:
    """One token's LUT row: L*N expert FFNs, up [De, d] and down [d, De], 2 FLOP per multiply-add."""
    return L * N * 4 * d * De


def measure_quantizers(d: int, L: int, N: int, rows: int = 64, repeats: int = 3) -> dict:
    """Rows/s of numpy quantize() and of quantize_torch() on this CPU, q8_0, one 160M-16E-long row each."""
    x = np.random.default_rng(0).standard_normal((rows, L * N * d)).astype(np.float32)
    out = {}
    for name, fn in (("numpy", lambda: quantize(x, "q8_0")),
                     ("torch", lambda: quantize_torch(torch.from_numpy(x), "q8_0"))):
        fn()
        best = min(_timed(fn) for _ in range(repeats))
        out[name] = rows / best
    return out


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--measured", type=pathlib.Path, help="a bench/convert_scale.py --json result (160m-16e)")
    ap.add_argument("--gpu-tflops", type=float, default=19.5,
                    help="the GPU's fp32 FLOP rate in TFLOP/s (default 19.5: an A100's fp32 figure, no TF32)")
    ap.add_argument("--efficiency", type=float, default=0.7, help="share of that rate the expert GEMMs reach")
    ap.add_argument("--bus-gbs", type=float, default=20.0, help="host-to-GPU GB/s (default 20: PCIe 4 x16)")
    ap.add_argument("--vram-gib", type=float, nargs="+", default=[8.0, 60.0],
                    help="VRAM budgets to plan with (--memory-mb; 8 GiB is the default, 60 fits an 80 GB GPU)")
    ap.add_argument("--gpus", type=int, default=8, help="ranks the vocabulary is shared among")
    ap.add_argument("--serve-tokens", type=float, default=1000.0, help="tokens/s one serving replica evaluates")
    ap.add_argument("--cache-mb", type=float, nargs="+", default=[64, 1024, 8192], help="row cache sizes")
    a = ap.parse_args(argv)

    d0, L0, N0, _, _ = SHAPES["160m-16e"]
    q = measure_quantizers(d0, L0, N0)
    rb0 = row_bytes("q8_0", L0 * N0 * d0)
    print(f"q8_0 quantizer on this CPU, 1 row = {L0 * N0 * d0} values: numpy {q['numpy']:.0f} rows/s "
          f"({q['numpy'] * L0 * N0 * d0 * 4 / 1e9:.2f} GB/s of f32 in), torch {q['torch']:.0f} rows/s "
          f"({q['torch'] * L0 * N0 * d0 * 4 / 1e9:.2f} GB/s)  [measured, {torch.get_num_threads()} threads]")
    if a.measured:
        m = json.loads(a.measured.read_text())
        f_row = flop_per_row(d0, L0, N0, SHAPES["160m-16e"][3])
        cpu_s = m["user_s"] + m["sys_s"]
        print(f"this CPU's conversion ({m['ranks']} rank(s), {m['cpu']}): {m['rows_per_s']:.1f} rows/s of wall time = "
              f"{m['rows_per_s'] * f_row / 1e9:.0f} GFLOP/s; {cpu_s * 1e3 / m['vocab']:.1f} CPU-ms per row = "
              f"{m['vocab'] * f_row / cpu_s / 1e9:.0f} GFLOP per CPU-second; q8_0 rows written at "
              f"{m['rows_per_s'] * rb0 / 1e6:.1f} MB/s  [measured]")

    gpu = a.gpu_tflops * 1e12 * a.efficiency
    print(f"\nper GPU at {a.gpu_tflops:g} TFLOP/s x {a.efficiency:g} = {gpu / 1e12:.1f} TFLOP/s fp32, "
          f"bus {a.bus_gbs:g} GB/s, {a.gpus} GPUs  [estimated]\n")
    print("| shape | FLOP | LUT q8_0 | experts (bf16) | rows/s per GPU | write per GPU | "
          "one GPU | VRAM budget: tokens/chunk, expert passes per rank, bus time per rank | "
          f"{a.gpus} GPUs: compute, bus at each budget |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, (d, L, N, De, V) in SHAPES.items():
        f_row = flop_per_row(d, L, N, De)
        rb = row_bytes("q8_0", L * N * d)
        experts = L * N * 2 * d * De * 2
        rows_s = gpu / f_row
        cells, buses = [], []
        for gib in a.vram_gib:
            cfg = SimpleNamespace(vocab_size=V, num_hidden_layers=L, num_experts=N, hidden_size=d, n_ff_expert=De)
            try:
                p = plan_lut(SimpleNamespace(form="training", config=cfg), "q8_0", memory_budget=int(gib * 2**30),
                             device="cuda")
            except Exception as e:   # the budget cannot hold even one chunk
                cells.append(f"{gib:g} GiB: no plan ({str(e).split(':')[0]})")
                buses.append(float("nan"))
                continue
            per_rank = -(-V // a.gpus)
            passes = 1 if p.keep_weights else -(-per_rank // p.chunk_tokens)
            bus = passes * experts / (a.bus_gbs * 1e9)
            buses.append(bus)
            cells.append(f"{gib:g} GiB: {p.chunk_tokens}, {passes}{' (kept)' if p.keep_weights else ''}, "
                         f"{bus:.0f} s")
        compute = V * f_row / gpu
        print(f"| {name} (d {d}, L {L}, N {N}, D_e {De}) | {V * f_row / 1e15:.2f} P | {V * rb / 1e9:.1f} GB | "
              f"{experts / 1e9:.1f} GB | {rows_s:.0f} | {rows_s * rb / 1e6:.0f} MB/s | {compute / 60:.1f} min | "
              f"{'; '.join(cells)} | {compute / a.gpus:.0f} s; {', '.join(f'{b:.0f} s' for b in buses)} |")

    # Serving: every replica reads the rows of its steps' distinct tokens; its row cache keeps the frequent ones
    print(f"\nserving: misses a replica reads at {a.serve_tokens:g} tokens/s, row cache hit rate under a Zipf(1) "
          "token law (an assumption: real text is close to it)  [estimated]\n")
    print("| shape | q8_0 row | row cache | rows cached | hit rate | misses read |")
    print("|---|---|---|---|---|---|")
    for name, (d, L, N, _, V) in SHAPES.items():
        rb = row_bytes("q8_0", L * N * d)
        harmonic = np.cumsum(1.0 / np.arange(1, V + 1))
        for mb in a.cache_mb:
            rows = min(V, int(mb * 2**20 // rb))
            hit = harmonic[rows - 1] / harmonic[-1] if rows else 0.0
            print(f"| {name} | {rb / 1e3:.0f} KB | {mb:g} MB | {rows} | {hit:.0%} | "
                  f"{a.serve_tokens * (1 - hit) * rb / 1e6:.0f} MB/s |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
