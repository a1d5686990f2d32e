"""Runtime vs PyTorch: logits of random converted models (GQA, rope base/scaling, eps, dense,
reparam form, quantized types) against mole_convert.model.MoleForCausalLM in float64, greedy
decoding through the KV cache, batched multi-sequence decoding, and the LUT counters."""
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
mole = pytest.importorskip("mole")
from mole import _ffi  # noqa: E402


def rel_err(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


def reference(cfg, form, ids, seed=0):
    """float64 logits [S, V] of the PyTorch model the checkpoint was written from."""
    from mole_convert.testing import random_model
    model = random_model(cfg, seed, "reparam" if form == "reparam" else "training").double().eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).numpy()[0]


class Ctx:
    """A raw mole_context over the C API: decode entries for several sequences in one step."""

    def __init__(self, path, n_ctx=256, n_seq=1, n_batch=512, lut_cache_mb=0, n_threads=1, type_kv=None):
        L = _ffi.get()
        self.ffi, self.lib = L.ffi, L.lib
        out = self.ffi.new("struct mole_model **")
        _ffi.check(self.lib.mole_model_load(str(path).encode(), self.ffi.NULL, out))
        self.model = self.ffi.gc(out[0], self.lib.mole_model_free)
        info = self.ffi.new("struct mole_model_info *")
        _ffi.check(self.lib.mole_model_get_info(self.model, info))
        self.n_vocab, self.row_bytes = info.n_vocab, info.lut_row_bytes
        p = self.ffi.new("struct mole_context_params *")
        self.lib.mole_context_default_params(p)
        p.n_ctx, p.n_seq_max, p.n_batch, p.lut_cache_mb, p.n_threads = n_ctx, n_seq, n_batch, lut_cache_mb, n_threads
        if type_kv is not None:
            p.type_kv = getattr(self.lib, type_kv)
        cout = self.ffi.new("struct mole_context **")
        _ffi.check(self.lib.mole_context_new(self.model, p, cout))
        self.ctx = self.ffi.gc(cout[0], self.lib.mole_context_free)

    def decode(self, tokens, seqs=None):
        """Logits [n, V] of every entry."""
        tokens = np.asarray(tokens, np.int32)
        out = np.empty((len(tokens), self.n_vocab), np.float32)
        seq_ptr = self.ffi.NULL if seqs is None else self.ffi.from_buffer("int32_t[]", np.asarray(seqs, np.int32))
        _ffi.check(self.lib.mole_decode(self.ctx, len(tokens), self.ffi.from_buffer("int32_t[]", tokens), seq_ptr,
                                        self.ffi.NULL, self.ffi.from_buffer("float[]", out), out.size))
        return out

    def stats(self):
        s = self.ffi.new("struct mole_stats *")
        _ffi.check(self.lib.mole_context_get_stats(self.ctx, s))
        return {k: getattr(s, k) for k in dir(s)}

    def seq_len(self, seq):
        n = self.ffi.new("int32_t *")
        _ffi.check(self.lib.mole_seq_length(self.ctx, seq, n))
        return n[0]


IDS = [1, 17, 200, 3, 17, 17, 45, 511, 0, 99, 3, 250, 128, 64, 7, 300, 17, 42, 42, 1]

F32_CASES = {
    "gqa": dict(),
    "mha-theta-eps": dict(num_key_value_heads=4, rope_theta=500000.0, rms_norm_eps=1e-6),
    "mqa-linear-rope": dict(num_key_value_heads=1, rope_scaling={"type": "linear", "factor": 2.0}),
    "3-layers-8-experts": dict(num_hidden_layers=3, num_experts=8, hidden_size=96, num_attention_heads=3,
                               num_key_value_heads=1),
    "dense": dict(num_experts=0),
}


@pytest.mark.parametrize("case", list(F32_CASES))
def test_f32_logits_match_pytorch(model_factory, case):
    overrides = F32_CASES[case]
    form = "dense" if overrides.get("num_experts", 4) == 0 else "training"
    path, _, cfg = model_factory("f32", "f32", form=form, **overrides)
    ref = reference(cfg, form, IDS)
    with mole.Model(str(path), n_ctx=64, n_threads=2, kv_type="f32") as m:   # the unrounded KV cache
        got = m.logits(IDS)
    assert got.shape == (len(IDS), cfg.vocab_size)
    assert rel_err(got, ref) <= 1e-5


# The CPU's default f16 KV cache rounds K and V to 11 significant bits: measured 2.1e-4 on "gqa",
# 3x headroom. An f32 cache read as if it were f16 (or the reverse) is off by orders of magnitude.
@pytest.mark.parametrize("case", ["gqa", "mqa-linear-rope", "dense"])
def test_f16_kv_cache_logits_match_pytorch(model_factory, case):
    overrides = F32_CASES[case]
    form = "dense" if overrides.get("num_experts", 4) == 0 else "training"
    path, _, cfg = model_factory("f32", "f32", form=form, **overrides)
    ref = reference(cfg, form, IDS)
    with mole.Model(str(path), n_ctx=64, n_threads=2) as m:
        assert m.kv_type == "f16"   # the CPU's default
        got = m.logits(IDS)
    assert rel_err(got, ref) <= 6e-4


def test_reparam_form_matches_training_form(model_factory):
    path, _, cfg = model_factory("f32", "f32", form="reparam")
    ref = reference(cfg, "training", IDS)
    with mole.Model(str(path), n_ctx=64, n_threads=1, kv_type="f32") as m:
        assert rel_err(m.logits(IDS), ref) <= 1e-5


def test_greedy_64_tokens_identical(model_factory):
    """64 greedy tokens decoded one per step through the KV cache equal PyTorch's greedy tokens."""
    path, _, cfg = model_factory("f32", "f32", num_key_value_heads=1, rope_theta=50000.0)
    from mole_convert.testing import random_model
    model = random_model(cfg, 0).double().eval()
    prompt = [5, 77, 300, 12]
    ref_ids = list(prompt)
    with torch.no_grad():
        for _ in range(64):
            ref_ids.append(int(model(torch.tensor([ref_ids]))[0, -1].argmax()))
    c = Ctx(path, n_ctx=128, type_kv="MOLE_TYPE_F32")
    logits = c.decode(prompt)[-1]
    ids = list(prompt)
    for _ in range(64):
        ids.append(int(np.argmax(logits)))
        logits = c.decode([ids[-1]])[0]
    assert ids == ref_ids
    assert c.seq_len(0) == len(ids)


# Stated tolerances (relative max error of logits vs float64 PyTorch with the unquantized weights;
# an f32 KV cache, so that the error is the types'). Measured on tiny_config seed 0 (f16 1.5e-4,
# bf16 8.7e-4, q8_0 2.6e-3, q4_0 4.4e-2, f16 weights 4.6e-4, q8_0+q8_0 1.9e-2, q4_0+f16 4.3e-2);
# the bounds leave ~3x headroom.
QUANT_CASES = [("f16", "f32", 5e-4), ("bf16", "f32", 3e-3), ("q8_0", "f32", 1e-2), ("q4_0", "f32", 1e-1),
               ("f32", "f16", 1.5e-3), ("q8_0", "q8_0", 5e-2), ("q4_0", "f16", 1e-1),
               ("iq4_nl", "f32", 1e-1), ("q3_k", "f32", 2e-1), ("iq4_nl", "q8_0", 1e-1)]


@pytest.mark.parametrize("lut_type,weight_type,tol", QUANT_CASES)
def test_quantized_logits_within_tolerance(model_factory, lut_type, weight_type, tol):
    path, _, cfg = model_factory(lut_type, weight_type)
    ref = reference(cfg, "training", IDS)
    with mole.Model(str(path), n_ctx=64, n_threads=2, kv_type="f32") as m:
        err = rel_err(m.logits(IDS), ref)
    assert err <= tol, f"{lut_type}/{weight_type}: relative error {err:.3g} > {tol}"


def test_batched_sequences_match_separate_runs(model_factory):
    """Two sequences interleaved in one step give the logits each gets alone; positions advance per sequence."""
    path, _, cfg = model_factory("f32", "f32")
    a, b = [3, 9, 27, 81, 243], [100, 9, 44]
    solo_a = Ctx(path).decode(a)
    solo_b = Ctx(path).decode(b)
    c = Ctx(path, n_seq=3)
    # entries: a0 b0 a1 b1 a2 b2 a3 a4 ; sequence 2 stays empty
    order = [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2), ("a", 3), ("a", 4)]
    toks = [a[i] if s == "a" else b[i] for s, i in order]
    seqs = [0 if s == "a" else 1 for s, _ in order]
    out = c.decode(toks, seqs)
    for row, (s, i) in enumerate(order):
        want = solo_a[i] if s == "a" else solo_b[i]
        assert rel_err(out[row], want.astype(np.float64)) <= 1e-5
    assert (c.seq_len(0), c.seq_len(1), c.seq_len(2)) == (5, 3, 0)
    # One more token on each sequence in one step continues both correctly.
    nxt = c.decode([11, 12], [1, 0])
    assert rel_err(nxt[0], Ctx(path).decode(b + [11])[-1].astype(np.float64)) <= 1e-5
    assert rel_err(nxt[1], Ctx(path).decode(a + [12])[-1].astype(np.float64)) <= 1e-5
    # 9 appears in both sequences of the first step: 7 distinct ids, each fetched once.
    assert c.stats()["lut_rows_fetched"] == len(set(toks)) + 2


@pytest.mark.parametrize("lut_type", ["f32", "q8_0", "q4_0", "iq4_nl", "q3_k"])
def test_counters_fetch_each_distinct_row_once(model_factory, lut_type):
    path, _, cfg = model_factory(lut_type, "f32")
    c = Ctx(path, lut_cache_mb=0)
    per_value = {"f32": 4, "q8_0": 34 / 32, "q4_0": 18 / 32, "iq4_nl": 18 / 32, "q3_k": 110 / 256}[lut_type]
    assert c.row_bytes == per_value * cfg.num_hidden_layers * cfg.num_experts * cfg.hidden_size
    c.decode(IDS)
    k = len(set(IDS))
    s = c.stats()
    assert (s["lut_rows_fetched"], s["lut_bytes_fetched"], s["lut_cache_hits"]) == (k, k * c.row_bytes, 0)
    assert s["tokens_evaluated"] == len(IDS) and s["lut_cache_bytes"] == 0
    # Without a cache a second evaluation fetches again.
    c.lib.mole_seq_truncate(c.ctx, 0, 0)
    c.decode(IDS)
    assert c.stats()["lut_rows_fetched"] == 2 * k


def test_cache_serves_second_evaluation(model_factory):
    path, _, _ = model_factory("q8_0", "f32")
    c = Ctx(path, lut_cache_mb=1)
    first = c.decode(IDS)
    k = len(set(IDS))
    s = c.stats()
    assert (s["lut_rows_fetched"], s["lut_cache_hits"], s["lut_cache_bytes"]) == (k, 0, k * c.row_bytes)
    c.lib.mole_seq_truncate(c.ctx, 0, 0)
    second = c.decode(IDS)
    s = c.stats()
    assert (s["lut_rows_fetched"], s["lut_cache_hits"]) == (k, k)
    np.testing.assert_array_equal(first, second)


def test_tiny_cache_evicts_lru(model_factory):
    """A cache of a few rows still gives identical logits (rows evicted and refetched)."""
    path, _, cfg = model_factory("f32", "f32", vocab_size=512, hidden_size=256, num_attention_heads=4,
                                 num_key_value_heads=2, num_experts=8, num_hidden_layers=16)
    c0 = Ctx(path, lut_cache_mb=0)
    c1 = Ctx(path, lut_cache_mb=1)   # row = 16*8*256*4 B = 128 KiB: 8 rows fit
    assert c1.row_bytes == 131072
    ids = list(range(20)) + list(range(20))
    np.testing.assert_array_equal(c0.decode(ids), c1.decode(ids))
    s = c1.stats()
    assert s["lut_rows_fetched"] == 20 and s["lut_cache_bytes"] == 8 * c1.row_bytes


def _has_avx2():
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), [])
    except OSError:
        return False
    return all(x in flags for x in ("avx2", "fma", "f16c"))


def test_repacked_weights_match_row_layout(model_factory, monkeypatch):
    """Q8_0 weights repacked at load (every x86 SIMD level: AVX2, AVX-VNNI, AVX-512) give the row layout's logits
    (MOLE_CPU_REPACK=0) to float rounding, and one token per step gives the batched logits (the prompt's
    attention runs queries in SIMD lanes, decode one at a time: equal to float rounding)."""
    path, _, _ = model_factory("q8_0", "q8_0")
    monkeypatch.setenv("MOLE_CPU_REPACK", "0")
    rows = Ctx(path).decode(IDS)
    monkeypatch.delenv("MOLE_CPU_REPACK")
    packed = Ctx(path).decode(IDS)
    assert rel_err(packed, rows.astype(np.float64)) <= 1e-5
    if _has_avx2() and os.environ.get("MOLE_CPU_ISA") != "portable":
        # the repacked kernels ran (their sums are ordered differently), not the row layout twice
        assert not np.array_equal(packed, rows)
    c = Ctx(path)
    stepwise = np.stack([c.decode([t])[0] for t in IDS])
    assert rel_err(stepwise, packed.astype(np.float64)) <= 1e-5
