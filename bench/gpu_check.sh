#!/usr/bin/env bash
# The one prepared check for a lent GPU (issue 11); it finishes in about 8 minutes on an H200.
#   bench/gpu_check.sh [--dry-run]
# In order: builds with CUDA; runs the op table and end-to-end parity on the GPU; runs
# compute-sanitizer memcheck and racecheck on a tiny model; measures decode (batch 1, 8, 32) and a
# 512-token prompt for 160M-4E and 410M-4E, MoLE and its dense twin interleaved, LUT warm and
# evicted, with LUT bytes to the device per step, VRAM used and host time per step
# (bench/gpu_bench.py); records the device facts (bench/gpu_facts.cu: pinned vs pageable
# host-to-device bandwidth 4 KiB..64 MiB, a small copy's latency, read-only registration); writes
# results.md and results.json under $OUT (default /tmp/gpu_check).
#
# --dry-run (a machine without a GPU): the same steps where they can run: builds everything
# (the CUDA backend and its SIMT twin), runs the op table and parity on the SIMT executor,
# compiles gpu_facts, and runs the benchmark harness on tiny models through libmole_simt.so.
#
# On the lent machine: nothing can be downloaded there. It has nvcc, cmake, ninja, PyTorch,
# numpy, safetensors, tokenizers, pytest, compute-sanitizer; gguf and cffi travel as wheels:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl cffi pycparser gguf pyyaml
# then run with carry [".whl"]: `bench/gpu_check.sh 2>&1 | tee $OUT/log`.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -d .whl ] && ls .whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl &&
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD/python:$PWD/converter:$PWD/bench:${PYTHONPATH:-}
JOBS=$(nproc)
BUILD=${MOLE_GPU_CHECK_BUILD:-build-gpu}   # tests/test_cuda.py points it at the suite's build
status=0
step() { echo; echo "=== $* ($(date +%T))"; }
fail() { echo "FAILED: $*"; status=1; }

step "1. build (CUDA)"
arch=()   # the lent GPU is an H200: sm_90 only there; a dry run keeps the default architectures
[ $DRY = 0 ] && arch=(-DCMAKE_CUDA_ARCHITECTURES=90)
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOLE_CUDA=ON "${arch[@]}" \
  -DMOLE_BUILD_TESTS=ON -DMOLE_BUILD_TOOLS=ON > "$OUT/cmake.log" 2>&1 || { tail -30 "$OUT/cmake.log"; exit 1; }
cmake --build "$BUILD" -j "$JOBS" > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
BUILD=$(cd "$BUILD" && pwd)
nvcc -O2 -arch=sm_90 -o "$BUILD/gpu_facts" bench/gpu_facts.cu || fail "gpu_facts build"
if [ $DRY = 1 ]; then LIB=$BUILD/libmole_simt.so; OPS=$BUILD/test_backend_ops_simt
else LIB=$BUILD/libmole.so; OPS=$BUILD/test_backend_ops; fi
export MOLE_LIB=$LIB
python3 -c "import mole; print(mole.system_info())" | tee "$OUT/system_info.txt"

step "2. op table and end-to-end parity"
timeout 300 "$OPS" > "$OUT/ops.log" 2>&1 || fail "op table"
tail -3 "$OUT/ops.log"
grep -q "skip cuda" "$OUT/ops.log" && fail "the op table skipped CUDA"
# (on a dry run MOLE_LIB is the SIMT library, whose "GPU" is the executor: the same test runs)
timeout 600 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py -k "end_to_end_on_a_gpu" > "$OUT/parity.log" 2>&1 ||
  fail "parity"
tail -3 "$OUT/parity.log"

step "3. models"
mk() { [ -f "$2" ] || python3 bench/random_gguf.py "$1" "$2" ${3:-} > /dev/null || fail "model $2"; }
M=/tmp/mole-gpu-models
mkdir -p $M
mk tiny $M/tiny.gguf
mk tiny $M/tiny-dense.gguf --dense
if [ $DRY = 0 ]; then
  for s in 160m-4e 410m-4e; do mk $s $M/$s.gguf & mk $s $M/$s-dense.gguf --dense & done
  wait
fi
ls -la $M

step "4. compute-sanitizer (tiny model)"
if [ $DRY = 0 ] && command -v compute-sanitizer > /dev/null; then
  for tool in memcheck racecheck; do
    timeout 240 compute-sanitizer --tool $tool --error-exitcode 9 python3 bench/gpu_bench.py $M/tiny.gguf \
      $M/tiny-dense.gguf --batches 1 4 --steps 4 --prompt 32 --no-vram > "$OUT/sanitizer-$tool.log" 2>&1 ||
      fail "compute-sanitizer $tool"
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$OUT/sanitizer-$tool.log" | tail -2
  done
else
  echo "skipped: $( [ $DRY = 1 ] && echo dry run || echo 'no compute-sanitizer')"
fi

step "5. speed"
if [ $DRY = 1 ]; then
  timeout 600 python3 bench/gpu_bench.py $M/tiny.gguf $M/tiny-dense.gguf --batches 1 8 --steps 4 --prompt 64 \
    > "$OUT/bench-tiny.json" || fail "bench tiny"
else
  for s in 160m-4e 410m-4e; do
    timeout 420 python3 bench/gpu_bench.py $M/$s.gguf $M/$s-dense.gguf --batches 1 8 32 --steps 64 --prompt 512 \
      > "$OUT/bench-$s.json" || fail "bench $s"
  done
fi

step "6. device facts"
if [ $DRY = 0 ]; then
  "$BUILD/gpu_facts" > "$OUT/facts.json" || fail "gpu_facts"
else
  echo "skipped (dry run): $BUILD/gpu_facts was built"
fi

step "7. report"
python3 - "$OUT" <<'PY' || fail "report"
import glob, json, os, sys
out = sys.argv[1]
report = {"system_info": open(f"{out}/system_info.txt").read().strip()}
lines = ["# bench/gpu_check.sh", "", report["system_info"], ""]
for path in sorted(glob.glob(f"{out}/bench-*.json")):
    r = json.load(open(path))
    name = os.path.basename(path)[6:-5]
    report[name] = r
    vram = f"{r['vram_used_bytes'] / 2**20:.0f} MiB" if "vram_used_bytes" in r else "not read"
    lines += [f"## {name}", "", f"VRAM used {vram} (dense weights "
              f"{r.get('dense_bytes', 0) / 2**20:.0f} MiB, LUT cache {r.get('lut_cache_mb', '?')} MB)", "",
              "| LUT | batch | MoLE tok/s | dense tok/s | MoLE/dense step | LUT bytes to device / step | rows / step "
              "| host CPU ms / step |", "|---|---|---|---|---|---|---|---|"]
    for mode in ("warm", "evicted"):
        for key, m in r[mode].items():
            if not key.startswith("batch"):
                continue
            lines.append(f"| {mode} | {key[5:]} | {m['mole']['tok_s']:.1f} | {m['dense']['tok_s']:.1f} | "
                         f"{m['mole_over_dense_step']:.3f} | {m['mole']['lut_bytes_to_device_per_step']:.0f} | "
                         f"{m['mole']['lut_rows_fetched_per_step']:.1f} | {m['mole']['host_cpu_ms_per_step']:.2f} |")
        p = r[mode]["prompt"]
        lines.append(f"| {mode} | prompt | {p['mole']['tok_s']:.0f} | {p['dense']['tok_s']:.0f} | | | | |")
    lines.append("")
if os.path.exists(f"{out}/facts.json"):
    f = json.load(open(f"{out}/facts.json"))
    report["facts"] = f
    lines += ["## device facts", "", f"{f['device']}, {f['sm']} SMs; read-only host registration supported: "
              f"{f['host_register_read_only_supported']}; one small copy {f['small_copy_roundtrip_us']} us", "",
              "| bytes | pinned GB/s | pageable GB/s |", "|---|---|---|"]
    lines += [f"| {h['bytes']} | {h['pinned_GBps']} | {h['pageable_GBps']} |" for h in f["h2d"]]
json.dump(report, open(f"{out}/results.json", "w"), indent=1)
open(f"{out}/results.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
echo
echo "gpu_check: $( [ $status = 0 ] && echo all steps passed || echo SOME STEPS FAILED ) ($(date +%T)); results in $OUT"
exit $status
