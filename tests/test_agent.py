"""PersonaAgent: the embedding API (history, streaming, cancel, threads, asyncio)."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from persona_sdk.agent import PersonaAgent
from persona_sdk.config import GenerationConfig
from persona_sdk.conversation import ASSISTANT, USER
from persona_sdk.errors import GenerationError, PrefixShapeError
from persona_sdk.prefix import Prefix
from persona_sdk.runtime import Engine

# seeded sampling: reproducible per call, and more varied than greedy on a random tiny model
GREEDY = GenerationConfig(seed=5, temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0, max_new_tokens=12)


@pytest.fixture(scope="module")
def engine(tiny_onnx):
    return Engine(tiny_onnx)


@pytest.fixture()
def prefix(engine):
    kv = np.random.default_rng(1).normal(size=(engine.layers, 2, engine.kv_heads, 4, engine.head_dim))
    return Prefix(kv.astype(np.float32), engine.fingerprint)


def test_reply_and_stream_agree_and_history_grows(engine, prefix):
    agent = PersonaAgent(prefix, engine=engine, generation=GREEDY)
    text = agent.reply("hi there")
    assert text
    assert [t.role for t in agent.history] == [USER, ASSISTANT]
    agent.reset()
    assert agent.history == []
    assert "".join(agent.stream("hi there")) == text


def test_history_is_context_for_the_next_reply(engine, prefix):
    agent = PersonaAgent(prefix, engine=engine, generation=GREEDY)
    agent.reply("hi there")
    second = agent.reply("what do you do on weekends?")
    fresh = PersonaAgent(prefix, engine=engine, generation=GREEDY).reply("what do you do on weekends?")
    assert len(agent.history) == 4
    assert second != fresh  # same seed, same message: only the earlier turns differ


def test_persona_changes_the_reply(engine, prefix):
    with_persona = PersonaAgent(prefix, engine=engine, generation=GREEDY).reply("hi there")
    bare = PersonaAgent(None, engine=engine, generation=GREEDY).reply("hi there")
    assert with_persona != bare


def test_cancelling_a_stream_leaves_the_agent_usable(engine, prefix):
    agent = PersonaAgent(prefix, engine=engine, generation=GREEDY.replace(max_new_tokens=40))
    stream = agent.stream("hi there")
    first = next(stream)
    stream.close()  # the caller walked away mid-reply
    assert agent.history[-1].role == ASSISTANT and agent.history[-1].text == first.strip()
    assert agent.reply("hi there")  # the lock was released


def test_cancel_from_another_thread_stops_the_reply(engine, prefix):
    agent = PersonaAgent(prefix, engine=engine, generation=GREEDY.replace(max_new_tokens=200))
    engine_stop, engine.stop_ids = engine.stop_ids, set()
    try:
        pieces = []
        for piece in agent.stream("hi there"):
            pieces.append(piece)
            if len(pieces) == 2:
                threading.Thread(target=agent.cancel).start()
        assert len(pieces) < 200
    finally:
        engine.stop_ids = engine_stop


def test_concurrent_callers_are_serialised(engine, prefix):
    agent = PersonaAgent(prefix, engine=engine, generation=GREEDY)
    expected = PersonaAgent(prefix, engine=engine, generation=GREEDY).reply("hi there")
    results: list[str] = []

    def worker():
        agent_local = PersonaAgent(prefix, engine=engine, generation=GREEDY)
        results.append(agent_local.reply("hi there"))
        agent.reply("hi there")

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == [expected] * 3
    assert len(agent.history) == 6  # three whole exchanges, none interleaved
    assert [t.role for t in agent.history] == [USER, ASSISTANT] * 3


def test_async_variants(engine, prefix):
    agent = PersonaAgent(prefix, engine=engine, generation=GREEDY)
    expected = PersonaAgent(prefix, engine=engine, generation=GREEDY).reply("hi there")

    async def main():
        whole = await agent.areply("hi there")
        agent.reset()
        pieces = [p async for p in agent.astream("hi there")]
        return whole, "".join(pieces)

    whole, streamed = asyncio.run(main())
    assert whole == expected == streamed


def test_settings_per_call_and_validation(engine, prefix):
    agent = PersonaAgent(prefix, engine=engine, generation=GREEDY)
    short = agent.reply("hi there", max_new_tokens=1)
    assert len(engine.format.encode(short)) <= 2
    with pytest.raises(Exception, match="allowed"):
        agent.reply("hi", temprature=0.3)
    with pytest.raises(GenerationError, match="empty"):
        agent.reply("   ")


def test_wrong_prefix_is_refused_at_construction(engine):
    bad = Prefix(np.zeros((engine.layers, 2, engine.kv_heads + 1, 3, engine.head_dim), np.float32), engine.fingerprint)
    with pytest.raises(PrefixShapeError):
        PersonaAgent(bad, engine=engine)


def test_context_manager_closes(engine, prefix):
    with PersonaAgent(prefix, engine=engine, generation=GREEDY) as agent:
        agent.reply("hi there")
    assert agent.prefix is None and agent.history == []
    with pytest.raises(GenerationError, match="closed"):
        agent.reply("hi there")


def test_a_message_that_is_not_valid_text_is_a_generation_error(engine, prefix):
    agent = PersonaAgent(prefix, engine=engine, generation=GREEDY)
    with pytest.raises(GenerationError, match="not valid text"):
        agent.reply("\udcff")  # what Python makes of a non-UTF-8 byte in argv
    assert agent.history == []  # nothing happened
    assert agent.reply("hi there")  # and the agent is still usable


def test_the_next_turn_feeds_only_what_is_new(engine, prefix):
    """The agent keeps the conversation's KV: turn two reuses at least all of turn one's prompt."""
    agent = PersonaAgent(prefix, engine=engine, generation=GREEDY)
    agent.reply("hi there")
    first_prompt = len(engine.prompt_ids(agent.history[:1], prefix, GREEDY))
    agent.reply("what do you do on weekends?")
    assert agent._kv.reused >= first_prompt
    agent.reset()  # a new conversation: at most the opening tokens both conversations share are kept
    agent.reply("what do you do on weekends?")
    assert agent._kv.reused < len(engine.format.encode("<|im_start|>user\nwhat do"))
