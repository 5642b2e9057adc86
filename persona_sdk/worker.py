"""ReplyWorker: stream an agent's replies off the UI thread (for desktop apps).

A GUI must never decode on its UI thread. :meth:`ReplyWorker.send` starts the
reply in a worker thread, which queues each text piece as it is decoded and a
:class:`ReplyDone` after the last one; the UI thread calls :meth:`drain` from its
event loop (Tk ``after``, a Qt timer...) and never waits on the model. Toolkit-free:
only ``threading`` and ``queue``.

    worker = ReplyWorker(agent)
    worker.send("hi!")
    ...                                  # every ~30 ms, on the UI thread:
    for item in worker.drain():
        if isinstance(item, ReplyDone):  # the reply ended (finished, stopped or failed)
            show_status(item.tokens_per_second)
        else:
            append_to_transcript(item)

:meth:`stop` (the Stop button) is safe from any thread and takes effect even when it
comes before the first token: the reply ends after the piece being shown, and the
agent's history keeps exactly what was shown. Nothing is written anywhere; errors are
reported as one-line messages that never quote the conversation.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass

from .errors import GenerationError, PersonaError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplyDone:
    """Queued after the last piece of a reply."""

    tokens: int  # tokens in the reply as shown (its text encoded again)
    seconds: float  # from send() to the end of the reply, the prompt's forward pass included
    stopped: bool  # ended by stop()
    error: str | None = None  # a one-line message when the reply failed

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


class ReplyWorker:
    """Streams one reply at a time in a daemon thread; the UI polls :meth:`drain`."""

    def __init__(self, agent) -> None:
        self.agent = agent
        self._items: "queue.Queue[str | ReplyDone]" = queue.Queue()
        self._stop = threading.Event()
        self._busy = threading.Event()
        self._lock = threading.Lock()  # send() vs the end of a reply: ReplyDone is queued before a new reply starts

    @property
    def busy(self) -> bool:
        """True from :meth:`send` until the reply's :class:`ReplyDone` has been queued."""
        return self._busy.is_set()

    def send(self, text: str) -> None:
        """Start the reply to ``text``; raises :class:`GenerationError` while one is still running."""
        with self._lock:
            if self._busy.is_set():
                raise GenerationError("a reply is still being written; stop it first")
            self._busy.set()
            self._stop.clear()
        threading.Thread(target=self._run, args=(text,), name="persona-reply", daemon=True).start()

    def stop(self) -> None:
        """End the reply being written (from any thread); a no-op when idle."""
        if self._busy.is_set():
            self._stop.set()
            self.agent.cancel()

    def drain(self) -> list:
        """Every piece (``str``) and :class:`ReplyDone` queued since the last call, in order."""
        out = []
        try:
            while True:
                out.append(self._items.get_nowait())
        except queue.Empty:
            return out

    def _run(self, text: str) -> None:  # the worker thread
        start = time.perf_counter()
        pieces: list[str] = []
        error = None
        try:
            stream = self.agent.stream(text)
            try:
                for piece in stream:
                    pieces.append(piece)
                    self._items.put(piece)
                    if self._stop.is_set():  # also a stop that came before decoding began
                        break
            finally:
                stream.close()  # the agent keeps what was shown in its history
        except PersonaError as exc:
            error = str(exc)
        except Exception as exc:  # never lose the ReplyDone: the UI would wait forever
            log.error("the reply failed (%s)", type(exc).__name__)
            error = f"the reply failed ({type(exc).__name__})"
        seconds = time.perf_counter() - start
        shown = "".join(pieces)
        done = ReplyDone(tokens=self._count(shown), seconds=seconds, stopped=self._stop.is_set(), error=error)
        with self._lock:  # send() waits for both: a new reply's pieces always come after this ReplyDone
            self._busy.clear()
            self._items.put(done)

    def _count(self, text: str) -> int:
        if not text:
            return 0
        try:
            return len(self.agent.engine.tokenizer.encode(text, add_special_tokens=False).ids)
        except Exception:  # an agent without a tokenizer (a stand-in engine): count pieces of text
            return len(text.split())
