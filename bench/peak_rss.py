"""Peak RSS of the runtime on one model: a 512-token prompt of distinct ids, then 16 decode steps,
printing VmHWM / VmRSS / RssAnon / RssFile (MB) of this process after each phase.

    PYTHONPATH=python MOLE_LIB=build/libmole.so python bench/peak_rss.py MODEL
"""
import sys

import numpy as np

import mole


def status(tag):
    keys = ("VmHWM", "VmRSS", "RssAnon", "RssFile")
    with open("/proc/self/status") as f:
        d = {ln.split(":")[0]: int(ln.split()[1]) // 1024 for ln in f if ln.startswith(keys)}
    print(tag, d, flush=True)


def main(argv):
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    status("start")
    m = mole.Model(argv[0], n_ctx=544, n_threads=2)
    status("loaded")
    ids = (np.random.default_rng(0).permutation(m.n_vocab - 1)[:530] + 1).tolist()
    m.eval(ids[:512])
    status("prompt")
    for i in range(16):
        m.eval(ids[512 + i:513 + i])
    status("decode")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
