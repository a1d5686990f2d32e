"""The sampler alone: milliseconds per draw of mole_sampler_sample on scripted logits (normal, --sd wide) over a
--vocab sized vocabulary, for a few (top_k, top_p) settings at one temperature. No model step is timed; the demo
model is only loaded to make the samplers.

    python bench/bench_sampler.py [--vocab 50304] [--sd 6] [--draws 200] [--temperature 0.8]
    MOLE_LIB=A/libmole.so python bench/bench_sampler.py; MOLE_LIB=B/libmole.so python bench/bench_sampler.py
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import mole
from mole import _ffi

SETTINGS = ((40, 0.95), (0, 0.95), (0, 1.0))   # (top_k, top_p): the defaults, top-p alone, neither


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vocab", type=int, default=50304)
    p.add_argument("--sd", type=float, default=6.0, help="spread of the logits (small: flat distributions)")
    p.add_argument("--draws", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    a = p.parse_args(argv)
    if a.vocab < 1 or a.draws < 1:
        p.error("--vocab and --draws must be at least 1")
    logits = (np.random.default_rng(0).standard_normal(a.vocab) * a.sd).astype(np.float32)
    with mole.Model(mole.demo_model_path(), n_ctx=32) as m:
        L = _ffi.get()
        ffi, lib = L.ffi, L.lib
        tok = ffi.new("int32_t *")
        buf = ffi.from_buffer("float[]", logits)
        print(f"vocab {a.vocab}, logits sd {a.sd}, temperature {a.temperature}, {a.draws} draws\n")
        print("| top_k | top_p | ms per draw |")
        print("|---|---|---|")
        for top_k, top_p in SETTINGS:
            s = m._sampler(a.temperature, top_k, top_p, 0.0, 1.0, 64, 1)
            t0 = time.perf_counter()
            for _ in range(a.draws):
                _ffi.check(lib.mole_sampler_sample(s, buf, a.vocab, tok))
            print(f"| {top_k} | {top_p} | {1e3 * (time.perf_counter() - t0) / a.draws:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
