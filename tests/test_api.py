"""The mole Python API of DESIGN.md: generation, streaming, stops, chat, errors, lifetime."""
import numpy as np
import pytest

import mole
from conftest import child_takes_sigint


@pytest.fixture(scope="module")
def model_path(model_factory):
    path, _, _ = model_factory(lut_type="q8_0", weight_type="f16", seed=3)
    return str(path)


@pytest.fixture()
def m(model_path):
    with mole.Model(model_path, n_ctx=128, n_threads=2) as model:
        yield model


def test_properties_and_metadata(m):
    assert m.n_vocab > 0 and m.n_layer == 2 and m.n_expert == 4 and m.n_ctx == 128
    md = m.metadata
    assert md["general.architecture"] == "mole"
    assert md["mole.block_count"] == 2
    assert isinstance(md["tokenizer.ggml.tokens"], list) and len(md["tokenizer.ggml.tokens"]) == m.n_vocab


def test_tokenize_roundtrip(m):
    text = "Hello, world! It is a truth universally acknowledged."
    ids = m.tokenize(text)
    assert ids and all(0 <= i < m.n_vocab for i in ids)
    assert m.detokenize(ids) == text


def test_seeded_generation_is_deterministic(m):
    a = m.generate("Hello", max_tokens=24, temperature=0.9, seed=1234)
    b = m.generate("Hello", max_tokens=24, temperature=0.9, seed=1234)
    assert a == b and len(a) > 0
    others = {m.generate("Hello", max_tokens=24, temperature=0.9, seed=s) for s in range(5)}
    assert len(others) > 1, "different seeds never change the text: the seed is not used"


def test_streaming_equals_non_streaming(m):
    full = m.generate("The house", max_tokens=32, temperature=0.7, seed=7)
    pieces = list(m.generate("The house", max_tokens=32, temperature=0.7, seed=7, stream=True))
    assert len(pieces) > 1
    assert "".join(pieces) == full


def test_greedy_matches_logits_argmax(m):
    ids = m.tokenize("Once upon a time")
    text = m.generate(ids, max_tokens=8, temperature=0.0)
    seq = list(ids)
    for _ in range(8):
        nxt = int(np.argmax(m.logits(seq)[-1]))
        if m.token_is_eog(nxt):
            break
        seq.append(nxt)
    assert text == m.detokenize(seq[len(ids):])


def test_stop_strings(m):
    full = m.generate("Once", max_tokens=40, temperature=0.0)
    assert len(full) > 6
    stop = full[3:6]
    cut = m.generate("Once", max_tokens=40, temperature=0.0, stop=[stop])
    assert cut == full[: full.index(stop)]
    streamed = "".join(m.generate("Once", max_tokens=40, temperature=0.0, stop=stop, stream=True))
    assert streamed == cut


def test_chat_result_shape(m):
    r = m.chat([{"role": "user", "content": "Hi there"}], max_tokens=8, temperature=0.0)
    assert r["object"] == "chat.completion"
    ch = r["choices"][0]
    assert ch["message"]["role"] == "assistant" and isinstance(ch["message"]["content"], str)
    assert ch["finish_reason"] in ("stop", "length")
    u = r["usage"]
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"] and u["prompt_tokens"] > 0
    chunks = list(m.chat([{"role": "user", "content": "Hi there"}], stream=True, max_tokens=8, temperature=0.0))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert streamed == ch["message"]["content"]


def test_context_full_and_recovery(m):
    too_long = list(range(1, 200))
    with pytest.raises(mole.ContextFullError):
        m.logits(too_long)
    with pytest.raises(mole.ContextFullError):
        m.generate(too_long, max_tokens=4)
    ok = m.logits([1, 2, 3])
    assert ok.shape == (3, m.n_vocab) and np.isfinite(ok).all()
    # generation that runs into n_ctx stops with what it has instead of failing
    out = m.generate(list(range(1, 120)), max_tokens=50, temperature=0.0)
    assert isinstance(out, str)
    assert m.stats()["tokens_in_context"] <= m.n_ctx


def test_bad_arguments_raise_value_error(m, model_path):
    with pytest.raises(ValueError, match="out of range"):
        m.logits([0, m.n_vocab])
    with pytest.raises(ValueError, match="out of range"):
        m.detokenize([-1])
    with pytest.raises(ValueError):
        m.generate("x", max_tokens=-1)
    with pytest.raises(ValueError):
        m.generate("x", temperature=-1)
    with pytest.raises(ValueError, match="n_ctx"):
        mole.Model(model_path, n_ctx=0)
    with pytest.raises(FileNotFoundError):
        mole.Model("/nonexistent/model.gguf")


def test_close_twice_and_use_after_close(model_path):
    m = mole.Model(model_path, n_ctx=64)
    m.close()
    m.close()
    with pytest.raises(mole.MoleError, match="closed"):
        m.logits([1])


def test_bad_file_is_format_error(tmp_path):
    p = tmp_path / "bad.gguf"
    p.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)
    with pytest.raises(mole.FormatError) as e:
        mole.Model(str(p))
    assert str(e.value)


def test_interrupt_mid_generation_leaves_model_usable(m, monkeypatch):
    """Ctrl-C can land right after a decode step finished but before the Python side recorded it:
    the model must come back consistent (same greedy text as before the interrupt)."""
    import sys
    from mole import _ffi
    expected = m.generate("Once upon", max_tokens=16, temperature=0.0)
    real_check, calls = _ffi.check, {"n": 0}

    def interrupting_check(status, what=""):
        real_check(status, what)
        if sys._getframe(1).f_code.co_name == "_eval_chunks":   # right after a finished decode step
            calls["n"] += 1
            if calls["n"] == 5:
                raise KeyboardInterrupt
    monkeypatch.setattr(_ffi, "check", interrupting_check)
    with pytest.raises(KeyboardInterrupt):
        m.generate("Once upon", max_tokens=16, temperature=0.0)
    monkeypatch.setattr(_ffi, "check", real_check)
    assert calls["n"] == 5
    ids = m.tokenize("Once upon")
    after = m.eval(ids)                       # the interrupted context was cleared, so: a fresh start
    np.testing.assert_allclose(after, m.logits(ids)[-1], rtol=1e-5, atol=1e-5)
    assert m.generate("Once upon", max_tokens=16, temperature=0.0) == expected


def test_ctrl_c_stops_cli_with_exit_130(model_path):
    import signal
    import subprocess
    import sys
    import time
    p = subprocess.Popen([sys.executable, "-m", "mole", "run", "-m", model_path, "-p", "Hello", "-n", "100000",
                          "-c", "100000", "--temp", "0.8", "--ignore-eos"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=child_takes_sigint)
    try:
        first = p.stdout.read(5)              # generation has started
        assert first == "Hello"
        time.sleep(0.5)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
