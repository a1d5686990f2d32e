"""bench/lut_quant_study.py on a tiny model: every LUT type converted with the same dense weights, bits per byte
from `mole perplexity`, bits per value and bytes per row from the file, the error against f32 in the expected
order, the gate's KL for the low-bit types; and --lut-error on a converted file."""
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from test_bench import _env

SCRIPT = REPO / "bench" / "lut_quant_study.py"
TEXT = "The lantern keeper walked along the harbour wall every evening, counting the boats as they came in. " * 8


def test_study_on_a_tiny_checkpoint(model_factory, tmp_path):
    _, ckpt, cfg = model_factory("q8_0", "f32")
    text = tmp_path / "held.txt"
    text.write_text(TEXT)
    out = tmp_path / "res.json"
    types = ["f32", "q8_0", "q4_0", "iq4_nl", "q3_k"]
    r = subprocess.run([sys.executable, str(SCRIPT), "--checkpoint", str(ckpt), "--text", str(text), "-c", "64",
                        "--types", *types, "--work", str(tmp_path / "w"), "--json", str(out), "-t", "2"],
                       capture_output=True, text=True, env=_env(), timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(out.read_text())["types"]
    assert list(res) == types
    n = cfg.num_hidden_layers * cfg.num_experts * cfg.hidden_size
    want = {"f32": (32, 4 * n), "q8_0": (8.5, 34 * n // 32), "q4_0": (4.5, 18 * n // 32),
            "iq4_nl": (4.5, 18 * n // 32), "q3_k": (3.4375, 110 * n // 256)}
    for t, (bits, rb) in want.items():
        assert res[t]["bits_per_value"] == pytest.approx(bits) and res[t]["row_bytes"] == rb
        assert 0 < res[t]["bpb"]["held.txt"] < 20
        assert (res[t]["kl_vs_q8_0"] is None) == (t in ("f32", "q8_0"))
    e = {t: res[t]["rel_rmse_vs_f32"] for t in types}
    assert e["f32"] == 0 and e["q8_0"] < e["iq4_nl"] < e["q4_0"] < e["q3_k"]
    assert "| iq4_nl | 4.5 |" in r.stdout and "held.txt bits/byte" in r.stdout


def test_lut_error_mode(model_factory):
    path, _, cfg = model_factory("q8_0", "f32")
    r = subprocess.run([sys.executable, str(SCRIPT), "--lut-error", str(path)], capture_output=True, text=True,
                       env=_env(), timeout=300)
    assert r.returncode == 0, r.stderr
    rows = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[2:-1]]
            for ln in r.stdout.splitlines() if ln.startswith("| q") or ln.startswith("| iq")}
    assert set(rows) == {"q8_0", "q4_0", "iq4_nl", "q3_k"}
    err = {t: float(v[2]) for t, v in rows.items()}
    assert err["q8_0"] == 0 and err["iq4_nl"] < err["q4_0"] < err["q3_k"]


def test_from_gguf_rewrites_only_the_lut(model_factory, tmp_path):
    """--from-gguf: each re-quantized copy loads, keeps every byte before the LUT, and gives the runtime the
    same logits as a conversion straight to that type would, up to the q8_0 rounding the copy starts from."""
    import mole

    path, _, cfg = model_factory("q8_0", "f32")
    text = tmp_path / "held.txt"
    text.write_text(TEXT)
    out = tmp_path / "res.json"
    r = subprocess.run([sys.executable, str(SCRIPT), "--from-gguf", str(path), "--text", str(text), "-c", "64",
                        "--work", str(tmp_path / "w"), "--json", str(out)],
                       capture_output=True, text=True, env=_env(), timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(out.read_text())
    assert list(res["types"]) == ["q8_0", "q4_0", "iq4_nl", "q3_k"]
    src = path.read_bytes()
    for t in ("q4_0", "iq4_nl", "q3_k"):
        copy = tmp_path / "w" / f"{path.stem}-{t}.gguf"
        with mole.Model(str(copy), n_ctx=64) as m:
            assert m.metadata == mole.Model(str(path), n_ctx=64).metadata
            ids = [5, 77, 300, 12, 9]
            want, got = mole.Model(str(path), n_ctx=64).logits(ids), m.logits(ids)
            assert np.abs(got - want).max() <= 0.25 * np.abs(want).max()   # LUT rounding only
        head = copy.read_bytes()
        lut_at = len(src) - res["types"]["q8_0"]["lut_bytes"]
        assert len(head) == lut_at + res["types"][t]["lut_bytes"]
        diff = [i for i in range(lut_at) if head[i] != src[i]]
        assert 0 < len(diff) <= 1   # the LUT's type id (a u32 below 256) alone
        assert res["types"][t]["bpb"]["held.txt"] > 0
