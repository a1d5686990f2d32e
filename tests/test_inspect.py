"""mole_convert.inspect: metadata, tensor table and LUT summary of converted files; --json; no torch import;
clear errors for missing or malformed files."""
import json
import os
import subprocess
import sys

import pytest

from mole import gguf_names as G
from mole_convert.convert import convert
from mole_convert.inspect import format_inspect, inspect, main_inspect
from mole_convert.testing import make_random_checkpoint, tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("inspect")
    moe = convert(make_random_checkpoint(root / "moe", tiny_config()), root / "moe.gguf", lut_type="q8_0",
                  weight_type="f16", progress=False)
    dense = convert(make_random_checkpoint(root / "dense", tiny_config(num_experts=0), form="dense"),
                    root / "dense.gguf", weight_type="f32", progress=False)
    return moe, dense


def test_inspect_dict(files):
    moe, _ = files
    info = inspect(moe)
    cfg = tiny_config()
    V, n = cfg.vocab_size, cfg.num_hidden_layers * cfg.num_experts * cfg.hidden_size
    assert info["gguf_version"] == 3 and info["file_bytes"] == moe.stat().st_size
    assert info["metadata"][G.KEY_ARCHITECTURE] == "mole"
    assert info["metadata"][G.KEY_EXPERT_COUNT] == cfg.num_experts
    assert len(info["metadata"][G.KEY_TOKENS]) == V
    names = [t["name"] for t in info["tensors"]]
    assert names[-1] == G.TENSOR_LUT and G.TENSOR_TOKEN_EMBD in names
    embd = next(t for t in info["tensors"] if t["name"] == G.TENSOR_TOKEN_EMBD)
    assert embd["type"] == "F16" and embd["shape"] == [cfg.hidden_size, V] and embd["bytes"] == V * cfg.hidden_size * 2
    assert all(t["offset"] % 4096 == 0 for t in info["tensors"])
    lut = info["lut"]
    assert lut["type"] == "Q8_0" and lut["rows"] == V and lut["row_elements"] == n
    assert lut["row_bytes"] == n // 32 * 34 and lut["bytes"] == V * lut["row_bytes"] and lut["is_last"]
    assert info["dense_bytes"] == sum(t["bytes"] for t in info["tensors"][:-1])
    assert lut["lut_to_dense"] == pytest.approx(lut["bytes"] / info["dense_bytes"])


def test_format_summarises_long_arrays(files):
    moe, dense = files
    text = format_inspect(inspect(moe))
    assert "tokenizer.ggml.tokens" in text and f"({tiny_config().vocab_size} items)" in text
    assert "lut.weight" in text and "Q8_0" in text and "bytes per row" in text and "LUT / dense" in text
    assert max(len(line) for line in text.splitlines()) < 300
    assert "no LUT (dense model)" in format_inspect(inspect(dense))


def test_main_inspect_json_and_errors(files, capsys, tmp_path):
    moe, _ = files
    assert main_inspect([str(moe), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["lut"]["type"] == "Q8_0" and len(info["metadata"][G.KEY_TOKENS]) == tiny_config().vocab_size
    assert main_inspect([str(tmp_path / "missing.gguf")]) == 1
    assert "no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 16)
    assert main_inspect([str(bad)]) == 1
    assert "mole inspect: error:" in capsys.readouterr().err


def test_inspect_does_not_import_torch(files):
    moe, _ = files
    code = ("import sys; from mole_convert.inspect import main_inspect; rc = main_inspect([sys.argv[1]]); "
            "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(rc)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(REPO, "python"), os.path.join(REPO, "converter")]))
    r = subprocess.run([sys.executable, "-c", code, str(moe)], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "lut.weight" in r.stdout
