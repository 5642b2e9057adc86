"""Many conversations, many personas, one batch: continuous batching over the one backbone graph.

A persona is only a KV block, so replies for different personas (or none)
can be decoded together: each row of the batch starts from its own persona
block and has its own length, and one graph run advances every row by one
token (the weights are read once per step for all of them)::

    batcher = Batcher(engine, max_rows=8)
    reply = batcher.submit(prompt_ids, prefix=alice, gen=GenerationConfig(seed=1))
    for token in reply:                      # or: async for token in reply (submit(..., loop=...))
        ...
    batcher.close()

Rows join and leave between steps (continuous batching): a new reply takes a
free row as soon as one is free, prefills its prompt (one chunk per
scheduler turn, so a long prompt holds the others up by one chunk at a time)
and then decodes with the rest; a finished, cancelled or abandoned reply
frees its row at the next step. Every row has its own sampling settings,
random stream, stop tokens and token budget; stop strings are applied by the
text layer (``Engine.detokenize``), which cancels the row when it finds one.

Parity: a row's prefill runs exactly as it would alone (batch 1, same
chunks) and a decode step treats every row independently (its own past
length, positions and attention), so each row's greedy tokens equal the same
conversation decoded alone (tested).

One scheduler thread owns the graph and the cache; ``submit`` and the reply
iterators are safe to use from any thread or event loop.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, AsyncIterator, Iterator, Sequence

import numpy as np

from .config import GenerationConfig
from .errors import BatcherBusyError, GenerationError
from .kvcache import PREFILL_CHUNK
from .sampling import Sampler

if TYPE_CHECKING:  # pragma: no cover
    from .prefix import Prefix
    from .runtime import Engine

log = logging.getLogger(__name__)

STOP, LENGTH, CANCELLED, ERROR = "stop", "length", "cancelled", "error"
_END = object()


@dataclass
class ReplyTimes:
    """When a reply was submitted, got its first token, and finished (``time.perf_counter`` seconds)."""

    submitted: float = 0.0
    first_token: float | None = None
    finished: float | None = None
    tokens: int = 0

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.submitted

    @property
    def latency(self) -> float | None:
        return None if self.finished is None else self.finished - self.submitted


class Reply:
    """One reply being decoded in a :class:`Batcher` row: iterate it for its token ids.

    Iterate it once (``for token in reply`` / ``async for token in reply``):
    each step blocks (awaits) until the next token; leaving the loop early
    (or dropping the iterator), ``close()`` or ``cancel()`` frees the row. ``finish_reason`` is ``stop`` (end-of-turn
    token), ``length`` (``max_new_tokens`` or the context), ``cancelled`` or
    ``error`` once the reply is over.
    """

    def __init__(self, prompt_ids: list[int], prefix: "Prefix | None", gen: GenerationConfig,
                 loop: asyncio.AbstractEventLoop | None) -> None:
        self.prompt_ids = prompt_ids
        self.prefix = prefix
        self.gen = gen
        self.finish_reason: str | None = None
        self.error: BaseException | None = None
        self.times = ReplyTimes(submitted=time.perf_counter())
        self._cancel = threading.Event()
        self._loop = loop
        self._queue: queue.Queue | asyncio.Queue = asyncio.Queue() if loop is not None else queue.Queue()

    # --- the scheduler's side -----------------------------------------------------
    def _emit(self, item) -> None:
        if self._loop is None:
            self._queue.put(item)
        else:
            try:
                self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
            except RuntimeError:  # the consumer's event loop is closed: nobody is listening
                self._cancel.set()

    def _finish(self, reason: str, error: BaseException | None = None) -> None:
        if self.finish_reason is None:
            self.finish_reason, self.error = reason, error
            self.times.finished = time.perf_counter()
            self._emit(_END)

    # --- the consumer's side ------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        """Stop decoding this reply (from any thread); its row is freed at the next step."""
        self._cancel.set()

    close = cancel

    def _raise_if_failed(self) -> None:
        """After the last token: the decoding error that ended this reply, if one did."""
        if self.finish_reason == ERROR and self.error is not None:
            raise GenerationError(f"decoding failed ({type(self.error).__name__})") from self.error

    def __iter__(self) -> Iterator[int]:
        if self._loop is not None:
            raise GenerationError("this reply was submitted for an event loop: use `async for`")
        try:
            while True:
                item = self._queue.get()
                if item is _END:
                    break
                yield item
        finally:
            self.cancel()
        self._raise_if_failed()

    async def __aiter__(self) -> AsyncIterator[int]:
        if self._loop is None:
            raise GenerationError("this reply was submitted without an event loop: use `for`")
        try:
            while True:
                item = await self._queue.get()
                if item is _END:
                    break
                yield item
        finally:
            self.cancel()
        self._raise_if_failed()


@dataclass
class _Row:
    reply: Reply
    sampler: Sampler
    pending: list[int]  # prompt tokens still to prefill
    token: int = -1  # the last token picked, fed at the next step
    generated: int = 0


@dataclass
class BatchStats:
    """What the scheduler did: graph runs, rows per decode step, tokens out."""

    decode_steps: int = 0
    prefill_chunks: int = 0
    rows_stepped: int = 0  # sum over decode steps of the rows decoding
    tokens: int = 0
    replies: int = 0
    busiest: int = 0  # most rows decoding in one step
    occupancy: list = field(default_factory=list)

    @property
    def mean_rows(self) -> float:
        return self.rows_stepped / self.decode_steps if self.decode_steps else 0.0


class Batcher:
    """Continuous batching of replies over one engine (one scheduler thread, ``max_rows`` rows)."""

    def __init__(self, engine: "Engine", max_rows: int = 8, capacity: int = 512, max_waiting: int = 256,
                 prefill_chunk: int = PREFILL_CHUNK) -> None:
        if not isinstance(max_rows, int) or max_rows < 1:
            raise GenerationError(f"max_rows must be an int >= 1, got {max_rows!r}")
        self.engine = engine
        self.max_rows = max_rows
        self.max_waiting = max_waiting
        self.prefill_chunk = prefill_chunk
        self.cache = engine.new_cache(slots=max_rows, capacity=capacity)
        self.rows: list[_Row | None] = [None] * max_rows
        self.stats = BatchStats()
        self._waiting: deque[Reply] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="persona-batcher", daemon=True)
        self._thread.start()

    # --- public -------------------------------------------------------------------
    def submit(self, prompt_ids: Sequence[int], prefix: "Prefix | None" = None,
               gen: GenerationConfig | None = None, *, loop: asyncio.AbstractEventLoop | None = None) -> Reply:
        """Queue a reply to ``prompt_ids`` in ``prefix``'s voice; returns its :class:`Reply` at once.

        ``loop``: the event loop that will ``async for`` the reply (None: a plain iterator).
        Raises :class:`GenerationError` for settings a batch cannot decode (beam search,
        a prompt beyond the context) and :class:`BatcherBusyError` when too many replies wait.
        """
        gen = gen or GenerationConfig()
        ids = [int(i) for i in prompt_ids]
        if not ids:
            raise GenerationError("the prompt is empty")
        if gen.num_beams > 1:
            raise GenerationError("beam search is not batched; use num_beams=1 (or PersonaAgent for beams)")
        if any(i < 0 or i >= self.engine.vocab_size for i in ids):
            raise GenerationError("the prompt has token ids outside the vocabulary")
        self.engine.check_prefix(prefix)
        plen = prefix.length if prefix is not None else 0
        if plen + len(ids) + 1 > self.engine.max_positions:
            raise GenerationError(f"{plen + len(ids)} positions (persona + prompt) exceed the backbone's context "
                                  f"of {self.engine.max_positions}; shorten the input")
        reply = Reply(ids, prefix, gen, loop)
        with self._cond:
            if self._closed:
                raise GenerationError("this batcher is closed")
            if len(self._waiting) >= self.max_waiting:
                raise BatcherBusyError(f"{len(self._waiting)} replies are already waiting; try again later")
            self._waiting.append(reply)
            self._cond.notify()
        return reply

    def text(self, reply: Reply) -> Iterator[str]:
        """``reply``'s text pieces (whole characters, cut at its stop strings; cancels it on a stop)."""
        return self.engine.detokenize(iter(reply), reply.gen.stop)

    @property
    def active(self) -> int:
        """Rows holding a reply now (prefilling or decoding)."""
        return sum(r is not None for r in self.rows)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def close(self, timeout: float | None = 10.0) -> None:
        """Cancel every reply and stop the scheduler thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)

    def __enter__(self) -> "Batcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- the scheduler -------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._waiting and all(r is None for r in self.rows):
                    self._cond.wait()
                if self._closed:
                    break
                admitted = self._admit()
            try:
                for slot, reply in admitted:
                    self._start(slot, reply)
                self._reap()
                self._prefill_one()
                self._decode()
            except Exception as exc:  # a bug or an onnxruntime failure: fail the rows, keep serving
                log.error("batch step failed (%s); failing its %d replies", type(exc).__name__, self.active)
                for slot, row in enumerate(self.rows):
                    if row is not None:
                        self._free(slot, ERROR, exc)
        for slot, row in enumerate(self.rows):
            if row is not None:
                self._free(slot, CANCELLED)
        with self._cond:
            while self._waiting:
                self._waiting.popleft()._finish(CANCELLED)

    def _admit(self) -> list[tuple[int, Reply]]:
        """Move waiting replies into free rows (under the lock); the rows are set up outside it."""
        out = []
        for slot in range(self.max_rows):
            if self.rows[slot] is not None:
                continue
            while self._waiting and self._waiting[0].cancelled:
                self._waiting.popleft()._finish(CANCELLED)
            if not self._waiting:
                break
            reply = self._waiting.popleft()
            self.rows[slot] = _Row(reply, self.engine.sampler(reply.gen, reply.prompt_ids, reply.prefix),
                                   list(reply.prompt_ids))
            out.append((slot, reply))
        return out

    def _start(self, slot: int, reply: Reply) -> None:
        try:
            self.cache.load(slot, reply.prefix)
        except Exception as exc:
            self._free(slot, ERROR, exc)

    def _reap(self) -> None:
        for slot, row in enumerate(self.rows):
            if row is not None and row.reply.cancelled:
                self._free(slot, CANCELLED)

    def _prefill_one(self) -> None:
        """One prefill chunk for the row that joined first among those still prefilling."""
        candidates = [(row.reply.times.submitted, slot) for slot, row in enumerate(self.rows)
                      if row is not None and row.pending]
        if not candidates:
            return
        slot = min(candidates)[1]
        row = self.rows[slot]
        chunk, row.pending = row.pending[: self.prefill_chunk], row.pending[self.prefill_chunk:]
        logits = self.cache.prefill(slot, chunk, self.prefill_chunk)
        self.stats.prefill_chunks += 1
        if not row.pending:
            self._take(slot, row, logits)

    def _decode(self) -> None:
        decoding = [slot for slot, row in enumerate(self.rows) if row is not None and not row.pending]
        if not decoding:
            return
        n = max(decoding) + 1
        tokens = np.zeros(n, dtype=np.int64)
        active = np.zeros(n, dtype=bool)
        for slot in decoding:
            tokens[slot], active[slot] = self.rows[slot].token, True
        full = [slot for slot in decoding if self.cache.lengths[slot] + 1 >= self.engine.max_positions]
        for slot in full:  # no room for another position
            active[slot] = False
            self._free(slot, LENGTH)
        if not active.any():
            return
        logits = self.cache.step(tokens, active)  # (n, vocab)
        self.stats.decode_steps += 1
        self.stats.rows_stepped += int(active.sum())
        self.stats.busiest = max(self.stats.busiest, int(active.sum()))
        for slot in np.flatnonzero(active):
            row = self.rows[slot]
            if row is not None:
                self._take(int(slot), row, logits[slot])

    def _take(self, slot: int, row: _Row, logits: np.ndarray) -> None:
        """Pick the row's next token from ``logits``; emit it or finish the row."""
        reply = row.reply
        if reply.cancelled:
            self._free(slot, CANCELLED)
            return
        token = row.sampler.pick(logits)
        if token in self.engine.stop_ids:
            self._free(slot, STOP)
            return
        row.generated += 1
        row.token = token
        row.sampler.observe(token)
        if reply.times.first_token is None:
            reply.times.first_token = time.perf_counter()
        reply.times.tokens = row.generated
        self.stats.tokens += 1
        reply._emit(token)
        if row.generated >= reply.gen.max_new_tokens:
            self._free(slot, LENGTH)

    def _free(self, slot: int, reason: str, error: BaseException | None = None) -> None:
        row = self.rows[slot]
        self.rows[slot] = None
        self.cache.lengths[slot] = 0
        if row is not None:
            self.stats.replies += 1
            row.reply._finish(reason, error)
