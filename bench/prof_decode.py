"""Decode and prompt timing of one model, for profiling and A/B runs of two libraries (MOLE_LIB):
wall and CPU time per token, context switches, the runtime's counters.

    PYTHONPATH=python MOLE_LIB=build/libmole.so python bench/prof_decode.py MODEL [DECODE_STEPS] [PROMPT_LEN] [THREADS]
        [KV_TYPE] [DECODE_FROM]
    perf record -o perf.data python bench/prof_decode.py MODEL 300 0 2     # then perf report --sort sym

KV_TYPE: f16, f32 or default (the library's). DECODE_FROM: tokens in the context before the timed decode
steps (default 8; 512 decodes at the contexts after a 512-token prompt, where attention reads the most).
"""
import resource
import sys
import time

import numpy as np

import mole


def cpu_seconds(r0, r1):
    return r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime


def main(argv):
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    path = argv[0]
    n = int(argv[1]) if len(argv) > 1 else 128
    P = int(argv[2]) if len(argv) > 2 else 0
    threads = int(argv[3]) if len(argv) > 3 else 2
    kv = argv[4] if len(argv) > 4 and argv[4] != "default" else None
    c0 = int(argv[5]) if len(argv) > 5 else 8
    m = mole.Model(path, n_ctx=max(c0 + n, P) + 16, n_threads=threads, **({"kv_type": kv} if kv else {}))
    ids = np.random.default_rng(0).integers(1, m.n_vocab, size=max(c0 + n, P) + 8).tolist()
    if P:
        m.eval(ids[:P])           # warm-up pass, then the timed one
        m.reset()
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        m.eval(ids[:P])
        t, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
        print(f"prompt {P}: {P / t:.1f} tok/s  wall {t * 1e3:.1f} ms  cpu {cpu_seconds(r0, r1) * 1e3:.1f} ms")
        m.reset()
    m.eval(ids[:c0])
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for i in range(n):
        m.eval(ids[c0 + i:c0 + i + 1])
    t, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    print(f"decode: {n / t:.1f} tok/s  {t / n * 1e3:.2f} ms/tok wall, {cpu_seconds(r0, r1) / n * 1e3:.2f} ms/tok cpu, "
          f"nvcsw {r1.ru_nvcsw - r0.ru_nvcsw} nivcsw {r1.ru_nivcsw - r0.ru_nivcsw}")
    print(m.stats())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
