"""Prompt and decode speed of mole.cpp on random-weight models of the paper's shapes, MoLE next to
the same model dense (num_experts 0), alternating A B A B in one process; medians and ratios.

    PYTHONPATH=python:converter python bench/bench_speed.py --shape 160m-4e --threads 2
    PYTHONPATH=python:converter python bench/bench_speed.py --shape d512 --repeats 5    # quick

Models are built once into --workdir by common.build_model (random weights and LUT, converted with the
project's converter); later runs reuse them. Prints a markdown table (and --json FILE).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import platform
import statistics
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO / "bench") not in sys.path:
    sys.path.insert(0, str(REPO / "bench"))
import common  # noqa: E402,F401  (puts the source tree's packages on sys.path when none is installed)

import numpy as np  # noqa: E402

from common import SHAPES, build_model  # noqa: E402,F401  (models shared with bench_cpu.py)


def measure(m, prompt_ids: list[int], n_gen: int) -> dict:
    """One prompt pass over prompt_ids and n_gen greedy decode steps on a fresh context."""
    m.reset()
    m.reset_stats()
    t0 = time.perf_counter()
    m.eval(prompt_ids)                  # last position's logits only, as a prompt pass needs
    t_prompt = time.perf_counter() - t0
    m.reset()
    short = prompt_ids[:8]
    m.eval(short)                       # the short prompt is cached, so generate only decodes
    before = m.stats()["tokens_evaluated"]
    t0 = time.perf_counter()
    m.generate(short, max_tokens=n_gen + 1, temperature=0.0)
    t_gen = time.perf_counter() - t0
    steps = m.stats()["tokens_evaluated"] - before - 1   # minus the re-evaluated last prompt token
    s = m.stats()
    return {"prompt_tps": len(prompt_ids) / t_prompt, "decode_tps": max(steps, 1) / t_gen,
            "decode_steps": steps, "lut_bytes_fetched": s["lut_bytes_fetched"], "lut_rows": s["lut_rows_fetched"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="160m-4e")
    p.add_argument("--workdir", type=pathlib.Path, default=pathlib.Path("/tmp/mole-bench"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt", type=int, default=512, help="prompt tokens (default 512)")
    p.add_argument("--gen", type=int, default=64, help="decoded tokens (default 64)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--lut-type", default="q8_0")
    p.add_argument("--weight-type", default="q8_0")
    p.add_argument("--no-dense", action="store_true", help="skip the dense twin")
    p.add_argument("--json", type=pathlib.Path)
    a = p.parse_args(argv)
    a.workdir.mkdir(parents=True, exist_ok=True)

    import mole
    variants = [("MoLE", False)] + ([] if a.no_dense else [("dense", True)])
    paths = {name: build_model(a.workdir, a.shape, dense, a.lut_type, a.weight_type) for name, dense in variants}
    models = {name: mole.Model(str(path), n_ctx=a.prompt + 16, n_threads=a.threads) for name, path in paths.items()}
    rng = np.random.default_rng(0)
    prompt = rng.integers(1, models["MoLE"].n_vocab, size=a.prompt).tolist()
    runs = {name: [] for name in models}
    for _ in range(a.repeats):              # A B A B ...
        for name, m in models.items():
            runs[name].append(measure(m, prompt, a.gen))
    rows = {}
    for name, rs in runs.items():
        rows[name] = {k: statistics.median(r[k] for r in rs) for k in ("prompt_tps", "decode_tps")}
        rows[name]["lut_bytes_per_token"] = rs[-1]["lut_bytes_fetched"] / max(1, rs[-1]["decode_steps"] + 8)
        rows[name]["file_bytes"] = paths[name].stat().st_size
    info = models["MoLE"].info
    print(f"\nshape {a.shape}, weights {a.weight_type}, LUT {a.lut_type}, {a.threads} threads, prompt {a.prompt}, "
          f"decode {a.gen}, median of {a.repeats}; {platform.processor() or platform.machine()}, "
          f"{mole.system_info()}")
    print("| model | prompt tok/s | decode tok/s | file GB | LUT row bytes |")
    print("|---|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['prompt_tps']:.1f} | {r['decode_tps']:.1f} | {r['file_bytes'] / 1e9:.2f} | "
              f"{info['lut_row_bytes'] if name == 'MoLE' else 0} |")
    if "dense" in rows:
        print(f"MoLE / dense step time: decode {rows['dense']['decode_tps'] / rows['MoLE']['decode_tps']:.3f}, "
              f"prompt {rows['dense']['prompt_tps'] / rows['MoLE']['prompt_tps']:.3f}")
    if a.json:
        a.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(a).items()}, "rows": rows,
                                      "runs": runs}, indent=2))
    for m in models.values():
        m.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
