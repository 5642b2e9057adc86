"""persona_sdk.training.corpora: the one Synthetic-Persona-Chat reader, the explicit-persona
replies and the split by persona (on SPC-shaped data made here)."""

from __future__ import annotations

import csv

import pytest

from explicit_helpers import COLUMNS, write_spc_csv
from persona_sdk.errors import TrainingError
from persona_sdk.split import PersonaSplitConfig, normalise_sentence, persona_key
from persona_sdk.training.corpora import (read_spc, spc_explicit_split, spc_persona_examples, spc_speakers)


def test_read_spc_parses_personas_and_turns(tmp_path):
    path = tmp_path / "spc.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, COLUMNS)
        w.writeheader()
        w.writerow({COLUMNS[0]: "I like cats.\nI am a nurse.\n", COLUMNS[1]: "I surf.",
                    COLUMNS[2]: "User 1: hi\nnoise line\nUser 2: hello: there\nUser 1: cats?\nUser 2: surf!"})
    (conv,) = read_spc(path)
    assert conv.personas == (("I like cats.", "I am a nurse."), ("I surf.",))
    assert conv.turns == (("1", "hi"), ("2", "hello: there"), ("1", "cats?"), ("2", "surf!"))
    examples = spc_persona_examples([conv])
    assert [(e.side, e.turn, e.reply) for e in examples] == [("2", 1, "hello: there"), ("1", 2, "cats?"),
                                                              ("2", 3, "surf!")]
    last = examples[-1]
    assert last.persona == ("I surf.",) and [t.role for t in last.context] == ["user", "assistant", "user"]
    assert last.key == "0:2:3"
    assert [s.id for s in spc_speakers(path)] == ["spc-0-1", "spc-0-2"]  # the source side reads the same rows


def test_read_spc_errors_name_the_file(tmp_path):
    with pytest.raises(TrainingError, match="not found"):
        read_spc(tmp_path / "missing.csv")
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("a,b\n1,2\n")
    with pytest.raises(TrainingError, match="no column"):
        read_spc(wrong)
    binary = tmp_path / "bin.csv"
    binary.write_bytes(b"\xff\xfe\x00\x01" * 100)
    with pytest.raises(TrainingError):
        read_spc(binary)


def test_explicit_split_keeps_held_out_personas_out_of_train(tmp_path):
    path = write_spc_csv(tmp_path / "spc.csv", conversations=120)
    config = PersonaSplitConfig(dev=0.2, test=0.3)
    parts, provenance = spc_explicit_split(path, config)
    assert sum(len(v) for v in parts.values()) == 120 and provenance["split"]["by"] == "persona"
    key = lambda p: persona_key(p, config.salt)  # noqa: E731
    spoken = {part: {key(c.persona(s)) for c in convs for s in c.sides} for part, convs in parts.items()}
    present = {part: {key(p) for c in convs for p in c.personas} for part, convs in parts.items()}
    assert spoken["test"] and spoken["dev"] and spoken["train"]
    # a test or dev persona is never in a train conversation, and no persona is scored in two parts
    assert not (spoken["test"] | spoken["dev"]) & present["train"]
    assert not spoken["test"] & spoken["dev"]
    # only the held-out side's replies count in a held-out conversation
    for conv in parts["test"]:
        for ex in spc_persona_examples([conv]):
            assert key(ex.persona) in spoken["test"]
    # a pure function of the sentences: reordered rows give the same parts
    rows = list(csv.DictReader(open(path, newline="")))
    shuffled = tmp_path / "shuffled.csv"
    with open(shuffled, "w", newline="") as fh:
        w = csv.DictWriter(fh, COLUMNS)
        w.writeheader()
        w.writerows(reversed(rows))
    again, _ = spc_explicit_split(shuffled, config)
    assert {p: sorted(c.turns for c in v) for p, v in again.items()} == {p: sorted(c.turns for c in v)
                                                                         for p, v in parts.items()}


def test_persona_identity_ignores_case_spacing_order_and_end_punctuation():
    a = persona_key(["I have a dog.", "I knit"], "s")
    assert a == persona_key(["i knit!", "  I HAVE   a dog "], "s") != persona_key(["I have a dog."], "s")
    assert persona_key(["I knit"], "s") != persona_key(["I knit"], "t")
    assert normalise_sentence("  I Have a Dog! ") == "i have a dog"
    with pytest.raises(Exception):
        PersonaSplitConfig(dev=0.5, test=0.5)
