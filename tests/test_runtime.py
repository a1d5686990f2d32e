"""Runtime behaviour over the C API: model validation errors on GGUF files written here with
gguf.GGUFWriter, metadata/info, argument checks, n_batch splitting, CONTEXT_FULL, truncation,
cancel, check_tensors, and LUT page residency (only the requested rows are read off the disk)."""
import ctypes
import ctypes.util
import json
import mmap
import os

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
mole = pytest.importorskip("mole")
from mole import _ffi  # noqa: E402
from mole.gguf_names import layer_name  # noqa: E402
import mole.gguf_names as N  # noqa: E402

V, D_MODEL, L, N_EXP, D_FF, HEADS, KV_HEADS = 64, 32, 2, 2, 48, 4, 2


def tensors(n_expert=N_EXP, seed=0):
    """name -> f32 array in numpy order (reversed ggml order) of a small valid model."""
    rng = np.random.default_rng(seed)
    hd = D_MODEL // HEADS
    t = {N.TENSOR_TOKEN_EMBD: rng.standard_normal((V, D_MODEL))}
    for i in range(L):
        t[layer_name(N.TENSOR_ATTN_NORM, i)] = 1 + 0.1 * rng.standard_normal(D_MODEL)
        t[layer_name(N.TENSOR_ATTN_Q, i)] = rng.standard_normal((HEADS * hd, D_MODEL)) / D_MODEL ** 0.5
        t[layer_name(N.TENSOR_ATTN_K, i)] = rng.standard_normal((KV_HEADS * hd, D_MODEL)) / D_MODEL ** 0.5
        t[layer_name(N.TENSOR_ATTN_V, i)] = rng.standard_normal((KV_HEADS * hd, D_MODEL)) / D_MODEL ** 0.5
        t[layer_name(N.TENSOR_ATTN_OUT, i)] = rng.standard_normal((D_MODEL, HEADS * hd)) / D_MODEL ** 0.5
        t[layer_name(N.TENSOR_FFN_NORM, i)] = 1 + 0.1 * rng.standard_normal(D_MODEL)
        t[layer_name(N.TENSOR_FFN_UP, i)] = rng.standard_normal((D_FF, D_MODEL)) / D_MODEL ** 0.5
        t[layer_name(N.TENSOR_FFN_DOWN, i)] = rng.standard_normal((D_MODEL, D_FF)) / D_FF ** 0.5
        if n_expert:
            t[layer_name(N.TENSOR_ROUTER, i)] = rng.standard_normal((n_expert, D_MODEL))
    t[N.TENSOR_OUTPUT_NORM] = 1 + 0.1 * rng.standard_normal(D_MODEL)
    t[N.TENSOR_OUTPUT] = rng.standard_normal((V, D_MODEL)) / D_MODEL ** 0.5
    if n_expert:
        t[N.TENSOR_LUT] = 0.1 * rng.standard_normal((V, L * n_expert * D_MODEL))
    return {k: np.asarray(v, np.float32) for k, v in t.items()}


def write_model(path, keys=None, drop_keys=(), tens=None, n_expert=N_EXP, alignment=None, order=None,
                raw_types=None):
    """Writes a mole GGUF; keys override/add metadata, drop_keys removes some, tens overrides tensors."""
    kv = {N.KEY_VOCAB_SIZE: V, N.KEY_CONTEXT_LENGTH: 128, N.KEY_EMBEDDING_LENGTH: D_MODEL, N.KEY_BLOCK_COUNT: L,
          N.KEY_FEED_FORWARD_LENGTH: D_FF, N.KEY_EXPERT_COUNT: n_expert, N.KEY_HEAD_COUNT: HEADS,
          N.KEY_HEAD_COUNT_KV: KV_HEADS, N.KEY_RMS_EPS: np.float32(1e-5), N.KEY_ROPE_FREQ_BASE: np.float32(10000.0),
          N.KEY_NAME: "handmade"}
    kv.update(keys or {})
    w = gguf.GGUFWriter(str(path), N.ARCH)
    if alignment:
        w.add_custom_alignment(alignment)
    for k, v in kv.items():
        if k in drop_keys:
            continue
        if isinstance(v, str):
            w.add_string(k, v)
        elif isinstance(v, (float, np.floating)):
            w.add_float32(k, float(v))
        elif isinstance(v, list):
            w.add_array(k, v)
        else:
            w.add_uint32(k, int(v))
    t = tensors(n_expert) if tens is None else tens
    for name in (order or list(t)):
        arr = t[name]
        if raw_types and name in raw_types:
            w.add_tensor(name, arr, raw_dtype=raw_types[name])
        else:
            w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def good(tmp_path):
    return write_model(tmp_path / "good.gguf")


def load_raw(path, device=0, check_tensors=0):
    L_ = _ffi.get()
    p = L_.ffi.new("struct mole_model_params *")
    L_.lib.mole_model_default_params(p)
    p.device, p.check_tensors = device, check_tensors
    out = L_.ffi.new("struct mole_model **")
    _ffi.check(L_.lib.mole_model_load(str(path).encode(), p, out))
    return L_.ffi.gc(out[0], L_.lib.mole_model_free)


def test_handmade_model_loads_and_reports(good):
    with mole.Model(str(good), n_ctx=32, n_threads=1) as m:
        assert (m.n_vocab, m.n_layer, m.n_expert) == (V, L, N_EXP)
        md = m.metadata
        assert md[N.KEY_NAME] == "handmade" and md[N.KEY_BLOCK_COUNT] == L
        assert abs(md[N.KEY_RMS_EPS] - 1e-5) < 1e-12
        out = m.logits([1, 2, 3])
        assert out.shape == (3, V) and np.isfinite(out).all()
    L_ = _ffi.get()
    model = load_raw(good)
    info = L_.ffi.new("struct mole_model_info *")
    _ffi.check(L_.lib.mole_model_get_info(model, info))
    assert info.lut_type == 0 and info.lut_row_bytes == L * N_EXP * D_MODEL * 4
    assert info.lut_bytes == V * info.lut_row_bytes
    assert info.n_params_dense == sum(a.size for k, a in tensors().items() if k != N.TENSOR_LUT)
    assert info.bos_token_id == -1 and info.n_ff_expert == D_FF
    buf, n = _ffi.call_sized(L_.lib.mole_model_metadata_string, model, b"general.name")
    assert L_.ffi.unpack(buf, n) == b"handmade"
    with pytest.raises(ValueError, match="mole.block_count"):
        _ffi.call_sized(L_.lib.mole_model_metadata_string, model, b"mole.block_count")
    with pytest.raises(ValueError, match="no.such.key"):
        _ffi.call_sized(L_.lib.mole_model_metadata_string, model, b"no.such.key")
    # Short buffer: BUFFER_TOO_SMALL with the size needed.
    small = L_.ffi.new("char[]", 4)
    n_out = L_.ffi.new("size_t *")
    assert L_.lib.mole_model_metadata_json(model, small, 4, n_out) == 7
    full, n = _ffi.call_sized(L_.lib.mole_model_metadata_json, model)
    assert n_out[0] == n and json.loads(L_.ffi.unpack(full, n))[N.KEY_EXPERT_COUNT] == N_EXP


def bad_shape():
    t = tensors()
    t[layer_name(N.TENSOR_ATTN_Q, 1)] = t[layer_name(N.TENSOR_ATTN_Q, 1)][:, :16]
    return t


def drop(name):
    t = tensors()
    del t[name]
    return t


def extra():
    t = tensors()
    lut = t.pop(N.TENSOR_LUT)
    t["blk.0.ffn_gate.weight"] = np.zeros((D_FF, D_MODEL), np.float32)
    t[N.TENSOR_LUT] = lut
    return t


BAD_MODELS = {
    "missing tensor": (dict(tens=drop(layer_name(N.TENSOR_FFN_DOWN, 1))), "missing tensor 'blk.1.ffn_down.weight'"),
    "wrong shape": (dict(tens=bad_shape()), r"'blk.1.attn_q.weight': expected shape \[32, 32\], got \[16, 32\]"),
    "unexpected tensor": (dict(tens=extra()), "unexpected tensor 'blk.0.ffn_gate.weight'"),
    "f16 norm": (dict(raw_types={layer_name(N.TENSOR_ATTN_NORM, 0): gguf.GGMLQuantizationType.F16},
                      tens={k: (v.astype(np.float16) if k == layer_name(N.TENSOR_ATTN_NORM, 0) else v)
                            for k, v in tensors().items()}),
                 "'blk.0.attn_norm.weight': type f16 is not allowed"),
    "missing key": (dict(drop_keys=(N.KEY_FEED_FORWARD_LENGTH,)), "missing required key 'mole.feed_forward_length'"),
    "wrong key type": (dict(keys={N.KEY_BLOCK_COUNT: "two"}), "'mole.block_count' must be an integer"),
    "float key as int": (dict(keys={N.KEY_RMS_EPS: 5}), "layer_norm_rms_epsilon' must be a float"),
    "wrong arch": (dict(keys={"general.architecture": "llama"}), "general.architecture is 'llama'"),
    "heads": (dict(keys={N.KEY_HEAD_COUNT_KV: 3}), "not a multiple of head_count_kv 3"),
    "vocab mismatch": (dict(keys={N.KEY_VOCAB_SIZE: 65}), r"'token_embd.weight': expected shape \[32, 65\]"),
    "lut not last": (dict(order=[N.TENSOR_LUT] + [k for k in tensors() if k != N.TENSOR_LUT]),
                     "lies after 'lut.weight'"),
    "dense with lut": (dict(keys={N.KEY_EXPERT_COUNT: 0}), "unexpected tensor 'blk.0.ffn_gate_inp.weight'"),
    "rope scaling": (dict(keys={N.KEY_ROPE_SCALING_TYPE: "yarn"}), "RoPE scaling type 'yarn' is not supported"),
    "rope factor": (dict(keys={N.KEY_ROPE_SCALING_TYPE: "linear"}), "linear RoPE scaling needs a positive"),
    "bos out of range": (dict(keys={N.KEY_BOS_ID: 64}), "bos_token_id' = 64 is outside the vocabulary"),
    "zero layers": (dict(keys={N.KEY_BLOCK_COUNT: 0}), "'mole.block_count' must be at least 1"),
}


@pytest.mark.parametrize("case", list(BAD_MODELS))
def test_bad_models_name_the_problem(tmp_path, case):
    kwargs, pattern = BAD_MODELS[case]
    path = write_model(tmp_path / "bad.gguf", **kwargs)
    with pytest.raises(mole.FormatError, match=pattern):
        mole.Model(str(path), n_ctx=16)


def test_dense_handmade_model(tmp_path):
    path = write_model(tmp_path / "dense.gguf", n_expert=0)
    with mole.Model(str(path), n_ctx=16, n_threads=1) as m:
        assert m.n_expert == 0
        assert np.isfinite(m.logits([4, 5])).all()
        assert m.stats()["lut_rows_fetched"] == 0


def test_file_errors(tmp_path, good):
    with pytest.raises(FileNotFoundError):
        mole.Model(str(tmp_path / "nope.gguf"))
    data = good.read_bytes()
    for cut in (len(data) - 1, len(data) // 2, 100, 3):
        p = tmp_path / f"cut{cut}.gguf"
        p.write_bytes(data[:cut])
        with pytest.raises(mole.FormatError, match="truncated|past end of file|bad magic|more than the"):
            mole.Model(str(p), n_ctx=16)
    p = tmp_path / "cut.gguf"
    p.write_bytes(data[:len(data) - 100])
    with pytest.raises(mole.FormatError, match="tensor 'lut.weight': 100 B of data past end of file"):
        mole.Model(str(p), n_ctx=16)
    with pytest.raises(mole.UnsupportedError, match="CUDA"):
        load_raw(good, device=1)


def test_check_tensors_finds_nan(tmp_path):
    t = tensors()
    t[layer_name(N.TENSOR_FFN_UP, 1)][3, 5] = np.nan
    path = write_model(tmp_path / "nan.gguf", tens=t)
    load_raw(path)   # not scanned by default
    with pytest.raises(mole.FormatError, match=r"'blk.1.ffn_up.weight': non-finite value nan at row 3, column 5"):
        load_raw(path, check_tensors=1)


def test_n_batch_split_and_truncate(good):
    ids = [5, 9, 13, 9, 60, 2, 2, 33, 7, 1, 0, 63]
    with mole.Model(str(good), n_ctx=32, n_threads=1) as m:
        ref = m.logits(ids)
    with mole.Model(str(good), n_ctx=32, n_threads=2, n_batch=5) as m:
        np.testing.assert_allclose(m.logits(ids), ref, rtol=0, atol=1e-5)
        # Fresh evaluation after truncation (Model.logits truncates to 0) gives the same again.
        np.testing.assert_allclose(m.logits(ids), ref, rtol=0, atol=1e-5)


class Raw:
    def __init__(self, path, **params):
        L_ = _ffi.get()
        self.ffi, self.lib = L_.ffi, L_.lib
        self.model = load_raw(path)
        p = self.ffi.new("struct mole_context_params *")
        self.lib.mole_context_default_params(p)
        p.n_threads = 1
        for k, v in params.items():
            setattr(p, k, v)
        out = self.ffi.new("struct mole_context **")
        _ffi.check(self.lib.mole_context_new(self.model, p, out))
        self.ctx = self.ffi.gc(out[0], self.lib.mole_context_free)

    def decode(self, toks, seqs=None, want=None, cap=None):
        toks = np.asarray(toks, np.int32)
        n_want = len(toks) if want is None else int(np.count_nonzero(want))
        out = np.zeros((max(n_want, 1), V), np.float32)
        seq_p = self.ffi.NULL if seqs is None else self.ffi.from_buffer("int32_t[]", np.asarray(seqs, np.int32))
        want_p = self.ffi.NULL if want is None else self.ffi.from_buffer("int8_t[]", np.asarray(want, np.int8))
        st = self.lib.mole_decode(self.ctx, len(toks), self.ffi.from_buffer("int32_t[]", toks), seq_p, want_p,
                                  self.ffi.from_buffer("float[]", out), out.size if cap is None else cap)
        return st, out[:n_want]

    def seq_len(self, s=0):
        n = self.ffi.new("int32_t *")
        _ffi.check(self.lib.mole_seq_length(self.ctx, s, n))
        return n[0]

    def error(self):
        return self.ffi.string(self.lib.mole_last_error()).decode()


def test_context_full_changes_nothing(good):
    r = Raw(good, n_ctx=8, n_seq_max=2)
    st, first = r.decode([1, 2, 3, 4, 5])
    assert st == 0 and r.seq_len() == 5
    st, _ = r.decode([6, 7, 8, 9])
    assert st == 6 and "sequence 0 holds 5 tokens; 4 more do not fit in n_ctx = 8" in r.error()
    # A full sequence 0 blocks the whole step, sequence 1 included.
    st, _ = r.decode([6, 7, 8, 9, 10], seqs=[0, 0, 0, 0, 1])
    assert st == 6 and (r.seq_len(0), r.seq_len(1)) == (5, 0)
    st, last = r.decode([6, 7, 8])
    assert st == 0 and r.seq_len() == 8
    fresh = Raw(good, n_ctx=8)
    st, ref = fresh.decode([1, 2, 3, 4, 5, 6, 7, 8])
    np.testing.assert_allclose(last, ref[5:], atol=1e-5)


def test_invalid_arguments(good):
    r = Raw(good, n_ctx=8, n_seq_max=2)
    st, _ = r.decode([1, 64])
    assert st == 1 and "token id 64 at entry 1 is out of range [0, 64)" in r.error()
    st, _ = r.decode([1, -3])
    assert st == 1 and "token id -3" in r.error()
    st, _ = r.decode([1, 2], seqs=[0, 2])
    assert st == 1 and "seq id 2 at entry 1 is out of range [0, 2)" in r.error()
    st, _ = r.decode([1, 2], cap=V)
    assert st == 7 and "2 entries x 64 vocab need 128" in r.error()
    assert r.seq_len() == 0   # failed calls change nothing
    assert r.lib.mole_decode(r.ctx, -1, r.ffi.NULL, r.ffi.NULL, r.ffi.NULL, r.ffi.NULL, 0) == 1
    assert r.lib.mole_decode(r.ffi.NULL, 1, r.ffi.NULL, r.ffi.NULL, r.ffi.NULL, r.ffi.NULL, 0) == 1
    assert "NULL" in r.error()
    assert r.lib.mole_seq_truncate(r.ctx, 5, 0) == 1
    n = r.ffi.new("int32_t *")
    assert r.lib.mole_seq_length(r.ctx, -1, n) == 1
    for field, value, msg in [("n_ctx", -1, "n_ctx"), ("n_seq_max", 0, "n_seq_max"), ("n_batch", 0, "n_batch"),
                              ("lut_cache_mb", -2, "lut_cache_mb"), ("n_threads", -1, "n_threads"),
                              ("type_kv", 8, "type_kv must be MOLE_TYPE_F32 .0. or MOLE_TYPE_F16 .1.*got 8"),
                              ("type_kv", -2, "type_kv")]:
        with pytest.raises(ValueError, match=msg):
            Raw(good, **{field: value})
    with pytest.raises(ValueError, match="n_ctx"):
        mole.Model(str(good), n_ctx=-5)
    with pytest.raises(ValueError, match="kv_type must be one of"):
        mole.Model(str(good), kv_type="q8_0")


def test_kv_cache_type_is_chosen_reported_and_halves_the_memory(good):
    """The CPU's default KV cache is f16; f32 on request; mole_context_get_params reports the one made, and the
    error for a cache too large for the machine counts its bytes at the chosen size."""
    for asked, got in [(None, "f16"), ("f16", "f16"), ("f32", "f32")]:
        with mole.Model(str(good), n_ctx=16, n_threads=1, kv_type=asked) as m:
            assert m.kv_type == got and m.stats()["kv_type"] == got
    r = Raw(good, n_ctx=16)
    got = r.ffi.new("struct mole_context_params *")
    assert r.lib.mole_context_get_params(r.ctx, got) == 0 and got.type_kv == r.lib.MOLE_TYPE_F16
    sizes = {}
    for t in ("f16", "f32"):   # past any machine's memory: the message gives the cache's size
        with pytest.raises(mole.MoleError, match="KV cache would take") as e:
            mole.Model(str(good), n_ctx=2**31 - 1, n_seq_max=2**20, kv_type=t)
        assert ("halves" if t == "f16" else "floats") in str(e.value)
        sizes[t] = str(e.value)
    assert sizes["f16"] != sizes["f32"]


def test_want_logits_subset_and_cancel(good):
    r = Raw(good, n_ctx=16)
    st, full = r.decode([3, 4, 5, 6])
    r.lib.mole_seq_truncate(r.ctx, 0, 0)
    st, part = r.decode([3, 4, 5, 6], want=[0, 1, 0, 1])
    assert st == 0 and part.shape == (2, V)
    np.testing.assert_allclose(part, full[[1, 3]], atol=1e-6)
    # Cancel requested before the call: the step stops, the sequence keeps its tokens, the flag clears.
    r.lib.mole_context_cancel(r.ctx)
    st, _ = r.decode([7, 8])
    assert st == 9 and r.seq_len() == 4
    st, _ = r.decode([7, 8])
    assert st == 0 and r.seq_len() == 6


def _resident_pages(path, offset, length):
    """Pages of the file range resident in the page cache (mincore over a fresh mapping), or None."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    page = mmap.PAGESIZE
    start = offset // page * page
    n = (offset + length - start + page - 1) // page
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    arr = np.frombuffer(mm, dtype=np.uint8)   # only to learn the mapping's address; never read
    vec = (ctypes.c_ubyte * n)()
    rc = libc.mincore(ctypes.c_void_p(arr.ctypes.data + start), ctypes.c_size_t(n * page), vec)
    del arr
    mm.close()
    return None if rc != 0 else sum(v & 1 for v in vec)


def test_lut_rows_read_without_readahead(tmp_path, model_factory):
    """After evicting the file, evaluating k tokens makes only ~k LUT rows' pages resident, not the
    MBs a default mapping's readahead would pull in."""
    path, _, cfg = model_factory("f32", "f32", vocab_size=4096, hidden_size=128, num_attention_heads=4,
                                 num_key_value_heads=2, num_experts=4, num_hidden_layers=2)
    L_ = _ffi.get()
    model = load_raw(path)
    info = L_.ffi.new("struct mole_model_info *")
    _ffi.check(L_.lib.mole_model_get_info(model, info))
    row, lut_bytes = info.lut_row_bytes, info.lut_bytes   # 4 KiB rows, 16 MiB LUT
    lut_off = os.path.getsize(path) - lut_bytes            # the LUT is the last tensor
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)   # dirty pages cannot be dropped
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    before = _resident_pages(path, lut_off, lut_bytes)
    if before is None or before > 8:
        pytest.skip(f"cannot evict the file from the page cache here ({before} LUT pages stay resident)")
    p = L_.ffi.new("struct mole_context_params *")
    L_.lib.mole_context_default_params(p)
    p.n_ctx, p.n_threads, p.lut_cache_mb = 64, 1, 0
    out = L_.ffi.new("struct mole_context **")
    _ffi.check(L_.lib.mole_context_new(model, p, out))
    ctx = L_.ffi.gc(out[0], L_.lib.mole_context_free)
    ids = np.array([7, 1000, 2047, 3000, 4095, 12, 512, 2500, 3999, 100], np.int32)
    logits = np.empty((len(ids), info.n_vocab), np.float32)
    _ffi.check(L_.lib.mole_decode(ctx, len(ids), L_.ffi.from_buffer("int32_t[]", ids), L_.ffi.NULL, L_.ffi.NULL,
                                  L_.ffi.from_buffer("float[]", logits), logits.size))
    after = _resident_pages(path, lut_off, lut_bytes)
    pages_per_row = max(1, row // mmap.PAGESIZE)
    assert after <= len(ids) * (pages_per_row + 1) + 4, f"{after} LUT pages resident after reading {len(ids)} rows"


def test_context_and_decoder_keep_their_model_alive(model_factory):
    """mole_model_free before the context and decoder made from it: both keep working (they share the
    model, which goes with the last of them), so freeing in the wrong order is not a use after free."""
    import numpy as np
    from mole import _ffi
    path, _, _ = model_factory("q8_0", "f32")
    L = _ffi.get()
    ffi, lib = L.ffi, L.lib
    out = ffi.new("struct mole_model **")
    _ffi.check(lib.mole_model_load(str(path).encode(), ffi.NULL, out))
    model = out[0]
    info = ffi.new("struct mole_model_info *")
    _ffi.check(lib.mole_model_get_info(model, info))
    cout = ffi.new("struct mole_context **")
    _ffi.check(lib.mole_context_new(model, ffi.NULL, cout))
    dout = ffi.new("struct mole_decoder **")
    _ffi.check(lib.mole_decoder_new(model, dout))
    lib.mole_model_free(model)   # first: the context and the decoder still hold it
    tokens = np.array([1, 2, 3, 4], np.int32)
    logits = np.empty((4, info.n_vocab), np.float32)
    _ffi.check(lib.mole_decode(cout[0], 4, ffi.from_buffer("int32_t[]", tokens), ffi.NULL, ffi.NULL,
                               ffi.from_buffer("float[]", logits), logits.size))
    assert np.isfinite(logits).all()
    buf, n = ffi.new("char[]", 64), ffi.new("size_t *")
    _ffi.check(lib.mole_decoder_push(dout[0], 65, buf, 64, n))
    lib.mole_decoder_free(dout[0])
    lib.mole_context_free(cout[0])   # the model goes now
