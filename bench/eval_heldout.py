"""Bits per byte of a .gguf model on the held-out part of its training files, computed by the mole
runtime (not PyTorch), with the same split as `mole train` (the last --eval-fraction of each file,
cut at a line break).

    PYTHONPATH=python:converter python bench/eval_heldout.py -m python/mole/data/demo.gguf \
        --data ../shared/data/corpus/austen.txt ../shared/data/corpus/kjv.txt ../shared/data/corpus/shakespeare.txt
"""
from __future__ import annotations

import argparse
import math
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import common  # noqa: E402,F401  (puts the source tree's packages on sys.path when none is installed)

import numpy as np  # noqa: E402


def heldout_texts(files: list[pathlib.Path], fraction: float) -> dict[str, str]:
    """The split of mole_convert.train.read_texts, without importing torch."""
    held = {}
    for path in files:
        text = path.read_text(encoding="utf-8")
        cut = int(len(text) * (1.0 - fraction))
        nl = text.find("\n", cut)
        cut = nl + 1 if 0 <= nl < len(text) - 1 else cut
        held[path.name] = text[cut:]
    return held


def bits_per_byte(m, text: str, n_ctx: int) -> tuple[float, int]:
    """Sliding windows of n_ctx tokens with stride n_ctx/2; every token after the first is scored once."""
    ids = m.tokenize(text)
    nll, begin, scored_to = 0.0, 0, 1
    while scored_to < len(ids):
        end = min(begin + n_ctx, len(ids))
        lg = m.logits(ids[begin:end]).astype(np.float64)
        lp = lg - lg.max(1, keepdims=True)
        lp -= np.log(np.exp(lp).sum(1, keepdims=True))
        tgt = np.arange(scored_to, end)
        nll -= lp[tgt - 1 - begin, np.asarray(ids)[tgt]].sum()
        scored_to, begin = end, begin + n_ctx // 2
    return nll / math.log(2) / len(text.encode("utf-8")), len(ids)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-m", "--model", required=True)
    p.add_argument("--data", nargs="+", type=pathlib.Path, required=True)
    p.add_argument("--eval-fraction", type=float, default=0.02)
    p.add_argument("-c", "--ctx", type=int, default=128, help="window: the training sequence length (default 128)")
    p.add_argument("-t", "--threads", type=int, default=None)
    a = p.parse_args(argv)
    import mole
    with mole.Model(a.model, n_ctx=a.ctx, n_threads=a.threads) as m:
        for name, text in heldout_texts(a.data, a.eval_fraction).items():
            t0 = time.perf_counter()
            bpb, n = bits_per_byte(m, text, a.ctx)
            print(f"{name}: {bpb:.4f} bits/byte over {len(text.encode())} bytes ({n} tokens, "
                  f"{time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
