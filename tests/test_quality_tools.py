"""The quality study's tools: bench/split_corpus.py holds out whole books (the corpus, byte for byte, is training
text plus held-out books, and no held-out passage is in the training text), and bench/eval_heldout.py scores
texts with the runtime's perplexity."""
import json
import subprocess
import sys

import pytest

from conftest import REPO, shared_data

sys.path.insert(0, str(REPO / "bench"))


@pytest.mark.skipif(shared_data("corpus") is None, reason="needs ../shared/data/corpus")
def test_split_holds_out_whole_books():
    import split_corpus

    corpus = shared_data("corpus")
    train, held = split_corpus.split(corpus)
    assert set(held) >= {"austen-northanger-abbey", "kjv-john-acts", "shakespeare-macbeth"}   # one per author
    for name, text in train.items():
        books = [b for f, b, *_ in split_corpus.HELD_OUT if f == name]
        whole = (corpus / name).read_text(encoding="utf-8")
        assert len(text) + sum(len(held[b]) for b in books) == len(whole)
        for b in books:
            body = held[b]
            assert body in whole and len(body) > 50_000
            # a passage from the middle and the end of each held-out book is nowhere in the training text
            for probe in (body[len(body) // 2: len(body) // 2 + 400], body[-300:]):
                assert probe not in text, (b, probe[:60])
    assert held["austen-northanger-abbey"].startswith("NORTHANGER ABBEY")
    assert held["kjv-john-acts"].startswith("In the beginning was the Word")


def test_split_refuses_a_missing_marker(tmp_path):
    import split_corpus

    (tmp_path / "austen.txt").write_text("EMMA\nno other book here\n")
    for f in ("kjv.txt", "shakespeare.txt"):
        (tmp_path / f).write_text("nothing\n")
    with pytest.raises(SystemExit, match="NORTHANGER ABBEY"):
        split_corpus.split(tmp_path)


def test_eval_heldout_scores_books_at_several_windows(model_factory, tmp_path):
    import mole
    from mole.perplexity import perplexity

    path, _, _ = model_factory("q8_0", "f32")
    books = []
    for name, line in (("a.txt", "The lantern keeper walked the shore at dusk. "), ("b.txt", "Numbers remember. ")):
        books.append(tmp_path / name)
        books[-1].write_text(line * 40)
    out = tmp_path / "r.json"
    r = subprocess.run([sys.executable, str(REPO / "bench" / "eval_heldout.py"), "-m", str(path), "--books",
                        *map(str, books), "-c", "32", "64", "--json", str(out)], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())[str(path)]
    with mole.Model(str(path), n_ctx=64) as m:
        want = perplexity(m, books[0].read_text(), 32)
    assert res["32"]["a"]["bpb"] == pytest.approx(want.bits_per_byte, rel=1e-6)
    for c in ("32", "64"):
        rows = res[c]
        n = rows["a"]["bytes"] + rows["b"]["bytes"]
        assert rows["all"]["bpb"] == pytest.approx((rows["a"]["bpb"] * rows["a"]["bytes"]
                                                    + rows["b"]["bpb"] * rows["b"]["bytes"]) / n)
        assert 0 < rows["all"]["bpb_se"] < max(rows["a"]["bpb_se"], rows["b"]["bpb_se"])
