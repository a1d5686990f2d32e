"""examples/embed: a C program built against an *installed* libmole (CMake package config), run on a
tiny model; also the pkg-config file that the install writes."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run(cmd, **kw):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=900, **kw)
    assert r.returncode == 0, f"{cmd}\n{r.stdout}\n{r.stderr}"
    return r


@pytest.fixture(scope="module")
def installed(build_dir, tmp_path_factory):
    """libmole installed from the session's CMake tree into a fresh prefix."""
    prefix = tmp_path_factory.mktemp("install") / "prefix"
    run(["cmake", "--install", build_dir, "--prefix", prefix])
    return prefix


def test_embed_example_builds_and_streams(installed, model_factory, tmp_path):
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    run(["cmake", "-S", REPO / "examples" / "embed", "-B", tmp_path / "b", *gen, f"-DCMAKE_PREFIX_PATH={installed}"])
    run(["cmake", "--build", tmp_path / "b"])
    path, _, _ = model_factory(lut_type="q8_0", weight_type="f16", seed=11)
    libdir = next(p.parent for p in installed.rglob("libmole.so"))
    env = dict(os.environ, LD_LIBRARY_PATH=str(libdir))
    r = run([tmp_path / "b" / "embed", path, "Hello", "8"], env=env)
    assert r.stdout.startswith("Hello") and len(r.stdout.strip()) > len("Hello")
    again = run([tmp_path / "b" / "embed", path, "Hello", "8"], env=env)
    assert again.stdout == r.stdout          # greedy: the same text
    bad = subprocess.run([tmp_path / "b" / "embed", tmp_path / "missing.gguf", "x"], capture_output=True,
                         text=True, env=env)
    assert bad.returncode == 1 and "missing.gguf" in bad.stderr


def test_pkg_config_file(installed):
    pcs = list(installed.rglob("mole.pc"))
    assert pcs, "install wrote no mole.pc"
    text = pcs[0].read_text()
    assert "-lmole" in text and "Cflags: -I" in text
    assert (installed / "include" / "mole.h").is_file()
