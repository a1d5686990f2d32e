"""The CUDA backend: its kernels pass the SASS check (no local memory; __dp4a in the quantized
matrix kernels), a machine without a GPU or driver gets a status naming why, and end-to-end logits
through it match the CPU backend's and PyTorch's: on the SIMT executor (libmole_simt.so) always,
and on a real GPU when this machine has one."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mole

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from cuda_parity import IDS  # noqa: E402
from test_parity import reference, rel_err  # noqa: E402

# (LUT type, weight type, tolerance vs float64 PyTorch: the CPU's stated ones, test_parity.py)
CASES = [("f32", "f32", None), ("f16", "f32", 5e-4), ("q8_0", "f32", 1e-2), ("q4_0", "f32", 1e-1),
         ("q8_0", "q8_0", 5e-2), ("q4_0", "f16", 1e-1), ("iq4_nl", "f32", 1e-1), ("q3_k", "f32", 2e-1)]


def cmake_option(build_dir, name):
    cache = (Path(build_dir) / "CMakeCache.txt").read_text()
    m = re.search(rf"^{name}:BOOL=(\w+)", cache, re.M)
    return bool(m) and m.group(1).upper() in ("ON", "TRUE", "1")


def test_kernels_pass_sass_check(build_dir, tmp_path):
    if not cmake_option(build_dir, "MOLE_CUDA"):
        pytest.skip("this build has no CUDA backend (nvcc not found)")
    objs = sorted(Path(build_dir).glob("CMakeFiles/mole_objects.dir/runtime/src/backend/cuda/*.cu.o"))
    assert objs, "CUDA is on but no kernel objects were built"
    table = tmp_path / "kernels.md"
    check = REPO / "tools" / "cuda_sass_check.py"
    r = subprocess.run([sys.executable, str(check), *map(str, objs), "--out", str(table)],
                       capture_output=True, text=True)
    if r.returncode == 2:
        pytest.skip(r.stderr.strip())
    assert r.returncode == 0, r.stdout + r.stderr
    text = table.read_text()
    for arch in ("sm_80", "sm_90"):
        assert f"| {arch} |" in text, f"no {arch} code in the build"
    assert re.search(r"mv_quant_kernel<1, false>` \| sm_90 \| \d+ \| \d+ \| 0 \| 0 \| [1-9]", text)


def cuda_usable():
    return " cuda=1 " in mole.system_info() + " "


def test_without_gpu_the_status_names_why(model_factory):
    info = mole.system_info()
    assert re.search(r"cuda=[01] \(.+\)", info), info
    if cuda_usable():
        pytest.skip("this machine has a usable GPU")
    path, _, _ = model_factory("f32", "f32")
    with pytest.raises(mole.UnsupportedError, match="CUDA") as e:
        mole.Model(str(path), device="cuda")
    reason = info.split("cuda=0 (", 1)[1]
    assert "driver" in str(e.value) or "device" in str(e.value) or "not built" in reason, str(e.value)


def run_parity(lib, model_factory, tmp_path):
    paths = [str(model_factory(lut, w)[0]) for lut, w, _ in CASES]
    out = tmp_path / "parity.npz"
    env = dict(os.environ, MOLE_LIB=str(lib), PYTHONPATH=os.pathsep.join(sys.path))
    r = subprocess.run([sys.executable, str(REPO / "tests" / "cuda_parity.py"), str(out), *paths], env=env,
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    got = np.load(out)
    for i, (lut, w, tol) in enumerate(CASES):
        cpu, gpu = got[f"cpu{i}"].astype(np.float64), got[f"gpu{i}"]
        err_cpu = rel_err(gpu, cpu)
        if tol is None:   # f32: within 1e-4 of the CPU, and 64 greedy tokens identical
            assert err_cpu <= 1e-4, f"{lut}/{w}: CUDA vs CPU relative error {err_cpu:.3g}"
            np.testing.assert_array_equal(got[f"gpu_greedy{i}"], got[f"cpu_greedy{i}"])
        else:
            _, _, cfg = model_factory(lut, w)
            err = rel_err(gpu, reference(cfg, "training", IDS))
            assert err <= tol, f"{lut}/{w}: CUDA vs PyTorch relative error {err:.3g} > {tol}"
        # Only the uncached distinct rows cross, once each; the second evaluation finds them all cached.
        rows, to_device, to_device_after, hits, row_bytes = got[f"lut{i}"]
        k = len(set(IDS))
        assert (rows, to_device) == (k, k * row_bytes), (lut, w, rows, to_device, k, row_bytes)
        assert to_device_after == to_device and hits == k, (lut, w, to_device_after, hits)


def test_end_to_end_on_the_simt_executor(build_dir, model_factory, tmp_path):
    lib = Path(build_dir) / "libmole_simt.so"
    if not lib.is_file():
        pytest.skip("libmole_simt.so is not built (no CUDA sources in this build)")
    run_parity(lib, model_factory, tmp_path)


def test_end_to_end_on_a_gpu(model_factory, tmp_path):
    if not cuda_usable():
        pytest.skip("no usable GPU here: " + mole.system_info().split("cuda=", 1)[-1])
    from mole import _ffi
    run_parity(_ffi.get().path, model_factory, tmp_path)


@pytest.mark.parametrize("order", ["forward", "reverse"])
def test_op_table_on_the_simt_executor(build_dir, order):
    """Every op of the CUDA backend, its kernels run by the SIMT executor in both thread orders,
    against the double references and the CPU backend (tests/c/test_backend_ops.cpp)."""
    exe = Path(build_dir) / "test_backend_ops_simt"
    assert exe.is_file(), f"{exe} was not built"
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=900,
                       env=dict(os.environ, MOLE_SIMT_ORDER=order))
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "cuda" in r.stdout.splitlines()[0] and "skip cuda" not in r.stdout, r.stdout[:2000]


def test_gpu_check_dry_run(build_dir, tmp_path):
    """bench/gpu_check.sh, the script prepared for a lent GPU, as far as this machine allows: on the
    suite's build, its op table and parity on the SIMT executor, the random models, the benchmark
    harness through libmole_simt.so and the report (results.md / results.json)."""
    if not cmake_option(build_dir, "MOLE_CUDA") or shutil.which("nvcc") is None:
        pytest.skip("no nvcc: the script builds the CUDA backend")
    env = dict(os.environ, OUT=str(tmp_path), MOLE_GPU_CHECK_BUILD=str(build_dir))
    env.pop("MOLE_LIB", None)
    r = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--dry-run"], env=env, capture_output=True,
                       text=True, timeout=1800)
    assert r.returncode == 0 and "all steps passed" in r.stdout, r.stdout[-6000:] + r.stderr[-3000:]
    report = (tmp_path / "results.md").read_text()
    assert "| evicted | 1 |" in report and "| warm | 8 |" in report, report
    res = __import__("json").loads((tmp_path / "results.json").read_text())
    evicted = res["tiny"]["evicted"]["batch1"]["mole"]
    assert evicted["lut_bytes_to_device_per_step"] > 0 and res["tiny"]["warm"]["batch1"]["mole"][
        "lut_bytes_to_device_per_step"] == 0
