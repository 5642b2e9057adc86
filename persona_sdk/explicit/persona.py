"""Explicit persona sentences: checked once, from the library, the CLI or a file.

A persona here is a few short first-person sentences ("I bake cookies.", "I
have a dog."). :func:`persona_sentences` is the one gate every explicit mode's
sentences pass through; errors name the sentence's position, never its text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from ..errors import PersonaSentencesError

MAX_SENTENCES = 32  # more than any character sketch; the selection prompt lists them all
MAX_SENTENCE_CHARS = 300
MAX_FILE_BYTES = 64 * 1024


def persona_sentences(sentences: Iterable[str] | str | None) -> tuple[str, ...]:
    """The sentences as a tuple, each stripped and on one line; raises :class:`PersonaSentencesError`
    for none, an empty one, too many, too long ones or non-text."""
    if sentences is None:
        raise PersonaSentencesError("no persona sentences given")
    if isinstance(sentences, str):
        sentences = [sentences]
    out = []
    for i, s in enumerate(sentences, 1):
        if len(out) >= MAX_SENTENCES:
            raise PersonaSentencesError(f"too many persona sentences (more than {MAX_SENTENCES}); "
                                        "describe the persona in a few short sentences")
        if not isinstance(s, str):
            raise PersonaSentencesError(f"persona sentence {i} is not text")
        text = " ".join(s.split())
        if not text:
            raise PersonaSentencesError(f"persona sentence {i} is empty")
        if len(text) > MAX_SENTENCE_CHARS:
            raise PersonaSentencesError(f"persona sentence {i} is longer than {MAX_SENTENCE_CHARS} characters")
        if any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 or c == "\ufffd" for c in text):
            raise PersonaSentencesError(f"persona sentence {i} holds control characters (not plain text)")
        out.append(text)
    if not out:
        raise PersonaSentencesError("no persona sentences given")
    return tuple(out)


def read_persona_file(path: str | Path) -> list[str]:
    """Persona sentences from a UTF-8 text file, one per line (blank lines and ``#`` comments skipped).

    The sentences are not checked here: pass them (with any others) to :func:`persona_sentences`."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise PersonaSentencesError(f"persona file not found: {path}")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise PersonaSentencesError(f"persona file {path} is {size} bytes; a persona is a few sentences "
                                    f"(at most {MAX_FILE_BYTES} bytes)")
    data = path.read_bytes()
    if b"\x00" in data:
        raise PersonaSentencesError(f"persona file {path} is binary, not text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise PersonaSentencesError(f"persona file {path} is not UTF-8 text") from None
    lines = [ln.strip() for ln in text.splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]
