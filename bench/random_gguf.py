"""A mole GGUF of one of bench/common.py's shapes with random q8_0 weights and LUT, written straight
from numpy (no checkpoint, no torch): seconds where converting a random checkpoint takes minutes, for
speed measurements only (the numbers in it mean nothing). The file passes the runtime's loader.

    python bench/random_gguf.py SHAPE OUT.gguf [--dense] [--seed N]
    python bench/random_gguf.py tiny OUT.gguf      # V 512, d 64, L 2, N 4: for dry runs
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "python"))

import gguf  # noqa: E402

from common import SHAPES  # noqa: E402
from mole import gguf_names as G  # noqa: E402

TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, num_experts=4)
Q8_SCALE = np.float16(1.0 / 256).view(np.uint16)   # every block's scale: values in [-0.5, 0.5)


class RandomQ8:
    """rows x n q8_0 values (n a multiple of 32), made and written a chunk of rows at a time."""

    def __init__(self, rows: int, n: int, rng: np.random.Generator):
        self.rows, self.n, self.rng = rows, n, rng
        self.nbytes = rows * (n // 32) * 34

    def tofile(self, fout) -> None:
        blocks_per_row = self.n // 32
        chunk = max(1, (64 << 20) // (blocks_per_row * 34))
        for r0 in range(0, self.rows, chunk):
            nb = (min(self.rows, r0 + chunk) - r0) * blocks_per_row
            b = np.empty((nb, 34), np.uint8)
            b[:, 0:2] = np.frombuffer(Q8_SCALE.tobytes(), np.uint8)
            b[:, 2:] = self.rng.integers(-127, 128, size=(nb, 32), dtype=np.int8).view(np.uint8)
            fout.write(memoryview(b).cast("B"))


class F32:
    def __init__(self, values: np.ndarray):
        self.values = np.ascontiguousarray(values, np.float32)
        self.nbytes = self.values.nbytes

    def tofile(self, fout) -> None:
        fout.write(memoryview(self.values).cast("B"))


def spec(shape: str, dense: bool) -> dict:
    s = dict(TINY if shape == "tiny" else SHAPES[shape])
    if dense:
        s["num_experts"] = 0
    return s


def write(shape: str, out: pathlib.Path, dense: bool = False, seed: int = 0) -> pathlib.Path:
    s = spec(shape, dense)
    V, d, D, L, H, Hkv, N = (s[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                           "num_attention_heads", "num_key_value_heads", "num_experts"))
    hd = d // H
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(out.with_name(out.name + ".part"), G.ARCH)
    w.add_string(G.KEY_NAME, f"random {shape}{' dense' if dense else ''}")
    w.add_custom_alignment(G.ALIGNMENT)
    for key, v in ((G.KEY_VOCAB_SIZE, V), (G.KEY_CONTEXT_LENGTH, 2048), (G.KEY_EMBEDDING_LENGTH, d),
                   (G.KEY_BLOCK_COUNT, L), (G.KEY_FEED_FORWARD_LENGTH, D), (G.KEY_EXPERT_COUNT, N),
                   (G.KEY_EXPERT_FEED_FORWARD_LENGTH, D if N else 0), (G.KEY_HEAD_COUNT, H),
                   (G.KEY_HEAD_COUNT_KV, Hkv)):
        w.add_uint32(key, v)
    w.add_float32(G.KEY_RMS_EPS, 1e-5)
    w.add_float32(G.KEY_ROPE_FREQ_BASE, 10000.0)
    tensors = []   # (name, numpy-order shape, type, data)

    def q8(name, rows, n):
        tensors.append((name, (rows, n), gguf.GGMLQuantizationType.Q8_0, RandomQ8(rows, n, rng)))

    def f32(name, values):
        tensors.append((name, values.shape, gguf.GGMLQuantizationType.F32, F32(values)))

    q8(G.TENSOR_TOKEN_EMBD, V, d)
    for i in range(L):
        def n(t, i=i):
            return G.layer_name(t, i)
        f32(n(G.TENSOR_ATTN_NORM), np.ones(d, np.float32))
        q8(n(G.TENSOR_ATTN_Q), H * hd, d)
        q8(n(G.TENSOR_ATTN_K), Hkv * hd, d)
        q8(n(G.TENSOR_ATTN_V), Hkv * hd, d)
        q8(n(G.TENSOR_ATTN_OUT), d, H * hd)
        f32(n(G.TENSOR_FFN_NORM), np.ones(d, np.float32))
        q8(n(G.TENSOR_FFN_UP), D, d)
        q8(n(G.TENSOR_FFN_DOWN), d, D)
        if N:
            f32(n(G.TENSOR_ROUTER), rng.standard_normal((N, d), np.float32) * 0.05)
    f32(G.TENSOR_OUTPUT_NORM, np.ones(d, np.float32))
    q8(G.TENSOR_OUTPUT, V, d)
    if N:
        q8(G.TENSOR_LUT, V, L * N * d)   # last in the file
    for name, shp, t, data in tensors:
        w.add_tensor_info(name, shp, np.float32, data.nbytes, raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for _, _, _, data in tensors:
        w.write_tensor_data(data)
    w.flush()
    w.close()
    out.with_name(out.name + ".part").rename(out)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("shape", choices=sorted(SHAPES) + ["tiny"])
    ap.add_argument("out", type=pathlib.Path)
    ap.add_argument("--dense", action="store_true", help="the dense twin (no router, no LUT)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    print(write(a.shape, a.out, a.dense, a.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
