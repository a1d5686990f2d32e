"""examples/embed, the README's C example, built against libmole as users get it: the pip-installed package
(`cmake -Dmole_DIR=$(python -c 'import mole; print(mole.get_cmake_dir())')`, and pkg-config over
mole.get_pkgconfig_dir()), and a `cmake --install --prefix P` tree, which must work where it lies and after it moves
(moleTargets.cmake and mole.pc find the prefix from their own location). Each build runs the program on a model."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "embed"
JOBS = os.environ.get("MOLE_BUILD_JOBS", "2")
GEN = ["-G", "Ninja"] if shutil.which("ninja") else []

pytestmark = pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")


def run(cmd, **kw):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=900, **kw)
    assert r.returncode == 0, f"{cmd}\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return r


def clean_env(**extra) -> dict:
    """The environment without this session's dev overrides (MOLE_LIB, PYTHONPATH, PKG_CONFIG_PATH)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MOLE_LIB", "PYTHONPATH", "PKG_CONFIG_PATH")}
    env.update({k: str(v) for k, v in extra.items()})
    return env


@pytest.fixture(scope="module")
def model(model_factory):
    return model_factory(lut_type="q8_0", weight_type="f16", seed=11)[0]


@pytest.fixture(scope="module")
def pip_installed(tmp_path_factory):
    """This tree pip-installed into a folder of its own, as `pip install .` does it (the wheel's files), with the
    CPU backend only (the install rules do not depend on it) and offline (--no-build-isolation)."""
    pytest.importorskip("scikit_build_core", reason="building the wheel offline needs scikit-build-core (.[test])")
    root = tmp_path_factory.mktemp("pip")
    site = root / "site"
    run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-compile", "--target", site,
         "-C", "cmake.define.MOLE_CUDA=OFF", "-C", f"build-dir={root / 'build'}", REPO],
        env=clean_env(CMAKE_BUILD_PARALLEL_LEVEL=JOBS))
    return site


def installed_dirs(site) -> tuple[Path, Path]:
    """(mole.get_cmake_dir(), mole.get_pkgconfig_dir()) as the pip-installed package answers them. The child sees
    the pip target first, then this interpreter's site-packages without their .pth files (-S): the import hook of
    an editable install would hand it the source tree's mole instead."""
    import site as site_module

    path = os.pathsep.join([str(site), *site_module.getsitepackages(), site_module.getusersitepackages()])
    code = "import mole; print(mole.__file__); print(mole.get_cmake_dir()); print(mole.get_pkgconfig_dir())"
    out = run([sys.executable, "-S", "-c", code], env=clean_env(PYTHONPATH=path), cwd=site.parent).stdout.split("\n")
    assert Path(out[0]).is_relative_to(site), out[0]
    return Path(out[1]), Path(out[2])


def check_greedy_run(exe, model, env=None):
    r = run([exe, model, "Hello", "8"], env=env)
    assert r.stdout.startswith("Hello") and len(r.stdout.strip()) > len("Hello")
    assert run([exe, model, "Hello", "8"], env=env).stdout == r.stdout        # greedy: the same text
    bad = subprocess.run([str(exe), str(Path(model).with_name("missing.gguf")), "x"], capture_output=True, text=True,
                         env=env)
    assert bad.returncode == 1 and "missing.gguf" in bad.stderr


def build_example(tmp_path, *cmake_args) -> Path:
    run(["cmake", "-S", EXAMPLE, "-B", tmp_path / "b", *GEN, *cmake_args], env=clean_env())
    run(["cmake", "--build", tmp_path / "b"], env=clean_env())
    return tmp_path / "b" / "embed"


def found_mole_dir(tmp_path) -> Path:
    """The moleConfig.cmake folder the example's CMake build used (mole_DIR in its cache)."""
    m = re.search(r"^mole_DIR:\w+=(.*)$", (tmp_path / "b" / "CMakeCache.txt").read_text(), re.M)
    return Path(m.group(1))


def pkg_config(pc_dir, *args) -> str:
    if shutil.which("pkg-config") is None:
        pytest.skip("pkg-config is not installed")
    return run(["pkg-config", *args, "mole"], env=clean_env(PKG_CONFIG_PATH=pc_dir)).stdout.strip()


def check_pkg_config_paths(pc_dir, inside: Path) -> dict:
    """pkg-config's prefix, libdir and includedir exist, lie inside `inside` and hold libmole and mole.h."""
    paths = {v: Path(pkg_config(pc_dir, f"--variable={v}")).resolve() for v in ("prefix", "libdir", "includedir")}
    for v, p in paths.items():
        assert p.is_dir() and p.is_relative_to(inside.resolve()), (v, p)
    assert (paths["libdir"] / "libmole.so").is_file() and (paths["includedir"] / "mole.h").is_file()
    flags = pkg_config(pc_dir, "--cflags", "--libs")
    assert "-lmole" in flags and "/usr/local" not in flags, flags
    return paths


def cc_with_pkg_config(pc_dir, tmp_path) -> Path:
    """examples/embed/main.c compiled with `cc $(pkg-config --cflags --libs mole)` (the README's second way)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    flags = pkg_config(pc_dir, "--cflags", "--libs").split()
    libdir = pkg_config(pc_dir, "--variable=libdir")
    exe = tmp_path / "embed-pc"
    run([cc, EXAMPLE / "main.c", *flags, f"-Wl,-rpath,{libdir}", "-o", exe])
    return exe


# ---- the pip-installed package -----------------------------------------------------------------------------------

def test_wheel_ships_cmake_and_pkg_config_files(pip_installed):
    cmake_dir, pc_dir = installed_dirs(pip_installed)
    assert cmake_dir == pip_installed / "mole" / "cmake"
    for name in ("moleConfig.cmake", "moleConfigVersion.cmake", "moleTargets.cmake"):
        assert (cmake_dir / name).is_file(), name
    assert pc_dir == pip_installed / "mole" / "pkgconfig" and (pc_dir / "mole.pc").is_file()
    assert str(pip_installed) not in (pc_dir / "mole.pc").read_text()   # relative: the wheel is built elsewhere


def test_embed_builds_against_the_pip_installed_package(pip_installed, model, tmp_path):
    cmake_dir, _ = installed_dirs(pip_installed)
    exe = build_example(tmp_path, f"-Dmole_DIR={cmake_dir}")
    check_greedy_run(exe, model)                  # no LD_LIBRARY_PATH: the build records where libmole lies
    assert found_mole_dir(tmp_path) == cmake_dir


def test_pkg_config_of_the_pip_installed_package(pip_installed, model, tmp_path):
    _, pc_dir = installed_dirs(pip_installed)
    paths = check_pkg_config_paths(pc_dir, pip_installed / "mole")
    assert paths["libdir"] == (pip_installed / "mole").resolve()
    check_greedy_run(cc_with_pkg_config(pc_dir, tmp_path), model)


def test_readme_c_steps_run_as_written(pip_installed, tmp_path):
    """The README's C build steps, run as they are written (all but `pip install .`), from a folder that looks like
    the clone's root, with `python` the pip-installed package's interpreter."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("\n## C\n"):]
    block = next(b for b in re.findall(r"```bash\n(.*?)```", section, re.S) if "get_cmake_dir" in b)
    script = "\n".join(line for line in block.splitlines() if not line.startswith("pip install"))
    assert "-Dmole_DIR=" in script and "pkg-config --cflags --libs mole" in script
    import site as site_module

    path = os.pathsep.join([str(pip_installed), *site_module.getsitepackages(), site_module.getusersitepackages()])
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(f'#!/bin/sh\nPYTHONPATH="{path}" exec "{sys.executable}" -S "$@"\n')
    (bin_dir / "python").chmod(0o755)
    root = tmp_path / "clone"
    root.mkdir()
    (root / "examples").symlink_to(REPO / "examples")
    env = clean_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    r = run(["bash", "-euo", "pipefail", "-c", script], cwd=root, env=env)
    first, second = [line for line in r.stdout.splitlines() if line.startswith("It is a truth")]
    assert len(first) > len("It is a truth") and first == second    # greedy, both builds: the same text


# ---- cmake --install --prefix P --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """libmole built (CPU backend, no tests or tools) and installed with `cmake --install --prefix P`."""
    root = tmp_path_factory.mktemp("install")
    build = root / "build"
    run(["cmake", "-S", REPO, "-B", build, *GEN, "-DCMAKE_BUILD_TYPE=Release", "-DMOLE_CUDA=OFF",
         "-DMOLE_BUILD_TESTS=OFF", "-DMOLE_BUILD_TOOLS=OFF"], env=clean_env())
    run(["cmake", "--build", build, "-j", JOBS], env=clean_env())
    prefix = root / "prefix"
    run(["cmake", "--install", build, "--prefix", prefix], env=clean_env())
    return prefix


def test_embed_builds_against_an_install_prefix(installed, model, tmp_path):
    exe = build_example(tmp_path, f"-DCMAKE_PREFIX_PATH={installed}")
    libdir = next(p.parent for p in installed.rglob("libmole.so"))
    check_greedy_run(exe, model, env=dict(os.environ, LD_LIBRARY_PATH=str(libdir)))


def test_pkg_config_file_is_relative_to_its_folder(installed, model, tmp_path):
    (pc,) = installed.rglob("mole.pc")
    text = pc.read_text()
    assert "prefix=${pcfiledir}/" in text and "/usr/local" not in text and str(installed) not in text, text
    assert (installed / "include" / "mole.h").is_file()
    check_pkg_config_paths(pc.parent, installed)
    # the same tree moved elsewhere: pkg-config's paths and a CMake build follow it
    moved = tmp_path / "moved"
    shutil.copytree(installed, moved, symlinks=True)
    (pc,) = moved.rglob("mole.pc")
    check_pkg_config_paths(pc.parent, moved)
    check_greedy_run(cc_with_pkg_config(pc.parent, tmp_path), model)
    exe = build_example(tmp_path, f"-DCMAKE_PREFIX_PATH={moved}")
    assert found_mole_dir(tmp_path) == next(moved.rglob("moleConfig.cmake")).parent
    libdir = next(p.parent for p in moved.rglob("libmole.so"))
    check_greedy_run(exe, model, env=dict(os.environ, LD_LIBRARY_PATH=str(libdir)))
