"""Runs models through the CUDA backend and the CPU backend of one libmole (MOLE_LIB picks it: the
real build on a GPU machine, or libmole_simt.so, whose CUDA backend runs its kernels on the CPU
through the SIMT executor) and saves, per model, both backends' logits of IDS, 64 greedy tokens
from PROMPT, and the CUDA context's LUT counters after one and two evaluations of IDS. Run by
tests/test_cuda.py in a subprocess (one library per process).

    MOLE_LIB=... python tests/cuda_parity.py OUT.npz MODEL.gguf [MODEL.gguf ...]
"""
import sys

import numpy as np

import mole

IDS = [1, 17, 200, 3, 17, 17, 45, 511, 0, 99, 3, 250, 128, 64, 7, 300, 17, 42, 42, 1]
PROMPT = [5, 77, 300, 12]


def greedy(m, prompt, n):
    logits = m.logits(prompt)[-1]
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(np.argmax(logits)))
        logits = m.eval([ids[-1]])
    return ids


def main(out, paths):
    arrays = {}
    for i, path in enumerate(paths):
        # the CPU with CUDA's f32 KV cache, so that the two differ only by their kernels
        with mole.Model(path, n_ctx=128, n_threads=2, kv_type="f32") as cpu, \
                mole.Model(path, n_ctx=128, device="cuda") as gpu:
            arrays[f"cpu{i}"], arrays[f"gpu{i}"] = cpu.logits(IDS), gpu.logits(IDS)
            first = gpu.stats()
            gpu.logits(IDS)   # again: every row is in the VRAM cache now
            second = gpu.stats()
            arrays[f"lut{i}"] = np.array([first["lut_rows_fetched"], first["lut_bytes_to_device"],
                                          second["lut_bytes_to_device"], second["lut_cache_hits"],
                                          first["lut_row_bytes"]], np.int64)
            arrays[f"cpu_greedy{i}"] = np.array(greedy(cpu, PROMPT, 64))
            arrays[f"gpu_greedy{i}"] = np.array(greedy(gpu, PROMPT, 64))
    np.savez(out, **arrays)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
