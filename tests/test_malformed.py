"""The malformed-file corpus (tests/malformed.py, issue 12 section 1): every case is refused with
MOLE_STATUS_FORMAT_ERROR and a message naming the problem, through the C API, mole.Model and `mole inspect` alike;
the chat-template cases load and fail at Model.chat with mole.FormatError. The corpus covers every category the
issue lists and a cut inside every section of the file."""
import re

import pytest

import malformed
import mole
from mole import _ffi
from mole.inspect import inspect, main_inspect

CASES = {c.name: c for c in malformed.cases()}
LOAD = [n for n, c in CASES.items() if c.stage == "load"]
CHAT = [n for n, c in CASES.items() if c.stage == "chat"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return malformed.write_corpus(tmp_path_factory.mktemp("corpus"))


def c_load(path):
    """(status, message, whether *out was left NULL) of mole_model_load."""
    L = _ffi.get()
    out = L.ffi.new("struct mole_model **")
    st = L.lib.mole_model_load(str(path).encode(), L.ffi.NULL, out)
    msg = L.ffi.string(L.lib.mole_last_error()).decode("utf-8", "replace")
    null = out[0] == L.ffi.NULL
    if not null:
        L.lib.mole_model_free(out[0])
    return st, msg, null


def test_the_base_file_is_a_working_model(corpus):
    st, msg, _ = c_load(corpus["valid"])
    assert st == 0, msg
    with mole.Model(corpus["valid"], n_ctx=32, n_threads=1) as m:
        assert (m.n_vocab, m.n_layer, m.n_expert) == (malformed.V, malformed.N_LAYER, malformed.N_EXPERT)
        ids = m.tokenize(" the thin", add_bos=True)
        assert ids[0] == malformed.EOT_ID and m.detokenize(ids[1:]) == " the thin"
        assert m.logits(ids).shape == (len(ids), malformed.V)
        reply = m.chat([{"role": "user", "content": "hi"}], max_tokens=3, temperature=0)
        assert reply["choices"][0]["finish_reason"] in ("stop", "length")
    assert inspect(corpus["valid"])["lut"]["rows"] == malformed.V


@pytest.mark.parametrize("name", LOAD)
def test_malformed_file_is_refused_naming_the_problem(corpus, name):
    case, path = CASES[name], corpus[name]
    st, msg, null = c_load(path)
    L = _ffi.get()
    assert st == L.lib.MOLE_STATUS_FORMAT_ERROR, (st, msg)
    assert null, "a failed load must leave *out NULL"
    assert msg.startswith(str(path)), msg   # the file is named ...
    assert re.search(case.message, msg), f"{msg!r} does not match {case.message!r}"   # ... and the problem
    with pytest.raises(mole.FormatError) as e:
        mole.Model(path, n_ctx=16, n_threads=1)
    assert re.search(case.message, str(e.value)), str(e.value)
    with pytest.raises(mole.FormatError) as e:   # mole inspect reads through the same loader
        inspect(path)
    assert str(e.value) == msg


@pytest.mark.parametrize("name", CHAT)
def test_bad_chat_template_fails_at_chat(corpus, name):
    case = CASES[name]
    with mole.Model(corpus[name], n_ctx=32, n_threads=1) as m:
        assert m.generate("the", max_tokens=2, temperature=0) is not None   # the rest of the model works
        with pytest.raises(mole.FormatError, match=case.message):
            m.chat([{"role": "user", "content": "hi"}], max_tokens=2)


def test_mole_inspect_on_a_cut_file_prints_the_runtime_message(corpus, capsys):
    for name in ("truncated-version", "truncated-kv-16-tokenizer.ggml.tokens-value-elements",
                 "truncated-tensor-info-3-blk.0.attn_k.weight-shape", "truncated-data-21-lut.weight"):
        assert main_inspect([str(corpus[name])]) == 1
        err = capsys.readouterr().err
        assert err == f"mole inspect: error: {c_load(corpus[name])[1]}\n" and "truncated" in err, err


def test_every_section_is_cut_and_every_category_is_there():
    _, sections = malformed.base_model().build()
    cut = [c for c in CASES.values() if c.name.startswith("truncated-")]
    assert len(cut) == len(sections)
    assert {c.notes["cut"] for c in cut} >= {a + (b - a) // 2 for _, a, b in sections if b - a >= 2}
    kinds = {kind for _, a, b in sections for kind in ("magic", "kv", "tensor info", "padding", "data")
             if _.startswith(kind)}
    assert kinds == {"magic", "kv", "tensor info", "padding", "data"}
    # One name per category of issue 12's list (a case removed by mistake shows up here).
    for want in ["wrong-magic", "version-4", "huge-tensor-count", "huge-metadata-count", "string-length-past-end",
                 "array-count-past-end", "array-string-element-past-end", "n-dims-5", "shape-product-overflows",
                 "unknown-tensor-type", "unknown-value-type", "unknown-array-element-type", "misaligned-offset",
                 "overlapping-offsets", "offset-past-end", "missing-mole.block_count",
                 "wrong-mole.vocab_size-string-264", "disagree-mole.embedding_length-32",
                 "lut-rows-fewer-than-vocab", "lut-not-last-in-table", "merge-names-unknown-token",
                 "chat-template-syntax-error"]:
        assert want in CASES, want
