#!/usr/bin/env bash
# Fuzzing sessions: libFuzzer under clang-14 (from Debian: installed here when missing) with
# AddressSanitizer and UndefinedBehaviorSanitizer, every target seeded from its corpus
# tests/fuzz_corpus/<target>/ (gguf and model also from the malformed-file corpus, tests/malformed.py,
# written into build-fuzz/malformed). An input that crashes is copied into that folder as a regression
# input (tests/test_fuzz.py replays the folder in CI); libFuzzer's new coverage stays in
# build-fuzz/corpus-<target> (not committed). For each target it prints libFuzzer's final line
# (executions, cov: edges, ft: features, corpus size) and its final stats (docs/reliability.md).
#   tools/fuzz.sh [SECONDS] [TARGET...]      (default 600 s; targets: gguf model tokenizer detokenizer)
set -uo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-600}
shift || true
TARGETS=${*:-gguf model tokenizer detokenizer}
if ! command -v clang++-14 > /dev/null || [ ! -e "$(clang++-14 -print-file-name=libclang_rt.fuzzer-x86_64.a)" ]; then
  apt-get install -y clang-14 libclang-rt-14-dev > /dev/null || { echo "fuzz.sh: cannot install clang-14"; exit 1; }
fi
mkdir -p build-fuzz
SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g"
cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOLE_CUDA=OFF -DMOLE_FUZZ=ON \
  -DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14 \
  "-DCMAKE_CXX_FLAGS=$SAN -fsanitize=fuzzer-no-link" "-DCMAKE_C_FLAGS=$SAN -fsanitize=fuzzer-no-link" \
  "-DCMAKE_EXE_LINKER_FLAGS=-fsanitize=address,undefined" > build-fuzz/build.log 2>&1 || { tail -20 build-fuzz/build.log; exit 1; }
for t in $TARGETS; do targets+=" fuzz_$t"; done
cmake --build build-fuzz -j "$(nproc)" --target $targets >> build-fuzz/build.log 2>&1 || { tail -30 build-fuzz/build.log; exit 1; }
if [[ " $TARGETS " == *" gguf "* || " $TARGETS " == *" model "* ]]; then
  python3 tests/malformed.py build-fuzz/malformed > /dev/null || echo "fuzz.sh: no malformed-file seeds (tests/malformed.py failed)"
fi
status=0
for t in $TARGETS; do
  seeds=tests/fuzz_corpus/$t
  work=build-fuzz/corpus-$t
  crashes=build-fuzz/crashes-$t
  rm -rf "$crashes"   # a finding of an earlier session is already in $seeds: report only this run's
  mkdir -p "$work" "$crashes"
  extra=() max_len=65536
  if [[ $t == gguf || $t == model ]]; then
    max_len=262144   # the valid seed models are 100-190 KB: a smaller limit would cut them short
    [ -d build-fuzz/malformed ] && extra=(build-fuzz/malformed)
  fi
  echo "=== fuzz_$t: ${SECONDS_EACH} s, seeded from $seeds ($(ls "$seeds" | wc -l) inputs)${extra:+ and ${extra[0]} ($(ls "${extra[0]}" | wc -l))}"
  ASAN_OPTIONS=detect_leaks=0 build-fuzz/fuzz_$t "$work" "$seeds" "${extra[@]}" -max_total_time="$SECONDS_EACH" \
    -max_len="$max_len" -rss_limit_mb=4096 -timeout=20 -artifact_prefix="$crashes/" -print_final_stats=1 \
    > "build-fuzz/fuzz_$t.log" 2>&1
  rc=$?
  # The final "#N DONE cov: ... ft: ..." line (indented by libFuzzer), else the last progress line.
  grep -E "^ *#[0-9]+[[:space:]]+DONE" "build-fuzz/fuzz_$t.log" | sed 's/^ *//' | tail -1 |
    grep . || grep -E "^#[0-9]+[[:space:]]+(pulse|NEW|REDUCE)" "build-fuzz/fuzz_$t.log" | tail -1
  grep -E "stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)" "build-fuzz/fuzz_$t.log"
  for f in "$crashes"/*; do
    [ -e "$f" ] || continue
    cp "$f" "$seeds/regression-$(basename "$f")"
    echo "finding: $f (kept as $seeds/regression-$(basename "$f"))"
    status=1
  done
  [ $rc -ne 0 ] && status=1 && tail -30 "build-fuzz/fuzz_$t.log"
done
exit $status
