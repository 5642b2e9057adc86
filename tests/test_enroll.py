"""enroll(): chats → examples → trainer → vault, and `persona enroll`."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import persona_sdk
from persona_sdk import enrollment as enroll_mod
from persona_sdk import trainer as tr
from persona_sdk.errors import (ProfileExistsError, SourcePrefixError, TooLittleDataError, UnknownSpeakerError)
from persona_sdk.prefix import Prefix
from persona_sdk.vault import Vault

from enroll_helpers import write_chats

QUICK = dict(batch_size=8, min_examples=8, context_budget=48, reply_budget=16, lr=0.05)


def quick(**kw) -> tr.TrainConfig:
    return tr.TrainConfig(**{**QUICK, "max_steps": 2, **kw})


def no_training(monkeypatch):
    """Make any attempt to load a model for training fail loudly."""
    def boom(*a, **k):
        raise AssertionError("training started")
    monkeypatch.setattr(tr, "load_backbone", boom)


def test_persona_sdk_enroll_is_the_function_with_its_module_imported():
    """The function lives in persona_sdk.enrollment: importing that module cannot shadow it (no callable module)."""
    import types

    from persona_sdk import enroll

    assert "persona_sdk.enrollment" in sys.modules  # imported above, as enroll_mod
    assert persona_sdk.enroll is enroll is enroll_mod.enroll and persona_sdk.EnrollResult is enroll_mod.EnrollResult
    assert type(enroll_mod) is types.ModuleType and not callable(enroll_mod)


def test_enroll_trains_and_stores_an_encrypted_profile(tmp_path, tiny_backbone):
    chats = write_chats(tmp_path / "chats.json")
    seen = []
    result = persona_sdk.enroll(chats, me="ana", backbone=tiny_backbone, source="none", passphrase="pw",
                                config=quick(), progress=seen.append)
    assert result.name == "ana" and result.me == "Ana" and result.source == "none"
    assert result.summary.train_examples + result.summary.val_examples == result.report.examples >= 50
    assert seen[-1].phase == "done"
    vault = Vault()
    assert vault.list() == ["ana"]
    raw = result.path.read_bytes()
    assert b"lol" not in raw and b"asleep" not in raw  # nothing in plaintext
    loaded = vault.load("ana", "pw")
    np.testing.assert_array_equal(loaded.kv, result.prefix.kv)
    assert loaded.method == "prefix" and loaded.meta["source"] == "none"


def test_enroll_from_a_source_file_and_refuses_a_foreign_one(tmp_path, tiny_backbone):
    from persona_sdk import source as src
    from persona_sdk.backbone import fingerprint, spec_of

    chats = write_chats(tmp_path / "chats.json")
    spec = spec_of(tiny_backbone).prefix_spec(16)
    good = Prefix(np.random.default_rng(0).normal(size=spec.shape).astype(np.float32) * 0.1,
                  fingerprint(tiny_backbone), method="source-plain")
    src.save_source(good, tmp_path / "src", {"command": "test"})
    result = enroll_mod.enroll(chats, me="Ana", name="with-source", backbone=tiny_backbone,
                               source=tmp_path / "src" / src.SHIPPED_FILE, passphrase="pw", config=quick())
    assert result.source.endswith(src.SHIPPED_FILE)
    assert result.prefix.meta["source"] == "file"
    foreign = Prefix(good.kv, "0" * 64)
    src.save_source(foreign, tmp_path / "foreign", {"command": "test"})
    with pytest.raises(SourcePrefixError, match="another backbone"):
        enroll_mod.enroll(chats, me="Ana", name="x", backbone=tiny_backbone, source=tmp_path / "foreign",
                          passphrase="pw", config=quick())
    # the shipped source is for the default backbone: another backbone starts from random, with a note
    other = enroll_mod.enroll(chats, me="Ana", name="default-src", backbone=tiny_backbone, passphrase="pw",
                              config=quick())
    assert other.source == "none" and other.notes


def test_existing_profile_needs_force_and_fails_before_training(tmp_path, tiny_backbone, monkeypatch):
    chats = write_chats(tmp_path / "chats.json")
    enroll_mod.enroll(chats, me="Ana", backbone=tiny_backbone, source="none", passphrase="pw", config=quick())
    before = Vault().path("ana").read_bytes()
    no_training(monkeypatch)
    with pytest.raises(ProfileExistsError, match="--force"):
        enroll_mod.enroll(chats, me="Ana", backbone=tiny_backbone, source="none", passphrase="pw", config=quick())
    assert Vault().path("ana").read_bytes() == before


def test_force_replaces_the_profile(tmp_path, tiny_backbone):
    chats = write_chats(tmp_path / "chats.json")
    enroll_mod.enroll(chats, me="Ana", backbone=tiny_backbone, source="none", passphrase="pw", config=quick())
    second = enroll_mod.enroll(chats, me="Ana", backbone=tiny_backbone, source="none", passphrase="pw",
                               config=quick(seed=5), force=True)
    np.testing.assert_array_equal(Vault().load("ana", "pw").kv, second.prefix.kv)


def test_too_little_data_or_unknown_me_fails_before_training(tmp_path, tiny_backbone, monkeypatch):
    no_training(monkeypatch)
    small = write_chats(tmp_path / "small.json", n_conversations=3, per_conversation=3)
    with pytest.raises(TooLittleDataError, match="at least 50"):
        enroll_mod.enroll(small, me="Ana", backbone=tiny_backbone, source="none", passphrase="pw")
    chats = write_chats(tmp_path / "chats.json")
    with pytest.raises(UnknownSpeakerError):
        enroll_mod.enroll(chats, me="Zed", backbone=tiny_backbone, source="none", passphrase="pw")
    assert Vault().list() == []


class FakeClock:
    """A clock that only moves when the test says so (no wall-clock dependence)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_max_minutes_covers_the_whole_enrollment(tmp_path, tiny_backbone, monkeypatch):
    """Time spent before training (here: loading the backbone) and a reserve for saving come out of
    the trainer's share; the profile is the best checkpoint when the budget ends."""
    chats = write_chats(tmp_path / "chats.json", n_conversations=30)
    clock = FakeClock()
    real_load = tr.load_backbone

    def slow_load(path):  # loading "takes" 3 s
        clock.now += 3.0
        return real_load(path)

    def tick(report) -> None:  # every training step "takes" 1 s
        if report.phase == "train":
            clock.now += 1.0

    monkeypatch.setattr(tr, "load_backbone", slow_load)
    cfg = tr.TrainConfig(**{**QUICK, "epochs": 200})
    result = enroll_mod.enroll(chats, me="Ana", backbone=tiny_backbone, source="none", passphrase="pw",
                               config=cfg, max_minutes=0.3, progress=tick, clock=clock)
    share = 0.3 * 60 - 3.0 - enroll_mod.SAVE_RESERVE_MINUTES * 60  # seconds left for training
    # a step starts only while the steps done (1 s each) + 1.5 mean steps of margin fit in the share
    assert result.summary.steps == math.floor(share - 1.5) + 1
    assert result.summary.stopped == "max-minutes"
    assert result.wall_seconds <= 0.3 * 60 - enroll_mod.SAVE_RESERVE_MINUTES * 60  # the reserve is left for saving
    loaded = Vault().load("ana", "pw")
    assert loaded.meta["stopped"] == "max-minutes" and np.isfinite(loaded.kv).all()


@pytest.mark.parametrize("source", ["none", "file"])
def test_sdk_and_cli_enroll_train_identically(tmp_path, tiny_backbone, monkeypatch, source):
    """Same chats, seed and settings: persona_sdk.enroll() and `persona enroll` store the same KV block
    (the learning-rate policy and every default live in the library, not in the CLI)."""
    from persona_sdk import source as src
    from persona_sdk.backbone import fingerprint, spec_of
    from persona_sdk.cli import main

    chats = write_chats(tmp_path / "chats.json")
    source_arg = "none"
    if source == "file":
        spec = spec_of(tiny_backbone).prefix_spec(16)
        block = Prefix(np.random.default_rng(0).normal(size=spec.shape).astype(np.float32) * 0.1,
                       fingerprint(tiny_backbone), method="source-plain")
        source_arg = str(src.save_source(block, tmp_path / "src", {"command": "test"}))
    sdk = enroll_mod.enroll(chats, me="Ana", name="sdk", backbone=tiny_backbone, source=source_arg,
                            passphrase="pw", config=tr.TrainConfig(epochs=1, seed=3))
    monkeypatch.setenv("PERSONA_PASSPHRASE", "pw")
    code = main(["enroll", str(chats), "--me", "Ana", "--name", "cli", "--backbone", str(tiny_backbone),
                 "--source", source_arg, "--epochs", "1", "--seed", "3"])
    assert code == 0
    cli = Vault().load("cli", "pw")
    assert sdk.summary.steps > 0 and cli.meta["steps"] == sdk.summary.steps
    # a few replies: from a source prefix the gentler rate
    expected = tr.LR_FROM_SCRATCH if source == "none" else tr.LR_FROM_SOURCE_FEW
    assert cli.meta["lr"] == sdk.prefix.meta["lr"] == expected
    np.testing.assert_array_equal(cli.kv, Vault().load("sdk", "pw").kv)


class _Stop(Exception):
    pass


def test_config_method_and_prefix_len_hold_unless_given(tmp_path, tiny_backbone, monkeypatch):
    """enroll(config=TrainConfig(method="prompt")) trains 'prompt': the keyword arguments win only when given."""
    seen = []

    def fake(train, val=None, *, config=None, **kw):
        seen.append((config.method, config.prefix_len, config.max_minutes))
        raise _Stop

    monkeypatch.setattr(tr, "load_backbone", lambda path: None)
    monkeypatch.setattr(tr, "train_prefix", fake)
    chats = write_chats(tmp_path / "chats.json")
    prompt8 = tr.TrainConfig(method="prompt", prefix_len=8, max_minutes=2.0)
    for kwargs, want in (({"config": prompt8}, ("prompt", 8)),
                         ({"config": prompt8, "method": "rand-prefix"}, ("rand-prefix", 8)),
                         ({"config": prompt8, "prefix_len": 4}, ("prompt", 4)),
                         ({}, ("prefix", 16))):
        with pytest.raises(_Stop):
            enroll_mod.enroll(chats, me="Ana", backbone=tiny_backbone, source="none", passphrase="pw", **kwargs)
        assert seen[-1][:2] == want, kwargs
    assert seen[0][2] is not None and seen[0][2] < 2.0  # the config's budget, less what came before training


def test_an_interrupted_enrollment_names_its_profile_and_the_cli_keeps_the_best_there(tmp_path, tiny_backbone,
                                                                                       monkeypatch, capsys):
    import typer

    from persona_sdk.backbone import fingerprint, spec_of
    from persona_sdk.cli import main
    from persona_sdk.errors import EnrollmentCancelled

    spec = spec_of(tiny_backbone).prefix_spec(16)
    best = Prefix(np.full(spec.shape, 0.25, np.float32), fingerprint(tiny_backbone), method="prefix")

    def interrupted(*a, **k):
        raise EnrollmentCancelled(best=best)

    monkeypatch.setattr(tr, "train_prefix", interrupted)
    chats = write_chats(tmp_path / "chats.json")
    with pytest.raises(EnrollmentCancelled) as info:
        enroll_mod.enroll(chats, me="ana", backbone=tiny_backbone, source="none", passphrase="pw")
    assert info.value.profile == "ana" and info.value.best is best  # the name enroll() resolved from --me
    monkeypatch.setenv("PERSONA_PASSPHRASE", "pw")
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr(typer, "confirm", lambda *a, **k: True)
    code = main(["enroll", str(chats), "--me", "ana", "--backbone", str(tiny_backbone), "--source", "none"])
    assert code == 0, capsys.readouterr().err
    assert Vault().list() == ["ana"]
    np.testing.assert_array_equal(Vault().load("ana", "pw").kv, best.kv)


def test_cli_enroll_prints_how_to_chat(tmp_path, tiny_backbone, monkeypatch, capsys):
    from persona_sdk.cli import main

    chats = write_chats(tmp_path / "chats.json")
    monkeypatch.setenv("PERSONA_PASSPHRASE", "pw")
    code = main(["enroll", str(chats), "--me", "Ana", "--name", "ana-cli", "--backbone", str(tiny_backbone),
                 "--source", "none", "--epochs", "1"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert out.out.strip() == "ana-cli"
    assert "persona chat --name ana-cli" in out.err and "Validation loss" in out.err
    assert "lol" not in out.err  # no chat text in status output
    assert Vault().list() == ["ana-cli"]
    code = main(["enroll", str(chats), "--me", "Ana", "--name", "ana-cli", "--backbone", str(tiny_backbone),
                 "--source", "none"])
    assert code == 1 and "already exists" in capsys.readouterr().err


def test_ctrl_c_leaves_no_profile_and_no_temp_files(tmp_path, tiny_backbone, persona_home):
    chats = write_chats(tmp_path / "chats.json", n_conversations=40)
    env = {**os.environ, "PERSONA_HOME": str(persona_home), "PERSONA_PASSPHRASE": "pw", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "persona_sdk", "enroll", str(chats), "--me", "Ana", "--name", "ana",
         "--backbone", str(tiny_backbone), "--source", "none", "--epochs", "500"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    lines = []
    for line in proc.stderr:  # wait until training has started
        lines.append(line)
        if "Validation loss before training" in line or time.monotonic() > deadline:
            break
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    rest_out, rest_err = proc.communicate(timeout=60)
    assert proc.returncode == 130, "".join(lines) + rest_err
    assert "nothing was saved" in rest_err
    data = persona_home / "data"
    leftovers = [p.name for p in data.rglob("*") if p.is_file() and p.name != ".lock"] if data.exists() else []
    assert leftovers == []
    assert rest_out == ""


def _untrained(monkeypatch, steps: int, best_step: int):
    """The trainer returns a run that never moved the block (as under a heavy load)."""
    real = tr.train_prefix

    def fake(train, val=None, *, backbone=None, config=None, init=None, progress=None, should_stop=None,
             clock=None):
        prefix, summary = real(train, val, backbone=backbone, config=tr.TrainConfig(**{**vars(config),
                               "max_steps": 1}), init=init)
        from dataclasses import replace

        return prefix, replace(summary, steps=steps, best_step=best_step, stopped="max-minutes")

    monkeypatch.setattr(tr, "train_prefix", fake)


@pytest.mark.parametrize("steps, best_step, match", [(0, 0, "no step"), (7, 0, "none of the 7 training steps")])
def test_a_persona_that_was_never_trained_is_not_saved(tmp_path, tiny_backbone, monkeypatch, steps, best_step,
                                                       match):
    from persona_sdk.errors import TrainingError

    chats = write_chats(tmp_path / "chats.json")
    _untrained(monkeypatch, steps, best_step)
    with pytest.raises(TrainingError, match=match) as caught:
        enroll_mod.enroll(chats, me="Ana", backbone=tiny_backbone, source="none", passphrase="pw", config=quick(),
                          max_minutes=1)
    if steps:  # the validation loss only rose: the advice names a learning rate a third of the one used
        assert f"gentler --lr (e.g. {quick().learning_rate(from_source=False) / 3:.2g})" in str(caught.value)
    assert Vault().list() == []
    # without saving, the caller gets the run and decides
    result = enroll_mod.enroll(chats, me="Ana", backbone=tiny_backbone, source="none", passphrase="pw",
                               config=quick(), save=False)
    assert result.summary.steps == steps and result.path is None


def test_cli_enroll_with_no_training_step_exits_1_and_says_why(tmp_path, tiny_backbone, monkeypatch, capsys):
    from persona_sdk.cli import main

    chats = write_chats(tmp_path / "chats.json")
    _untrained(monkeypatch, 0, 0)
    monkeypatch.setenv("PERSONA_PASSPHRASE", "pw")
    code = main(["enroll", str(chats), "--me", "Ana", "--backbone", str(tiny_backbone), "--source", "none",
                 "--max-minutes", "0.1"])
    out = capsys.readouterr()
    assert code == 1 and out.out == ""
    assert out.err.strip().splitlines()[-1].startswith("Error: training made no step in the time budget")
    assert "Saved" not in out.err and Vault().list() == []
