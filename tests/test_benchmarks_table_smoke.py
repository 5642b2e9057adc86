"""benchmarks/personapkt_table.py runs every setting end to end on the tiny backbone and a tiny
synthetic chitchat-format corpus (smoke test), writes table/JSON/PNG with every column, and resumes
from its cache."""

from __future__ import annotations

import importlib.util
import json
import math
import random
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "personapkt_table.py"
WORDS = "hey back from the trip yes still jetlagged what do you on weekends mostly hiking and cooking pizza music".split()


def _load():
    spec = importlib.util.spec_from_file_location("personapkt_table", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def _corpus(path: Path) -> Path:
    """Chitchat-format conversations: 4 regular speakers (11 conversations each with a pool of
    partners), 3 few-shot speakers (3 conversations each), partners also talking to each other."""
    rng = random.Random(0)
    partners = [f"p{i}" for i in range(8)]
    pairs = [(f"reg{r}", partners[(r + k) % len(partners)]) for r in range(4) for k in range(11)]
    pairs += [(f"few{f}", partners[(f + k) % len(partners)]) for f in range(3) for k in range(3)]
    pairs += [(partners[i], partners[(i + 1) % len(partners)]) for i in range(len(partners))]
    data = {}
    for n, (a, b) in enumerate(pairs):
        groups = []
        for t in range(6):
            who = a if t % 2 == 0 else b
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6))) + f" {who[:3]}!"
            groups.append([{"text": text, "timestamp": f"2020-01-01T00:{n % 60:02d}:{t:02d}Z", "sender": who}])
        data[f"conv-{n}"] = {"messages": groups}
    path.write_text(json.dumps(data))
    return path


SMOKE = ["--b-speakers", "3", "--c-speakers", "2", "--max-train", "8", "--max-val", "4", "--epochs", "1",
         "--evals-per-epoch", "1", "--test-replies", "2", "--hits-replies", "1", "--decode-replies", "2",
         "--distractors", "2", "--max-new-tokens", "4", "--source-steps", "2", "--source-speakers", "4",
         "--source-per-speaker", "4", "--source-val", "4", "--reptile-speakers", "1", "--reptile-outer-steps", "1",
         "--reptile-inner-steps", "1", "--batch-size", "4", "--split-n-b", "3", "--split-n-c", "2",
         "--split-b-min", "10", "--threads", "1"]


def test_personapkt_table_smoke(tiny_backbone, tiny_onnx, tmp_path, capsys):
    bench = _load()
    corpus = _corpus(tmp_path / "dataset.json")
    out = tmp_path / "out"
    argv = ["--backbone", str(tiny_backbone), "--export", str(tiny_onnx), "--corpus", str(corpus), "--out", str(out),
            *SMOKE]
    results = bench.main(argv)

    for name in ("table.md", "results.json", "quality_vs_epochs.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "quality_vs_epochs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["parts"]) == {"B", "C"}
    for part, pr in saved["parts"].items():
        assert set(pr["settings"]) == set(bench.SETTINGS), part
        for key, row in pr["settings"].items():
            assert row["speakers"] >= 1, (part, key)
            assert math.isfinite(row["perplexity_median"]) and row["perplexity_median"] > 1
            assert row["hits_at_1"] is not None and 0 <= row["hits_at_1"] <= 1
            for d in bench.DECODINGS:
                assert set(row[d]) >= {"f1", "bleu1", "bleu2", "rouge_l", "dist1", "dist2"}, (part, key, d)
            if key in bench.PERSONAL:
                assert 0 <= row["ident_all"] <= 1 and row["ident_all_k"] == pr["k_all"] >= 2
                assert 0 < row["stored_params_pct"] < 100 and row["enroll_seconds_median"] > 0
                assert pr["curves"][key] and all(c[0][0] == 0.0 for c in pr["curves"][key])
        assert pr["settings"]["backbone"]["stored_params_pct"] == 0
        assert pr["settings"]["reptile-full"]["stored_params_pct"] == 100
        assert pr["settings"]["reptile-full"]["speakers"] == 1
    assert saved["meta"]["size"]["epochs"] == 1 and saved["meta"]["export_variant"] == "fp32"
    table = (out / "table.md").read_text()
    for column in bench.COLUMNS:
        assert column in table
    for label in bench.SETTINGS.values():
        assert label in table
    assert "## Part B — decoding: beam 5" in table and "## Part C — decoding: chat defaults" in table
    assert results["parts"]["B"]["speakers"] == 3

    # resumable: a second run reuses every cached unit (no training, same numbers)
    capsys.readouterr()
    again = bench.main(argv)
    err = capsys.readouterr().err
    assert ": training (" not in err and "source prefix '" not in err and "fine-tuning" not in err, err
    assert again["parts"]["B"]["settings"]["base"] == results["parts"]["B"]["settings"]["base"]
    # a different size never mixes with the cache of another
    with pytest.raises(SystemExit, match="different configuration"):
        bench.main([*argv, "--epochs", "2"])


def test_estimate_only_plans_without_training(tiny_backbone, tmp_path):
    bench = _load()
    corpus = _corpus(tmp_path / "dataset.json")
    plan = bench.main(["--backbone", str(tiny_backbone), "--corpus", str(corpus), "--out", str(tmp_path / "o"),
                       "--estimate-only", *SMOKE])
    assert plan["speakers"] == {"B": 3, "C": 2}
    assert plan["estimate"]["total"] > plan["estimate"]["train"] > 0
    assert not (tmp_path / "o").exists()


def test_identification_at_k20_and_all_on_a_known_matrix():
    import numpy as np

    bench = _load()
    people = [bench.Person(f"s{i}", "B", [], [], [object(), object()]) for i in range(25)]
    owners = np.repeat(np.arange(25), 2)  # (N,) = 50 replies, 2 per speaker
    m = np.ones((25, 50))  # (K, N)
    m[owners, np.arange(50)] = 0.5  # every prefix explains its own speaker's replies best...
    m[0, 48:] = 0.1  # ...except that speaker 0's prefix steals speaker 24's replies (outside the first 20)
    rows = {p.speaker: list(m[k]) for k, p in enumerate(people)}
    out = bench.identification(rows, people)
    assert out["ident_k20"] == 1.0  # speaker 24 is not among the first 20: K = 20 is perfect
    assert out["ident_all"] == 24 / 25 and out["ident_all_k"] == 25
    assert bench.identification({"s0": [0.0, 0.0]}, people[:1])["ident_all"] is None  # K = 1: undefined


def test_spread_picks_evenly_and_all_when_asked():
    bench = _load()
    assert bench.spread(10, 3) == [0, 4, 9]  # numpy rounds 4.5 to even
    assert bench.spread(5, 0) == list(range(5)) and bench.spread(3, 8) == [0, 1, 2]
