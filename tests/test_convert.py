"""convert(): GGUF round trip of every key and tensor through gguf.GGUFReader for training, reparam and dense
checkpoints; LUT rows exact vs reparameterize() and byte-identical to gguf.quants for every LUT type;
tokenizer metadata; bounded-memory planning; interrupted conversions leave no output."""
import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import gguf
import gguf.quants
import numpy as np
import pytest
import torch

from mole import gguf_names as G
from mole_convert import checkpoint_names as C
from mole_convert.checkpoint import load_checkpoint
from mole_convert.convert import convert, main_convert, temp_path
from mole_convert.errors import ConvertError
from mole_convert.quantize import ggml_type
from mole_convert.reparam import LutStream, plan_lut
from mole_convert.testing import make_random_checkpoint, neox_tokenizer_path, random_model, tiny_config
from mole_convert.tokenizer_meta import TokenizerError, build_tokenizer_meta

from conftest import child_takes_sigint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHUNK = 96   # fixed LUT chunk: f32 and quantized conversions see the same matmul batches
TEMPLATE = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    cfg = tiny_config()
    dense_cfg = tiny_config(num_experts=0)
    return SimpleNamespace(
        cfg=cfg, dense_cfg=dense_cfg, root=root,
        training=make_random_checkpoint(root / "training", cfg, seed=3, chat_template=TEMPLATE),
        reparam=make_random_checkpoint(root / "reparam", cfg, seed=3, form="reparam"),
        dense=make_random_checkpoint(root / "dense", dense_cfg, seed=4, form="dense"),
    )


def read(path):
    r = gguf.GGUFReader(path)
    fields = {k: f.contents() for k, f in r.fields.items()}
    tensors = {t.name: t for t in r.tensors}
    return r, fields, tensors


def lut_bytes(t) -> np.ndarray:
    """uint8 [V, row_bytes] of a GGUFReader tensor."""
    return np.asarray(t.data).view(np.uint8).reshape(int(t.shape[-1]), -1)


def assert_rows_close(got, ref):
    """f32 LUT rows: equal up to matmul batching (per row, max |diff| <= 1e-6 x max |row|: a few ulps)."""
    assert got.shape == ref.shape
    err = np.abs(got - ref).max(axis=1) / np.abs(ref).max(axis=1)
    assert err.max() <= 1e-6, f"max relative difference {err.max():.3g}"


def dequant(t) -> np.ndarray:
    """f32 in numpy order ([V, n] for ggml [n, V])."""
    shape = [int(x) for x in reversed(t.shape)]
    data = np.asarray(t.data)
    if t.tensor_type.name in ("F32", "F16"):
        return data.astype(np.float32).reshape(shape)
    return gguf.quants.dequantize(data.view(np.uint8), t.tensor_type).reshape(shape)


@pytest.fixture(scope="module")
def f32_lut(ckpts, tmp_path_factory):
    out = tmp_path_factory.mktemp("f32") / "lut-f32.gguf"
    convert(ckpts.training, out, lut_type="f32", weight_type="f32", chunk_tokens=CHUNK, progress=False)
    return lut_bytes(read(out)[2][G.TENSOR_LUT]).view(np.float32)           # [V, L*N*d]


def test_lut_rows_equal_in_memory_reparameterize(ckpts, f32_lut):
    ref = random_model(ckpts.cfg, seed=3, form="reparam").model.moe_table.weight.detach().numpy()
    assert_rows_close(f32_lut, ref)


@pytest.mark.parametrize("lut_type", ["f16", "bf16", "q8_0", "q4_0"])
def test_quantized_lut_is_gguf_quantize_of_exact_rows(ckpts, f32_lut, tmp_path, lut_type):
    out = convert(ckpts.training, tmp_path / "m.gguf", lut_type=lut_type, chunk_tokens=CHUNK, progress=False)
    got = lut_bytes(read(out)[2][G.TENSOR_LUT])
    expect = np.ascontiguousarray(gguf.quants.quantize(f32_lut, ggml_type(lut_type))).view(np.uint8)
    assert np.array_equal(got, expect.reshape(got.shape))


def test_streaming_with_small_budget_matches(ckpts, f32_lut):
    # a budget too small to keep the experts: they are re-read for every chunk; rows unchanged (<= 1e-6)
    ck = load_checkpoint(ckpts.training)
    calls = []
    get = ck.get
    ck.get = lambda name, dtype=torch.float32: (calls.append(name), get(name, dtype))[1]
    s = LutStream(ck, "f32", memory_budget=1_050_000)
    assert not s.plan.keep_weights and 16 <= s.plan.chunk_tokens < ck.config.vocab_size // 2
    rows = np.concatenate([r.view(np.float32) for _, r in s.chunks()])
    assert_rows_close(rows, f32_lut)
    n_chunks = -(-ck.config.vocab_size // s.plan.chunk_tokens)
    assert calls.count(C.name(C.EXPERT_UP, 0, 0)) == n_chunks


def test_plan_at_real_scale_is_bounded():
    # the paper's 160M-16E shape: the working set fits the budget, experts are not all kept
    cfg = SimpleNamespace(vocab_size=50304, num_hidden_layers=12, num_experts=16, hidden_size=768,
                          n_ff_expert=3072)
    fake = SimpleNamespace(form="training", config=cfg)
    p = plan_lut(fake, "q8_0")
    assert p.row_len == 12 * 16 * 768 and p.row_bytes == p.row_len // 32 * 34
    assert not p.keep_weights and p.layers_per_group == 1
    assert 256 <= p.chunk_tokens < 50304
    assert p.est_bytes <= 1536 << 20
    assert plan_lut(fake, "q8_0", memory_budget=4 << 30).chunk_tokens > 2 * p.chunk_tokens


@pytest.mark.parametrize("weight_type,tol", [("f32", 0.0), ("f16", 1e-3), ("bf16", 8e-3), ("q8_0", 1.5e-2)])
def test_round_trip_training_form(ckpts, tmp_path, weight_type, tol):
    out = convert(ckpts.training, tmp_path / "m.gguf", lut_type="q8_0", weight_type=weight_type, progress=False)
    r, f, t = read(out)
    cfg = ckpts.cfg
    V, d, L, N = cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers, cfg.num_experts
    expect = {
        G.KEY_ARCHITECTURE: "mole", G.KEY_NAME: "training", G.KEY_ALIGNMENT: 4096, G.KEY_VOCAB_SIZE: V,
        G.KEY_CONTEXT_LENGTH: cfg.max_position_embeddings, G.KEY_EMBEDDING_LENGTH: d, G.KEY_BLOCK_COUNT: L,
        G.KEY_FEED_FORWARD_LENGTH: cfg.intermediate_size, G.KEY_EXPERT_COUNT: N,
        G.KEY_EXPERT_FEED_FORWARD_LENGTH: cfg.n_ff_expert, G.KEY_HEAD_COUNT: cfg.num_attention_heads,
        G.KEY_HEAD_COUNT_KV: cfg.num_key_value_heads, G.KEY_TOKENIZER_MODEL: "gpt2", G.KEY_TOKENIZER_PRE: "default",
        G.KEY_BOS_ID: 0, G.KEY_EOS_ID: 0, G.KEY_CHAT_TEMPLATE: TEMPLATE,
    }
    for k, v in expect.items():
        assert f[k] == v, k
    assert f[G.KEY_RMS_EPS] == pytest.approx(cfg.rms_norm_eps, rel=1e-6)
    assert f[G.KEY_ROPE_FREQ_BASE] == pytest.approx(cfg.rope_theta)
    assert G.KEY_ROPE_SCALING_TYPE not in f and G.KEY_PAD_ID not in f
    assert r.fields[G.KEY_TOKEN_TYPE].types[-1] == gguf.GGUFValueType.INT32
    assert r.fields[G.KEY_BOS_ID].types[0] == gguf.GGUFValueType.UINT32
    tokens, types = f[G.KEY_TOKENS], list(f[G.KEY_TOKEN_TYPE])
    assert len(tokens) == len(types) == V and len(set(tokens)) == V
    tok = json.loads((ckpts.training / "tokenizer.json").read_text())
    for text, i in tok["model"]["vocab"].items():
        assert tokens[i] == text
    assert types[0] == 3 and tokens[0] == "<|endoftext|>"
    assert tokens[-1] == f"<|pad_{V - 1}|>" and types[-1] == 5
    assert f[G.KEY_MERGES] == [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]

    ck = load_checkpoint(ckpts.training)
    names = list(t)
    assert names[-1] == G.TENSOR_LUT and names[0] == G.TENSOR_TOKEN_EMBD
    assert all(x.data_offset % 4096 == 0 for x in r.tensors)
    mapped = 0
    for ckpt_name in ck.names():
        template, i, _ = C.match(ckpt_name)
        if template in C.EXPERT_TENSORS:
            continue
        gname = C.name(C.TO_GGUF[template], i)
        x = t[gname]
        w = ck.get(ckpt_name).numpy()
        assert [int(s) for s in x.shape] == list(reversed(w.shape)), gname   # ggml: ne0 first
        f32_only = template in (C.ATTN_NORM, C.FFN_NORM, C.ROUTER, C.OUTPUT_NORM)
        want = "F32" if f32_only else weight_type.upper()
        assert x.tensor_type.name == want, gname
        got = dequant(x)
        t_tol = 0.0 if f32_only else tol
        assert np.abs(got - w).max() <= t_tol * max(1.0, np.abs(w).max()), gname
        mapped += 1
    assert mapped == len(t) - 1
    lut = t[G.TENSOR_LUT]
    assert [int(s) for s in lut.shape] == [L * N * d, V] and lut.tensor_type.name == "Q8_0"


def test_reparam_form_copies_moe_table(ckpts, tmp_path, f32_lut):
    out = convert(ckpts.reparam, tmp_path / "m.gguf", lut_type="f32", progress=False)
    _, f, t = read(out)
    table = load_checkpoint(ckpts.reparam).get(C.MOE_TABLE).numpy()
    got = lut_bytes(t[G.TENSOR_LUT]).view(np.float32)
    assert np.array_equal(got, table)                 # copied bit for bit
    assert_rows_close(got, f32_lut)                   # same model as the training form
    assert G.TENSOR_ROUTER.format(i=0) in t and f[G.KEY_EXPERT_COUNT] == ckpts.cfg.num_experts


def test_reparam_form_quantized_in_chunks(ckpts, tmp_path):
    out = convert(ckpts.reparam, tmp_path / "m.gguf", lut_type="q4_0", chunk_tokens=50, progress=False)
    table = load_checkpoint(ckpts.reparam).get(C.MOE_TABLE).numpy()
    got = lut_bytes(read(out)[2][G.TENSOR_LUT])
    expect = np.ascontiguousarray(gguf.quants.quantize(table, ggml_type("q4_0"))).view(np.uint8)
    assert np.array_equal(got, expect.reshape(got.shape))


def test_dense_form_has_no_lut_and_no_router(ckpts, tmp_path):
    out = convert(ckpts.dense, tmp_path / "d.gguf", weight_type="f32", progress=False)
    _, f, t = read(out)
    assert f[G.KEY_EXPERT_COUNT] == 0 and f[G.KEY_EXPERT_FEED_FORWARD_LENGTH] == 0
    assert G.TENSOR_LUT not in t and not any("ffn_gate_inp" in n for n in t)
    assert len(t) == 3 + 8 * ckpts.dense_cfg.num_hidden_layers      # embd, output_norm, output + 8 per layer
    w = load_checkpoint(ckpts.dense).get(C.OUTPUT).numpy()
    assert np.array_equal(dequant(t[G.TENSOR_OUTPUT]), w)


def test_odd_row_lengths_fall_back_to_f16(tmp_path, capsys):
    cfg = tiny_config(hidden_size=48, intermediate_size=96, num_hidden_layers=1, num_experts=1,
                      rope_scaling={"type": "linear", "factor": 2.0})
    src = make_random_checkpoint(tmp_path / "odd", cfg)
    out = convert(src, tmp_path / "odd.gguf", lut_type="q8_0", weight_type="q8_0", progress=True)
    err = capsys.readouterr().err
    assert "stored as f16" in err and "LUT row length 48" in err
    _, f, t = read(out)
    assert t[G.TENSOR_LUT].tensor_type.name == "F16"
    assert t[G.TENSOR_ATTN_Q.format(i=0)].tensor_type.name == "F16"      # rows of 48
    assert t[G.TENSOR_FFN_DOWN.format(i=0)].tensor_type.name == "Q8_0"   # rows of 96
    assert f[G.KEY_ROPE_SCALING_TYPE] == "linear" and f[G.KEY_ROPE_SCALING_FACTOR] == 2.0


@pytest.mark.skipif(neox_tokenizer_path() is None, reason="GPT-NeoX tokenizer not in ../shared/data")
def test_neox_tokenizer_metadata(tmp_path):
    meta = build_tokenizer_meta(neox_tokenizer_path(), 50304)
    assert meta.pre == "gpt-neox" and len(meta.tokens) == 50304
    assert meta.tokens[0] == "<|endoftext|>" and meta.token_types[0] == 3 and meta.token_types[1] == 3
    assert meta.tokens[50276] == "  " and meta.token_types[50276] == 4       # whitespace runs: user-defined
    assert meta.tokens[50277] == "<|pad_50277|>" and meta.token_types[50277] == 5
    assert meta.merges[0] == "Ġ Ġ" and meta.bos_token_id == 0 and meta.eos_token_id == 0
    assert len(set(meta.tokens)) == 50304


def test_tokenizer_rejections(tmp_path):
    tok = {"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]},
           "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False}, "normalizer": None,
           "added_tokens": []}
    p = tmp_path / "tokenizer.json"

    def check(t, pattern):
        p.write_text(json.dumps(t))
        with pytest.raises(TokenizerError, match=pattern):
            build_tokenizer_meta(p, 16)

    check({**tok, "model": {"type": "WordPiece", "vocab": {"a": 0}}}, "model type 'WordPiece'")
    check({**tok, "pre_tokenizer": {"type": "Metaspace"}}, "pre_tokenizer 'Metaspace'")
    check({**tok, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": True}}, "add_prefix_space")
    check({**tok, "normalizer": {"type": "NFKC"}}, "normalizer 'NFKC'")
    check({**tok, "model": {**tok["model"], "byte_fallback": True}}, "byte_fallback")
    check({**tok, "model": {**tok["model"], "merges": ["a"]}}, "merge #0")
    p.write_text(json.dumps(tok))
    with pytest.raises(TokenizerError, match="defines id 2 but the model's vocab_size is 2"):
        build_tokenizer_meta(p, 2)
    p.write_text("{not json")
    with pytest.raises(TokenizerError, match="cannot read tokenizer JSON"):
        build_tokenizer_meta(p, 16)


def test_convert_errors(ckpts, tmp_path):
    with pytest.raises(ValueError, match="LUT type 'q5_k'"):
        convert(ckpts.training, tmp_path / "x.gguf", lut_type="q5_k")
    with pytest.raises(ValueError, match="weight type 'q4_0'"):
        convert(ckpts.training, tmp_path / "x.gguf", weight_type="q4_0")
    with pytest.raises(FileNotFoundError, match="output directory"):
        convert(ckpts.training, tmp_path / "nope" / "x.gguf")
    src = make_random_checkpoint(tmp_path / "notok", ckpts.cfg, tokenizer=None)
    with pytest.raises(ConvertError, match="no tokenizer.json"):
        convert(src, tmp_path / "x.gguf", progress=False)
    assert not list(tmp_path.glob("x.gguf*"))


def test_main_convert_cli(ckpts, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main_convert(["--help"])
    assert e.value.code == 0 and "--lut-type" in capsys.readouterr().out
    dst = tmp_path / "cli.gguf"
    assert main_convert([str(ckpts.training), str(dst), "--lut-type", "q4_0", "--weight-type", "q8_0",
                         "--threads", "1", "-q"]) == 0
    assert read(dst)[2][G.TENSOR_LUT].tensor_type.name == "Q4_0"
    assert main_convert([str(tmp_path / "missing"), str(dst), "-q"]) == 1
    assert "mole convert: error:" in capsys.readouterr().err


# A conversion that stops inside the LUT stream: the first chunk is written, then it waits to be killed.
_SLOW = r"""
import pathlib, sys, time
import mole_convert.reparam as R
orig = R.LutStream._computed
def slow(self, *args):
    for item in orig(self, *args):
        yield item
        pathlib.Path(sys.argv[3]).write_text("started")
        time.sleep(60)
R.LutStream._computed = slow
from mole_convert.convert import main_convert
sys.exit(main_convert([sys.argv[1], sys.argv[2], "--chunk-tokens", "64", "-q"]))
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_killed_conversion_leaves_no_output(ckpts, tmp_path, sig):
    dst, marker = tmp_path / "out.gguf", tmp_path / "started"
    dst.write_bytes(b"previous file")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(REPO, "python"), os.path.join(REPO, "converter")]))
    p = subprocess.Popen([sys.executable, "-c", _SLOW, str(ckpts.training), str(dst), str(marker)], env=env,
                         stderr=subprocess.PIPE, text=True, preexec_fn=child_takes_sigint)
    try:
        deadline = time.time() + 60
        while not marker.exists():
            assert p.poll() is None, p.stderr.read()
            assert time.time() < deadline, "conversion never reached the LUT"
            time.sleep(0.05)
        assert temp_path(dst, p.pid).stat().st_size > 0       # the partial file exists, beside DST
        p.send_signal(sig)
        rc = p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert dst.read_bytes() == b"previous file"
    if sig == signal.SIGKILL:
        assert rc == -signal.SIGKILL
        assert temp_path(dst, p.pid).exists()                  # nothing can clean up after SIGKILL ...
        convert(ckpts.training, dst, progress=False)           # ... but the next conversion removes it
        assert not temp_path(dst, p.pid).exists() and dst.read_bytes()[:4] == b"GGUF"
    else:
        assert rc == (130 if sig == signal.SIGINT else 128 + signal.SIGTERM)
        assert not temp_path(dst, p.pid).exists()
    assert [x.name for x in tmp_path.iterdir() if ".tmp-" in x.name] == []
