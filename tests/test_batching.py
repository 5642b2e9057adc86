"""Continuous batching: many personas in one batch, each row decoding exactly as it would alone."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from persona_sdk.batching import CANCELLED, LENGTH, Batcher
from persona_sdk.config import GenerationConfig
from persona_sdk.conversation import USER, Turn
from persona_sdk.errors import BatcherBusyError, GenerationError
from persona_sdk.prefix import Prefix
from persona_sdk.runtime import Engine

GREEDY = GenerationConfig(do_sample=False, repetition_penalty=1.0, max_new_tokens=20)
TEXTS = ["hi there, how are you doing today?", "what do you do on weekends?", "lol no, i was asleep",
         "did you watch the game last night", "hey, back from the trip? the quick brown fox jumps over the lazy dog"]


@pytest.fixture(scope="module")
def engine(tiny_onnx):
    engine = Engine(tiny_onnx)
    engine.stop_ids = set()  # decode every row to its budget: longer rows, more steps shared
    return engine


def _prefix(engine, length, seed):
    rng = np.random.default_rng(seed)
    kv = rng.normal(size=(engine.layers, 2, engine.kv_heads, length, engine.head_dim)).astype(np.float32)
    return Prefix(kv, engine.fingerprint, method="test")


def _ids(engine, text):
    return engine.format.prompt_ids([Turn(USER, text)], 200)


def _alone(engine, ids, prefix, gen):
    return list(engine.generate_ids(ids, prefix, gen))


def _wait(pred, timeout=30.0):
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


def _cases(engine):
    """Rows with different personas (none, 3 and 9 positions), prompt lengths and settings."""
    return [
        (_ids(engine, TEXTS[0]), None, GREEDY),
        (_ids(engine, TEXTS[1]), _prefix(engine, 3, 1), GREEDY.replace(max_new_tokens=7)),
        (_ids(engine, TEXTS[4]), _prefix(engine, 9, 2), GREEDY.replace(repetition_penalty=1.3)),
        (_ids(engine, TEXTS[2]), _prefix(engine, 3, 3), GenerationConfig(seed=11, temperature=0.9, top_k=20,
                                                                          top_p=0.95, max_new_tokens=16)),
        (_ids(engine, TEXTS[3]), _prefix(engine, 9, 2), GREEDY.replace(max_new_tokens=25)),
    ]


def test_every_row_decodes_as_if_alone(engine):
    cases = _cases(engine)
    with Batcher(engine, max_rows=8) as batcher:
        replies = [batcher.submit(ids, prefix, gen) for ids, prefix, gen in cases]
        got = [list(r) for r in replies]
        assert batcher.stats.busiest >= 3  # rows really shared decode steps
    for (ids, prefix, gen), tokens, reply in zip(cases, got, replies):
        assert tokens == _alone(engine, ids, prefix, gen)
        assert reply.finish_reason == LENGTH and len(tokens) == gen.max_new_tokens


def test_rows_join_and_leave_mid_batch(engine):
    cases = _cases(engine)
    long = GREEDY.replace(max_new_tokens=40)
    with Batcher(engine, max_rows=3) as batcher:  # fewer rows than replies: some wait for a free row
        first = batcher.submit(cases[0][0], cases[0][1], long)
        it = iter(first)
        head = [next(it) for _ in range(5)]  # the first row is decoding when the others arrive
        later = [batcher.submit(ids, prefix, gen) for ids, prefix, gen in cases[1:]]
        endless = GREEDY.replace(max_new_tokens=400)  # cannot finish before it is cancelled
        doomed = batcher.submit(cases[2][0], cases[2][1], endless)
        doomed_head = []
        for token in doomed:  # cancel one mid-reply: its row is freed for the rest
            doomed_head.append(token)
            if len(doomed_head) == 3:
                doomed.cancel()
                break
        rest = [list(r) for r in later]
        head += list(it)
        _wait(lambda: batcher.active == 0)
    assert head == _alone(engine, cases[0][0], cases[0][1], long)
    for (ids, prefix, gen), tokens in zip(cases[1:], rest):
        assert tokens == _alone(engine, ids, prefix, gen)
    assert doomed.finish_reason == CANCELLED
    assert doomed_head == _alone(engine, cases[2][0], cases[2][1], long)[:3]
    assert doomed.times.tokens < 400


def test_a_long_prompt_is_prefilled_in_chunks_between_decode_steps(engine):
    ids, prefix = _ids(engine, " ".join(TEXTS * 3)), _prefix(engine, 3, 4)
    with Batcher(engine, max_rows=4, prefill_chunk=8) as batcher:
        short = iter(batcher.submit(_ids(engine, TEXTS[0]), None, GREEDY.replace(max_new_tokens=30)))
        next(short)
        long = batcher.submit(ids, prefix, GREEDY)
        tokens = list(long)
        rest = list(short)
        assert batcher.stats.prefill_chunks >= len(ids) // 8
    assert tokens == _alone(engine, ids, prefix, GREEDY)  # same chunks alone (the default 256 covers it whole)
    assert len(rest) == 29


def test_async_consumers(engine):
    cases = _cases(engine)[:3]

    async def main(batcher):
        loop = asyncio.get_running_loop()

        async def collect(ids, prefix, gen):
            return [t async for t in batcher.submit(ids, prefix, gen, loop=loop)]

        return await asyncio.gather(*(collect(*c) for c in cases))

    with Batcher(engine, max_rows=4) as batcher:
        got = asyncio.run(main(batcher))
    assert got == [_alone(engine, *c) for c in cases]


def test_text_stops_at_a_stop_string_and_frees_the_row(engine):
    ids = _ids(engine, TEXTS[0])
    full = engine.format.decode(_alone(engine, ids, None, GREEDY))
    stop = full[4:6]
    with Batcher(engine, max_rows=2) as batcher:
        reply = batcher.submit(ids, None, GREEDY.replace(stop=(stop,)))
        text = "".join(batcher.text(reply))
        _wait(lambda: batcher.active == 0)
    assert text == full[: full.index(stop)]
    assert reply.finish_reason in (CANCELLED, LENGTH)


def test_bad_submissions_are_refused(engine):
    with Batcher(engine, max_rows=1, max_waiting=1) as batcher:
        with pytest.raises(GenerationError, match="beam"):
            batcher.submit([1, 2], None, GREEDY.replace(num_beams=2))
        with pytest.raises(GenerationError, match="empty"):
            batcher.submit([], None, GREEDY)
        with pytest.raises(GenerationError, match="context"):
            batcher.submit([5] * engine.max_positions, None, GREEDY)
        with pytest.raises(GenerationError, match="vocabulary"):
            batcher.submit([engine.vocab_size + 3], None, GREEDY)
        busy = batcher.submit([5, 6], None, GREEDY.replace(max_new_tokens=400))
        busy_tokens = iter(busy)
        next(busy_tokens)  # the one row is taken
        queued = batcher.submit([5, 6], None, GREEDY)
        with pytest.raises(BatcherBusyError, match="waiting"):
            batcher.submit([5, 6], None, GREEDY)
        busy.cancel()
        assert len(list(queued)) == GREEDY.max_new_tokens
    with pytest.raises(GenerationError, match="closed"):
        batcher.submit([5, 6], None, GREEDY)


def test_the_copying_cache_batches_the_same(tiny_onnx):
    """Graphs that cannot share past and present (optimum, CUDA) step their rows one by one, same tokens."""
    engine = Engine(tiny_onnx)
    engine.stop_ids = set()
    engine.shares_kv = False
    cases = _cases(engine)[:3]
    with Batcher(engine, max_rows=4) as batcher:
        from persona_sdk.kvcache import CopyCache

        assert isinstance(batcher.cache, CopyCache)
        got = [list(batcher.submit(*c)) for c in cases]
    assert got == [_alone(engine, *c) for c in cases]
