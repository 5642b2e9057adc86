"""benchmarks/explicit_table.py end to end on the tiny backbone, a tiny SPC-shaped corpus and
random PAL adapters and a random PAA (the CI smoke version of the explicit table), resuming from
its cache; and the table's PAL and PAA rows never see a gold reply or label before they answer."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from explicit_helpers import random_adapter, random_paa, write_spc_csv
from bench_helpers import load_benchmark


def _load():
    return load_benchmark("explicit_table")


@pytest.fixture(scope="module")
def setup(tiny_backbone, tmp_path_factory):
    from persona_sdk.training.backbone import load_backbone

    root = tmp_path_factory.mktemp("explicit-table")
    return {"csv": write_spc_csv(root / "spc.csv", conversations=80),
            "pal": random_adapter(tiny_backbone, root / "pal", seed=1, scale=0.2),
            "stage1": random_adapter(tiny_backbone, root / "stage1", seed=2, scale=0.2),
            "paa": random_paa(load_backbone(tiny_backbone), root / "paa", seed=3)}


def _argv(tiny_backbone, setup, out):
    return ["--spc-csv", str(setup["csv"]), "--out", str(out), "--backbone", str(tiny_backbone),
            "--pal-adapter", str(setup["pal"]), "--pal-stage1", str(setup["stage1"]), "--paa", str(setup["paa"]),
            "--variant", "fp32",
            "--split-test", "0.5", "--candidates", "3", "--distractors", "2", "--per-persona", "1",
            "--hits-per-persona", "1", "--selection-replies", "4", "--max-new-tokens", "3", "--embedder", "bow",
            "--context-budget", "400"]


def test_explicit_table_smoke(tiny_backbone, setup, tmp_path):
    bench = _load()
    out = tmp_path / "out"
    results = bench.main(_argv(tiny_backbone, setup, out))
    table = (out / "table.md").read_text()
    assert table.count("\n|") >= len(bench.ROWS) + 1
    # every row is set against prompting on consistency and BLEU-1, with the signed difference
    versus = {line.split(":")[0][2:]: line for line in table.splitlines() if line.startswith("- ") and "BLEU-1" in line}
    args = bench.parse_args(_argv(tiny_backbone, setup, out))
    assert set(versus) == {bench.row_label(k, args) for k in bench.ROWS if k != "prompt"}
    assert "PAA without masks (switched off at decode)" in versus
    pal, prompt = results["rows"]["pal"], results["rows"]["prompt"]
    assert f"Cons@20 {pal['consistency'] - prompt['consistency']:+.3f}" in versus["PAL"]
    assert f"BLEU-1 {pal['bleu1'] - prompt['bleu1']:+.3f}" in versus["PAL"]
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["rows"]) == set(bench.ROWS) | {"human"}
    for key, row in saved["rows"].items():
        for col in ("consistency", "consistency_no_copy", "copy_rate", "perspective", "first_person", "about_user"):
            assert 0 <= row[col] <= 1, (key, col)
        # a copied reply can only lose its hit
        assert row["consistency"] - row["copy_rate"] - 1e-9 <= row["consistency_no_copy"] <= row["consistency"], key
        if key == "human":
            continue
        assert math.isfinite(row["perplexity"]) and row["perplexity"] > 1
        for col in ("f1", "bleu1", "bleu2", "rouge_l", "dist1", "dist2", "hits_at_1"):
            assert 0 <= row[col] <= 1, (key, col)
        assert (row["selection_accuracy"] is not None) == bench.ROWS[key].selects
    # another persona's sentences: the backbone ignores them (reliance exactly 1), the persona rows do not
    assert saved["rows"]["backbone"]["perplexity_other"] == pytest.approx(saved["rows"]["backbone"]["perplexity"])
    assert saved["rows"]["backbone"]["reliance"] == pytest.approx(1.0)
    for key in ("prompt", "pal-no-sg", "paa"):
        assert saved["rows"][key]["perplexity_other"] != pytest.approx(saved["rows"][key]["perplexity"]), key
    args = bench.parse_args(_argv(tiny_backbone, setup, out))
    data = bench.load_data(args)
    assert all(bench.other_persona(ex, data) != ex.persona for ex in data.decode)
    assert "| PPL | PPL other | Reliance |" in table
    raw = {k: json.loads((out / "cache" / f"{k}.json").read_text()) for k in bench.ROWS}
    assert all(len(c) == 1 for c in raw["pal"]["conditioned_on"])  # select-then-generate: one predicted sentence
    assert all(len(c) > 1 for c in raw["pal-no-sg"]["conditioned_on"]) and raw["backbone"]["conditioned_on"][0] == []
    # PAA reads every sentence through its persona encoder; its masks change what the decoder sees
    assert all(len(c) > 1 for c in raw["paa"]["conditioned_on"])
    assert raw["paa"]["losses"] != raw["paa-no-masks"]["losses"]
    assert saved["adapters_sha256"]["paa"] == saved["adapters_sha256"]["paa-no-masks"] is not None
    assert results["data"]["split"]["by"] == "persona" and "CC-BY 4.0" in results["data"]["attribution"]
    (out / "table.md").unlink()
    again = bench.main(_argv(tiny_backbone, setup, out))  # every row from the cache
    assert again["rows"] == results["rows"]


@pytest.mark.parametrize("key", ["pal", "paa"])
def test_rows_answer_the_same_whatever_the_gold(tiny_backbone, setup, tmp_path, key):
    bench = _load()
    args = bench.parse_args(_argv(tiny_backbone, setup, tmp_path / "out"))
    data = bench.load_data(args)
    from persona_sdk.config import RuntimeConfig

    engine = bench.ENGINES[key](args, RuntimeConfig(variant="fp32"))
    honest = bench.run_row(key, bench.ROWS[key], engine, data, args)
    scrambled = dataclasses.replace(
        data, decode=[dataclasses.replace(ex, reply="zzz " + ex.reply[::-1]) for ex in data.decode],
        selection=[dataclasses.replace(it, label=(it.label + 1) % len(it.example.persona)) for it in data.selection])
    leaked = bench.run_row(key, bench.ROWS[key], engine, scrambled, args)
    assert leaked["replies"] == honest["replies"] and leaked["conditioned_on"] == honest["conditioned_on"]
    assert leaked["losses"] != honest["losses"]  # the gold reply is only what gets scored
    # a moved silver label turns every hit into a miss: the prediction itself did not move
    assert all(not lk for h, lk in zip(honest["selection"], leaked["selection"]) if h)


def test_a_cached_row_is_reused_only_when_made_alike(tiny_backbone, setup, tmp_path):
    bench = _load()
    argv = _argv(tiny_backbone, setup, tmp_path / "out")
    args = bench.parse_args(argv)
    data = bench.load_data(args)
    stamp = bench.row_stamp("pal", args, data)
    assert stamp == bench.row_stamp("pal", bench.parse_args(argv + ["--threads", "1"]), data)
    assert stamp != bench.row_stamp("pal", bench.parse_args(argv + ["--max-new-tokens", "4"]), data)
    assert stamp != bench.row_stamp("pal", bench.parse_args(argv + ["--pal-adapter", str(setup["stage1"])]), data)
    import shutil

    moved = shutil.copytree(setup["pal"], tmp_path / "moved-pal")  # the same adapter elsewhere: the same row
    assert stamp == bench.row_stamp("pal", bench.parse_args(argv + ["--pal-adapter", str(moved)]), data)
    assert stamp != bench.row_stamp("pal-stage1", args, data)
    assert stamp == bench.row_stamp("pal", bench.parse_args(argv + ["--paa-variant", "int8"]), data)
    paa = bench.row_stamp("paa", args, data)
    assert paa != bench.row_stamp("paa-no-masks", args, data)
    assert paa != bench.row_stamp("paa", bench.parse_args(argv + ["--paa-variant", "int8"]), data)
    from persona_sdk.training.backbone import load_backbone

    other = random_paa(load_backbone(tiny_backbone), tmp_path / "other-paa", seed=4)
    assert paa != bench.row_stamp("paa", bench.parse_args(argv + ["--paa", str(other)]), data)


def test_a_missing_paa_stops_the_run_before_any_row(tiny_backbone, setup, tmp_path):
    bench = _load()
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match="row paa: .*no trained PAA.*--rows"):
        bench.main(_argv(tiny_backbone, setup, out) + ["--paa", str(tmp_path / "nowhere")])
    assert not (out / "cache").exists()
