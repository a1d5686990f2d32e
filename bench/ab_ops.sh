#!/usr/bin/env bash
# Alternating A B runs of two builds of bench_ops (the matmul kernels alone, weights streamed from
# memory for S <= 16), then per matrix and S: the median time of each and the median of the per-round
# ratios B / A (noisy machines: a change in the load falls on both sides of a round).
#   bench/ab_ops.sh ROUNDS ISA THREADS S_LIST BENCH_OPS_A BENCH_OPS_B
#   bench/ab_ops.sh 6 avx512 2 1,4,8,16 A/bench_ops B/bench_ops
# Optional environment: SHAPES (default attn,up,down,output), TYPES (default q8x16), REPS (default 7).
set -eu
rounds=$1 isa=$2 threads=$3 s_list=$4 a=$5 b=$6
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for r in $(seq "$rounds"); do
  for side in A B; do
    if [ $side = A ]; then tool=$a; else tool=$b; fi
    "$tool" --types "${TYPES:-q8x16}" --isa "$isa" --threads "$threads" --S "$s_list" --reps "${REPS:-7}" \
      --shapes "${SHAPES:-attn,up,down,output}" 2>&1 |
      awk -v side=$side -v r="$r" '/^stream-read/ {print side, r, "stream-read-GB/s", $4}
                                   $2 ~ /^(q8x16|q8_0|q4_0|f16|bf16|f32)$/ && NF >= 6 {print side, r, $1 "-" $2 "-" $3 "-S" $4, $6}'
  done
done > "$log"
uptime
python3 - "$log" <<'PY'
import collections, statistics, sys
d = collections.defaultdict(dict)
for ln in open(sys.argv[1]):
    side, r, key, val = ln.split()
    d[(side, key)][int(r)] = float(val)
keys = sorted({k for _, k in d})
print(f"{'matrix (ms per matmul; stream-read GB/s)':44s} {'A':>9s} {'B':>9s} {'B/A':>7s}  (median of per-round ratios)")
for k in keys:
    a, b = d.get(("A", k), {}), d.get(("B", k), {})
    rounds = [r for r in a if r in b and a[r] > 0]
    if not rounds:
        continue
    ratio = statistics.median(b[r] / a[r] for r in rounds)
    print(f"{k:44s} {statistics.median(a.values()):9.3f} {statistics.median(b.values()):9.3f} {ratio:7.3f}")
PY
