"""mole_convert.quantize: every type byte-identical to gguf.quants.quantize on hard rows (zeros, denormals,
huge values, exact rounding ties, sign ties), row sizes, in-place output, and clear errors."""
import numpy as np
import pytest
import gguf.quants

from mole_convert.quantize import TYPES, dequantize, ggml_type, quantize, row_bytes

ALL = list(TYPES)


def reference(rows: np.ndarray, t: str) -> np.ndarray:
    q = gguf.quants.quantize(rows, ggml_type(t))
    return np.ascontiguousarray(q).view(np.uint8).reshape(rows.shape[0], -1)


def hard_rows() -> np.ndarray:
    """f32 [R, 128]: random rows plus the cases where rounding and scale choice matter."""
    rng = np.random.default_rng(1234)
    n = 128
    rows = [rng.standard_normal((24, n)).astype(np.float32) * np.float32(2.5)]
    special = np.zeros((20, n), dtype=np.float32)
    special[1] = 1e-39                                                  # denormal scale
    special[2] = rng.standard_normal(n) * np.float32(1e-30)
    special[3] = rng.standard_normal(n) * np.float32(1e30)               # f16 scale overflows to inf
    special[4] = rng.standard_normal(n) * np.float32(6e4)                # near the f16 limit
    special[5, :32] = np.arange(32, dtype=np.float32) - np.float32(15.5)  # q8_0: d=..., .5 ties
    special[5, 32:64] = np.float32(127.0)
    special[5, 64:96] = np.arange(32, dtype=np.float32) - np.float32(15.5)  # q8_0 exact ties: with amax 127,
    special[5, 64] = np.float32(127.0)                                   # d = 1 and x*id = k + 0.5
    special[5, 96:128] = -special[5, 64:96]
    special[6, :32] = np.linspace(-8, 8, 32, dtype=np.float32)          # q4_0: max 8 -> scale exactly -1
    special[6, 32:64] = np.linspace(-8, 7, 32, dtype=np.float32)        # negative largest value
    special[7, :32] = np.float32(3.0)
    special[7, 0] = np.float32(-3.0)                                     # |x| tie: first occurrence wins
    special[8, :32] = np.float32(0.49999997)                             # roundf vs trunc(x+0.5) trap
    special[8, 0] = np.float32(127.0)
    special[9] = np.float32(1.0) + np.arange(n, dtype=np.float32) * np.float32(2 ** -16)  # bf16 ties (even/odd)
    special[10] = -special[9]
    special[11] = np.float32(65520.0)                                    # f16 rounds to inf
    special[12, ::2] = np.float32(-0.0)
    rows.append(special)
    return np.concatenate(rows).astype(np.float32)


@pytest.mark.parametrize("t", ALL)
def test_byte_identical_to_gguf(t):
    rows = hard_rows()
    with np.errstate(all="ignore"):
        expect = reference(rows, t)
    got = quantize(rows, t)
    assert got.dtype == np.uint8 and got.shape == (rows.shape[0], row_bytes(t, rows.shape[1]))
    bad = np.nonzero((got != expect).any(axis=1))[0]
    assert bad.size == 0, f"{t}: rows {bad.tolist()} differ from gguf.quants"


@pytest.mark.parametrize("t", ALL)
def test_many_rows_and_group_boundaries(t):
    # more rows than one inner group, and a row length that does not divide the group
    rng = np.random.default_rng(7)
    rows = rng.standard_normal((300, 32 * 37)).astype(np.float32)
    assert np.array_equal(quantize(rows, t), reference(rows, t))


def test_bf16_nan_is_quieted_like_gguf():
    rows = np.zeros((1, 32), dtype=np.float32)
    bits = rows.view(np.uint32)
    bits[0, 0] = 0x7F800001      # signalling NaN
    bits[0, 1] = 0xFF800000      # -inf
    bits[0, 2] = 0x7F7FFFFF      # largest finite rounds to inf
    assert np.array_equal(quantize(rows, "bf16"), reference(rows, "bf16"))
    assert (quantize(rows, "bf16").view(np.uint16)[0, 0] & 0x7FC0) == 0x7FC0


def test_row_bytes():
    assert row_bytes("f32", 64) == 256
    assert row_bytes("f16", 64) == 128
    assert row_bytes("bf16", 64) == 128
    assert row_bytes("q8_0", 64) == 68
    assert row_bytes("q4_0", 64) == 36
    with pytest.raises(ValueError, match="multiple of the q8_0 block size 32"):
        row_bytes("q8_0", 48)


def test_out_may_be_a_strided_view():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((5, 64)).astype(np.float32), rng.standard_normal((5, 96)).astype(np.float32)
    out = np.zeros((5, 68 + 102), dtype=np.uint8)
    quantize(a, "q8_0", out=out[:, :68])
    quantize(b, "q8_0", out=out[:, 68:])
    assert np.array_equal(out, quantize(np.concatenate([a, b], axis=1), "q8_0"))


@pytest.mark.parametrize("t", ALL)
def test_dequantize_round_trip(t):
    rng = np.random.default_rng(5)
    rows = rng.standard_normal((4, 64)).astype(np.float32)
    back = dequantize(quantize(rows, t), t, 64)
    tol = {"f32": 0, "f16": 1e-3, "bf16": 1e-2, "q8_0": 0.02, "q4_0": 0.25}[t]
    assert np.abs(back - rows).max() <= tol * np.abs(rows).max()


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown tensor type 'q5_k'"):
        quantize(np.zeros((1, 32), np.float32), "q5_k")
    with pytest.raises(ValueError, match="row length 33 is not a multiple"):
        quantize(np.zeros((2, 33), np.float32), "q4_0")
    with pytest.raises(ValueError, match=r"rows of shape \[T, n\]"):
        quantize(np.zeros((2, 2, 32), np.float32), "f16")
    bad = np.ones((3, 64), np.float32)
    bad[2, 40] = np.nan
    with pytest.raises(ValueError, match="row 2 holds a non-finite value"):
        quantize(bad, "q8_0")
    bad[2, 40] = np.inf
    with pytest.raises(ValueError, match="row 2 .*q4_0"):
        quantize(bad, "q4_0")
    with pytest.raises(ValueError, match="out must be uint8"):
        quantize(np.ones((3, 64), np.float32), "q8_0", out=np.zeros((3, 10), np.uint8))
