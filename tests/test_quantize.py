"""mole_convert.quantize: the gguf types byte-identical to gguf.quants.quantize on hard rows (zeros, denormals,
huge values, exact rounding ties, sign ties); the LUT-only types (iq4_nl, q3_k) decoded alike by gguf and by a
loop written from ggml's block layout, within error bounds, and better than q4_0 / a plain rounding; row sizes,
in-place output, and clear errors."""
import numpy as np
import pytest
import gguf.quants

from mole_convert.quantize import TYPES, dequantize, ggml_type, quantize, row_bytes

ALL = list(TYPES)
GGUF_QUANTIZED = ["f32", "f16", "bf16", "q8_0", "q4_0"]   # the types gguf.quants can also quantize
LUT_ONLY = ["iq4_nl", "q3_k"]


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


@pytest.mark.parametrize("t", GGUF_QUANTIZED)
def test_byte_identical_to_gguf(t):
    rows = hard_rows()
    with np.errstate(all="ignore"):
        expect = reference(rows, t)
    got = quantize(rows, t)
    assert got.dtype == np.uint8 and got.shape == (rows.shape[0], row_bytes(t, rows.shape[1]))
    bad = np.nonzero((got != expect).any(axis=1))[0]
    assert bad.size == 0, f"{t}: rows {bad.tolist()} differ from gguf.quants"


@pytest.mark.parametrize("t", GGUF_QUANTIZED)
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
    assert row_bytes("iq4_nl", 64) == 36
    assert row_bytes("q3_k", 512) == 220
    with pytest.raises(ValueError, match="multiple of the q3_k block size 256"):
        row_bytes("q3_k", 384)
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
    rows = rng.standard_normal((4, 512)).astype(np.float32)
    back = dequantize(quantize(rows, t), t, 512)
    tol = {"f32": 0, "f16": 1e-3, "bf16": 1e-2, "q8_0": 0.02, "q4_0": 0.25, "iq4_nl": 0.25, "q3_k": 0.5}[t]
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


# ---- the LUT-only types -------------------------------------------------------------------------

IQ4NL = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113]


def f16(b: bytes) -> float:
    return float(np.frombuffer(b, dtype=np.float16)[0])


def decode_loop(data: np.ndarray, t: str, n: int) -> np.ndarray:
    """One row's bytes -> float64 [n], element by element from ggml's block_iq4_nl / block_q3_K layouts."""
    b = bytes(data)
    out = np.zeros(n)
    if t == "iq4_nl":
        for blk in range(n // 32):
            p = b[18 * blk:18 * blk + 18]
            for j in range(16):
                out[32 * blk + j] = f16(p[:2]) * IQ4NL[p[2 + j] & 15]
                out[32 * blk + 16 + j] = f16(p[:2]) * IQ4NL[p[2 + j] >> 4]
        return out
    for blk in range(n // 256):
        p = b[110 * blk:110 * blk + 110]
        hmask, qs, sc, d = p[:32], p[32:96], p[96:108], f16(p[108:110])
        for k in range(256):
            s, half, j, l = k // 16, k // 128, (k % 128) // 32, k % 32
            low4 = (sc[s] & 15) if s < 8 else (sc[s - 8] >> 4)
            high2 = (sc[8 + s % 4] >> (2 * (s // 4))) & 3
            q = ((qs[32 * half + l] >> (2 * j)) & 3) - (0 if (hmask[l] >> (4 * half + j)) & 1 else 4)
            out[256 * blk + k] = d * ((low4 | (high2 << 4)) - 32) * q
    return out


def lut_like_rows(seed: int, rows: int = 16, n: int = 1024) -> np.ndarray:
    """f32 [rows, n]: Gaussian rows with a few outliers and a row of mixed scales, as expert outputs look."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, n)).astype(np.float32)
    x[::3, ::37] *= np.float32(6)                                     # outliers
    x[1] *= np.repeat(rng.uniform(0.01, 3, n // 16), 16).astype(np.float32)   # scales change every 16
    return x


@pytest.mark.parametrize("t", LUT_ONLY)
def test_lut_types_decode_as_ggml_readers_do(t):
    """gguf's decoder (what other GGUF readers use) and a loop written from ggml's layout agree on our bytes."""
    x = lut_like_rows(11, rows=3, n=512)
    q = quantize(x, t)
    ours = dequantize(q, t, 512)
    theirs = gguf.quants.dequantize(q, ggml_type(t)).reshape(3, 512)
    assert np.array_equal(ours, theirs)
    for r in range(3):
        assert np.allclose(decode_loop(q[r], t, 512), theirs[r], rtol=0, atol=1e-6 * np.abs(theirs[r]).max())


# relative RMSE |x - x'| / |x| bounds on lut_like_rows (measured on seeds 0..3: q4_0 0.120..0.128,
# iq4_nl 0.094..0.098, q3_k 0.174..0.178)
RMSE_BOUND = {"q4_0": 0.13, "iq4_nl": 0.1, "q3_k": 0.18}


def rel_rmse(x: np.ndarray, t: str) -> float:
    back = dequantize(quantize(x, t), t, x.shape[1])
    return float(np.sqrt(((back - x) ** 2).mean() / (x ** 2).mean()))


@pytest.mark.parametrize("t", LUT_ONLY + ["q4_0"])
def test_lut_type_error_bounds(t):
    x = lut_like_rows(3)
    assert rel_rmse(x, t) <= RMSE_BOUND[t]
    # no element is off by more than a fraction of its block's largest value (q3_k: its super-block's; a
    # sub-block 64x smaller than the super-block's largest rounds to 0, as six-bit scales do in ggml)
    back = dequantize(quantize(x, t), t, x.shape[1])
    bs = 32 if t != "q3_k" else 256
    amax = np.repeat(np.abs(x).reshape(-1, bs).max(axis=1), bs).reshape(x.shape)
    assert (np.abs(back - x) <= {"q4_0": 0.13, "iq4_nl": 0.14, "q3_k": 0.25}[t] * amax + 1e-6).all()


def test_iq4_nl_beats_q4_0_at_the_same_bits():
    for seed in range(3):
        x = lut_like_rows(seed)
        assert rel_rmse(x, "iq4_nl") < 0.85 * rel_rmse(x, "q4_0")


def plain_rounding(x: np.ndarray, t: str) -> np.ndarray:
    """The scale a one-pass quantizer takes (largest |x| onto the end of the range), values rounded to it."""
    if t == "iq4_nl":
        b = x.reshape(-1, 32)
        vmax = np.take_along_axis(b, np.abs(b).argmax(axis=1)[:, None], axis=1)
        d = vmax / -127.0
        v = np.array(IQ4NL, np.float64)
        idx = np.abs(b[..., None] / d[..., None] - v).argmin(axis=-1)
        return (v[idx] * d).reshape(x.shape)
    b = x.reshape(-1, 16)
    vmax = np.take_along_axis(b, np.abs(b).argmax(axis=1)[:, None], axis=1)
    d = vmax / -4.0
    return (np.clip(np.rint(b / d), -4, 3) * d).reshape(x.shape)   # (even with unquantized sub-block scales)


@pytest.mark.parametrize("t", LUT_ONLY)
def test_scale_search_beats_plain_rounding(t):
    x = lut_like_rows(5)
    plain = float(np.sqrt(((plain_rounding(x, t) - x) ** 2).mean() / (x ** 2).mean()))
    assert rel_rmse(x, t) < {"iq4_nl": 0.98, "q3_k": 0.97}[t] * plain   # measured 0.96, 0.95


@pytest.mark.parametrize("t", LUT_ONLY)
def test_lut_types_zero_and_tiny_rows(t):
    x = np.zeros((3, 512), np.float32)
    x[1] = 1e-30
    x[2, 5] = 3.0
    back = dequantize(quantize(x, t), t, 512)
    assert np.array_equal(back[0], x[0]) and np.isfinite(back).all()
    assert abs(back[2, 5] - 3.0) < 0.05 * 3
    # IQ4_NL has no zero entry: a zero beside 3.0 decodes to d * 1, d ~ 3/127; Q3_K's zeros are exact
    assert np.abs(np.delete(back[2], 5)).max() <= (0.03 if t == "iq4_nl" else 0)


@pytest.mark.parametrize("t", LUT_ONLY)
def test_lut_types_reject_non_finite_rows(t):
    bad = np.ones((3, 512), np.float32)
    bad[2, 300] = np.nan
    with pytest.raises(ValueError, match=f"row 2 holds a non-finite value.*{t}"):
        quantize(bad, t)


@pytest.mark.parametrize("t", LUT_ONLY)
def test_lut_types_in_groups_and_strided_out(t):
    rng = np.random.default_rng(9)
    rows = rng.standard_normal((300, 1024)).astype(np.float32)   # more than one inner group
    whole = quantize(rows, t)
    parts = np.concatenate([quantize(rows[i:i + 7], t) for i in range(0, 300, 7)])
    assert np.array_equal(whole, parts)
    out = np.zeros((300, 2 * whole.shape[1]), np.uint8)
    quantize(rows, t, out=out[:, :whole.shape[1]])
    assert np.array_equal(out[:, :whole.shape[1]], whole)
