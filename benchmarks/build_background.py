"""Build the background word-frequency table `persona_sdk/data/background/` (distinctive topic words).

    .venv/bin/python benchmarks/build_background.py

Counts the words (``persona_sdk.voice.words``) of every part-A speaker's training replies in
chitchat-dataset (the source prefix's corpus and split, ``persona_sdk.split``; held-out B/C
speakers and every conversation they hold out never count), keeps words seen at least
``--min-count`` times, and writes ``words.tsv`` (word<TAB>count, counts only, no sentences) and
``BACKGROUND.json`` (command, corpus file sha256, package version, split, totals, the table's
sha256). Deterministic: the same corpus gives the same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import shlex
import sys
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "persona_sdk" / "data" / "background"


def part_a_replies(corpus: str | None):
    """(reply texts of part-A speakers' train conversations, provenance)."""
    from persona_sdk.reply_examples import build_examples
    from persona_sdk.importers.chitchat import dataset_path
    from persona_sdk.training.corpora import _version
    from persona_sdk.split import chitchat_split, select

    chats, split = chitchat_split(corpus)
    texts: list[str] = []
    speakers = []
    for s in split.part("A"):
        if not s.train:
            continue
        ex = build_examples(select(chats, s.train), s.speaker, min_replies=0, val_fraction=0.0).train
        if ex:
            speakers.append(s.speaker)
            texts.extend(e.reply for e in ex)
    file = Path(corpus) if corpus is not None else dataset_path()
    provenance = {
        "corpus": "chitchat-dataset",
        "corpus_file_sha256": hashlib.sha256(file.read_bytes()).hexdigest(),
        "package_version": _version("chitchat-dataset") if corpus is None else "file",
        "split": {"salt": split.config.salt, "part": "A", **split.summary()["A"]},
        "speakers": len(speakers),
        "speaker_list_sha256": hashlib.sha256("\n".join(sorted(speakers)).encode()).hexdigest(),
    }
    return texts, provenance


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    ap.add_argument("--corpus", default=None, help="chitchat-format dataset.json (default: the installed package)")
    ap.add_argument("--min-count", type=int, default=3, help="keep words seen at least this many times")
    args = ap.parse_args(argv)

    from persona_sdk.voice import build_background, write_background

    texts, provenance = part_a_replies(args.corpus)
    counts, totals = build_background(texts, args.min_count)
    shown = ["python", "benchmarks/build_background.py"] + [a for a in (argv if argv is not None else sys.argv[1:])]
    info = {"command": " ".join(shlex.quote(a) for a in shown), "data": provenance, "totals": totals,
            "tokenizer": "persona_sdk.voice.words"}
    path = write_background(counts, args.out, info)
    print(f"wrote {path} ({totals['kept_words']} words of {totals['distinct_words']}, "
          f"{totals['tokens']} tokens in {totals['replies']} replies)", file=sys.stderr)
    return info


if __name__ == "__main__":
    main()
