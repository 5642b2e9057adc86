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
from persona_sdk.evaluate import EvalConfig, evaluate, format_samples, held_out_examples, render_html
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
    config = EvalConfig(samples=0, context_budget=128, reply_budget=32, voice=0)
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
    config = EvalConfig(samples=0, max_replies=3, voice=0)
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
    config = EvalConfig(samples=2, max_new_tokens=4, max_replies=4, voice=0)
    examples = held_out_examples(engine, chats, "Alice", config)
    report = evaluate(engine, _prefix(engine, 4), examples, config=config)
    assert len(report.samples) == 2
    assert CANARY not in json.dumps(report.to_dict()) + "\n".join(report.summary_lines())
    assert CANARY not in repr(report)
    assert any(CANARY in line for line in format_samples(report))  # the first reply is sampled
    page = render_html(report)
    assert "<svg" in page and page.count("<circle") == 4


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
                 "--json", "--voice", "0"])
    out = capsys.readouterr()
    assert code == 0, out.err
    numbers = json.loads(out.out)
    assert numbers["replies_scored"] == 8 and numbers["perplexity"]["source"] > 0
    assert CANARY not in out.out + out.err

    report = work / "report.html"
    code = main(["eval", "me", "--chats", chats, "--me", "alice", "--backbone", str(tiny_onnx),
                 "--samples", "1", "--html", str(report), "--voice", "0"])
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


# --- what a person notices, the training fingerprint ---------------------------------------
SHOUTS = ["WHAT A DAY!!!", "NO WAY!!!", "CALL ME LATER!!!", "SO HAPPY!!!", "GOOD NIGHT!!!", "YES YES!!!"]


def _voice_chats(tmp_path, name: str, topic: str, n: int = 6) -> str:
    """Alice answers Bob in ``n`` conversations, two replies each, about ``topic``."""
    convs = []
    for i in range(n):
        convs.append({"id": f"{name}{i}", "messages": [
            {"sender": "Bob", "text": f"so what about the {topic} {i} ({name})?"},  # the pairs differ per file
            {"sender": "Alice", "text": f"my {topic} {i} is the best, {CANARY} too"},
            {"sender": "Bob", "text": f"and later {i} ({name})?"},
            {"sender": "Alice", "text": f"more {topic} {i} then sleep"},
        ]})
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"me": "Alice", "conversations": convs}))
    return str(path)


def test_voice_comparison_through_the_runtime(engine, tmp_path):
    from persona_sdk import voice as vm
    from persona_sdk.config import GenerationConfig

    chats = load_chats(_voice_chats(tmp_path, "held", "guitar"))
    config = EvalConfig(samples=2, voice=3, generation=GenerationConfig(max_new_tokens=6), max_replies=2)
    examples = held_out_examples(engine, chats, "Alice", config)
    persona, source = _prefix(engine, 20), _prefix(engine, 21)
    train = held_out_examples(engine, load_chats(_voice_chats(tmp_path, "train", "guitar")), "Alice", config)
    persona.meta.update(vm.enrollment_meta(train, background=vm.Background({"the": 10}, 100)))
    assert "guitar" in vm.profile_topic_words(persona.meta)
    distractors = {"quiet": ["hello there", "what a day", "no way", "so happy"], "loud": SHOUTS}
    report = evaluate(engine, persona, examples, source=source, config=config, distractors=distractors)
    v = report.voice
    assert set(v.generated) == {"persona", "source", "backbone"}
    assert all(st.replies == 3 for st in v.generated.values()) and v.real.replies == len(examples) == 12
    assert v.topic_share["real"] == 1.0  # every real reply names the guitar
    assert v.attribution.k == 3 and v.attribution.replies["real"] == 12
    assert [s.real for s in report.samples] == [examples[0].reply, examples[11].reply]  # spread over the voice set
    assert report.overlap.matched == 0 and report.warnings == []
    again = evaluate(engine, persona, examples, source=source, config=config, distractors=distractors)
    assert again.voice.to_dict() == v.to_dict()  # fixed seeds: the same replies
    numbers = json.dumps(report.to_dict())
    assert CANARY not in numbers and "guitar" not in numbers
    # an old profile (no voice meta): topics and the overlap check are skipped with a note, no crash
    bare = evaluate(engine, _prefix(engine, 22), examples, config=config)
    assert bare.voice.topic_words == 0 and bare.overlap is None and bare.voice.attribution is None
    assert any("overlap check skipped" in n for n in bare.notes) and any("topics skipped" in n for n in bare.notes)


def _enroll_alice(tiny_backbone, chats: str):
    import persona_sdk
    from persona_sdk import trainer as tr

    cfg = tr.TrainConfig(batch_size=8, min_examples=8, context_budget=48, reply_budget=16, lr=0.05, max_steps=1)
    return persona_sdk.enroll(chats, me="Alice", name="alice", backbone=tiny_backbone, source="none",
                              passphrase="pw", config=cfg)


def _many_chats(tmp_path, name: str, topic: str) -> str:
    return _voice_chats(tmp_path, name, topic, n=30)  # 60 replies: enough to enroll


def test_enrollment_keeps_topics_and_digests_encrypted_and_eval_warns_on_overlap(
        tiny_backbone, tiny_onnx, tmp_path, monkeypatch, capsys):
    from persona_sdk import voice as vm
    from persona_sdk.cli import main

    trained_on = _many_chats(tmp_path, "trained", "guitar")
    result = _enroll_alice(tiny_backbone, trained_on)
    topics = vm.profile_topic_words(result.prefix.meta)
    assert "guitar" in topics
    raw = result.path.read_bytes()
    for secret in [*topics, vm.META_KEY, result.prefix.meta[vm.META_KEY]["digests"]["key"], CANARY]:
        assert secret.encode() not in raw  # nothing of it in plaintext on disk
    loaded = Vault().load("alice", "pw")
    assert vm.profile_topic_words(loaded.meta) == topics

    monkeypatch.setenv("PERSONA_PASSPHRASE", "pw")
    assert main(["info", "alice"]) == 0
    shown = capsys.readouterr().out
    assert "meta.steps" in shown and "guitar" not in shown and "digests" not in shown and "voice" not in shown

    engine = Engine(tiny_onnx)
    config = EvalConfig(samples=0, voice=0, max_replies=2)
    same = evaluate(engine, loaded, held_out_examples(engine, load_chats(trained_on), "Alice", config), config=config)
    assert same.overlap.exact and same.overlap.matched == same.replies_available == 60
    assert same.warnings and "60 of the 60 held-out replies (100%)" in same.warnings[0]
    assert same.warnings[0] in same.summary_lines()
    other = held_out_examples(engine, load_chats(_voice_chats(tmp_path, "fresh", "piano")), "Alice", config)
    disjoint = evaluate(engine, loaded, other, config=config)
    assert disjoint.overlap.matched == 0 and disjoint.warnings == []
    assert disjoint.to_dict()["overlap"] == {"replies": 12, "overlapping": 0.0, "exact": True}


def test_cli_eval_prints_the_voice_comparison_and_the_overlap_warning(tiny_backbone, tiny_onnx, tmp_path,
                                                                      monkeypatch, capsys):
    from persona_sdk.cli import main

    trained_on = _many_chats(tmp_path, "trained", "guitar")
    _enroll_alice(tiny_backbone, trained_on)
    monkeypatch.setenv("PERSONA_PASSPHRASE", "pw")
    code = main(["eval", "alice", "--chats", trained_on, "--backbone", str(tiny_onnx), "--json", "--voice", "2",
                 "--max-replies", "2", "--attribution-k", "0"])
    out = capsys.readouterr()
    assert code == 0, out.err
    numbers = json.loads(out.out)
    assert numbers["overlap"]["overlapping"] == 60 and "warning: 60 of the 60" in out.err
    v = numbers["voice"]
    assert v["generated"]["persona"]["replies"] == 2 and v["real"]["replies"] == 60
    assert v["topic_share"]["real"] == 1.0 and v["attribution"] is None
    assert CANARY not in out.out + out.err and "guitar" not in out.out

    fresh = _voice_chats(tmp_path, "fresh", "guitar")
    code = main(["eval", "alice", "--chats", fresh, "--backbone", str(tiny_onnx), "--voice", "2",
                 "--max-replies", "2", "--samples", "1", "--attribution-k", "3"])  # K = 20 trains a larger classifier
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "warning" not in out.out + out.err
    assert "what a reader notices" in out.out and "starts lowercase" in out.out and "uses your topics" in out.out
    assert "attributed to you (K=3)" in out.out  # against 2 chitchat source speakers
    assert "sample 1" in out.out and "contexts answered 2/2" in out.err


def test_attribution_is_skipped_in_one_line_without_chitchat_or_sklearn(monkeypatch, capsys):
    import importlib.util

    from persona_sdk.cli import evaluate as cli_eval
    from persona_sdk.errors import MissingDependencyError
    from persona_sdk.evaluate import source_speakers

    real_find = importlib.util.find_spec
    missing = {"chitchat_dataset"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in missing else real_find(name, *a))
    with pytest.raises(MissingDependencyError, match="chitchat-dataset"):
        source_speakers(3)
    assert cli_eval._distractors(EvalConfig()) is None
    missing.add("sklearn")
    assert cli_eval._distractors(EvalConfig()) is None
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and "chitchat-dataset package is not installed" in lines[0] and "scikit-learn" in lines[1]
