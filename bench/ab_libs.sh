#!/usr/bin/env bash
# Alternating A B runs of bench/prof_decode.py with two builds of libmole (noisy machines: compare
# the pairs, not absolute numbers), then the median of each figure per library and B / A.
#   bench/ab_libs.sh MODEL DECODE_STEPS PROMPT_LEN THREADS ROUNDS LIB_A LIB_B
set -eu
cd "$(dirname "$0")/.."
export PYTHONPATH=python:converter
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for _ in $(seq "$5"); do
  for lib in "$6" "$7"; do
    line=$(MOLE_LIB=$lib python bench/prof_decode.py "$1" "$2" "$3" "$4" 2>&1 | grep -E "^(decode|prompt)" | tr '\n' ' ')
    printf '%s: %s\n' "$lib" "$line" | tee -a "$log"
  done
done
uptime
python - "$log" "$6" "$7" <<'PY'
import re, statistics, sys
log, a, b = sys.argv[1:]
runs = {a: [], b: []}
for ln in open(log):
    lib, _, rest = ln.partition(": ")
    runs[lib].append({k: float(v) for k, v in re.findall(r"(prompt \d+|decode): ([\d.]+) tok/s", rest)})
keys = [k for k in runs[a][0]] if runs[a] else []
for k in keys:
    ma, mb = (statistics.median(r[k] for r in runs[x]) for x in (a, b))
    print(f"{k} tok/s median of {len(runs[a])}: A {ma:.1f}  B {mb:.1f}  B/A {mb / ma:.3f}")
PY
