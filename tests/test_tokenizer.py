"""Tokenizer parity: the C++ tokenizer (runtime/src/tokenizer.cpp) must give exactly the ids of HF
`tokenizers` for the GPT-NeoX-20B tokenizer (corpus + unicode stress set) and for a byte-level BPE
trained here without normalizer. Dumps the vocab and HF's ids, then runs tests/c/test_tokenizer."""
import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

tokenizers = pytest.importorskip("tokenizers")

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
NEOX_JSON = DATA / "tokenizers" / "gpt-neox-20b-tokenizer.json"
CORPUS = sorted((DATA / "corpus").glob("*.txt"))
SOURCES = ["tests/c/test_tokenizer.cpp", "runtime/src/tokenizer.cpp", "runtime/src/unicode.cpp",
           "runtime/src/unicode_tables.cpp", "runtime/src/error.cpp"]

STRESS = [
    "", " ", "  ", "a", "Hello, world!", "hello world", " leading space", "trailing space ",
    # accents, composed and decomposed (NFC composes them), lone combining marks
    "caf\u00e9 cafe\u0301 CAF\u00c9 CAFE\u0301", "\u0301\u0301 start with marks", "a\u0323\u0301 a\u0301\u0323",
    "\u1e9b\u0323 \u212b \u2126 \u0958", "n\u0303o\u0308\u0304", "Ω≈ç√∫˜µ≤≥÷",
    "\u1100\u1161\u11a8 \uac00\u11a8 한국어 텍스트", "ﬁ ﬂ ½ ² ① Ⅻ", "x\u0308\u0308\u0308",
    # CJK, RTL, Indic, Thai
    "中文测试，这是一个句子。日本語のテキスト、カタカナ。", "مرحبا بالعالم ١٢٣", "שלום עולם", "नमस्ते दुनिया",
    "สวัสดีครับ", "Ελληνικά κείμενο", "Русский текст, ёлка",
    # emoji: ZWJ sequences, skin tones, flags, keycaps, variation selectors
    "👨‍👩‍👧‍👦 family", "👍🏽👍🏿 thumbs", "🇫🇷🇯🇵 flags", "1️⃣ #️⃣ keycaps", "❤️ ❤︎ heart", "🏳️‍🌈",
    # whitespace runs of all lengths, tabs, newlines, NBSP and other Unicode spaces
    *["a" + " " * n + "b" for n in range(1, 30)], *[" " * n for n in range(1, 30)],
    "a\tb\t\tc\t\t\t\td", "line1\nline2\n\nline3\n\n\n\nend", "crlf\r\nline\r\n", "  \n  \n\t \t",
    "nbsp\u00a0here\u00a0\u00a0twice", "ideographic\u3000space", "em\u2003space\u2009thin\u200aHair",
    "line\u2028sep\u2029para", "nel\u0085x", "zwsp\u200bjoin\u200cnon\u200d", "bom\ufeffhere",
    "\x1c\x1d\x1e\x1f separators", "\x00\x01\x07 control \x7f\x1b[0m",
    # code and numbers
    "def f(x):\n    return x**2  # square\n\n\tif a != b: pass",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }", "<html><body class=\"x\">&amp;</body></html>",
    "3.14159 2,718 1e-10 0x1F 1234567890123 ١٢٣٤ ४२", "$100.00 €50 ¥1000 £3",
    "I'm you're they've he'll she'd it's 'quoted' ''s 'S 'LL", "don't DON'T o'clock rock'n'roll",
    "https://example.com/path?q=1&r=2#frag", "user@example.com", "!!!??? ... --- ***",
    "<|endoftext|>", "a<|endoftext|>b", "<|endoftext|><|padding|>x", "<|endoftext", "<|endoftext|>   x",
    "mixed 中文 and English with émojis 🎉 and numbers 42",
]


def random_texts(n=400, seed=0):
    """Random mixes of the hard cases: combining marks in any order, Hangul jamo, spaces of every
    kind, apostrophes, digits, emoji parts, CJK, added-token text (fixed seed)."""
    import random
    rng = random.Random(seed)
    pools = ["abcXYZ", "0123456789", " ", "  ", "\t\n\r", "'", "sStTmdlLrRvV", ".,!?;:-_()[]{}<>|",
             "\u0300\u0301\u0308\u0323\u0327\u0331\u0345\u05b0\u093c", "\u00e9\u00c5\u1e69\u01d6",
             "\u1100\u1161\u11a8\uac00\u1112", "\u00a0\u2003\u3000\u2028\u0085\u200b\ufeff",
             "\u4e2d\u6587\u65e5\u672c", "\U0001F468\u200d\U0001F3FD\ufe0f\u20e3\U0001F1EB",
             "\u0663\u00bd\u2460\u216b", "\u212b\u2126\ufb01\u0958", "\x00\x1c\x7f"]
    out = []
    for _ in range(n):
        k = rng.randint(1, 40)
        text = "".join(rng.choice(rng.choice(pools)) for _ in range(k))
        if rng.random() < 0.1:
            text = text[: k // 2] + "<|endoftext|>" + text[k // 2:]
        out.append(text)
    return out


def write_dump(path, pre, tokens, types, merges, bos, eos, pad, cases):
    def s(b):
        return struct.pack("<I", len(b)) + b
    out = [b"MOLETOK1", s(pre.encode()), struct.pack("<iii", bos, eos, pad), struct.pack("<I", len(tokens))]
    for t, ty in zip(tokens, types, strict=True):
        out += [s(t.encode()), struct.pack("<i", ty)]
    out.append(struct.pack("<I", len(merges)))
    out += [s(m.encode()) for m in merges]
    out.append(struct.pack("<I", len(cases)))
    for add_bos, special, text, ids in cases:
        out += [struct.pack("<II", add_bos, special), s(text.encode("utf-8", "surrogatepass")),
                struct.pack(f"<I{len(ids)}i", len(ids), *ids)]
    Path(path).write_bytes(b"".join(out))


def vocab_from_json(tok_json: dict, n_vocab_padded: int | None = None):
    """tokens/types/merges as the converter writes them (llama.cpp conventions)."""
    vocab = dict(tok_json["model"]["vocab"])
    types = {}
    for a in tok_json["added_tokens"]:
        vocab[a["content"]] = a["id"]
        types[a["id"]] = 3 if a["special"] else 4
    n = max(vocab.values()) + 1
    tokens = [None] * max(n, n_vocab_padded or 0)
    for t, i in vocab.items():
        tokens[i] = t
    ty = [types.get(i, 1) for i in range(len(tokens))]
    for i in range(len(tokens)):
        if tokens[i] is None:
            tokens[i], ty[i] = f"<|pad_{i}|>", 5
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok_json["model"]["merges"]]
    return tokens, ty, merges


@pytest.fixture(scope="session")
def tokenizer_bin(tmp_path_factory):
    """The C++ test program, compiled from the tokenizer's own sources (independent of the rest of
    the runtime's build state)."""
    cxx = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    exe = tmp_path_factory.mktemp("tokbin") / "test_tokenizer"
    cmd = [cxx, "-std=c++17", "-O2", "-pthread", "-I", str(ROOT / "runtime/include"), "-I", str(ROOT / "runtime/src"),
           *[str(ROOT / f) for f in SOURCES], "-o", str(exe)]
    subprocess.run(cmd, check=True)
    return exe


def run_bin(exe, *dumps):
    r = subprocess.run([str(exe), *map(str, dumps)], capture_output=True)
    out, err = r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")
    print(out, err)
    assert r.returncode == 0, err[-4000:]
    return out


def test_unit(tokenizer_bin):
    assert "unit tests: ok" in run_bin(tokenizer_bin)


def neox_cases(tok):
    cases = []
    for text in STRESS + random_texts():
        cases.append((0, 1, text, tok.encode(text).ids))
    tok.encode_special_tokens = True  # HF's equivalent of parse_special = 0
    try:
        for text in STRESS:
            if "<|" in text:
                cases.append((0, 0, text, tok.encode(text).ids))
    finally:
        tok.encode_special_tokens = False
    return cases


@pytest.mark.skipif(not NEOX_JSON.exists(), reason="GPT-NeoX tokenizer.json not available")
def test_neox_stress(tokenizer_bin, tmp_path):
    tok = tokenizers.Tokenizer.from_file(str(NEOX_JSON))
    tokens, types, merges = vocab_from_json(json.loads(NEOX_JSON.read_text()), n_vocab_padded=50304)
    cases = neox_cases(tok)
    cases.append((1, 1, "with bos", [0] + tok.encode("with bos").ids))
    write_dump(tmp_path / "neox_stress.bin", "gpt-neox", tokens, types, merges, 0, 0, 1, cases)
    run_bin(tokenizer_bin, tmp_path / "neox_stress.bin")


@pytest.mark.skipif(not NEOX_JSON.exists() or not CORPUS, reason="NeoX tokenizer or corpus not available")
def test_neox_corpus(tokenizer_bin, tmp_path):
    tok = tokenizers.Tokenizer.from_file(str(NEOX_JSON))
    tokens, types, merges = vocab_from_json(json.loads(NEOX_JSON.read_text()), n_vocab_padded=50304)
    cases = [(0, 1, p.read_text(encoding="utf-8"), None) for p in CORPUS]
    cases = [(a, s, t, tok.encode(t).ids) for a, s, t, _ in cases]
    write_dump(tmp_path / "neox_corpus.bin", "gpt-neox", tokens, types, merges, 0, 0, 1, cases)
    out = run_bin(tokenizer_bin, tmp_path / "neox_corpus.bin")
    assert "0 failed" in out


def test_trained_bytelevel(tokenizer_bin, tmp_path):
    """A tokenizer trained by `tokenizers` with a plain ByteLevel pre-tokenizer and no normalizer:
    NFC must not be applied (decomposed accents stay decomposed)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1200, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    train_text = [t for t in STRESS if t] + ([CORPUS[0].read_text(encoding="utf-8")[:300_000]] if CORPUS else [])
    tok.train_from_iterator(train_text, trainer=trainer)
    tokens, types, merges = vocab_from_json(json.loads(tok.to_str()))
    texts = STRESS + random_texts(seed=1) + ([p.read_text(encoding="utf-8")[:200_000] for p in CORPUS])
    cases = [(0, 1, t, tok.encode(t).ids) for t in texts]
    write_dump(tmp_path / "trained.bin", "default", tokens, types, merges, -1, 0, -1, cases)
    run_bin(tokenizer_bin, tmp_path / "trained.bin")


# ---- the same parity through the C API (mole.Model.tokenize) on converted models -----------------

@pytest.fixture(scope="module")
def neox_model(model_factory):
    if not NEOX_JSON.exists():
        pytest.skip("GPT-NeoX tokenizer.json not available")
    mole = pytest.importorskip("mole")
    path, _, _ = model_factory(tokenizer="neox", vocab_size=50304, hidden_size=32, intermediate_size=32,
                               num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, num_experts=1,
                               lut_type="q8_0", weight_type="f16")
    with mole.Model(str(path), n_ctx=64, n_threads=1) as m:
        yield m


def test_api_neox_parity(neox_model):
    m = neox_model
    tok = tokenizers.Tokenizer.from_file(str(NEOX_JSON))
    assert m.metadata["tokenizer.ggml.pre"] == "gpt-neox"
    texts = STRESS + ([CORPUS[0].read_text(encoding="utf-8")[:300_000]] if CORPUS else [])
    for text in texts:
        ids = tok.encode(text).ids
        assert m.tokenize(text, special=True) == ids, text[:80]
        assert m.detokenize(ids) == tok.decode(ids, skip_special_tokens=False), text[:80]
    tok.encode_special_tokens = True
    for text in [t for t in STRESS if "<|" in t]:
        assert m.tokenize(text, special=False) == tok.encode(text).ids, text
    assert m.tokenize("hi", add_bos=True)[0] == 0
    assert m.token_is_eog(0) and not m.token_is_eog(tok.token_to_id("Ġthe"))
    # special tokens are dropped on request; padded-vocab fillers are control-like
    assert m.detokenize([0, 12092, 1], skip_special=True) == "Hello"
    assert m.detokenize([50300], skip_special=True) == ""


def test_api_tiny_tokenizer_parity(model_factory):
    """The converter's tiny trained tokenizer (pre "default", no NFC) through the C API."""
    mole = pytest.importorskip("mole")
    from mole_convert.testing import make_tiny_tokenizer_json
    path, _, cfg = model_factory(lut_type="f32", weight_type="f32")
    tok = tokenizers.Tokenizer.from_str(make_tiny_tokenizer_json(min(cfg.vocab_size, 384)))
    with mole.Model(str(path), n_ctx=64, n_threads=1) as m:
        assert m.metadata["tokenizer.ggml.pre"] == "default"
        for text in STRESS:
            assert m.tokenize(text, special=True) == tok.encode(text).ids, text[:80]


def test_api_stream_decoder(neox_model):
    """mole_decoder_*: pieces are complete UTF-8 even when a character spans several byte tokens;
    an unfinished character becomes U+FFFD on flush."""
    from mole import _ffi
    m = neox_model
    ffi, lib = m._L.ffi, m._lib
    dec = ffi.new("struct mole_decoder **")
    _ffi.check(lib.mole_decoder_new(m._live_model(), dec))
    decoder = ffi.gc(dec[0], lib.mole_decoder_free)

    def push(t):
        buf, n = _ffi.call_sized(lib.mole_decoder_push, decoder, t, initial=1)
        return ffi.unpack(buf, n)

    def flush():
        buf, n = _ffi.call_sized(lib.mole_decoder_flush, decoder, initial=1)
        return ffi.unpack(buf, n)

    text = "a👨‍👩‍👧 👍🏽 中文 café"
    ids = m.tokenize(text)
    assert len(ids) > len(text) // 2  # emoji come as several byte tokens
    pieces = [push(t) for t in ids]
    assert all(p.decode("utf-8") is not None for p in pieces)  # each piece decodes alone
    assert b"".join(pieces) + flush() == text.encode()
    tok = tokenizers.Tokenizer.from_file(str(NEOX_JSON))
    assert push(tok.token_to_id("ð")) == b""  # 0xF0: a 4-byte lead, held back
    assert flush() == "\ufffd".encode()
    assert push(tok.token_to_id("Ã")) == b"" and push(tok.token_to_id("a")) == "\ufffda".encode()
