"""Source-prefix training (plain, temperature, PPReptile, MTML, AMTML) on a tiny
corpus, the shipped-prefix files, and the SPC reader."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from persona_sdk import source as src
from persona_sdk import trainer as tr
from persona_sdk.errors import ConfigError, SourcePrefixError, TrainingError
from persona_sdk.prefix import Prefix

from enroll_helpers import make_sharp, quirky_speaker


@pytest.fixture(scope="module")
def sharp(tiny_backbone, tmp_path_factory):
    return tr.load_backbone(make_sharp(tiny_backbone, tmp_path_factory.mktemp("sharp") / "tiny-sharp"))


def corpus(with_persona: bool = False):
    sizes = {"a": 40, "b": 12, "c": 6}
    speakers = [src.Speaker(k, quirky_speaker(n, seed=i), "i say lol a lot. i like hiking." if with_persona else None)
                for i, (k, n) in enumerate(sizes.items())]
    return speakers, quirky_speaker(12, seed=9)


SMALL = dict(batch_size=4, context_budget=48, reply_budget=16)


@pytest.mark.parametrize("method, extra", [
    ("plain", dict(steps=4)),
    ("temperature", dict(steps=4)),
    ("ppreptile", dict(steps=4, inner_steps=2, outer_batch=2)),  # one outer iteration
    ("mtml", dict(steps=4, inner_steps=2, outer_batch=2)),
    ("amtml", dict(steps=4, inner_steps=2, outer_batch=2)),
])
def test_each_method_runs_and_changes_the_prefix(sharp, method, extra):
    speakers, val = corpus(with_persona=method in ("mtml", "amtml"))
    init = Prefix(tr.random_prefix(sharp, 16, seed=3), sharp.fingerprint)
    cfg = src.SourceConfig(method=method, lr=0.05, **SMALL, **extra)
    prefix, summary = src.train_source(speakers, val, backbone=sharp, config=cfg, init=init)
    assert summary.steps == 4 and summary.speakers == 3
    assert not np.allclose(prefix.kv, init.kv)
    assert summary.best_val_loss < summary.init_val_loss
    assert prefix.method == f"source-{method}" and prefix.backbone == sharp.fingerprint
    assert summary.curve[0] == (0, summary.init_val_loss) and summary.curve[-1][0] == 4


def test_source_training_is_reproducible(sharp):
    speakers, val = corpus()
    cfg = src.SourceConfig(method="temperature", lr=0.05, steps=2, **SMALL)
    a, _ = src.train_source(speakers, val, backbone=sharp, config=cfg)
    b, _ = src.train_source(speakers, val, backbone=sharp, config=cfg)
    np.testing.assert_array_equal(a.kv, b.kv)


def test_temperature_flattens_speaker_rates():
    plain = src.speaker_rates([1000, 10], "plain", 10.0)
    temp = src.speaker_rates([1000, 10], "temperature", 10.0)
    assert plain[0] / plain[1] == pytest.approx(100.0)
    assert temp[0] / temp[1] == pytest.approx(100.0 ** 0.1)
    assert temp.sum() == pytest.approx(1.0)
    with pytest.raises(ConfigError):
        src.speaker_rates([3, 0], "plain", 10.0)


def test_mtml_needs_persona_descriptions(sharp):
    speakers, val = corpus(with_persona=False)
    with pytest.raises(TrainingError, match="persona description"):
        src.train_source(speakers, val, backbone=sharp, config=src.SourceConfig(method="mtml", steps=2))


def test_reconstruction_example_targets_the_persona_only():
    ex = quirky_speaker(1)[0]
    rec = src.reconstruction_example(ex, "i like hiking.")
    assert rec.reply == "i like hiking."
    assert rec.context[:-1] == ex.context and rec.context[-1].text == src.RECONSTRUCT_PROMPT


def test_needs_two_speakers_and_validation(sharp):
    speakers, val = corpus()
    with pytest.raises(TrainingError, match="two speakers"):
        src.train_source(speakers[:1], val, backbone=sharp)
    with pytest.raises(TrainingError, match="validation"):
        src.train_source(speakers, [], backbone=sharp)


def test_save_and_load_source_checks_sha256(tmp_path):
    kv = np.random.default_rng(0).normal(size=(2, 2, 2, 16, 8)).astype(np.float32)
    prefix = Prefix(kv, "f" * 64, method="source-plain", meta={"steps": 3})
    path = src.save_source(prefix, tmp_path / "out", {"command": "persona source train ...", "seed": 0})
    info = json.loads((tmp_path / "out" / src.SHIPPED_INFO).read_text())
    assert info["shape"] == [2, 2, 2, 16, 8] and info["seed"] == 0 and len(info["sha256"]) == 64
    loaded = src.load_source(tmp_path / "out")
    np.testing.assert_array_equal(loaded.kv, kv)
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(SourcePrefixError, match="sha256"):
        src.load_source(path)
    with pytest.raises(SourcePrefixError, match="not found"):
        src.load_source(tmp_path / "nowhere.safetensors")


def test_shipped_source_prefix_is_consistent():
    """The shipped block, if present, matches its recorded sha256 and shape."""
    if not src.shipped_available():
        pytest.fail("no shipped source prefix in persona_sdk/data/source_prefix")
    info = json.loads((src.SHIPPED_DIR / src.SHIPPED_INFO).read_text())
    prefix = src.load_source()
    assert list(prefix.kv.shape) == info["shape"] and prefix.backbone == info["backbone"]
    assert info["data"]["corpus"] == "chitchat-dataset" and info["data"]["split"]["part"] == "A"
    assert info["command"].startswith("persona source train")


def test_spc_reader_builds_speakers_with_personas(tmp_path):
    path = tmp_path / "spc.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, ["user 1 personas", "user 2 personas", "Best Generated Conversation"])
        w.writeheader()
        w.writerow({"user 1 personas": "I like cats.\nI am a nurse.", "user 2 personas": "I surf.",
                    "Best Generated Conversation": "User 1: hi\nUser 2: hello there\nUser 1: cats?\nUser 2: surf!"})
    speakers = src.spc_speakers(path)
    assert [s.id for s in speakers] == ["spc-0-1", "spc-0-2"]
    one, two = speakers
    assert one.persona == "I like cats. I am a nurse." and [e.reply for e in one.examples] == ["cats?"]
    assert [e.reply for e in two.examples] == ["hello there", "surf!"]
    assert two.examples[-1].context[-1].role == "user"


@pytest.mark.parametrize("bad", [dict(method="maml"), dict(steps=0), dict(alpha=1.5), dict(temperature=0)])
def test_source_config_rejects_bad_values(bad):
    with pytest.raises(ConfigError):
        src.SourceConfig(**bad)


def test_init_text_starts_from_a_hard_prompt_block(sharp):
    speakers, val = corpus()
    cfg = src.SourceConfig(method="plain", steps=1, init_text="hi there", **SMALL)
    _, summary = src.train_source(speakers, val, backbone=sharp, config=cfg)
    start = Prefix(tr.kv_of_embeddings(sharp, tr.text_embeddings(sharp, "hi there", 16)), sharp.fingerprint)
    assert summary.init_val_loss == pytest.approx(tr.reply_loss(sharp, val, start, 48, 16), rel=1e-5)
