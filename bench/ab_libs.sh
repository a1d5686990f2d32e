#!/usr/bin/env bash
# Alternating A B runs of bench/prof_decode.py with two builds of libmole (noisy machines: compare
# the pairs, not absolute numbers).
#   bench/ab_libs.sh MODEL DECODE_STEPS PROMPT_LEN THREADS ROUNDS LIB_A LIB_B
set -eu
cd "$(dirname "$0")/.."
export PYTHONPATH=python:converter
for _ in $(seq "$5"); do
  for lib in "$6" "$7"; do
    printf '%s: ' "$lib"
    MOLE_LIB=$lib python bench/prof_decode.py "$1" "$2" "$3" "$4" 2>&1 | grep -E "^(decode|prompt)" | tr '\n' ' '
    echo
  done
done
uptime
