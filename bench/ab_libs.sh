#!/usr/bin/env bash
# Alternating A B runs of bench/prof_decode.py with two builds of libmole (noisy machines: compare
# the pairs, not absolute numbers), then the median of each figure per library and B / A.
#   bench/ab_libs.sh MODEL DECODE_STEPS PROMPT_LEN THREADS ROUNDS LIB_A LIB_B
# Optional environment: KV_A, KV_B (f16, f32; default: the library's) give each side's KV cache type
# (LIB_A = LIB_B and KV_A=f32 KV_B=f16 compares the cache types alone); DECODE_FROM (default 8) is the
# context before the timed decode steps; ROOT_A, ROOT_B (default: this tree) the source trees whose
# python/ package runs with each library (this tree's bench/prof_decode.py drives both), for two
# libraries of different ABIs.
set -eu
cd "$(dirname "$0")/.."
here=$(pwd)
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for _ in $(seq "$5"); do
  for side in A B; do
    if [ $side = A ]; then lib=$6 kv=${KV_A:-default} root=${ROOT_A:-$here}; else lib=$7 kv=${KV_B:-default} root=${ROOT_B:-$here}; fi
    line=$(PYTHONPATH=$root/python:$root/converter MOLE_LIB=$lib python bench/prof_decode.py "$1" "$2" "$3" "$4" \
           $kv "${DECODE_FROM:-8}" 2>&1 | grep -E "^(decode|prompt)" | tr '\n' ' ')
    printf '%s %s (kv %s): %s\n' $side "$lib" $kv "$line" | tee -a "$log"
  done
done
uptime
python - "$log" <<'PY'
import re, statistics, sys
runs = {"A": [], "B": []}
a, b = runs
for ln in open(sys.argv[1]):
    side, _, rest = ln.partition(" ")
    runs[side].append({k: float(v) for k, v in re.findall(r"(prompt \d+|decode): ([\d.]+) tok/s", rest)})
keys = [k for k in runs[a][0]] if runs[a] else []
for k in keys:
    ma, mb = (statistics.median(r[k] for r in runs[x]) for x in (a, b))
    print(f"{k} tok/s median of {len(runs[a])}: A {ma:.1f}  B {mb:.1f}  B/A {mb / ma:.3f}")
PY
