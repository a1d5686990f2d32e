"""Bits per byte of .gguf models on held-out text, computed by the mole runtime (not PyTorch), at one or more
windows, each with its standard error: either whole books (--books; bench/split_corpus.py cuts them out) or, as
`mole train` splits without --eval-file, the last --eval-fraction of each --data file.

    python bench/split_corpus.py --out split/
    PYTHONPATH=python:converter python bench/eval_heldout.py -m python/mole/data/demo.gguf \
        --books split/heldout/*.txt -c 128 256 512

"all" is the byte-weighted mean over the texts (total bits over total bytes).
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import common  # noqa: E402,F401  (puts the source tree's packages on sys.path when none is installed)


def heldout_texts(files: list[pathlib.Path], fraction: float) -> dict[str, str]:
    """The split of mole_convert.train.read_texts without --eval-file, without importing torch."""
    held = {}
    for path in files:
        text = path.read_text(encoding="utf-8")
        cut = int(len(text) * (1.0 - fraction))
        nl = text.find("\n", cut)
        cut = nl + 1 if 0 <= nl < len(text) - 1 else cut
        held[path.name] = text[cut:]
    return held


def evaluate(model_path: str, texts: dict[str, str], ctxs: list[int], threads: int | None) -> dict:
    """{n_ctx: {name: {bpb, bpb_se, tokens, bytes}, "all": {...}}}"""
    import mole
    from mole.perplexity import perplexity

    out = {}
    with mole.Model(model_path, n_ctx=max(ctxs), n_threads=threads) as m:
        for c in ctxs:
            rows = {}
            for name, text in texts.items():
                t0 = time.perf_counter()
                r = perplexity(m, text, c)
                rows[name] = {"bpb": r.bits_per_byte, "bpb_se": r.bits_per_byte_se, "tokens": r.n_tokens,
                              "bytes": r.n_bytes, "seconds": time.perf_counter() - t0}
            n = sum(v["bytes"] for v in rows.values())
            rows["all"] = {"bpb": sum(v["bpb"] * v["bytes"] for v in rows.values()) / n,
                           "bpb_se": math.sqrt(sum((v["bpb_se"] * v["bytes"]) ** 2 for v in rows.values())) / n,
                           "tokens": sum(v["tokens"] for v in rows.values()), "bytes": n}
            out[c] = rows
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-m", "--model", nargs="+", required=True, help=".gguf files")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--books", nargs="+", type=pathlib.Path, help="whole held-out texts, each scored on its own")
    src.add_argument("--data", nargs="+", type=pathlib.Path, help="training files: score their last --eval-fraction")
    p.add_argument("--eval-fraction", type=float, default=0.02)
    p.add_argument("--chars", type=int, default=None, help="only the first N characters of each text")
    p.add_argument("-c", "--ctx", type=int, nargs="+", default=[512], help="windows (default 512)")
    p.add_argument("-t", "--threads", type=int, default=None)
    p.add_argument("--json", type=pathlib.Path, default=None)
    a = p.parse_args(argv)
    texts = ({f.name.removesuffix(".txt"): f.read_text(encoding="utf-8") for f in a.books} if a.books
             else heldout_texts(a.data, a.eval_fraction))
    if a.chars:
        texts = {k: v[: a.chars] for k, v in texts.items()}
    results = {}
    for model in a.model:
        res = evaluate(model, texts, a.ctx, a.threads)
        results[model] = {str(c): rows for c, rows in res.items()}
        print(f"{model}")
        names = list(next(iter(res.values())))
        print(f"  {'text':28}" + "".join(f"{'-c ' + str(c):>20}" for c in a.ctx))
        for name in names:
            print(f"  {name:28}" + "".join(f"{res[c][name]['bpb']:>11.4f} ± {res[c][name]['bpb_se']:.4f}"
                                           for c in a.ctx))
    if a.json:
        a.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
