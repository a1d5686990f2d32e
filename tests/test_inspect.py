"""mole.inspect (`mole inspect`): metadata, tensor table and LUT summary of converted files, read through libmole's
validated loader; --json; the same view as gguf.GGUFReader's; works without gguf and torch (the base install);
the runtime's messages for missing, malformed and truncated files."""
import json
import subprocess
import sys

import pytest

import base_install
import mole
from mole import gguf_names as G
from mole.inspect import format_inspect, inspect, main_inspect
from mole_convert.convert import convert
from mole_convert.testing import make_random_checkpoint, tiny_config


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
    code = ("import sys; from mole.inspect import main_inspect; rc = main_inspect([sys.argv[1]]); "
            "assert 'torch' not in sys.modules, 'torch was imported'; "
            "assert 'gguf' not in sys.modules, 'gguf was imported'; sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code, str(moe)], env=base_install.env(), capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert "lut.weight" in r.stdout


def test_mole_inspect_on_the_base_install(files):
    """`pip install .` has no gguf package (nor torch): `mole inspect` reads through libmole and prints the same."""
    moe, _ = files
    r = base_install.mole("inspect", moe)
    assert r.returncode == 0, r.stderr
    assert r.stdout == format_inspect(inspect(moe)) + "\n"
    r = base_install.mole("inspect", moe, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == json.loads(json.dumps(inspect(moe)))


@pytest.mark.parametrize("which", ["moe", "dense"])
def test_same_view_as_gguf_reader(files, which):
    """libmole's metadata and tensor table equal gguf.GGUFReader's (the reader `mole inspect` used before), values
    and their types: a float key stays a float (10000.0, not 10000) and an f32 shows its exact value."""
    gguf = pytest.importorskip("gguf")
    import numpy as np

    path = files[0] if which == "moe" else files[1]
    r = gguf.GGUFReader(path)

    def value(f):
        v = list(f.contents()) if f.types[0] == gguf.GGUFValueType.ARRAY else f.contents()
        return v.item() if isinstance(v, np.generic) else v

    want_meta = {k: value(f) for k, f in r.fields.items() if not k.startswith("GGUF.")}
    info = inspect(path)
    assert list(info["metadata"]) == list(want_meta)
    for k, v in want_meta.items():
        got = info["metadata"][k]
        assert got == v and type(got) is type(v), (k, got, v)
    assert info["metadata"][G.KEY_ROPE_FREQ_BASE] == 10000.0 and isinstance(info["metadata"][G.KEY_ROPE_FREQ_BASE],
                                                                              float)
    assert info["gguf_version"] == int(r.fields["GGUF.version"].contents())
    want = [{"name": t.name, "type": t.tensor_type.name, "shape": [int(x) for x in t.shape], "bytes": int(t.n_bytes),
             "offset": int(t.data_offset)} for t in r.tensors]
    assert info["tensors"] == want


def test_truncated_file_gets_the_runtime_message(files, tmp_path, capsys):
    """A cut-off file is named as such by libmole's loader (FormatError), not a numpy reshape ValueError."""
    moe, _ = files
    data = moe.read_bytes()
    for n in (len(data) // 2, 4096 + 100, 64):
        cut = tmp_path / f"cut-{n}.gguf"
        cut.write_bytes(data[:n])
        with pytest.raises(mole.FormatError) as e:
            inspect(cut)
        assert str(cut) in str(e.value) and "truncated" in str(e.value), str(e.value)
        assert main_inspect([str(cut)]) == 1
        err = capsys.readouterr().err
        assert err.startswith("mole inspect: error: ") and "truncated" in err and "reshape" not in err
    r = base_install.mole("inspect", cut)
    assert r.returncode == 1 and "truncated" in r.stderr and "Traceback" not in r.stderr


def test_inspect_output_into_a_closed_pipe(files):
    """`mole inspect FILE | head`: no "[Errno 32] Broken pipe", no traceback; the exit status of a Unix tool that
    SIGPIPE ended (141)."""
    moe, _ = files
    p = subprocess.Popen([sys.executable, "-m", "mole", "inspect", str(moe), "--json"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=base_install.env())
    p.stdout.close()                     # the reader is gone before the first write
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141, err
    assert err == ""
    # a real pipeline, on output much longer than a pipe's buffer (the demo model's vocabulary and merges)
    r = subprocess.run(["bash", "-o", "pipefail", "-c", f'"{sys.executable}" -m mole inspect --json '
                        f'"{mole.demo_model_path()}" | head -n 3; echo "status ${{PIPESTATUS[0]}}" >&2'],
                       capture_output=True, text=True, env=base_install.env(), timeout=120)
    assert r.stdout.splitlines()[0] == "{" and len(r.stdout.splitlines()) == 3
    assert r.stderr.strip() == "status 141", r.stderr
