"""The C and C++ code under sanitizers, as CI runs it (issue 12): every C test program, the op table
on the SIMT executor (the CUDA backend's kernels on the CPU) and the fuzz corpus replays, built with
AddressSanitizer + UndefinedBehaviorSanitizer from the asan preset; a subset of the Python tests with
that library preloaded; and the threaded tests (several contexts on one model, cancel from another
thread, the LUT staging pipeline against its fake asynchronous device) under ThreadSanitizer."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
C_TESTS = sorted(p.stem for p in (REPO / "tests" / "c").glob("test_*.cpp"))
FUZZ = ["gguf", "model", "tokenizer", "detokenizer"]
JOBS = os.environ.get("MOLE_BUILD_JOBS", "2")


def build(name, extra, targets):
    if shutil.which("cmake") is None or shutil.which("ninja") is None:
        pytest.skip("cmake and ninja are needed")
    out = REPO / "build-tests" / name
    cfg = subprocess.run(["cmake", *extra, "-S", str(REPO), "-B", str(out)], capture_output=True, text=True)
    assert cfg.returncode == 0, cfg.stdout + cfg.stderr
    b = subprocess.run(["cmake", "--build", str(out), "-j", JOBS, "--target", *targets], capture_output=True, text=True)
    assert b.returncode == 0, (b.stdout + b.stderr)[-8000:]
    return out


@pytest.fixture(scope="module")
def asan():
    """The asan preset (CMakePresets.json) into build-tests/asan."""
    return build("asan", ["--preset", "asan"], [*C_TESTS, "test_backend_ops_simt", "mole",
                                                 *(f"fuzz_{t}_replay" for t in FUZZ)])


@pytest.fixture(scope="module")
def tsan():
    flags = "-fsanitize=thread -fno-omit-frame-pointer"
    return build("tsan", ["-G", "Ninja", "-DCMAKE_BUILD_TYPE=RelWithDebInfo", "-DMOLE_CUDA=OFF",
                          "-DMOLE_BUILD_TESTS=ON", f"-DCMAKE_CXX_FLAGS={flags}", f"-DCMAKE_EXE_LINKER_FLAGS={flags}",
                          f"-DCMAKE_SHARED_LINKER_FLAGS={flags}"], ["test_lut_pipeline", "test_concurrency"])


def run(cmd, env=None, timeout=1800):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=dict(os.environ, **(env or {})))
    report = r.stdout[-3000:] + r.stderr[-8000:]
    assert r.returncode == 0, report
    for bad in ("AddressSanitizer", "runtime error:", "ThreadSanitizer", "LeakSanitizer"):
        assert bad not in r.stderr, report
    return r


ASAN_ENV = {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0", "UBSAN_OPTIONS": "print_stacktrace=1"}


@pytest.mark.parametrize("name", C_TESTS + ["test_backend_ops_simt"])
def test_c_program_under_asan_ubsan(asan, name):
    run([str(asan / name)], ASAN_ENV)


@pytest.mark.parametrize("target", FUZZ)
def test_fuzz_corpus_under_asan_ubsan(asan, target):
    r = run([str(asan / f"fuzz_{target}_replay"), str(REPO / "tests" / "fuzz_corpus" / target)], ASAN_ENV)
    assert "replayed" in r.stdout


def test_python_subset_under_asan(asan, model_factory):
    """The runtime, API and parity tests, the malformed-file corpus and the bad-input tests through the ASan+UBSan
    library, preloaded into Python."""
    libasan = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    if not libasan or not Path(libasan).exists():
        pytest.skip("libasan.so not found")
    model_factory("f32", "f32")   # the fixtures' models are built outside ASan (torch and all)
    path = [str(REPO / "python"), str(REPO / "converter"), os.environ.get("PYTHONPATH", "")]
    env = {"LD_PRELOAD": libasan, "MOLE_LIB": str(asan / "libmole.so"), "PYTHONPATH": os.pathsep.join(path),
           "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0:verify_asan_link_order=0"}
    run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "tests/test_runtime.py",
         "tests/test_api.py", "tests/test_tokenizer.py", "tests/test_malformed.py", "tests/test_bad_input.py",
         "-k", "not neox and not NeoX"], env)


@pytest.mark.parametrize("name", ["test_lut_pipeline", "test_concurrency"])
def test_threads_under_thread_sanitizer(tsan, name):
    run([str(tsan / name)], {"TSAN_OPTIONS": "halt_on_error=1 second_deadlock_stack=1"})
