"""PersonaAgent: the embedding API for desktop apps.

    from persona_sdk import PersonaAgent

    with PersonaAgent() as agent:                 # bare default backbone
        print(agent.reply("hi, what do you do on weekends?"))

    with PersonaAgent.open("me", passphrase=...) as agent:   # an enrolled persona
        for piece in agent.stream("hey!"):
            print(piece, end="", flush=True)

Threading: one lock serialises generation, so a GUI may call the agent from
any thread; never call it on the UI thread itself — use ``areply``/``astream``
from an asyncio loop, or run ``reply`` in a worker thread and post the result
back. Cancelling a stream (``break`` out of the loop, ``close()`` the iterator,
``cancel()`` from another thread, or cancelling the ``astream`` task) stops
decoding at the next token and leaves the agent usable; the partial reply is
kept in the history, as the user saw it.

Each turn feeds the model only what it has not seen yet: the agent keeps the
conversation's KV cache (persona block, earlier turns, its own replies) and
the next prompt reuses the longest part of it that still matches (all of it,
unless the context budget dropped the oldest turns or a reply was cut).

The agent chats on a cached ONNX export of the backbone. When there is none
yet (or only one built by an older exporter), it builds one only when asked:
``PersonaAgent(build=True, progress=print)`` announces the build and reports
progress (it needs the ``[export]`` extra and takes a minute or more); without
``build=True`` it raises :class:`~persona_sdk.errors.ExportNotReadyError`
naming the command that builds it (``persona backbone export ...``).
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import AsyncIterator, Callable, Iterator, Sequence

from .config import GenerationConfig, RuntimeConfig
from .conversation import ASSISTANT, USER, Turn
from .errors import ConfigError, GenerationError
from .prefix import Prefix


class PersonaAgent:
    """Chat with the backbone, optionally in a persona's voice."""

    def __init__(
        self,
        prefix: Prefix | None = None,
        *,
        backbone: str | Path | None = None,
        variant: str | None = None,
        device: str = "auto",
        threads: int | None = None,
        spin: bool = True,
        generation: GenerationConfig | None = None,
        progress: Callable[[str], None] | None = None,
        build: bool = False,
        engine=None,
        persona_sentences: Sequence[str] | None = None,
        explicit: str | None = None,
    ) -> None:
        """``backbone``: None (the embedded default), a Hugging Face causal-LM folder, or an
        export folder; ``build``: build a missing or outdated ONNX export now (announced
        through ``progress``) instead of raising :class:`ExportNotReadyError`.
        ``persona_sentences`` (+ ``explicit``, one of :data:`persona_sdk.explicit.MODES`,
        default ``prompt``): speak as a persona described in sentences instead of a prefix;
        the mode (:mod:`persona_sdk.explicit`) makes each reply."""
        from .engines import open_engine

        runtime = RuntimeConfig(device=device, threads=threads, variant=variant, spin=spin)
        self._explicit = None
        if persona_sentences is not None or explicit is not None:
            if prefix is not None:
                raise ConfigError("an enrolled persona (prefix) and persona sentences cannot be combined; pass one")
            from .explicit import open_mode

            self._explicit = open_mode(explicit, persona_sentences, backbone=backbone, runtime=runtime,
                                       progress=progress, build=build, engine=engine)
            engine = self._explicit.engine
        self.engine = engine if engine is not None else open_engine(backbone, runtime, progress, build=build)
        self.engine.check_prefix(prefix)
        self.prefix = prefix
        self.generation = generation or GenerationConfig()
        self._history: list[Turn] = []
        self._kv = None  # the conversation's DecodeState, made on the first reply
        # generation lock: held across a whole stream, possibly released from another
        # thread (astream steps the iterator in worker threads), hence a plain Lock;
        # state lock: short holds around the history.
        self._lock = threading.Lock()
        self._state = threading.Lock()
        self._cancel = threading.Event()
        self._closed = False

    @classmethod
    def open(cls, name: str, passphrase: str | None = None, **kwargs) -> "PersonaAgent":
        """An agent speaking as the enrolled profile ``name`` (decrypted into memory only).

        Takes the same keyword arguments as the constructor (``build=True`` included).
        """
        from .engines import open_engine
        from .vault import Vault

        runtime = RuntimeConfig(device=kwargs.pop("device", "auto"), threads=kwargs.pop("threads", None),
                                variant=kwargs.pop("variant", None), spin=kwargs.pop("spin", True))
        engine = kwargs.pop("engine", None) or open_engine(kwargs.pop("backbone", None), runtime,
                                                           kwargs.pop("progress", None),
                                                           build=kwargs.pop("build", False))
        prefix = Vault().load(name, passphrase, fingerprint=engine.fingerprint)
        return cls(prefix, engine=engine, **kwargs)

    # --- conversation state ----------------------------------------------------
    @property
    def history(self) -> list[Turn]:
        """A copy of the conversation so far (oldest first)."""
        with self._state:
            return list(self._history)

    def reset(self) -> None:
        """Forget the conversation (the persona stays)."""
        with self._state:
            self._history.clear()

    def cancel(self) -> None:
        """Stop the reply being generated (from any thread); the agent stays usable."""
        self._cancel.set()

    # --- generation ------------------------------------------------------------
    def reply(self, text: str, **settings) -> str:
        """The persona's whole reply to ``text``."""
        return "".join(self.stream(text, **settings))

    def stream(self, text: str, **settings) -> Iterator[str]:
        """Yield the reply piece by piece as it is decoded."""
        if self._closed:
            raise GenerationError("this PersonaAgent is closed")
        if not isinstance(text, str) or not text.strip():
            raise GenerationError("the message is empty")
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:  # lone surrogates: bytes that were not UTF-8 (e.g. a mis-set terminal)
                raise GenerationError("the message is not valid text (it holds bytes that are not UTF-8)") from None
        gen = self.generation.replace(**settings) if settings else self.generation
        return self._stream(text, gen)

    def _stream(self, text: str, gen: GenerationConfig) -> Iterator[str]:
        with self._lock:
            self._cancel.clear()
            with self._state:
                history = self._history + [Turn(USER, text)]
            if self._explicit is not None:  # an explicit mode makes the reply (PAL: select, then generate)
                source = self._explicit.reply_stream(history, gen, should_stop=self._cancel.is_set)
            else:
                ids = self.engine.prompt_ids(history, self.prefix, gen)
                if self._kv is None:
                    self._kv = self.engine.new_state(self.prefix, capacity=len(ids) + 2 * gen.max_new_tokens)
                source = self.engine.stream_text(ids, self.prefix, gen, should_stop=self._cancel.is_set,
                                                 state=self._kv)
            pieces: list[str] = []
            try:
                for piece in source:
                    pieces.append(piece)
                    yield piece
                    if self._cancel.is_set():
                        break
            finally:  # also on cancel / GeneratorExit: keep what the user saw
                with self._state:
                    self._history = history + [Turn(ASSISTANT, "".join(pieces).strip())]

    async def areply(self, text: str, **settings) -> str:
        """``reply`` without blocking the event loop."""
        return await asyncio.to_thread(self.reply, text, **settings)

    async def astream(self, text: str, **settings) -> AsyncIterator[str]:
        """``stream`` for asyncio: decoding runs in a worker thread."""
        iterator = self.stream(text, **settings)
        done = object()
        try:
            while True:
                piece = await asyncio.to_thread(next, iterator, done)
                if piece is done:
                    break
                yield piece
        finally:
            self.cancel()
            await asyncio.to_thread(iterator.close)

    # --- lifetime ----------------------------------------------------------------
    def close(self) -> None:
        """Release the model session and drop the persona from memory."""
        self.cancel()
        with self._lock, self._state:
            self._closed = True
            self.prefix = None
            self._explicit = None
            self._history.clear()
            self._kv = None
            self.engine = None

    def __enter__(self) -> "PersonaAgent":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
