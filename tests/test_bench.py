"""The CPU benchmark harness (bench/bench_cpu.py) on tiny models: its table and JSON carry every field, the
PyTorch peer's KV-cached decode matches the full model, and the llama twin has the same bytes per token.
Never needs llama-cpp-python; never asserts timings."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))

VARIANT_FIELDS = ("prompt_tps", "decode_tps", "step_ms_median", "bytes_per_token", "bw_fraction", "peak_rss_bytes",
                  "lut_row_bytes", "disk_read_bytes", "distinct_tokens")


def _env():
    """The environment for subprocesses: they import the same mole / mole_convert as this process
    (the installed packages in CI, the source tree with MOLE_LIB in a dev loop)."""
    import mole
    import mole_convert
    env = dict(os.environ)
    roots = [str(Path(pkg.__file__).resolve().parents[1]) for pkg in (mole, mole_convert)]
    env["PYTHONPATH"] = os.pathsep.join(roots + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


@pytest.fixture(scope="module")
def models(model_factory):
    mole_path, _, cfg = model_factory(lut_type="q8_0", weight_type="q8_0")
    dense_path, _, _ = model_factory(lut_type="q8_0", weight_type="q8_0", num_experts=0, form="dense")
    return mole_path, dense_path, cfg


def test_harness_quick_json_and_table(models, tmp_path):
    mole_path, dense_path, cfg = models
    out = tmp_path / "bench.json"
    p = subprocess.run([sys.executable, str(REPO / "bench" / "bench_cpu.py"), "--model", str(mole_path), "--dense",
                        str(dense_path), "--quick", "--skip", "llama", "--json", str(out)],
                       capture_output=True, text=True, env=_env(), timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    for header in ("| runtime | prompt tok/s | decode tok/s", "mole.cpp MoLE (LUT warm)", "mole.cpp dense (N=0)",
                   "PyTorch MoLE", "mole.cpp MoLE (LUT evicted)", "MoLE / dense step time", "bandwidth",
                   "llama.cpp skipped"):
        assert header in p.stdout, f"{header!r} missing from:\n{p.stdout}"
    data = json.loads(out.read_text())
    assert {"cpu", "cores", "commit", "loadavg"} <= set(data["machine"])
    (res,) = data["results"].values()
    v = res["variants"]
    assert set(v) == {"mole", "dense", "torch", "mole-cold"}
    for name, s in v.items():
        for f in VARIANT_FIELDS:
            assert f in s, f"{name} lacks {f}"
        assert s["prompt_tps"] > 0 and s["decode_tps"] > 0 and s["peak_rss_bytes"] > 0
    row = cfg.num_hidden_layers * cfg.num_experts * cfg.hidden_size // 32 * 34   # q8_0 LUT row bytes
    assert v["mole"]["lut_row_bytes"] == row and v["dense"]["lut_row_bytes"] == 0
    # decode reads one LUT row per step at most (the row cache may serve some)
    assert 0 < v["mole"]["lut_bytes_per_decode_token"] <= row
    assert v["dense"]["lut_bytes_per_decode_token"] == 0
    cold = v["mole-cold"]
    for f in ("resident_before", "lut_bytes_in_per_distinct", "disk_bytes_per_distinct"):
        assert f in cold
    assert cold["resident_before"] == 0          # the LUT was evicted before the run
    assert cold["lut_bytes_in_per_distinct"] > 0
    assert {"mole_over_dense_step_warm", "mole_over_dense_step_cold", "decode_vs_torch", "prompt_vs_best_peer",
            "rss_budget_bytes", "interleaved_warm", "interleaved_cold"} <= set(res["ratios"])
    assert res["ratios"]["kv_type"] == "f16"      # the CPU's default cache, which the RSS budget counts
    assert "+ f16 KV cache + 128 MB" in p.stdout
    # interleaved MoLE / dense: every step's token is new to the run, so each one fetches its row
    assert "decode steps interleaved" in p.stdout
    for mode in ("warm", "cold"):
        for r in res["interleaved"][mode]:
            assert r["steps"] == 16 and r["lut_rows_fetched"] == 8 + 16
            assert r["mole_step_ms"] > 0 and r["dense_step_ms"] > 0


def test_gguf_layout_counts_one_lut_row(models):
    import bench_cpu

    mole_path, dense_path, cfg = models
    lay, dense = bench_cpu.gguf_layout(mole_path), bench_cpu.gguf_layout(dense_path)
    row = cfg.num_hidden_layers * cfg.num_experts * cfg.hidden_size // 32 * 34
    assert lay["lut_row_bytes"] == row and lay["lut_bytes"] == row * cfg.vocab_size
    assert lay["lut_offset"] + lay["lut_bytes"] <= lay["file_bytes"]
    router = cfg.num_hidden_layers * cfg.num_experts * cfg.hidden_size * 4     # f32 routers
    assert lay["bytes_per_token"] == dense["bytes_per_token"] + row + router
    assert dense["lut_offset"] == 0 and dense["lut_bytes"] == 0


def test_evict_then_resident_is_zero(models):
    import bench_cpu

    mole_path, _, _ = models
    lay = bench_cpu.gguf_layout(mole_path)
    with open(mole_path, "rb") as f:
        f.read()                                  # whole file in the page cache
    assert bench_cpu.resident_bytes(mole_path, lay["lut_offset"], lay["lut_bytes"]) >= lay["lut_bytes"] - 4096
    bench_cpu.evict(mole_path, lay["lut_offset"])
    assert bench_cpu.resident_bytes(mole_path, lay["lut_offset"], lay["lut_bytes"]) == 0
    assert bench_cpu.resident_bytes(mole_path, 0, 4096) == 4096  # pages before the LUT stay


def test_torch_peer_kv_decode_matches_full_forward(models):
    torch = pytest.importorskip("torch")
    import torch_peer

    mole_path, _, cfg = models
    peer = torch_peer.TorchPeer(mole_path, n_ctx=32, full_lut=True)
    ids = [5, 17, 3, 200, 17, 42, 9, 1]
    with torch.no_grad():
        full = peer.model(torch.tensor([ids]))[0]              # [S, V], MoleForCausalLM.forward, reparam form
    got = [peer.forward(ids[:5], last_only=False)]
    got += [peer.forward([t]).unsqueeze(0) for t in ids[5:]]   # KV-cached steps
    got = torch.cat(got)
    np.testing.assert_allclose(got.numpy(), full.numpy(), rtol=1e-4, atol=1e-4)


def test_llama_twin_equal_bytes_per_token(model_factory, tmp_path):
    pytest.importorskip("gguf")
    import bench_cpu
    import llama_peer

    assert llama_peer.swiglu_width(3072) == 2048 and llama_peer.swiglu_width(2048) == 1376
    dense_path, _, cfg = model_factory(lut_type="q8_0", weight_type="q8_0", num_experts=0, intermediate_size=192,
                                            form="dense")
    twin = llama_peer.write_llama_gguf(dense_path, tmp_path / "twin.gguf")
    import gguf
    r = gguf.GGUFReader(str(twin))
    assert r.fields["general.architecture"].contents() == "llama"
    assert r.fields["llama.feed_forward_length"].contents() == 128
    assert r.fields["llama.embedding_length"].contents() == cfg.hidden_size
    assert bench_cpu.gguf_layout(twin)["bytes_per_token"] == bench_cpu.gguf_layout(dense_path)["bytes_per_token"]
    with pytest.raises(ValueError, match="not a mole GGUF"):
        llama_peer.write_llama_gguf(twin, tmp_path / "twin2.gguf")


def test_llama_peer_reports_why_unavailable(monkeypatch):
    import builtins
    import llama_peer

    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "llama_cpp":
            raise ImportError("No module named 'llama_cpp'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    assert "llama-cpp-python not importable" in llama_peer.available()


def test_mole_bench_cli(models, tmp_path):
    mole_path, dense_path, _ = models
    out = tmp_path / "cli.json"
    p = subprocess.run([sys.executable, "-m", "mole", "bench", "-m", str(mole_path), "--dense", str(dense_path),
                        "--prompt-tokens", "16", "--gen-tokens", "4", "--repeats", "1", "--no-cold",
                        "--json", str(out)],
                       capture_output=True, text=True, env=_env(), timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "mole.cpp MoLE (LUT warm)" in p.stdout and "mole.cpp dense (N=0)" in p.stdout
    assert set(json.loads(out.read_text())["variants"]) == {"mole", "dense"}
    bad = subprocess.run([sys.executable, "-m", "mole", "bench", "-m", str(tmp_path / "none.gguf")],
                         capture_output=True, text=True, env=_env(), timeout=120)
    assert bad.returncode == 1 and "none.gguf" in bad.stderr


def test_prof_batch_batcher_splits_the_step(models, capsys):
    """bench/prof_batch.py --batcher: every step of S greedy jobs, split into mole_decode and the rest."""
    import prof_batch

    r = prof_batch.run_batcher(str(models[0]), 3, 5, 1, 4)
    assert r["S"] == 3 and r["steps"] == 4          # 5 tokens a job: the prompt step, then 4 decode steps
    assert 0 < r["decode_ms"] <= r["step_ms"] and r["rest_ms"] >= 0 and r["tok_s"] > 0
    assert prof_batch.main([str(models[0]), "--seqs", "1,2", "--steps", "3", "--prompt", "4", "--threads", "1",
                            "--batcher"]) == 0
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| 1 ") or ln.startswith("| 2 ")]
    assert len(rows) == 2
