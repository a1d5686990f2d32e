"""Builds the CMake tree with the C tests on (into build-tests/, once per session) and runs every
tests/c/test_* program; also runs mole-cli on a converted model. A non-zero exit fails."""
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
C_TESTS = sorted(p.stem for p in (REPO / "tests" / "c").glob("test_*.cpp"))


@pytest.mark.parametrize("name", C_TESTS)
def test_c_program(build_dir, name):
    exe = build_dir / name
    assert exe.is_file(), f"{exe} was not built"
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{name} exited {r.returncode}\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"


def test_mole_cli(build_dir, model_factory):
    cli = build_dir / "mole-cli"
    assert cli.is_file()
    r = subprocess.run([str(cli), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "usage: mole-cli" in r.stdout
    path, _, _ = model_factory("q8_0", "f16")
    args = [str(cli), "-m", str(path), "-p", "The quick brown", "-n", "12", "-t", "1", "--temp", "0"]
    r1 = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert r1.returncode == 0, r1.stderr
    assert r1.stdout.startswith("The quick brown") and len(r1.stdout) > len("The quick brown\n")
    r2 = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert r2.stdout == r1.stdout   # greedy is deterministic
    sampled = [str(cli), "-m", str(path), "-p", "Hello", "-n", "8", "-t", "1", "--temp", "0.9", "--seed", "7",
               "--top-k", "20", "--top-p", "0.9", "--ctx", "64"]
    r3 = subprocess.run(sampled, capture_output=True, text=True, timeout=120)
    r4 = subprocess.run(sampled, capture_output=True, text=True, timeout=120)
    assert r3.returncode == 0 and r3.stdout == r4.stdout
    # Errors go to stderr with a non-zero exit.
    bad = subprocess.run([str(cli), "-m", str(path) + ".missing", "-p", "x"], capture_output=True, text=True)
    assert bad.returncode != 0 and "no such file" in bad.stderr and bad.stdout == ""
    bad = subprocess.run([str(cli), "-m", str(path)], capture_output=True, text=True)
    assert bad.returncode != 0 and "-p PROMPT" in bad.stderr
    bad = subprocess.run([str(cli), "-m", str(path), "-p", "x", "--temp", "hot"], capture_output=True, text=True)
    assert bad.returncode != 0 and "bad value 'hot' for --temp" in bad.stderr

