"""`persona eval`: scores match direct runtime scoring, no chat text leaks, CLI end to end."""

from __future__ import annotations

import json
import math
import os
import stat

import numpy as np
import pytest

from persona_sdk import metrics
from persona_sdk._crypto import KdfParams
from persona_sdk.chats import load_chats
from persona_sdk.errors import ConfigError, EvalError
from persona_sdk.evaluate import (EvalConfig, evaluate, format_samples, held_out_examples, loss_matrix,
                                  render_html, reply_loss_fn)
from persona_sdk.prefix import Prefix
from persona_sdk.runtime import Engine
from persona_sdk.vault import Vault

CANARY = "zebracanary"


@pytest.fixture(scope="module")
def engine(tiny_onnx):
    return Engine(tiny_onnx)


def _prefix(engine, seed: int, length: int = 4) -> Prefix:
    rng = np.random.default_rng(seed)
    kv = rng.normal(size=(engine.layers, 2, engine.kv_heads, length, engine.head_dim)).astype(np.float32)
    return Prefix(kv, engine.fingerprint, method="test")


def _chats_file(tmp_path) -> str:
    convs = []
    for i in range(4):
        convs.append({"id": f"c{i}", "messages": [
            {"sender": "Bob", "text": f"hey, how was the trip {i}?"},
            {"sender": "Alice", "text": f"great, the {CANARY} museum was fun {i}"},
            {"sender": "Bob", "text": "nice! what next?"},
            {"sender": "Alice", "text": f"sleep, then work on day {i}"},
        ]})
    path = tmp_path / "held_out.json"
    path.write_text(json.dumps({"me": "Alice", "conversations": convs}))
    return str(path)


def test_eval_numbers_match_direct_runtime_scoring(engine, tmp_path):
    chats = load_chats(_chats_file(tmp_path))
    config = EvalConfig(samples=0, context_budget=128, reply_budget=32)
    examples = held_out_examples(engine, chats, "Alice", config)
    assert len(examples) == 8  # two replies with context per conversation
    persona, source = _prefix(engine, 1), _prefix(engine, 2)
    report = evaluate(engine, persona, examples, source=source, config=config)
    flat = {None: [], "p": [], "s": []}
    for ex in examples:
        ids, n = engine.format.example_ids(ex.context, ex.reply, 128, 32)
        flat[None].extend(engine.token_losses(ids, n, None))
        flat["p"].extend(engine.token_losses(ids, n, persona))
        flat["s"].extend(engine.token_losses(ids, n, source))
    assert report.ppl_backbone == pytest.approx(math.exp(np.mean(flat[None])), rel=1e-6)
    assert report.ppl_persona == pytest.approx(math.exp(np.mean(flat["p"])), rel=1e-6)
    assert report.ppl_source == pytest.approx(math.exp(np.mean(flat["s"])), rel=1e-6)
    assert report.tokens == len(flat[None]) and report.replies == 8
    assert report.gain_vs_backbone == pytest.approx(metrics.relative_gain(report.ppl_backbone, report.ppl_persona))
    assert report.losses.shape == (8, 3)
    assert 0.0 <= report.beats_source <= 1.0


def test_persona_equal_to_source_never_beats_it(engine, tmp_path):
    chats = load_chats(_chats_file(tmp_path))
    config = EvalConfig(samples=0, max_replies=3)
    examples = held_out_examples(engine, chats, "Alice", config)
    p = _prefix(engine, 3)
    report = evaluate(engine, p, examples, source=p, config=config)
    assert report.replies == 3 and report.replies_available == 8
    assert report.gain_vs_source == pytest.approx(0.0) and report.beats_source == 0.0
    no_source = evaluate(engine, p, examples, config=config)
    assert no_source.ppl_source is None and no_source.beats_source is None
    assert any("skipped" in line for line in no_source.summary_lines())


def test_report_numbers_hold_no_chat_text_but_samples_do(engine, tmp_path):
    chats = load_chats(_chats_file(tmp_path))
    config = EvalConfig(samples=2, max_new_tokens=4, max_replies=4)
    examples = held_out_examples(engine, chats, "Alice", config)
    report = evaluate(engine, _prefix(engine, 4), examples, config=config)
    assert len(report.samples) == 2
    assert CANARY not in json.dumps(report.to_dict()) + "\n".join(report.summary_lines())
    assert CANARY not in repr(report)
    assert any(CANARY in line for line in format_samples(report))  # the first reply is sampled
    page = render_html(report)
    assert "<svg" in page and page.count("<circle") == 4


def test_loss_matrix_feeds_identification_and_hits(engine, tmp_path):
    chats = load_chats(_chats_file(tmp_path))
    examples = held_out_examples(engine, chats, "Alice", EvalConfig())[:3]
    prefixes = [_prefix(engine, 10), None, _prefix(engine, 11)]
    m = loss_matrix(engine, prefixes, examples)
    assert m.shape == (3, 3)
    for k, p in enumerate(prefixes):
        fn = reply_loss_fn(engine, p)
        for j, ex in enumerate(examples):
            assert m[k, j] == pytest.approx(fn(ex.context, ex.reply), rel=1e-6)
    # identification: rows 0 and 2 against each other; the same prefix twice ties everywhere (misses)
    pair = m[[0, 2]]
    owners = (pair[1] < pair[0]).astype(int)  # the lower-loss prefix owns each reply
    if owners.min() == owners.max():  # every reply prefers one prefix: give the other a copy of reply 0
        pair, owners = np.concatenate([pair, pair[::-1, :1]], axis=1), np.append(owners, 1 - owners[0])
    assert metrics.persona_identification(pair, owners).accuracy == 1.0
    same = loss_matrix(engine, [prefixes[0], prefixes[0]], examples)
    assert metrics.persona_identification(same, [0, 1, 0]).accuracy == 0.0
    # Hits@1 through the runtime: a reply scored against 19 copies of itself never wins (ties are misses)
    fn = reply_loss_fn(engine, prefixes[0])
    ex = examples[0]
    item = metrics.HitsExample(ex.context, ex.reply, (ex.reply,) * 19)
    assert metrics.hits_at_1(fn, [item]) == 0.0


def test_bad_inputs_are_clear_errors(engine):
    with pytest.raises(ConfigError, match="max_replies"):
        EvalConfig(max_replies=0)
    with pytest.raises(EvalError, match="no replies"):
        evaluate(engine, _prefix(engine, 5), [])


def test_cli_eval_end_to_end(tiny_onnx, tmp_path, monkeypatch, capsys, persona_home):
    from persona_sdk.cli import main

    monkeypatch.setenv("PERSONA_PASSPHRASE", "pw")
    engine = Engine(tiny_onnx)
    Vault(kdf=KdfParams.floor()).save("me", _prefix(engine, 6), "pw")
    work = tmp_path / "work"
    work.mkdir()
    source = work / "source.safetensors"
    source.write_bytes(_prefix(engine, 7).to_bytes())
    chats = _chats_file(work)
    before = {p for p in persona_home.rglob("*")}

    code = main(["eval", "me", "--chats", chats, "--backbone", str(tiny_onnx), "--source", str(source),
                 "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    numbers = json.loads(out.out)
    assert numbers["replies_scored"] == 8 and numbers["perplexity"]["source"] > 0
    assert CANARY not in out.out + out.err

    report = work / "report.html"
    code = main(["eval", "me", "--chats", chats, "--me", "alice", "--backbone", str(tiny_onnx),
                 "--samples", "1", "--html", str(report)])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "perplexity, your persona" in out.out and "sample 1" in out.out
    assert "not compared" in out.err  # the shipped source prefix is for the default backbone, not this one
    assert CANARY in report.read_text()
    assert stat.S_IMODE(os.stat(report).st_mode) == 0o600
    # nothing new under PERSONA_HOME, and no stray temp files next to the report
    assert {p for p in persona_home.rglob("*")} == before
    assert sorted(p.name for p in work.iterdir()) == ["held_out.json", "report.html", "source.safetensors"]

    code = main(["eval", "nobody", "--chats", chats, "--backbone", str(tiny_onnx)])
    out = capsys.readouterr()
    assert code == 1 and out.err.strip().startswith("Error:") and len(out.err.strip().splitlines()) == 1
