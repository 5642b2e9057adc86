"""ReplyWorker (persona_sdk/worker.py): replies streamed off the UI thread, Stop, errors, ordering."""

from __future__ import annotations

import threading
import time

import pytest

from persona_sdk import GenerationConfig, PersonaAgent, ReplyDone, ReplyWorker
from persona_sdk.errors import GenerationError
from persona_sdk.runtime import Engine

MESSAGE = "hi, what do you do on weekends?"


@pytest.fixture(scope="module")
def engine(tiny_onnx) -> Engine:
    return Engine(tiny_onnx)


def collect(worker: ReplyWorker, timeout: float = 60.0) -> tuple[list[str], ReplyDone]:
    """Poll like a UI event loop until the reply's ReplyDone arrives."""
    pieces: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for item in worker.drain():
            if isinstance(item, ReplyDone):
                return pieces, item
            pieces.append(item)
        time.sleep(0.005)
    raise AssertionError("no ReplyDone")


class _Gated:
    """The real agent, whose stream begins only once ``gate`` is set."""

    def __init__(self, agent: PersonaAgent) -> None:
        self.agent, self.engine, self.gate = agent, agent.engine, threading.Event()

    def stream(self, text):
        assert self.gate.wait(30)
        yield from self.agent.stream(text)

    def cancel(self):
        self.agent.cancel()


def test_a_reply_streams_in_order_and_reports_its_speed(engine):
    gen = GenerationConfig(seed=2, max_new_tokens=32)
    with PersonaAgent(engine=engine, generation=gen) as reference:
        expected = ["".join(reference.stream(MESSAGE)), "".join(reference.stream("and then?"))]
    with PersonaAgent(engine=engine, generation=gen) as agent:
        gated = _Gated(agent)
        worker = ReplyWorker(gated)
        assert not worker.busy and worker.drain() == []
        worker.send(MESSAGE)
        assert worker.busy
        with pytest.raises(GenerationError, match="still being written"):
            worker.send("again")  # one reply at a time
        gated.gate.set()
        pieces, done = collect(worker)
        assert "".join(pieces) == expected[0] and len(pieces) > 1
        assert not done.stopped and done.error is None and not worker.busy
        assert done.tokens == len(engine.tokenizer.encode(expected[0], add_special_tokens=False).ids) > 0
        assert done.seconds > 0 and done.tokens_per_second == done.tokens / done.seconds
        worker.send("and then?")  # the conversation goes on
        pieces, done = collect(worker)
        assert "".join(pieces) == expected[1] and len(agent.history) == 4


def test_stop_before_the_first_token_still_stops(engine):
    gen = GenerationConfig(seed=2, max_new_tokens=128)
    with PersonaAgent(engine=engine, generation=gen) as agent:
        gated = _Gated(agent)
        worker = ReplyWorker(gated)
        worker.send(MESSAGE)
        worker.stop()  # before decoding begins: the agent clears a cancel() it gets that early
        gated.gate.set()
        pieces, done = collect(worker)
        assert done.stopped and done.error is None
        assert len(pieces) <= 1  # at most the piece being shown
        assert agent.history[-1].text == "".join(pieces).strip()  # the history holds what was shown
        worker.stop()  # idle: a no-op
        worker.send(MESSAGE)
        pieces, done = collect(worker)
        assert not done.stopped  # a stop does not leak into the next reply


class _Failing:
    """A stand-in agent whose stream fails after one piece."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc
        self.cancelled = threading.Event()

    def stream(self, text):
        yield "a"
        raise self.exc

    def cancel(self):
        self.cancelled.set()


@pytest.mark.parametrize("exc, message", [
    (GenerationError("612 positions exceed the backbone's context"), "612 positions exceed the backbone's context"),
    (RuntimeError(f"boom: {MESSAGE}"), "the reply failed (RuntimeError)"),
])
def test_a_failing_reply_ends_with_a_one_line_error(exc, message, caplog):
    worker = ReplyWorker(_Failing(exc))
    worker.send(MESSAGE)
    pieces, done = collect(worker)
    assert pieces == ["a"] and done.error == message and not worker.busy
    assert MESSAGE not in done.error and MESSAGE not in caplog.text  # never the conversation's text
