"""Batched decode without the server or the sampler: steps of S sequences (one token each) through mole_decode,
for each S given, on one context of that many sequences; wall and CPU time per step, tokens/s, the ratio to S=1.

    python bench/prof_batch.py MODEL [--seqs 1,4,8,16] [--steps 64] [--threads 2] [--prompt 32]
    perf record -o perf-s8.data python bench/prof_batch.py MODEL --seqs 8 --steps 200   # then perf report
    python bench/prof_batch.py MODEL --seqs 8 --batcher     # through mole.batch.Batcher, sampler included

Each sequence first reads a --prompt of random ids (not timed); then --steps steps each hold one random token of
every sequence and ask for every row's logits, as a step of `mole serve` with S running streams does. S=1 is the
single-stream decode, so the ratio is what batching buys over running the streams one after another.
--batcher runs S greedy jobs (the --prompt of random ids, then --steps tokens each) through mole.batch.Batcher, as
`mole serve` does without HTTP, and splits each step after the first (which reads the prompts) into its
mole_decode call and the rest (sampling, detokenizing, bookkeeping in Python).
"""
from __future__ import annotations

import argparse
import resource
import sys
import time

import numpy as np

import mole
from mole import _ffi


def cpu_seconds(r0, r1) -> float:
    return r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime


def run(path: str, S: int, steps: int, threads: int, prompt: int) -> dict:
    with mole.Model(path, n_ctx=prompt + steps + 8, n_threads=threads, n_seq_max=S) as m:
        L, ctx, V = m._L, m._live_ctx(), m.n_vocab
        ffi, lib = L.ffi, L.lib
        rng = np.random.default_rng(S)
        logits = np.empty((S, V), np.float32)

        def decode(toks, seqs, want):
            t = np.ascontiguousarray(toks, np.int32)
            q = np.ascontiguousarray(seqs, np.int32)
            w = np.ascontiguousarray(want, np.int8)
            _ffi.check(lib.mole_decode(ctx, len(t), ffi.from_buffer("int32_t[]", t), ffi.from_buffer("int32_t[]", q),
                                       ffi.from_buffer("int8_t[]", w), ffi.from_buffer("float[]", logits),
                                       int(w.sum()) * V))

        for s in range(S):                                   # the prompts, one sequence at a time (not timed)
            decode(rng.integers(1, V, prompt), np.full(prompt, s), np.r_[np.zeros(prompt - 1), 1])
        seqs, want = np.arange(S), np.ones(S)
        decode(rng.integers(1, V, S), seqs, want)            # warm
        toks = rng.integers(1, V, (steps, S))
        st0 = m.stats()
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for i in range(steps):
            decode(toks[i], seqs, want)
        wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
        st1 = m.stats()
    return {"S": S, "ms_per_step": 1e3 * wall / steps, "cpu_ms_per_step": 1e3 * cpu_seconds(r0, r1) / steps,
            "tok_s": S * steps / wall, "lut_ms_per_step": (st1["t_lut_ms"] - st0["t_lut_ms"]) / steps}


def run_batcher(path: str, S: int, steps: int, threads: int, prompt: int) -> dict:
    from mole.batch import Batcher, Job

    with mole.Model(path, n_ctx=prompt + steps + 8, n_threads=threads, n_seq_max=S) as m:
        rng = np.random.default_rng(S)
        b = Batcher(m, n_seq=S)
        decode_s, inner = [], b._decode

        def timed(*args):
            t0 = time.perf_counter()
            inner(*args)
            decode_s.append(time.perf_counter() - t0)
        b._decode = timed
        for _ in range(S):
            b.submit(Job(rng.integers(1, m.n_vocab, prompt).tolist(), max_tokens=steps, ignore_eos=True,
                         temperature=0))
        step_s = []
        while b.busy:
            t0 = time.perf_counter()
            b.step()
            step_s.append(time.perf_counter() - t0)
        b.close()
    st, dc = np.array(step_s[1:]), np.array(decode_s[1:len(step_s)])
    return {"S": S, "steps": len(st), "step_ms": 1e3 * float(np.median(st)), "decode_ms": 1e3 * float(np.median(dc)),
            "rest_ms": 1e3 * float(np.median(st - dc)), "tok_s": S * len(st) / float(st.sum())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("--seqs", default="1,4,8,16", help="sequences per step, comma-separated (default 1,4,8,16)")
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--batcher", action="store_true", help="through mole.batch.Batcher with greedy sampling")
    a = p.parse_args(argv)
    if a.batcher:
        print(f"model {a.model}, {a.threads} threads, Batcher, greedy jobs of a {a.prompt}-token prompt and "
              f"{a.steps} tokens; medians over the steps after the first\n")
        print("| sequences S | ms per step | of which mole_decode ms | rest ms | tokens/s |")
        print("|---|---|---|---|---|")
        for S in (int(x) for x in a.seqs.split(",")):
            r = run_batcher(a.model, S, a.steps, a.threads, a.prompt)
            print(f"| {S} | {r['step_ms']:.2f} | {r['decode_ms']:.2f} | {r['rest_ms']:.2f} | {r['tok_s']:.1f} |")
        return 0
    rows = [run(a.model, int(s), a.steps, a.threads, a.prompt) for s in a.seqs.split(",")]
    base = next((r["tok_s"] for r in rows if r["S"] == 1), None)
    print(f"model {a.model}, {a.threads} threads, {a.steps} steps after a {a.prompt}-token prompt per sequence\n")
    print("| sequences S | ms per step | CPU ms per step | of which LUT ms | tokens/s | x S=1 |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['tok_s'] / base:.2f}" if base else "-"
        print(f"| {r['S']} | {r['ms_per_step']:.2f} | {r['cpu_ms_per_step']:.2f} | {r['lut_ms_per_step']:.2f} | "
              f"{r['tok_s']:.1f} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
