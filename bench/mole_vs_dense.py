"""MoLE vs dense, trained side by side: the same dense part (d, L, heads, shared FFN), tokens, schedule and seed;
dense has no experts, MoLE-4E and MoLE-16E add 4 and 16 (which become LUT rows at inference, so every variant
computes the same active parameters per token). Reports held-out bits/byte on whole unseen books (the runtime's
perplexity on each q8_0 file), inference tokens/s measured interleaved in one process, the file and LUT bytes,
and plots the training curves.

    python bench/split_corpus.py --out split/
    PYTHONPATH=python:converter python bench/mole_vs_dense.py --data split/train/*.txt \
        --eval-file split/heldout/*.txt --out runs/side-by-side --preset small --steps 600 \
        --json docs/mole_vs_dense.json --plot docs/mole_vs_dense.png

A variant whose checkpoint is complete is not retrained; one cut off mid-run resumes from its last save, so the
study can be continued (or extended with --variants) across sessions.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import bench_cpu  # noqa: E402  (machine facts)
import eval_heldout  # noqa: E402  (the books' scores)
import common  # noqa: E402,F401  (puts the source tree's packages on sys.path when none is installed)

VARIANTS = {"dense": 0, "mole-4e": 4, "mole-16e": 16}


def train(name: str, experts: int, a) -> dict:
    out = a.out / name
    log_path = out / "train_log.json"
    if log_path.is_file() and json.loads(log_path.read_text())["steps"] >= a.steps:
        return json.loads(log_path.read_text())
    cmd = [sys.executable, "-m", "mole_convert.train", "--data", *map(str, a.data), "--eval-file",
           *map(str, a.eval_file), "--out", str(out), "--preset", a.preset, "--experts", str(experts),
           "--steps", str(a.steps), "--seed", str(a.seed), "--precision", "fp32", "--threads", str(a.threads),
           "--eval-tokens", str(a.eval_tokens), *a.train_args]
    if (out / "train_state.pt").is_file():
        cmd.append("--resume")
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    return json.loads(log_path.read_text())


def convert(name: str, a) -> pathlib.Path:
    from mole_convert.convert import convert as run_convert

    dst = a.out / f"{name}.gguf"
    if not dst.is_file() or dst.stat().st_mtime < (a.out / name / "model.safetensors").stat().st_mtime:
        run_convert(a.out / name, dst, lut_type="q8_0", weight_type="q8_0", progress=False)
    return dst


def held_out(path: pathlib.Path, a, n_ctx: int) -> dict:
    """eval_heldout's scores of the books: {"bpb", "bpb_se"} over all of them, and "books" one by one."""
    rows = eval_heldout.evaluate(str(path), {f.name: f.read_text(encoding="utf-8") for f in a.eval_file}, [n_ctx],
                                 a.threads)[n_ctx]
    total = rows.pop("all")
    return {"bpb": total["bpb"], "bpb_se": total["bpb_se"], "books": rows}


def speeds(paths: dict[str, pathlib.Path], a, rounds: int = 5) -> dict:
    """Prompt (128 tokens) and decode (64 tokens) tokens/s, the variants interleaved round by round in one process
    (a busy machine's swings hit them alike); the median of the rounds."""
    import numpy as np

    import mole

    models = {n: mole.Model(str(p), n_ctx=256, n_threads=a.threads) for n, p in paths.items()}
    prompt = list(np.random.default_rng(0).integers(1, min(m.n_vocab for m in models.values()), 128))
    got = {n: {"prompt": [], "decode": []} for n in models}
    for _ in range(rounds):
        for n, m in models.items():
            t = time.perf_counter()
            m.logits(prompt)
            got[n]["prompt"].append(len(prompt) / (time.perf_counter() - t))
            m.reset()
            m.eval(prompt[:1])
            t = time.perf_counter()
            for tok in prompt[1:65]:
                m.eval([tok])
            got[n]["decode"].append(64 / (time.perf_counter() - t))
    for m in models.values():
        m.close()
    return {n: {k: float(np.median(v)) for k, v in g.items()} for n, g in got.items()}


def plot(logs: dict[str, dict], path: pathlib.Path, tokens_per_step: int) -> None:
    try:
        import matplotlib
    except ImportError:
        print("(no plot: pip install matplotlib)", file=sys.stderr)
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for name, log in logs.items():
        loss = np.asarray(log["train_loss"])
        k = max(1, len(loss) // 60)
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax1.plot((np.arange(smooth.size) + k) * tokens_per_step / 1e6, smooth, label=name)
        ev = log["evals"]
        ax2.plot([e["step"] * tokens_per_step / 1e6 for e in ev], [e["bpb"] for e in ev], marker="o", label=name)
    ax1.set(xlabel="training tokens (M)", ylabel="training loss (nats/token)", title="training loss")
    ax2.set(xlabel="training tokens (M)", ylabel="bits/byte", title="held-out books (PyTorch eval)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", nargs="+", type=pathlib.Path, required=True, help="training text files")
    ap.add_argument("--eval-file", nargs="+", type=pathlib.Path, required=True, help="held-out books")
    ap.add_argument("--out", type=pathlib.Path, required=True, help="folder for the checkpoints and .gguf files")
    ap.add_argument("--preset", default="small", help="mole train preset for the shared dense part")
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-tokens", type=int, default=20000, help="cap per book for the trainer's periodic eval")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--json", type=pathlib.Path, default=None)
    ap.add_argument("--plot", type=pathlib.Path, default=None)
    ap.add_argument("train_args", nargs=argparse.REMAINDER, help="after --: more mole train options for every run")
    a = ap.parse_args(argv)
    a.train_args = [x for x in a.train_args if x != "--"]
    a.out.mkdir(parents=True, exist_ok=True)

    logs = {n: train(n, VARIANTS[n], a) for n in a.variants}
    paths = {n: convert(n, a) for n in a.variants}
    seq_len = logs[a.variants[0]]["config"]["max_position_embeddings"]
    rows = {}
    for n in a.variants:
        import mole
        with mole.Model(str(paths[n])) as m:
            info = m.info
        rows[n] = {"experts": VARIANTS[n], "params_training_form": logs[n]["parameters"],
                   "file_bytes": paths[n].stat().st_size, "lut_bytes": info["lut_bytes"],
                   "dense_bytes": info["dense_bytes"], "train_tokens_per_s": logs[n]["tokens_per_s"],
                   "train_wall_s": logs[n]["wall_time_s"], "torch_final_bpb": logs[n]["final_bpb"],
                   "heldout": held_out(paths[n], a, seq_len)}
    for n, s in speeds(paths, a).items():
        rows[n]["tokens_per_s"] = s
    cfg = logs[a.variants[0]]["config"]
    from mole_convert.args import PRESETS
    tokens_per_step = PRESETS[a.preset]["batch_size"] * seq_len
    result = {"preset": a.preset, "steps": a.steps, "seed": a.seed, "tokens": a.steps * tokens_per_step,
              "config": {k: cfg[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                             "num_attention_heads", "max_position_embeddings")},
              "machine": bench_cpu.machine(), "variants": rows}
    print(f"{'variant':10} {'held-out bits/byte':>20} {'prompt tok/s':>13} {'decode tok/s':>13} {'file MB':>8} "
          f"{'LUT MB':>7}")
    for n, r in rows.items():
        h = r["heldout"]
        print(f"{n:10} {h['bpb']:>12.4f} ± {h['bpb_se']:.4f} {r['tokens_per_s']['prompt']:>13.1f} "
              f"{r['tokens_per_s']['decode']:>13.1f} {r['file_bytes'] / 1e6:>8.2f} {r['lut_bytes'] / 1e6:>7.2f}")
    if a.json:
        a.json.write_text(json.dumps(result, indent=2) + "\n")
    if a.plot:
        plot(logs, a.plot, tokens_per_step)
    return 0


if __name__ == "__main__":
    sys.exit(main())
