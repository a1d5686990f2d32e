"""The C and C++ sources pass clang-format with the repo's .clang-format (the pinned clang-format
of the `test` extra; other versions lay code out differently, so they are not used)."""
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PINNED = "18.1.8"
SUFFIXES = {".c", ".cpp", ".h", ".cu", ".cuh"}
GENERATED = {"runtime/src/unicode_tables.cpp"}


def sources():
    out = subprocess.run(["git", "ls-files", "runtime", "tests/c", "examples"], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout.split()
    return [f for f in out if Path(f).suffix in SUFFIXES and f not in GENERATED and (REPO / f).is_file()]


def test_clang_format():
    exe = shutil.which("clang-format")
    if exe is None or shutil.which("git") is None:
        pytest.skip("clang-format or git is not installed (pip install clang-format==%s)" % PINNED)
    version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    if PINNED not in version:
        pytest.skip(f"clang-format {PINNED} is pinned; this one is: {version.strip()}")
    files = sources()
    assert files, "no C/C++ sources found"
    r = subprocess.run([exe, "--dry-run", "--Werror", *files], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, "clang-format would change these (run clang-format -i on them):\n" + r.stderr[-6000:]
