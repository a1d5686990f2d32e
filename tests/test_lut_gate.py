"""The quality gate of LUT types below 8 bits: `mole convert` measures the KL of the next-token distributions
against the q8_0 LUT before writing, stores it in the metadata, refuses past the limit unless forced, and
`mole inspect` shows it; the measured KL is what the runtime's logits of the two files give."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import mole
from mole import gguf_names as G
from mole_convert import checkpoint_names as C
from mole_convert.checkpoint import load_checkpoint, save_checkpoint
from mole_convert.convert import QualityGateError, convert, main_convert
from mole_convert.errors import ConvertError
from mole_convert.lut_gate import DEFAULT_MAX_KL, GATED_LUT_TYPES, calibration_windows, measure
from mole_convert.quantize import BITS
from mole_convert.testing import make_random_checkpoint, make_tiny_tokenizer_json, random_state_dict, tiny_config

TEXT = ("The lantern keeper walked along the harbour wall every evening, counting the boats as they came in. "
        "Some nights there were twelve, some nights there were nine, and once, after a storm, only three. ") * 6


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """benign: the random tiny model; loud: the same with every expert's down projection x40, so the LUT
    dominates the residual stream and a 3-bit LUT visibly moves the predictions."""
    root = tmp_path_factory.mktemp("gate")
    cfg = tiny_config()
    benign = make_random_checkpoint(root / "benign", cfg, seed=5)
    sd = random_state_dict(cfg, 5)
    for name in sd:
        if C.match(name)[0] == C.EXPERT_DOWN:
            sd[name] = sd[name] * 40.0
    loud = save_checkpoint(sd, cfg, root / "loud", tokenizer_json=make_tiny_tokenizer_json(384))
    text = root / "calib.txt"
    text.write_text(TEXT)
    return benign, loud, text


def meta(path):
    with mole.Model(str(path), n_ctx=64) as m:
        return m.metadata


def test_gated_types_are_those_below_8_bits():
    assert set(GATED_LUT_TYPES) == {t for t, b in BITS.items() if b < 8} == {"q4_0", "iq4_nl", "q3_k"}


def test_q8_0_is_the_default_and_carries_no_gate(ckpts, tmp_path):
    out = convert(ckpts[0], tmp_path / "m.gguf", progress=False)
    md = meta(out)
    assert G.KEY_LUT_KL_VS_Q8_0 not in md and G.KEY_LUT_CALIBRATION not in md


def test_gate_refuses_a_lut_that_moves_the_model_and_force_writes_it(ckpts, tmp_path):
    _, loud, _ = ckpts
    dst = tmp_path / "loud.gguf"
    with pytest.raises(QualityGateError, match=r"KL [0-9.]+ nats/token .* passes the limit 0.03.*--force") as e:
        convert(loud, dst, lut_type="q3_k", progress=False)
    assert e.value.result.kl > DEFAULT_MAX_KL
    assert not dst.exists() and not list(tmp_path.glob("loud.gguf.tmp-*"))
    convert(loud, dst, lut_type="q3_k", progress=False, force=True)
    md = meta(dst)
    assert md[G.KEY_LUT_KL_VS_Q8_0] == pytest.approx(e.value.result.kl, rel=1e-6)
    assert "vocabulary permutation" in md[G.KEY_LUT_CALIBRATION]
    assert G.KEY_LUT_PPL_RATIO_VS_Q8_0 not in md           # no text: no perplexity
    # a higher limit lets it through without force
    convert(loud, tmp_path / "lenient.gguf", lut_type="q3_k", progress=False, max_kl=10 * e.value.result.kl)


def test_benign_model_passes_and_records_the_figure(ckpts, tmp_path):
    benign, _, text = ckpts
    out = convert(benign, tmp_path / "b.gguf", lut_type="iq4_nl", progress=False, calibration=text)
    md = meta(out)
    kl = md[G.KEY_LUT_KL_VS_Q8_0]
    assert 0 < kl <= DEFAULT_MAX_KL
    assert md[G.KEY_LUT_PPL_RATIO_VS_Q8_0] > 0 and "text calib.txt" in md[G.KEY_LUT_CALIBRATION]


def runtime_kl(low_path, ref_path, windows) -> float:
    """Mean KL(p_ref || p_low) over every position of the windows, from the runtime's logits."""
    total, n = 0.0, 0
    with mole.Model(str(low_path), n_ctx=256) as lo, mole.Model(str(ref_path), n_ctx=256) as ref:
        for w in windows:
            a = torch.log_softmax(torch.from_numpy(ref.logits([int(i) for i in w])).double(), -1)
            b = torch.log_softmax(torch.from_numpy(lo.logits([int(i) for i in w])).double(), -1)
            total += float((a.exp() * (a - b)).sum())
            n += len(w)
    return total / n


@pytest.mark.parametrize("lut_type,calibrated", [("q3_k", False), ("iq4_nl", True), ("q4_0", True)])
def test_measured_kl_is_what_the_runtime_does(ckpts, tmp_path, lut_type, calibrated):
    """The gate's PyTorch figure equals the KL between the runtime's logits of the two files (f32 weights)."""
    _, loud, text = ckpts
    cal = text if calibrated else None
    low = convert(loud, tmp_path / "low.gguf", lut_type=lut_type, weight_type="f32", progress=False, force=True,
                  calibration=cal)
    ref = convert(loud, tmp_path / "ref.gguf", lut_type="q8_0", weight_type="f32", progress=False)
    windows, _, _ = calibration_windows(load_checkpoint(loud), cal)
    got = meta(low)[G.KEY_LUT_KL_VS_Q8_0]
    assert got == pytest.approx(runtime_kl(low, ref, windows), rel=0.02)


def test_lower_bits_cost_more(ckpts):
    ck = load_checkpoint(ckpts[1])
    kl = {t: measure(ck, t).kl for t in ("q8_0", "iq4_nl", "q3_k")}
    assert kl["q8_0"] == 0.0 and 0 < kl["iq4_nl"] < kl["q3_k"]


def test_reparam_form_measures_the_same(ckpts, tmp_path):
    cfg = tiny_config()
    training = make_random_checkpoint(tmp_path / "t", cfg, seed=5)
    reparam = make_random_checkpoint(tmp_path / "r", cfg, seed=5, form="reparam")
    a, b = measure(load_checkpoint(training), "q3_k"), measure(load_checkpoint(reparam), "q3_k")
    assert a.kl == pytest.approx(b.kl, rel=1e-3) and a.tokens == b.tokens == cfg.vocab_size


def test_calibration_errors(ckpts, tmp_path):
    benign, _, _ = ckpts
    with pytest.raises(FileNotFoundError, match="calibration text .*nope.txt does not exist"):
        convert(benign, tmp_path / "x.gguf", lut_type="q3_k", calibration=tmp_path / "nope.txt", progress=False)
    short = tmp_path / "short.txt"
    short.write_text("Some")
    with pytest.raises(Exception, match="holds [0-9]+ tokens; at least 16 are needed"):
        convert(benign, tmp_path / "x.gguf", lut_type="q3_k", calibration=short, progress=False)
    assert not (tmp_path / "x.gguf").exists()


def test_cli_refuses_forces_and_inspect_shows_the_figure(ckpts, tmp_path, capsys):
    _, loud, text = ckpts
    dst = tmp_path / "cli.gguf"
    assert main_convert([str(loud), str(dst), "--lut-type", "q3_k", "-q"]) == 1
    err = capsys.readouterr().err
    assert "quality gate" in err and "passes the limit 0.03" in err and not dst.exists()
    assert main_convert([str(loud), str(dst), "--lut-type", "q3_k", "--force", "--calibration", str(text),
                         "-q"]) == 0
    r = subprocess.run([sys.executable, "-m", "mole", "inspect", str(dst)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "LUT cost against q8_0 (measured at conversion): KL" in r.stdout and "perplexity x" in r.stdout
    assert G.KEY_LUT_KL_VS_Q8_0 in r.stdout and "Q3_K" in r.stdout and "3.438 bits per value" in r.stdout
    j = json.loads(subprocess.run([sys.executable, "-m", "mole", "inspect", "--json", str(dst)],
                                  capture_output=True, text=True).stdout)
    assert j["lut"]["kl_vs_q8_0"] > DEFAULT_MAX_KL and j["lut"]["type"] == "Q3_K"
    assert j["lut"]["row_bytes"] == 2 * 4 * 64 // 256 * 110


def test_q3_k_needs_rows_of_whole_super_blocks(tmp_path):
    src = make_random_checkpoint(tmp_path / "odd", tiny_config(num_experts=3), seed=1)   # 2*3*64 = 384 values
    with pytest.raises(ConvertError, match=r"LUT row length 384 .* multiple of the q3_k block size 256"):
        convert(src, tmp_path / "odd.gguf", lut_type="q3_k", progress=False)
    assert not (tmp_path / "odd.gguf").exists()


def test_windows_cover_the_vocabulary(ckpts):
    ck = load_checkpoint(ckpts[0])
    windows, is_text, source = calibration_windows(ck, None)
    ids = np.concatenate(windows)
    assert not is_text and sorted(ids.tolist()) == list(range(ck.config.vocab_size))
    assert all(len(w) == 64 for w in windows)
