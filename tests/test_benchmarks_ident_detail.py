"""benchmarks/ident_detail.py on a hand-made identification matrix with known answers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench_helpers import load_benchmark

# 2 personas x 4 replies (2 per speaker): mean reply-token losses, row = persona
M = [[1.0, 2.5, 1.0, 3.0],
     [2.0, 1.0, 2.0, 1.0]]


def _out(tmp_path, rows=M):
    """A finished voice table's folder as the script reads it: results.json and the ident cache."""
    ident = tmp_path / "cache" / "voice" / "ident"
    ident.mkdir(parents=True)
    speakers = {}
    for sid, row, replies in zip(("aaa", "bbb"), rows, (400, 900)):
        (ident / f"{sid}.json").write_text(json.dumps(row))
        speakers[sid] = {"enrollment": {"profile": {"train_examples": replies, "steps": replies // 3}}}
    speakers["ccc"] = {"enrollment": {"ok": False}}  # failed to enroll: no ident row, left out
    (tmp_path / "results.json").write_text(json.dumps({"speakers": speakers}))
    return tmp_path


def test_summary_by_hand():
    detail = load_benchmark("ident_detail")
    s = detail.summary(np.asarray(M), np.asarray([0, 0, 1, 1]))
    # reply 0: own 1.0 < 2.0 hit; reply 1: 2.5 > 1.0 miss; reply 2: own 2.0 > 1.0 miss; reply 3: 1.0 < 3.0 hit
    assert s["top1_macro"] == s["top1_micro"] == 0.5
    assert s["per_speaker_top1"] == [0.5, 0.5]
    # summed per speaker: speaker 0 -> persona 0 3.5, persona 1 3.0 (miss); speaker 1 -> 4.0 vs 3.0 (hit)
    assert s["per_speaker"] == 0.5
    assert s["rank_median"] == 1.5 and s["top3"] == 1.0  # ranks 1, 2, 2, 1
    assert s["margin_median"] == pytest.approx(0.0)  # margins 1, -1.5, -1, 2
    assert (s["wins_min"], s["wins_max"]) == (2, 2)
    assert s["top1_znorm"] == 0.5  # z rows: [-.98, .70, -.98, 1.26], [1, -1, 1, -1]


def test_znorm_removes_a_persona_that_is_cheap_for_everyone():
    detail = load_benchmark("ident_detail")
    # each persona is 0.2 nats cheaper on its own speaker's replies, but persona 1 is 0.5 nats cheaper on
    # everything: raw, it wins speaker 0's replies too; normalised per persona, every reply goes to its owner
    m = np.asarray([[0.8, 1.0, 1.0, 1.2], [0.5, 0.7, 0.3, 0.5]])
    s = detail.summary(m, np.asarray([0, 0, 1, 1]))
    assert s["top1_macro"] == 0.5 and s["top1_znorm"] == 1.0


def test_main_reads_a_finished_run(tmp_path, capsys):
    detail = load_benchmark("ident_detail")
    out = _out(tmp_path)
    m, owners, sids, info = detail.load(out)
    assert sids == ["aaa", "bbb"] and m.shape == (2, 4) and owners.tolist() == [0, 0, 1, 1]
    assert detail.main([str(out), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["top1_macro"] == 0.5 and (s["steps_min"], s["steps_max"]) == (133, 300)
    assert detail.main([str(out)]) == 0
    text = capsys.readouterr().out
    assert "per-reply top-1: 50.0%" in text and "| aaa | 400 | 133 | 50.0% |" in text


def test_uneven_rows_are_refused(tmp_path):
    detail = load_benchmark("ident_detail")
    out = _out(tmp_path, rows=[[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    with pytest.raises(SystemExit, match="do not split evenly"):
        detail.load(out)
