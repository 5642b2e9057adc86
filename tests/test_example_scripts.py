"""The scripts in examples/ run as a user runs them, against the tiny test backbone's export.

Each takes ``--backbone`` (a backbone folder or an ONNX export folder), so
they run here without the real default backbone; their output is compared
with the same conversation held in-process. gui_threading.py runs with
``--headless``: its ReplyWorker (the part a desktop app copies) driven from a
plain polling loop instead of Tk's event loop, so no display is needed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from persona_sdk import GenerationConfig, PersonaAgent
from persona_sdk.runtime import Engine

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
FIRST, SECOND = "hi, what do you do on weekends?", "and what about during the week?"


def run(script: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run an example; stdout/stderr decoded as UTF-8 without newline translation (replies may hold a \\r)."""
    env = {**(env if env is not None else os.environ), "PYTHONIOENCODING": "utf-8"}
    out = subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, timeout=180, env=env)
    out.stdout, out.stderr = out.stdout.decode("utf-8"), out.stderr.decode("utf-8")
    return out


@pytest.fixture(scope="module")
def engine(tiny_onnx) -> Engine:
    return Engine(tiny_onnx)


def _replies(engine, messages, generation, prefix=None) -> list[str]:
    with PersonaAgent(prefix, engine=engine, generation=generation) as agent:
        return [agent.reply(m) for m in messages]


QUICK = GenerationConfig(temperature=0.7, max_new_tokens=64, seed=1)  # the examples' settings


def test_every_example_is_covered():
    # desktop/app.py: a real window under Xvfb in test_desktop.py;
    # serve_client.py runs against a live server in tests/test_server.py
    assert sorted(p.relative_to(EXAMPLES).as_posix() for p in EXAMPLES.rglob("*.py")) == [
        "async_chat.py", "desktop/app.py", "gui_threading.py", "quickstart.py", "serve_client.py"]


@pytest.mark.parametrize("script", ["quickstart.py", "async_chat.py"])
def test_chat_examples_print_the_replies(script, tiny_onnx, engine):
    out = run(script, "--backbone", str(tiny_onnx))
    assert out.returncode == 0, out.stderr
    assert "export" not in out.stderr  # an export folder: nothing to build or announce
    first, second = _replies(engine, [FIRST, SECOND], QUICK)
    assert out.stdout == f"{first}\n{second}\n(4 turns so far)\n"


def test_quickstart_speaks_as_an_enrolled_profile(tiny_onnx, engine, persona_home):
    import numpy as np

    from persona_sdk.prefix import Prefix
    from persona_sdk.vault import Vault

    kv = np.random.default_rng(5).normal(size=(engine.layers, 2, engine.kv_heads, 4, engine.head_dim))
    prefix = Prefix(kv.astype(np.float32), engine.fingerprint, method="test")
    Vault().save("alice", prefix, "pw")
    out = run("quickstart.py", "alice", "--backbone", str(tiny_onnx), env={**os.environ, "PERSONA_PASSPHRASE": "pw"})
    assert out.returncode == 0, out.stderr
    first, second = _replies(engine, [FIRST, SECOND], QUICK, prefix)
    assert out.stdout == f"{first}\n{second}\n(4 turns so far)\n"
    assert _replies(engine, [FIRST], QUICK) != [first]  # the persona changed what was said


def test_gui_worker_runs_headless(tiny_onnx, engine):
    gen = GenerationConfig(seed=3)
    out = run("gui_threading.py", "--headless", "--backbone", str(tiny_onnx), "--seed", "3",
              "--message", FIRST, "--message", SECOND)
    assert out.returncode == 0, out.stderr
    first, second = _replies(engine, [FIRST, SECOND], gen)
    assert out.stdout == f"you> {FIRST}\npersona> {first}\nyou> {SECOND}\npersona> {second}\n(4 turns so far)\n"
    assert "tkinter" not in out.stderr

    stopped = run("gui_threading.py", "--headless", "--backbone", str(tiny_onnx), "--seed", "3",
                  "--message", FIRST, "--message", SECOND, "--stop-after", "1")
    assert stopped.returncode == 0, stopped.stderr
    lines = stopped.stdout.splitlines()
    assert lines[-1] == "(4 turns so far)"  # Stop ended a reply; the agent went on to answer the next
    shown = stopped.stdout.split("persona> ", 1)[1].split(f"\nyou> {SECOND}")[0]
    assert shown.endswith(" [stopped]")
    assert first.startswith(shown[: -len(" [stopped]")])  # what was shown is the start of the full reply
