"""benchmarks/implicit_spc.py end to end on the tiny backbone and a tiny SPC-shaped corpus (the CI smoke
version of the MTML / AMTML table): every source method trains its own block, enrollment starts from it,
held-out replies never come from the enrollment conversation, and a rerun comes wholly from the cache."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest

from bench_helpers import load_benchmark
from explicit_helpers import write_spc_csv

METHODS = ("plain", "mtml", "amtml")


def _argv(tiny_backbone, csv, out):
    return ["--spc-csv", str(csv), "--out", str(out), "--backbone", str(tiny_backbone), "--variant", "fp32",
            "--split-test", "0.5", "--candidates", "3", "--speakers", "3", "--enroll-min", "3", "--enroll-max", "4",
            "--min-examples", "2", "--heldout", "4", "--generate", "2", "--source-steps", "6", "--source-val", "8",
            "--enroll-steps", "2", "--enroll-minutes", "0", "--max-new-tokens", "3", "--context-budget", "400",
            "--embedder", "bow", "--bootstrap", "50"]


@pytest.fixture(scope="module")
def run(tiny_backbone, tmp_path_factory):
    root = tmp_path_factory.mktemp("implicit-spc")
    csv = write_spc_csv(root / "spc.csv", conversations=80)
    bench = load_benchmark("implicit_spc")
    out = root / "out"
    argv = _argv(tiny_backbone, csv, out)
    return bench, argv, out, bench.main(argv)


def test_table_has_every_row_with_scores_and_intervals(run):
    bench, argv, out, results = run
    rows = ["backbone"] + [f"{kind}-{m}" for m in METHODS for kind in ("source", "enrolled")]
    assert list(results["rows"]) == rows + ["human"]
    for key, row in results["rows"].items():
        for col in ("consistency", "copy_rate", "perspective"):
            assert 0 <= row[col] <= 1, (key, col)
            lo, hi = results["intervals"][key][col]
            assert lo <= hi
        if key == "human":
            assert "perplexity" not in row  # the real replies are the references, not scored by a model
        else:
            assert math.isfinite(row["perplexity"]) and row["perplexity"] > 1
            assert len(results["per_speaker"][key]) == 3
    assert {(d["row"], d["baseline"]) for d in results["differences"]} >= {
        ("enrolled-mtml", "enrolled-plain"), ("enrolled-amtml", "enrolled-plain"), ("enrolled-plain", "source-plain")}
    table = (out / "table.md").read_text()
    assert table.count("\n|") >= len(rows) + 2 and "MTML (α = 0.8): source + enrolled" in table
    assert json.loads((out / "results.json").read_text())["rows"] == results["rows"]
    assert results["sizes"]["speakers"] == 3 and results["meta"]["commit"]
    assert "min_examples 2" in results["budgets"]["enrollment"] and "equal steps: 6" in results["budgets"]["source"]


def test_each_source_method_trained_its_own_block(run, tiny_backbone):
    from persona_sdk.source import SHIPPED_FILE, SHIPPED_INFO, load_source
    from persona_sdk.training.backbone import load_backbone, random_prefix

    bench, argv, out, results = run
    start = random_prefix(load_backbone(tiny_backbone), 16, 0)  # where every method starts (same seed)
    blocks = {}
    for m in METHODS:
        folder = out / "source" / m
        info = json.loads((folder / SHIPPED_INFO).read_text())
        assert info["sha256"] == hashlib.sha256((folder / SHIPPED_FILE).read_bytes()).hexdigest()
        assert info["config"]["method"] == m and info["config"]["alpha"] == 0.8 and info["config"]["steps"] == 6
        assert info["summary"]["steps"] == 6  # the same budget for all (meta methods: inner steps)
        blocks[m] = load_source(folder).kv
        assert not np.allclose(blocks[m], start), m
    assert not np.allclose(blocks["plain"], blocks["mtml"]) and not np.allclose(blocks["mtml"], blocks["amtml"])
    assert not np.allclose(blocks["plain"], blocks["amtml"])
    for m in METHODS:
        for unit in results["enrollments"][m]["per_speaker"]:
            assert unit["steps"] == 2 and unit["train_examples"] >= 2
        for info_file in (out / "enrolled" / m).glob("*.json"):
            assert json.loads(info_file.read_text())["source_sha256"] == results["sources"][m]["sha256"]


def test_enrollment_and_held_out_replies_come_from_different_conversations(run):
    bench, argv, out, results = run
    data = bench.load_data(bench.parse_args(argv))
    assert [p.index for p in data.people] == results["data"]["test_persona_indices"]
    for person in data.people:
        enroll_convs = {ex.conversation for ex in person.enroll}
        assert len(enroll_convs) == 1 and 3 <= len(person.enroll) <= 4
        assert person.heldout and not enroll_convs & {ex.conversation for ex in person.heldout}
        owner = {data.table.owner[ex.key] for ex in person.enroll + person.heldout}
        assert owner == {person.index}
    test_keys = {ex.key for p in data.people for ex in p.enroll + p.heldout}
    assert not test_keys & {ex.key for s in data.speakers for ex in s.examples}  # source training never saw them
    assert not test_keys & {ex.key for ex in data.val}


def test_a_rerun_comes_from_the_cache(run, monkeypatch):
    import persona_sdk.engines
    import persona_sdk.source
    import persona_sdk.trainer

    bench, argv, out, results = run

    def refuse(*a, **k):
        raise AssertionError("a finished stage ran again")

    for module, name in ((persona_sdk.source, "train_source"), (persona_sdk.trainer, "train_prefix"),
                         (persona_sdk.engines, "open_engine")):
        monkeypatch.setattr(module, name, refuse)
    (out / "table.md").unlink()
    again = bench.main(argv)
    assert again["rows"] == results["rows"] and (out / "table.md").is_file()
