"""Split ../shared/data/corpus into training text and whole held-out books (at least one per author), so that a
held-out score measures text the model never saw: other characters, other names, other plots.

    python bench/split_corpus.py --out split/
    -> split/train/{austen,kjv,shakespeare}.txt   the corpus minus the held-out books
       split/heldout/<book>.txt                   one file per held-out book

Each book is cut out of its file by its title (or, for the Bible, which has no titles, its first verse) and the
title of the book that follows it, found exactly once; the script fails rather than guess if a marker is missing
or repeated. Training text and held-out books together are the corpus, byte for byte.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "data" / "corpus"

# (file, held-out book's file name, marker where the book starts, marker where the next book starts); a marker's
# '|' is the cut: the corpus glues a book's title to the last words of the one before it.
HELD_OUT = [
    ("austen.txt", "austen-northanger-abbey", "THE END|NORTHANGER ABBEY\n", "usage.|PRIDE AND PREJUDICE\n"),
    ("kjv.txt", "kjv-john-acts", "|In the beginning was the Word, and the Word was with God",
     "|Paul, a servant of Jesus Christ, called to be an apostle, separated unto the gospel of God"),
    ("shakespeare.txt", "shakespeare-macbeth", "[Exeunt.]|MACBETH\n", "[Flourish. Exeunt.]|MEASURE FOR MEASURE\n"),
    ("shakespeare.txt", "shakespeare-the-tempest", "[Exeunt.]|THE TEMPEST\n", "free.|THE LIFE OF TIMON OF ATHENS\n"),
    ("shakespeare.txt", "shakespeare-twelfth-night", "[Exit.]|TWELFTH NIGHT; OR, WHAT YOU WILL\n",
     "[Exit.]|THE TWO GENTLEMEN OF VERONA\n"),
]


def find_once(text: str, marker: str, where: str) -> int:
    """Offset of the '|' in marker ('previous book's last words|next title'; the files glue them together)."""
    glue, _, title = marker.partition("|")
    i = text.find(glue + title)
    if i < 0 or text.find(glue + title, i + 1) >= 0:
        raise SystemExit(f"{where}: marker {marker!r} found {'no' if i < 0 else 'more than one'} time(s)")
    return i + len(glue)


def split(corpus: pathlib.Path) -> tuple[dict[str, str], dict[str, str]]:
    """({file name: training text}, {book: held-out text})."""
    train, held = {}, {}
    for name in sorted({f for f, *_ in HELD_OUT} | {p.name for p in corpus.glob("*.txt")}):
        text = (corpus / name).read_text(encoding="utf-8")
        cuts = []
        for f, book, start, end in HELD_OUT:
            if f == name:
                a, b = find_once(text, start, f"{name}/{book}"), find_once(text, end, f"{name}/{book}")
                if b <= a:
                    raise SystemExit(f"{name}/{book}: the end marker comes before the start")
                cuts.append((a, b, book))
        cuts.sort()
        keep, pos = [], 0
        for a, b, book in cuts:
            if a < pos:
                raise SystemExit(f"{name}/{book}: overlaps the previous held-out book")
            keep.append(text[pos:a])
            held[book] = text[a:b]
            pos = b
        keep.append(text[pos:])
        train[name] = "".join(keep)
        assert sum(map(len, keep)) + sum(b - a for a, b, _ in cuts) == len(text)
    return train, held


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=pathlib.Path, default=CORPUS, help=f"corpus folder (default {CORPUS})")
    ap.add_argument("--out", type=pathlib.Path, required=True, help="output folder (train/ and heldout/ in it)")
    a = ap.parse_args(argv)
    train, held = split(a.corpus)
    for sub, parts in (("train", train), ("heldout", {f"{k}.txt": v for k, v in held.items()})):
        d = a.out / sub
        d.mkdir(parents=True, exist_ok=True)
        for name, text in parts.items():
            tmp = d / f".{name}.tmp"
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(d / name)
    for name, text in {**train, **held}.items():
        print(f"{'train' if name in train else 'held-out':>8}  {name:28} {len(text.encode('utf-8')):>9,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
