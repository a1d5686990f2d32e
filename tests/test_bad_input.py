"""Bad input at run time (issue 12 section 4): each gives a clear exception (or status and message) and leaves
nothing half done: token ids out of range, empty prompts, n_ctx past the runtime's or the machine's limits, a full
context during generation, absurd max_tokens, sampling values out of range, byte tokens that split a UTF-8
character while streaming, and a model file cut short or rewritten while it is mapped. Models are written here
with tests/malformed.py's GGUF writer (no torch)."""
import os
import re
import resource
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import malformed as M
import mole
from mole import _ffi
from mole import gguf_names as G

INT32_MAX = 2**31 - 1


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    p = tmp_path_factory.mktemp("bad-input") / "base.gguf"
    p.write_bytes(M.base_model().build()[0])
    return p


@pytest.fixture
def m(model_path):
    with mole.Model(model_path, n_ctx=16, n_threads=1) as model:
        yield model


PROMPT = [5, 9, 13, 200, 7]


# ---- token ids and empty prompts ---------------------------------------------------------------------------

@pytest.mark.parametrize("ids, message", [
    ([1, M.V], rf"token id {M.V} out of range \[0, {M.V}\)"),
    ([-1], r"token id -1 out of range"),
    ([2**70], r"token id 1180591620717411303424 out of range"),          # past int64: no OverflowError
    ([1.5], r"token ids must be integers, got float64"),                  # not silently token 1
    (["3"], r"token ids must be integers"),
    ([True], r"token ids must be integers, got bool"),
    (np.array([3, 4], np.float32), r"token ids must be integers, got float32"),
])
def test_bad_token_ids_change_nothing(m, ids, message):
    ref = m.logits(PROMPT)
    m.reset()
    m.eval(PROMPT[:2])
    for call in (m.logits, m.eval, m.detokenize, lambda x: m.generate(x, max_tokens=1)):
        with pytest.raises(mole.InvalidArgumentError, match=message) as e:
            call(ids)
        assert isinstance(e.value, ValueError)
    assert m.stats()["tokens_in_context"] == 2                            # the failed calls changed nothing
    np.testing.assert_array_equal(m.logits(PROMPT), ref)


def test_bad_token_ids_in_the_c_api(model_path):
    L = _ffi.get()
    ffi, lib = L.ffi, L.lib
    out = ffi.new("struct mole_model **")
    _ffi.check(lib.mole_model_load(str(model_path).encode(), ffi.NULL, out))
    model = ffi.gc(out[0], lib.mole_model_free)
    buf, n = ffi.new("char[]", 64), ffi.new("size_t *")
    assert lib.mole_token_to_bytes(model, M.V, buf, 64, n) == lib.MOLE_STATUS_INVALID_ARGUMENT
    assert f"token id {M.V} is out of range" in ffi.string(lib.mole_last_error()).decode()
    ids = ffi.new("int32_t[]", [1, -7])
    assert lib.mole_detokenize(model, ids, 2, 0, buf, 64, n) == lib.MOLE_STATUS_INVALID_ARGUMENT
    assert "token id -7 (at index 1)" in ffi.string(lib.mole_last_error()).decode()
    dec = ffi.new("struct mole_decoder **")
    _ffi.check(lib.mole_decoder_new(model, dec))
    decoder = ffi.gc(dec[0], lib.mole_decoder_free)
    _ffi.check(lib.mole_decoder_push(decoder, 0xC3, buf, 64, n))        # a lead byte, held back
    assert lib.mole_decoder_push(decoder, 99999, buf, 64, n) == lib.MOLE_STATUS_INVALID_ARGUMENT
    _ffi.check(lib.mole_decoder_push(decoder, 0xA9, buf, 64, n))        # the held byte survived the bad call
    assert ffi.unpack(buf, n[0]).decode() == "é"


def test_empty_prompts(m):
    for empty in ("", []):
        with pytest.raises(mole.InvalidArgumentError, match="the prompt is empty"):
            m.generate(empty, max_tokens=3)
        with pytest.raises(mole.InvalidArgumentError, match="the prompt is empty"):
            m.generate(empty, max_tokens=3, stream=True)
    with pytest.raises(mole.InvalidArgumentError, match="needs at least one token"):
        m.logits([])
    with pytest.raises(mole.InvalidArgumentError, match="needs at least one token"):
        m.eval([])
    assert m.tokenize("") == [] and m.detokenize([]) == ""
    # With a BOS token the empty text is a prompt of one token; an empty chat message still has its template.
    assert isinstance(m.generate("", max_tokens=2, add_bos=True, temperature=0), str)


def test_an_empty_chat_message_still_has_its_template(model_path):
    with mole.Model(model_path, n_ctx=32, n_threads=1) as m:
        assert m.chat([{"role": "user", "content": ""}], max_tokens=2, temperature=0)["choices"]


# ---- n_ctx and the other context sizes ---------------------------------------------------------------------

def test_n_ctx_past_the_runtime_limit_is_a_clear_error(model_path):
    for name in ("n_ctx", "n_batch", "n_threads", "n_seq_max"):
        with pytest.raises(mole.InvalidArgumentError, match=f"{name} = 1000000000000 is more than libmole's limit "
                                                            f"of {INT32_MAX}"):
            mole.Model(model_path, **{name: 10**12})
    with pytest.raises(mole.InvalidArgumentError, match="lut_cache_mb"):
        mole.Model(model_path, lut_cache_mb=2**70)
    with pytest.raises(mole.InvalidArgumentError, match="n_ctx must be a positive integer"):
        mole.Model(model_path, n_ctx=True)


def test_n_ctx_past_the_machine_is_a_clear_error(model_path, tmp_path):
    with pytest.raises(mole.ModelMemoryError, match=r"n_ctx = 2147483647: the KV cache would take .* more than "
                                                    r"this machine's .* of memory; ask for a smaller n_ctx"):
        mole.Model(model_path, n_ctx=INT32_MAX)
    # A file whose context_length is huge: the default n_ctx (the model's) says where it came from.
    big = tmp_path / "long-context.gguf"
    f = M.base_model()
    f.set(G.KEY_CONTEXT_LENGTH, M.U32, INT32_MAX)
    big.write_bytes(f.build()[0])
    with pytest.raises(mole.ModelMemoryError, match=r"n_ctx = 2147483647 \(0: the model's context_length\)"):
        mole.Model(big)
    with mole.Model(big, n_ctx=32, n_threads=1) as ok:   # the file itself is fine
        assert ok.n_ctx == 32
    # In the C API: no size overflows however the fields are combined.
    L = _ffi.get()
    out = L.ffi.new("struct mole_model **")
    _ffi.check(L.lib.mole_model_load(str(model_path).encode(), L.ffi.NULL, out))
    model = L.ffi.gc(out[0], L.lib.mole_model_free)
    p = L.ffi.new("struct mole_context_params *")
    L.lib.mole_context_default_params(p)
    p.n_ctx, p.n_seq_max = INT32_MAX, INT32_MAX
    ctx = L.ffi.new("struct mole_context **")
    assert L.lib.mole_context_new(model, p, ctx) == L.lib.MOLE_STATUS_OUT_OF_MEMORY and ctx[0] == L.ffi.NULL
    assert "2147483647 sequence(s)" in L.ffi.string(L.lib.mole_last_error()).decode()


def test_too_many_sequences_or_threads_is_a_clear_error(model_path):
    with pytest.raises(mole.ModelMemoryError, match=r"1073741824 sequence\(s\) .* ask for a smaller n_ctx or "
                                                    r"n_seq_max"):
        mole.Model(model_path, n_seq_max=2**30)
    with pytest.raises(mole.InvalidArgumentError, match="n_threads = 1025 is more than the limit of 1024"):
        mole.Model(model_path, n_threads=1025)


def test_threads_the_system_refuses_are_a_clear_error(model_path):
    """n_threads = 1024 under an address-space limit that leaves room for a few dozen thread stacks: the
    system refuses a thread part way; that is an error naming it, the threads already started are stopped,
    and the process goes on (the pool's constructor once leaked them, spinning)."""
    if "asan" in os.environ.get("LD_PRELOAD", ""):
        pytest.skip("AddressSanitizer reserves terabytes of address space: no RLIMIT_AS under it")
    code = (
        "import re, resource, sys, mole\n"
        "threads = lambda: int(re.search(r'Threads:\\s+(\\d+)', open('/proc/self/status').read())[1])\n"
        "vm = int(re.search(r'VmSize:\\s+(\\d+)', open('/proc/self/status').read())[1]) << 10\n"
        "before = threads()\n"
        "resource.setrlimit(resource.RLIMIT_AS, (vm + (512 << 20), resource.RLIM_INFINITY))\n"
        "try:\n"
        "    mole.Model(sys.argv[1], n_ctx=16, n_threads=1024)\n"
        "    print('loaded')\n"
        "except mole.ModelMemoryError as e:\n"
        "    print(e)\n"
        "print('threads', threads() - before)\n"
        "with mole.Model(sys.argv[1], n_ctx=16, n_threads=2) as m:\n"
        "    print('ok', len(m.generate('the', max_tokens=2, temperature=0)) >= 0)\n")
    r = subprocess.run([sys.executable, "-c", code, str(model_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert re.search(r"cannot start n_threads = 1024 worker threads: ", lines[0]), r.stdout
    assert lines[1:] == ["threads 0", "ok True"], r.stdout


def test_n_ctx_past_the_training_context_is_allowed(model_path):
    """DESIGN.md's example asks for n_ctx=2048 whatever the file's context_length: positions past it were not
    trained (quality may drop) but nothing is wrong with them."""
    with mole.Model(model_path, n_ctx=4 * M.N_CTX, n_threads=1) as big:
        assert big.n_ctx == 4 * M.N_CTX
        assert np.isfinite(big.logits(list(range(M.N_CTX + 10)))).all()


# ---- a full context ----------------------------------------------------------------------------------------

def test_context_full_changes_nothing_and_a_reset_makes_room(model_path):
    with mole.Model(model_path, n_ctx=8, n_threads=1) as m:
        ref = m.logits(PROMPT + [1, 2, 3])
        m.reset()
        m.eval(PROMPT)
        with pytest.raises(mole.ContextFullError, match=r"9 tokens do not fit in the context \(n_ctx = 8\)"):
            m.eval([1, 2, 3, 4])
        assert m.stats()["tokens_in_context"] == 5
        np.testing.assert_allclose(m.eval([1, 2, 3]), ref[-1], atol=1e-4)   # the context went on where it was
        with pytest.raises(mole.ContextFullError):
            m.eval([1])
        with pytest.raises(mole.ContextFullError, match="the prompt has 9 tokens; the context holds 8"):
            m.generate(PROMPT + [1, 2, 3, 4], max_tokens=1)
        m.reset()
        np.testing.assert_array_equal(m.logits(PROMPT + [1, 2, 3]), ref)


def test_generation_stops_at_a_full_context_and_starts_again(model_path):
    """Generation that fills the context ends with finish_reason "length" (the text so far is kept, as an
    OpenAI server does); the next call starts afresh and gives the same."""
    with mole.Model(model_path, n_ctx=8, n_threads=1) as m:
        pieces = list(m._generate_iter(PROMPT, 10**30, 0.0, None, None, None, None, None, None, None, False, True))
        assert pieces[-1] == ("", "length")
        text = "".join(p for p, _ in pieces)
        assert m.stats()["tokens_in_context"] == 8
        again = m.generate(PROMPT, max_tokens=10**30, temperature=0, ignore_eos=True)   # absurd max_tokens too
        assert again == text
        m.reset()
        assert m.generate(PROMPT, max_tokens=10**30, temperature=0, ignore_eos=True) == text
    with mole.Model(model_path, n_ctx=24, n_threads=1) as m:
        reply = m.chat([{"role": "user", "content": "a"}], max_tokens=10**9, temperature=0)
        assert reply["choices"][0]["finish_reason"] in ("length", "stop")


@pytest.mark.parametrize("bad", [-1, 1.5, True, "8", None])
def test_bad_max_tokens(m, bad):
    with pytest.raises(mole.InvalidArgumentError, match="max_tokens must be an integer >= 0"):
        m.generate(PROMPT, max_tokens=bad)
    assert m.generate(PROMPT, max_tokens=0) == ""


# ---- sampling values ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("option, value", [
    ("temperature", -0.5), ("temperature", float("nan")), ("temperature", float("inf")), ("temperature", "hot"),
    ("top_p", 1.5), ("top_p", -0.1), ("top_p", float("nan")), ("min_p", 2.0), ("min_p", -1),
    ("repeat_penalty", float("inf")), ("repeat_penalty", -1.0), ("top_k", -1), ("top_k", 2.5),
    ("repeat_last_n", -3), ("seed", "x"), ("seed", 1.5),
])
def test_sampling_values_out_of_range(m, option, value):
    with pytest.raises(mole.InvalidArgumentError, match=option) as e:
        m.generate(PROMPT, max_tokens=2, **{option: value})
    assert isinstance(e.value, ValueError) and m.stats()["tokens_in_context"] == 0


def test_sampling_edge_values_work(m):
    base = m.generate(PROMPT, max_tokens=6, temperature=0.9, seed=3, top_k=0, ignore_eos=True)
    # top_k past the vocabulary (past int32 even) keeps every token, as top_k=0 does; numpy scalars are numbers.
    assert m.generate(PROMPT, max_tokens=6, temperature=np.float32(0.9), seed=np.int64(3), top_k=10**12,
                      ignore_eos=True) == base
    assert m.generate(PROMPT, max_tokens=4, repeat_last_n=10**12, repeat_penalty=1.3, seed=1) is not None
    with pytest.raises(mole.InvalidArgumentError, match="repeat_penalty = 0 must be a positive number"):
        m.generate(PROMPT, max_tokens=2, repeat_penalty=0)


def test_sampler_params_in_the_c_api():
    L = _ffi.get()
    ffi, lib = L.ffi, L.lib
    p = ffi.new("struct mole_sampler_params *")
    out = ffi.new("struct mole_sampler **")
    for field, value, message in [("temperature", float("inf"), "temperature = inf is not a finite number"),
                                  ("temperature", float("nan"), "temperature = nan"),
                                  ("top_p", 2.0, "top_p = 2 is outside [0, 1]"),
                                  ("top_k", -5, "top_k = -5 is negative")]:
        lib.mole_sampler_default_params(p)
        setattr(p, field, value)
        assert lib.mole_sampler_new(p, out) == lib.MOLE_STATUS_INVALID_ARGUMENT and out[0] == ffi.NULL
        assert message in ffi.string(lib.mole_last_error()).decode()


def test_huge_repeat_last_n_does_not_reserve_gigabytes(tmp_path):
    """repeat_last_n = INT32_MAX made the sampler reserve 2 x 8 GB up front; under a 3 GB address-space limit
    that failed (std::bad_alloc). The history now grows as tokens come."""
    code = (
        "import resource, sys\n"
        "from mole import _ffi\n"
        "L = _ffi.get()\n"
        "resource.setrlimit(resource.RLIMIT_AS, (3 << 30, resource.RLIM_INFINITY))\n"
        "p = L.ffi.new('struct mole_sampler_params *'); L.lib.mole_sampler_default_params(p)\n"
        "p.repeat_last_n = 2**31 - 1; p.repeat_penalty = 1.2\n"
        "out = L.ffi.new('struct mole_sampler **')\n"
        "st = L.lib.mole_sampler_new(p, out)\n"
        "print(st, L.ffi.string(L.lib.mole_last_error()).decode())\n"
        "logits = L.ffi.new('float[]', [0.0, 1.0, 2.0]); tok = L.ffi.new('int32_t *')\n"
        "for _ in range(100): assert L.lib.mole_sampler_sample(out[0], logits, 3, tok) == 0\n")
    if "asan" in os.environ.get("LD_PRELOAD", ""):
        pytest.skip("AddressSanitizer reserves terabytes of address space: no RLIMIT_AS under it")
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit != resource.RLIM_INFINITY and limit < (3 << 30):
        pytest.skip("the address space is already limited below 3 GB here")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy(),
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == "0", r.stdout


# ---- byte tokens that split a UTF-8 character -------------------------------------------------------------

TEXT = "é€😀x"   # 2, 3 and 4 bytes, then one


def _chain_model(path):
    """A dense model that, greedily, continues byte token 'A' with the bytes of TEXT one token each, then EOT:
    one-hot embeddings (d = V), every attention and FFN matrix zero (x stays E[v]), and output row next(v)
    = E[v]: the logit of next(v) is sqrt(d), every other 0."""
    f = M.base_model()
    V, d = M.V, M.V
    chain = [ord("A")] + list(TEXT.encode()) + [M.EOT_ID]
    nxt = dict(zip(chain[:-1], chain[1:], strict=True))

    def t(name, ne, a):
        return M.Tensor(name, list(ne), M.T_F32, np.asarray(a, "<f4").tobytes())

    out = np.zeros((V, d))
    for v, u in nxt.items():
        out[u, v] = 1.0
    tensors = [t(G.TENSOR_TOKEN_EMBD, (d, V), np.eye(V, d))]
    for name, ne in ((G.TENSOR_ATTN_NORM, (d,)), (G.TENSOR_ATTN_Q, (d, d)), (G.TENSOR_ATTN_K, (d, d)),
                     (G.TENSOR_ATTN_V, (d, d)), (G.TENSOR_ATTN_OUT, (d, d)), (G.TENSOR_FFN_NORM, (d,)),
                     (G.TENSOR_FFN_UP, (d, 32)), (G.TENSOR_FFN_DOWN, (32, d))):
        shape = tuple(reversed(ne))
        tensors.append(t(G.layer_name(name, 0), ne, np.ones(shape) if len(ne) == 1 else np.zeros(shape)))
    tensors += [t(G.TENSOR_OUTPUT_NORM, (d,), np.ones(d)), t(G.TENSOR_OUTPUT, (d, V), out)]
    f.tensors = tensors
    for key, v in ((G.KEY_EMBEDDING_LENGTH, d), (G.KEY_BLOCK_COUNT, 1), (G.KEY_EXPERT_COUNT, 0),
                   (G.KEY_HEAD_COUNT, 2), (G.KEY_HEAD_COUNT_KV, 2)):
        f.set(key, M.U32, v)
    path.write_bytes(f.build()[0])
    return path


def test_streaming_never_emits_a_broken_character(tmp_path):
    with mole.Model(_chain_model(tmp_path / "chain.gguf"), n_ctx=32, n_threads=1) as m:
        ids = [ord("A")]
        assert [m.detokenize_bytes([t]) for t in m._check_ids(list(TEXT.encode()))] == \
            [bytes([b]) for b in TEXT.encode()]          # the model really emits one byte per token
        pieces = list(m.generate(ids, max_tokens=50, temperature=0, stream=True))
        assert "".join(pieces) == TEXT
        assert pieces == ["é", "€", "😀", "x"]           # each character whole, as soon as it is complete
        assert all(p.encode("utf-8").decode("utf-8") == p and "\ufffd" not in p for p in pieces)
        assert m.generate(ids, max_tokens=50, temperature=0) == TEXT
        assert m.generate(ids, max_tokens=50, temperature=0, stop="😀") == "é€"
        # Cut off inside a character (max_tokens): the incomplete bytes end as one U+FFFD, never half a character.
        assert list(m.generate(ids, max_tokens=4, temperature=0, stream=True)) == ["é", "\ufffd"]



# ---- the model file changed while it is mapped ------------------------------------------------------------

def _copy(src, dst, mtime_ns=10**18):
    dst.write_bytes(src.read_bytes())
    os.utime(dst, ns=(mtime_ns, mtime_ns))   # an old file, as model files are (the clock's tick is coarse)
    return dst


def test_file_cut_short_while_mapped_is_detected(model_path, tmp_path):
    path = _copy(model_path, tmp_path / "cut.gguf")
    with mole.Model(path, n_ctx=16, n_threads=1) as m:
        m.logits(PROMPT)
        os.truncate(path, path.stat().st_size // 2)
        for call in (lambda: m.logits(PROMPT), lambda: m.metadata, lambda: m.generate(PROMPT, max_tokens=2)):
            with pytest.raises(mole.ModelIOError, match=r"cut\.gguf: the file was truncated after it was loaded "
                                                        r"\(\d+ bytes, was \d+\); load it again") as e:
                call()
            assert isinstance(e.value, OSError)
    with pytest.raises(mole.FormatError, match="truncated"):
        mole.Model(path)


@pytest.mark.parametrize("how", ["same size", "appended"])
def test_file_rewritten_in_place_while_mapped_is_detected(model_path, tmp_path, how):
    path = _copy(model_path, tmp_path / "rewritten.gguf")
    with mole.Model(path, n_ctx=16, n_threads=1) as m:
        m.logits(PROMPT)
        with open(path, "r+b") as f:
            if how == "same size":
                f.seek(-64, os.SEEK_END)
                f.write(struct.pack("<16f", *([1e30] * 16)))   # the LUT's last row: a wrong answer if read
            else:
                f.seek(0, os.SEEK_END)
                f.write(b"\0" * 100)
        with pytest.raises(mole.ModelIOError, match=r"the file was modified after it was loaded \((its "
                                                    r"modification time|its size) changed\)"):
            m.logits(PROMPT)


def test_file_rewritten_during_a_call_is_detected(model_path, tmp_path):
    """A change that lands while mole_decode runs (4000 tokens, one per step) is found by the check after the
    step: the call fails and the sequence keeps none of its tokens. A run where the decode ended before the
    change was done says nothing and is tried again."""
    L = _ffi.get()
    ffi, lib = L.ffi, L.lib
    n = 4000
    tokens = ffi.new("int32_t[]", [i % M.V for i in range(n)])
    want = ffi.new("int8_t[]", [0] * (n - 1) + [1])
    logits = ffi.new("float[]", M.V)
    for attempt in range(5):
        path = _copy(model_path, tmp_path / f"during-{attempt}.gguf")
        out = ffi.new("struct mole_model **")
        _ffi.check(lib.mole_model_load(str(path).encode(), ffi.NULL, out))
        model = ffi.gc(out[0], lib.mole_model_free)
        p = ffi.new("struct mole_context_params *")
        lib.mole_context_default_params(p)
        p.n_ctx, p.n_batch, p.n_threads = 2 * n, 1, 1
        ctx = ffi.new("struct mole_context **")
        _ffi.check(lib.mole_context_new(model, p, ctx))
        ctx = ffi.gc(ctx[0], lib.mole_context_free)
        started, changed_at = threading.Event(), []

        def change(path=path, started=started, changed_at=changed_at):
            started.wait()
            time.sleep(0.01)
            with open(path, "r+b") as f:
                f.seek(-64, os.SEEK_END)
                f.write(struct.pack("<16f", *([1e30] * 16)))
            changed_at.append(time.monotonic())

        t = threading.Thread(target=change)
        t.start()
        started.set()
        st = lib.mole_decode(ctx, n, tokens, ffi.NULL, want, logits, M.V)
        returned_at = time.monotonic()
        t.join()
        if changed_at[0] > returned_at - 0.05:
            continue   # the change was not surely done before the call's last check
        assert st == lib.MOLE_STATUS_IO_ERROR, st
        assert "the file was modified after it was loaded" in ffi.string(lib.mole_last_error()).decode()
        length = ffi.new("int32_t *")
        _ffi.check(lib.mole_seq_length(ctx, 0, length))
        assert length[0] == 0
        break
    else:
        pytest.fail("every decode ended before the file was changed")


def test_file_replaced_by_rename_keeps_the_loaded_model(model_path, tmp_path):
    """The converter replaces files by renaming (os.replace): a loaded model keeps the file it mapped, whole,
    and answers as before; loading the path again gives the new file."""
    path = _copy(model_path, tmp_path / "model.gguf")
    other = M.base_model(seed=7).build()[0]
    with mole.Model(path, n_ctx=16, n_threads=1) as m:
        ref = m.logits(PROMPT)
        (tmp_path / "new.gguf").write_bytes(other)
        os.replace(tmp_path / "new.gguf", path)
        np.testing.assert_array_equal(m.logits(PROMPT), ref)
        with mole.Model(path, n_ctx=16, n_threads=1) as fresh:
            assert not np.array_equal(fresh.logits(PROMPT), ref)
