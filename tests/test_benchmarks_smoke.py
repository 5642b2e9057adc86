"""benchmarks/decode_speed.py runs end to end on the tiny backbone (smoke test, seconds)."""

from __future__ import annotations

import math

from bench_helpers import load_benchmark


def _load():
    return load_benchmark("decode_speed")


def test_decode_speed_smoke(tiny_backbone, tmp_path, capsys):
    bench = _load()
    out = tmp_path / "results.json"
    results = bench.main(["--backbone", str(tiny_backbone), "--variants", "fp32", "int4", "--prompt-tokens", "40",
                          "--new-tokens", "8", "--threads", "1", "--optimum-variants", "fp32", "--json", str(out),
                          "--batch-variant", "int4", "--batch-rows", "1", "3", "--batch-prompt-tokens", "16",
                          "--batch-new-tokens", "4", "--rounds", "3"])
    engines = results["engines"]
    assert set(engines) == {"torch eager (generate)", "ORT fp32 (runtime)", "ORT int4 (runtime)", "ORT fp32 (numpy loop)",
                            "ORT fp32 (runtime, spinning off)", "ORT int4 (runtime, spinning off)",
                            "ORT int4 (runtime, chat sampling)", "ORT fp32, optimum graph (runtime)"}
    for row in engines.values():
        assert row["new_tokens"] == 8 and row["decode_tok_s"] > 0 and row["ttft_s"] > 0
    # the same graph through the runtime and through the numpy loop decodes the same tokens
    assert engines["ORT fp32 (numpy loop)"]["same_greedy_tokens_as_ort_fp32"] == 8
    assert engines["torch eager (generate)"]["same_greedy_tokens_as_ort_fp32"] == 8
    assert engines["ORT fp32 (runtime, spinning off)"]["same_greedy_tokens_as_ort_fp32"] == 8
    assert engines["ORT fp32, optimum graph (runtime)"]["same_greedy_tokens_as_ort_fp32"] == 8  # fused == optimum
    assert results["prompt_tokens"] == 40
    assert all(math.isfinite(p) and p > 1 for p in results["perplexity"].values())
    assert results["perplexity_delta_pct"]["fp32"] == 0
    assert out.is_file()
    rss = results["engine_rss_mb"]
    assert set(rss) == {"torch eager (generate)", "ORT fp32 (runtime)", "ORT int4 (runtime)"}
    assert all(mb is not None and mb > 20 for mb in rss.values()), rss
    assert rss["torch eager (generate)"] > rss["ORT int4 (runtime)"]  # torch itself weighs more than ORT
    batched = results["batched"]["rows"]
    assert set(batched) == {"1", "3"}
    for n, row in batched.items():
        assert row["batched"]["tokens"] == row["sequential"]["tokens"] == int(n) * 4
        assert row["batched"]["latency_p95_s"] >= row["batched"]["latency_p50_s"] > 0
    assert batched["3"]["batched"]["mean_rows_per_step"] > 1  # the three replies shared decode steps
    assert len(batched["3"]["speedup_rounds"]) == 3 and batched["3"]["speedup"] == sorted(batched["3"]["speedup_rounds"])[1]
    h2h = results["head_to_head"]  # no llama.cpp here: the chat default's variant against ORT fp32, interleaved
    assert h2h["rounds"] == 3 and h2h["reference"] == "ORT fp32 (runtime)"
    ours = h2h["engines"]["ORT int4 (chat default)"]
    assert len(ours["decode_tok_s_rounds"]) == 3 and ours["decode_tok_s"] == sorted(ours["decode_tok_s_rounds"])[1]
    lo, hi = ours["vs_reference_range"]
    assert 0 < lo <= ours["vs_reference_median"] <= hi
    assert "vs_reference_median" not in h2h["engines"]["ORT fp32 (runtime)"]
    ttft = results["ttft"]
    assert ttft["second_turn_new_tokens"] < ttft["second_turn_tokens"] / 2  # the first turn's KV was reused
    assert min(ttft["fresh_ttft_s"], ttft["second_turn_ttft_reuse_s"], ttft["second_turn_ttft_refeed_s"]) > 0
    table = capsys.readouterr().out
    assert "| ORT int4 (runtime) |" in table and "held-out perplexity" in table
    assert "| 3 |" in table and "reusing the first turn's KV" in table and "3 interleaved rounds" in table


def test_serve_load_smoke(tiny_onnx, tmp_path, capsys):
    """benchmarks/serve_load.py drives a real server process with streaming clients for a bounded time."""
    bench = load_benchmark("serve_load")
    out = tmp_path / "load.json"
    results = bench.main(["--backbone", str(tiny_onnx), "--clients", "3", "--duration", "2", "--personas", "2",
                          "--rows", "4", "--max-tokens", "8", "--threads", "1", "--json", str(out)])
    assert results["errors"] == 0, results["error_kinds"]
    assert results["requests"] >= 3 and results["requests_per_s"] > 0
    assert results["latency_p95_s"] >= results["latency_p50_s"] > 0
    assert results["server_peak_rss_mb"] > 20
    assert out.is_file() and "| 3 | 3 | 4 |" in capsys.readouterr().out


def test_profile_decode_smoke(tiny_onnx, tmp_path):
    """benchmarks/profile_decode.py: CPU-time A/B (shared KV vs the copying loop), op census, prefill."""
    bench = load_benchmark("profile_decode")
    ab = bench.main(["ab", str(tiny_onnx), f"{tiny_onnx}:legacy", "--past", "20", "--steps", "6", "--rounds", "2"])
    assert ab[f"{tiny_onnx}:legacy"]["same_greedy_as_first"] == 6  # the same tokens either way
    assert all(row["cpu_ms_per_token"] > 0 for row in ab.values())
    census = bench.main(["census", str(tiny_onnx), "--past", "20", "--steps", "4", "--out-dir", str(tmp_path)])
    assert census["ops"]["GroupQueryAttention"]["nodes"] == 2  # one per layer of the tiny backbone
    prefill = bench.main(["prefill", str(tiny_onnx), "--prompt", "30", "--rounds", "2"])
    assert prefill[str(tiny_onnx)] > 0


def test_voice_sweep_smoke(tiny_backbone, tiny_onnx, tmp_path):
    """The sweep trains, answers and scores per (setting, speaker); trained rows really trained."""
    import io
    import json

    from persona_sdk.runtime import Engine

    from enroll_helpers import quirky_speaker

    sweep = load_benchmark("voice_sweep")
    assert sweep.parse_setting("lr=1e-2,bf16=off") == {"lr": 0.01, "bf16": "off"}
    data = quirky_speaker(60)
    person = dict(train=data[:40], val=data[40:50], test=data[50:])
    out = io.StringIO()
    rows = sweep.sweep([person], ["backbone", "lr=1e-2,min_examples=8,batch_size=4"], steps=3, n_gen=3, n_ppl=4,
                       backbone=str(tiny_backbone), engine=Engine(tiny_onnx), out=out)
    assert [r["setting"] for r in rows] == ["backbone", "lr=1e-2,min_examples=8,batch_size=4"]
    assert rows[0]["steps"] == 0 and rows[1]["steps"] == 3
    assert all(r["perplexity"] > 1 and r["median_words"]["real"] == 2 for r in rows)  # mostly "lol yes!"
    assert [json.loads(line) for line in out.getvalue().splitlines()] == rows

    # --identify: one extra row per trained setting, identification among the speakers given
    other = dict(train=data[:40], val=data[40:50], test=data[54:])
    rows = sweep.sweep([person, other], ["lr=1e-2,min_examples=8,batch_size=4"], steps=2, n_gen=1, n_ppl=2,
                       backbone=str(tiny_backbone), engine=Engine(tiny_onnx), out=io.StringIO(), n_identify=3)
    assert [("identification" in r) for r in rows] == [False, False, True]
    ident = rows[-1]["identification"]
    assert ident["k"] == 2 and ident["replies"] == 6 and 0 <= ident["top1"] <= 1
    assert rows[0]["seconds_per_step"] > 0
