"""Replays every input of the fuzz corpus (tests/fuzz_corpus/<target>/: the seeds of
make_seeds.py and every regression input a fuzzing session kept, tools/fuzz.sh) through the fuzz
targets' entry points, built by the suite's compiler: what CI runs instead of fuzzing. A target's
own checks (round trips, bounds) abort on a finding; test_sanitizers.py replays under ASan/UBSan."""
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TARGETS = ["gguf", "model", "tokenizer", "detokenizer"]


@pytest.mark.parametrize("target", TARGETS)
def test_replay_corpus(build_dir, target):
    corpus = REPO / "tests" / "fuzz_corpus" / target
    n = sum(1 for f in corpus.iterdir() if f.is_file())
    assert n > 0, f"{corpus} is empty"
    exe = build_dir / f"fuzz_{target}_replay"
    r = subprocess.run([str(exe), str(corpus)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert f"replayed {n} inputs" in r.stdout, r.stdout
