"""Shared pytest fixtures: tiny models built by code (fixed seeds, no downloads), cached per session."""
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
BUILD = REPO / "build-tests"
# mole_convert.testing looks here first (an installed package cannot find ../shared by its own path).
os.environ.setdefault("MOLE_SHARED_DATA", str(SHARED_DATA))


def shared_data(*parts) -> Path | None:
    """A file under ../shared/data when present (tests fall back or skip without it)."""
    p = SHARED_DATA.joinpath(*parts)
    return p if p.exists() else None


@pytest.fixture(scope="session")
def model_factory(tmp_path_factory):
    """make(lut_type="f32", weight_type="f32", form="training", seed=0, tokenizer="tiny", **config)
    -> path of a converted .gguf (built once per distinct argument set)."""
    pytest.importorskip("torch")
    from mole_convert.convert import convert
    from mole_convert.testing import make_random_checkpoint, tiny_config

    root = tmp_path_factory.mktemp("models")
    cache = {}

    def make(lut_type="f32", weight_type="f32", form="training", seed=0, tokenizer="tiny", **overrides):
        key = json.dumps([lut_type, weight_type, form, seed, tokenizer, sorted(overrides.items())], default=str)
        if key not in cache:
            h = hashlib.sha1(key.encode()).hexdigest()[:12]
            cfg = tiny_config(**overrides)
            ckpt = make_random_checkpoint(root / f"ckpt-{h}", cfg, seed=seed, form=form, tokenizer=tokenizer)
            out = root / f"model-{h}.gguf"
            convert(ckpt, out, lut_type=lut_type, weight_type=weight_type, progress=False)
            cache[key] = (out, ckpt, cfg)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def build_dir():
    """The CMake tree with the C tests and tools on, built once per session into build-tests/."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    cfg = subprocess.run(["cmake", "-S", str(REPO), "-B", str(BUILD), *gen, "-DCMAKE_BUILD_TYPE=Release",
                          "-DMOLE_BUILD_TESTS=ON", "-DMOLE_BUILD_TOOLS=ON"], capture_output=True, text=True)
    assert cfg.returncode == 0, cfg.stdout + cfg.stderr
    jobs = os.environ.get("MOLE_BUILD_JOBS", "2")
    build = subprocess.run(["cmake", "--build", str(BUILD), "-j", jobs], capture_output=True, text=True)
    assert build.returncode == 0, (build.stdout + build.stderr)[-8000:]
    return BUILD




def child_takes_sigint() -> None:
    """preexec_fn for a child a test sends SIGINT: a shell's background job (nohup, `cmd &` without job control)
    starts with SIGINT ignored, the child inherits that, and Python then installs no KeyboardInterrupt handler;
    restoring the default lets the child see Ctrl-C as it would at a terminal."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_DFL)
