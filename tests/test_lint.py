"""ruff passes on the repository's Python files, with pyproject.toml's [tool.ruff] configuration (CI runs the
test suite, so this is where the lint is enforced). Skipped where ruff is not installed (it is in the test extra)."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _python_files() -> list[str]:
    """The tracked .py files in a git checkout (untracked scratch files are not the project's yet);
    elsewhere, everything ruff finds."""
    if shutil.which("git") and (REPO / ".git").exists():
        r = subprocess.run(["git", "-C", str(REPO), "ls-files", "--", "*.py"], capture_output=True, text=True)
        if r.returncode == 0:
            return [f for f in r.stdout.splitlines() if (REPO / f).is_file()]
    return ["."]


def test_ruff_check_passes():
    pytest.importorskip("ruff")
    files = _python_files()
    assert files, "no Python files found"
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", *files], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, f"ruff check failed (fix, or run `ruff check --fix`):\n{r.stdout}{r.stderr}"
