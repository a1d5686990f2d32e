#!/usr/bin/env bash
# Instructions per decode step and per prompt of two builds of libmole, counted by callgrind (the
# same count whatever else the machine runs: for A/B claims on a noisy machine). One thread;
# under valgrind the CPU kernels run their AVX2 path (valgrind has no AVX-512).
#   bench/ab_instructions.sh MODEL PROMPT_LEN LIB_A LIB_B
# decode step = (Ir(40 steps) - Ir(8 steps)) / 32; prompt = (Ir(prompt + 8 steps) - Ir(8 steps)) / 2
# (prof_decode evaluates the prompt twice).
set -eu
cd "$(dirname "$0")/.."
export PYTHONPATH=python:converter
py=$(python -c 'import sys; print(sys.executable)')
count() {   # LIB DECODE_STEPS PROMPT_LEN -> instructions of the whole process
  MOLE_LIB=$1 valgrind --tool=callgrind --callgrind-out-file=/dev/null "$py" bench/prof_decode.py "$MODEL" "$2" "$3" 1 2>&1 |
    sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
MODEL=$1
for lib in "$3" "$4"; do
  base=$(count "$lib" 8 0) long=$(count "$lib" 40 0) prompt=$(count "$lib" 8 "$2")
  echo "$lib $(( (long - base) / 32 )) $(( (prompt - base) / 2 ))"
done | python -c '
import sys
rows = [ln.split() for ln in sys.stdin]
for lib, step, prompt in rows:
    print(f"{lib}: {int(step):,} instructions per decode step, {int(prompt):,} per prompt")
(a, sa, pa), (b, sb, pb) = rows
print(f"B/A: decode step {int(sb) / int(sa):.4f}, prompt {int(pb) / int(pa):.4f}")'
