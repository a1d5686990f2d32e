"""The `mole` command as a fresh `pip install .` has it: no converter dependencies. The child interpreter imports
the same mole / mole_convert as the tests (the installed packages, or the source tree with MOLE_LIB) and cannot
import the modules of the [convert] extra."""
import os
import subprocess
import sys
from pathlib import Path

# pyproject.toml's [convert] extra, by import name.
CONVERT_EXTRA = ("torch", "gguf", "safetensors", "tokenizers", "tqdm")

_MAIN = ("import sys\n"
         "MISSING = set(filter(None, sys.argv[1].split(',')))\n"
         "class NotInstalled:   # what the import system says when a package is not installed\n"
         "    def find_spec(self, name, path=None, target=None):\n"
         "        if name.split('.')[0] in MISSING:\n"
         "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
         "sys.meta_path.insert(0, NotInstalled())\n"
         "from mole.cli import main\n"
         "sys.exit(main(sys.argv[2:]))\n")


def env() -> dict:
    """os.environ, with PYTHONPATH leading to the mole and mole_convert this process imported."""
    import mole
    import mole_convert
    out = dict(os.environ)
    roots = [str(Path(pkg.__file__).resolve().parents[1]) for pkg in (mole, mole_convert)]
    out["PYTHONPATH"] = os.pathsep.join(roots + ([out["PYTHONPATH"]] if out.get("PYTHONPATH") else []))
    out.pop("MOLE_BENCH_DIR", None)
    return out


def mole(*args, missing=CONVERT_EXTRA, stdin=None, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    """`mole ARGS...` with the modules in `missing` unimportable."""
    return subprocess.run([sys.executable, "-c", _MAIN, ",".join(missing), *map(str, args)], input=stdin,
                          capture_output=True, text=True, env=env(), cwd=cwd, timeout=timeout)
