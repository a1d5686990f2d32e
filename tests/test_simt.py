"""The SIMT executor's own tests (tests/simt): built as a small CMake project of their own into
build-tests/simt-release and build-tests/simt-asan (ASan + UBSan), and run three ways: threads in
forward order, in reverse order, and under the sanitizers (both orders). Correct kernels pass every
way; each planted bug is caught with a message naming it. Also: the same kernel file and compat.cuh
compile under nvcc for sm_80 and sm_90 with every warning an error."""
import os
import re
import shutil
import subprocess

import pytest

from conftest import BUILD, REPO

SIMT = REPO / "tests" / "simt"
EXE = "test_simt_executor"


def _build(flavour):
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    out = BUILD / f"simt-{flavour}"
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    opts = ["-DMOLE_SIMT_SANITIZE=" + ("ON" if flavour == "asan" else "OFF")]
    cfg = subprocess.run(["cmake", "-S", str(SIMT), "-B", str(out), *gen, *opts], capture_output=True, text=True)
    assert cfg.returncode == 0, cfg.stdout + cfg.stderr
    jobs = os.environ.get("MOLE_BUILD_JOBS", "2")
    build = subprocess.run(["cmake", "--build", str(out), "-j", jobs], capture_output=True, text=True)
    assert build.returncode == 0, (build.stdout + build.stderr)[-8000:]
    return out / EXE


@pytest.fixture(scope="module")
def executables():
    return {flavour: _build(flavour) for flavour in ("release", "asan")}


def _run(exe, order):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOLE_SIMT_")}
    env["MOLE_SIMT_ORDER"] = order
    return subprocess.run([str(exe)], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("flavour,order", [("release", "forward"), ("release", "reverse"),
                                           ("asan", "forward"), ("asan", "reverse")])
def test_executor(executables, flavour, order):
    r = _run(executables[flavour], order)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-8000:]
    assert f"thread order {order}" in r.stdout
    m = re.search(r"^(\d+) of (\d+) tests passed$", r.stdout, re.M)
    assert m and m.group(1) == m.group(2) and int(m.group(2)) >= 20, r.stdout[-4000:]
    # Each planted bug was caught, with a message saying what went wrong.
    assert "missing __syncthreads, forward order: wrong result" in r.stdout
    assert re.search(r"kernel 'barrier_after_return_kernel' block \(0,0,0\) thread \(100,0,0\).*barrier divergence: "
                     r"this thread has returned", r.stdout)
    assert re.search(r"kernel 'shuffle_exited_kernel' .*__shfl_down_sync\(mask 0xffffffff\).* waits for lane 16 "
                     r"\(thread \(16,0,0\)\), which has exited", r.stdout)
    assert "4096 bytes to offset 0 of a device allocation of 1024 bytes run past its end" in r.stdout
    assert re.search(r"cudaMemcpy \(HostToDevice\): the destination \S+ is not a device allocation", r.stdout)
    if flavour == "asan":   # the sanitizer cases ran (in children), none skipped
        assert "skipped" not in r.stdout, r.stdout
        assert "AddressSanitizer: heap-buffer-overflow" in r.stdout
        assert "AddressSanitizer: stack-buffer-overflow" in r.stdout
        assert "load of misaligned address" in r.stdout and "for type 'const int'" in r.stdout
    else:
        assert "skipped: not an ASan build" in r.stdout


@pytest.mark.parametrize("arch", ["80", "90"])
def test_kernels_compile_under_nvcc(arch, tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not installed")
    r = subprocess.run([nvcc, "-std=c++17", f"-arch=sm_{arch}", "-Werror", "all-warnings",
                        "-Xptxas=-warn-spills,-warn-lmem-usage", "-I", str(REPO / "runtime" / "src"), "-I", str(SIMT),
                        "-c", str(SIMT / "test_kernels.cu"), "-o", str(tmp_path / "k.o")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
