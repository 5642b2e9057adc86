"""The deterministic speaker split of chitchat-dataset (the evaluation protocol).

Speakers are split into three disjoint parts:

* **A** — source-prefix training (everyone not in B or C);
* **B** — held-out *regular* speakers: ``b_min``–``b_max`` reply conversations;
* **C** — held-out *few-shot* speakers: ``c_min``–``c_max`` reply conversations.

A speaker's *reply conversations* are the two-person conversations in which
they answer at least once (a turn of theirs follows a turn of the partner);
single-sender conversations (unanswered openers, ~44% of chitchat) carry no
replies and are ignored.

Everything is a pure function of the data: speakers are ordered by
``sha256(salt:speaker_id)`` and the first ``n_b`` B-candidates go to B, the
first ``n_c`` C-candidates to C. Within a speaker, conversations are ordered by
``sha256(salt:conversation_id)`` (a *global* order, so two partners tend to agree
on which conversations are held out) and split 8:1:1: ``test`` first, then
``val``, the rest ``train`` (see :func:`bucket_sizes`).

Leakage rule: nothing a held-out (B/C) speaker holds out (their ``val`` and
``test`` conversations) is ever a *training input* for anyone — not as reply,
not as context. Concretely a conversation held out by a B/C speaker is removed
from the partner's ``train`` (whatever part the partner is in) and from the
source-training and source-validation sets. The held-out speaker's ``val`` /
``test`` sets themselves are never shrunk. Held-out speakers' *train*
conversations may feed source training as context of their A partner's replies;
that is not held-out data.

The protocol in words is in ``benchmarks/README.md``.

Within one person's examples, the train / validation split of enrollment is
:func:`split_by_conversation` (the one splitter the trainer, the example
builder and the benchmarks share).
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence, TypeVar

from .errors import ConfigError, SplitDataError

if TYPE_CHECKING:  # pragma: no cover
    from .chatdata import Chats

PARTS = ("A", "B", "C")
BUCKETS = ("train", "val", "test")
T = TypeVar("T")


def conversation_of(example: Any) -> int:
    """The conversation index an example (anything with ``conversation``) comes from."""
    return int(getattr(example, "conversation", 0))


def split_by_conversation(items: Sequence[T], fraction: float, seed: int,
                          conversation: Callable[[T], Any] = conversation_of) -> tuple[list[T], list[T]]:
    """(train, val) of one person's examples: whole conversations go to validation.

    ``fraction`` of the conversations (rounded; at least one and never all of
    them when ``fraction`` > 0) is held out, picked by ``seed``. With a single
    conversation its last ``fraction`` of the items (at least one of two or
    more) is held out instead, so no reply is in both parts. Items keep their
    order; ``fraction`` 0 holds out nothing."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"the validation fraction must be in [0, 1), got {fraction}")
    items = list(items)
    convs = sorted({conversation(e) for e in items})
    if len(convs) <= 1:
        n_val = round(len(items) * fraction) if fraction > 0 else 0
        if fraction > 0 and len(items) >= 2:
            n_val = max(n_val, 1)
        return items[: len(items) - n_val], items[len(items) - n_val :]
    order = list(convs)
    random.Random(seed).shuffle(order)
    n_val = min(max(round(len(order) * fraction), 1), len(order) - 1) if fraction > 0 else 0
    held = set(order[:n_val])
    return [e for e in items if conversation(e) not in held], [e for e in items if conversation(e) in held]


@dataclass(frozen=True)
class SplitConfig:
    """Sizes of the split. Defaults are the documented protocol (``benchmarks/README.md``)."""

    n_b: int = 30  # B speakers (persona identification at K = 20 and K = all of B)
    n_c: int = 50  # C speakers
    b_min: int = 20  # B candidates: b_min <= reply conversations <= b_max
    b_max: int = 200
    c_min: int = 2  # C candidates: c_min <= reply conversations <= c_max
    c_max: int = 5
    salt: str = "persona-split-v1"

    def __post_init__(self) -> None:
        for name in ("n_b", "n_c", "b_min", "b_max", "c_min", "c_max"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"SplitConfig.{name} must be an integer >= 0, got {value!r}")
        if self.c_min < 2:
            raise ConfigError("SplitConfig.c_min must be >= 2 (one train and one test conversation)")
        if self.b_min < 10:
            raise ConfigError("SplitConfig.b_min must be >= 10 so 8:1:1 leaves a val and a test conversation")
        if not self.c_min <= self.c_max < self.b_min <= self.b_max:
            raise ConfigError(
                "SplitConfig needs c_min <= c_max < b_min <= b_max so B and C candidates are disjoint"
            )
        if not self.salt:
            raise ConfigError("SplitConfig.salt must be a non-empty string")


@dataclass(frozen=True)
class SpeakerSplit:
    """One speaker's part and conversation ids per bucket (each in hash order)."""

    speaker: str
    part: str  # one of PARTS
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    @property
    def held_out(self) -> tuple[str, ...]:
        return self.val + self.test


@dataclass(frozen=True)
class Split:
    """The result of :func:`split_speakers`."""

    config: SplitConfig
    speakers: Mapping[str, SpeakerSplit]  # every speaker with >= 1 reply conversation
    order: tuple[str, ...] = field(repr=False)  # all speakers in hash order

    def part(self, name: str) -> list[SpeakerSplit]:
        """Speakers of part ``name`` ("A", "B" or "C") in hash order."""
        if name not in PARTS:
            raise ConfigError(f"part must be one of {PARTS}, got {name!r}")
        return [self.speakers[s] for s in self.order if self.speakers[s].part == name]

    def source_train(self) -> list[tuple[str, str]]:
        """(conversation id, speaker) pairs for source training: A speakers' train replies."""
        return [(c, s.speaker) for s in self.part("A") for c in s.train]

    def source_val(self) -> list[tuple[str, str]]:
        """(conversation id, speaker) pairs for source validation: A speakers' val replies."""
        return [(c, s.speaker) for s in self.part("A") for c in s.val]

    def summary(self) -> dict[str, dict[str, int]]:
        """Counts per part: speakers and conversations per bucket (no ids, no text)."""
        out: dict[str, dict[str, int]] = {}
        for p in PARTS:
            members = self.part(p)
            out[p] = {"speakers": len(members)}
            for b in BUCKETS:
                out[p][b] = sum(len(getattr(s, b)) for s in members)
        return out


def _key(salt: str, ident: str) -> str:
    return hashlib.sha256(f"{salt}:{ident}".encode("utf-8")).hexdigest()


def sender_turns(senders: Sequence[str]) -> list[str]:
    """Message senders -> turn senders (consecutive messages of one sender = one turn)."""
    turns: list[str] = []
    for s in senders:
        if not turns or turns[-1] != s:
            turns.append(s)
    return turns


def repliers(senders: Sequence[str]) -> set[str]:
    """Speakers who reply at least once in a two-person conversation (else empty)."""
    turns = sender_turns(senders)
    if len(set(turns)) != 2:
        return set()
    return set(turns[1:])


def bucket_sizes(n: int) -> tuple[int, int, int]:
    """(train, val, test) sizes for a speaker with ``n`` reply conversations.

    8:1:1 rounded half up; at least one test conversation when n >= 2 and one val
    conversation when n >= 3; a single conversation is train only.
    2 -> (1, 0, 1), 3 -> (1, 1, 1), 5 -> (3, 1, 1), 20 -> (16, 2, 2), 25 -> (19, 3, 3).
    """
    if n < 0:
        raise ConfigError(f"conversation count must be >= 0, got {n}")
    tenth = (n + 5) // 10
    n_test = max(1, tenth) if n >= 2 else 0
    n_val = max(1, tenth) if n >= 3 else 0
    return n - n_val - n_test, n_val, n_test


def split_speakers(
    conversations: Mapping[str, Sequence[str]], config: SplitConfig | None = None
) -> Split:
    """Split speakers and their conversations.

    ``conversations`` maps conversation id -> the sender id of each message, in
    order (text is not needed: the split never looks at it).
    """
    config = config or SplitConfig()
    if not conversations:
        raise SplitDataError("no conversations to split")
    convs_of: dict[str, list[str]] = defaultdict(list)  # speaker -> reply conversations
    for cid, senders in conversations.items():
        for s in repliers(senders):
            convs_of[s].append(cid)
    if not convs_of:
        raise SplitDataError("no two-person conversation with a reply in the data")

    order = tuple(sorted(convs_of, key=lambda s: (_key(config.salt, s), s)))
    b_cand = [s for s in order if config.b_min <= len(convs_of[s]) <= config.b_max]
    c_cand = [s for s in order if config.c_min <= len(convs_of[s]) <= config.c_max]
    part = {s: "A" for s in order}
    for s in b_cand[: config.n_b]:
        part[s] = "B"
    for s in c_cand[: config.n_c]:
        part[s] = "C"

    buckets: dict[str, dict[str, list[str]]] = {}
    for s in order:
        ids = sorted(convs_of[s], key=lambda c: (_key(config.salt, c), c))
        n_train, n_val, n_test = bucket_sizes(len(ids))
        buckets[s] = {
            "test": ids[:n_test],
            "val": ids[n_test : n_test + n_val],
            "train": ids[n_test + n_val :],
        }
    # conversations some held-out (B/C) speaker holds out: no one trains on them
    quarantined = {
        c for s in order if part[s] != "A" for c in buckets[s]["val"] + buckets[s]["test"]
    }

    speakers: dict[str, SpeakerSplit] = {}
    for s in order:
        b = buckets[s]
        train = [c for c in b["train"] if c not in quarantined]
        val, test = b["val"], b["test"]
        if part[s] == "A":  # source validation must not see held-out data either
            val = [c for c in val if c not in quarantined]
            test = [c for c in test if c not in quarantined]
        speakers[s] = SpeakerSplit(s, part[s], tuple(train), tuple(val), tuple(test))
    return Split(config=config, speakers=speakers, order=order)


# --- chitchat-dataset ------------------------------------------------------------


def conversation_senders(chats: "Chats") -> dict[str, list[str]]:
    """conversation id -> sender of each text message, in order: the input of
    :func:`split_speakers`. Placeholders and empty messages are skipped, exactly
    as :func:`persona_sdk.reply_examples.conversation_turns` skips them, so "reply
    conversations" here are those that yield examples there."""
    from .chatdata import TEXT

    out: dict[str, list[str]] = {}
    for i, conv in enumerate(chats.conversations):
        if conv.id in out:
            raise SplitDataError(f"conversation {i + 1}: duplicate conversation id")
        out[conv.id] = [m.sender for m in conv.messages if m.kind == TEXT and m.text.strip()]
    return out


def select(chats: "Chats", conversation_ids: Iterable[str]) -> "Chats":
    """The conversations of ``chats`` whose id is in ``conversation_ids`` (in
    ``chats`` order), e.g. ``build_examples(select(chats, s.train), s.speaker)``."""
    keep = set(conversation_ids)
    return chats.subset(i for i, c in enumerate(chats.conversations) if c.id in keep)


def chitchat_split(path: str | None = None, config: SplitConfig | None = None) -> tuple["Chats", Split]:
    """Load chitchat-dataset (the installed package, or ``path``) and split it:
    ``(chats, split)``. Parsing is :func:`persona_sdk.importers.chitchat.load_chitchat`."""
    from .importers.chitchat import load_chitchat

    chats = load_chitchat(path)
    return chats, split_speakers(conversation_senders(chats), config)


# --- Synthetic-Persona-Chat: split by persona ----------------------------------------
PERSONA_PARTS = ("train", "dev", "test")


@dataclass(frozen=True)
class PersonaSplitConfig:
    """The explicit-persona split of Synthetic-Persona-Chat (shares of persona groups)."""

    dev: float = 0.1  # share of persona groups in dev (model selection)
    test: float = 0.1  # share in test (touched only for the final table)
    salt: str = "persona-spc-split-v1"

    def __post_init__(self) -> None:
        if not (0 <= self.dev < 1 and 0 < self.test < 1 and self.dev + self.test < 1):
            raise ConfigError(f"PersonaSplitConfig needs 0 <= dev, 0 < test and dev + test < 1, "
                              f"got dev={self.dev!r}, test={self.test!r}")
        if not self.salt:
            raise ConfigError("PersonaSplitConfig.salt must be a non-empty string")


def normalise_sentence(sentence: str) -> str:
    """A persona sentence as compared across conversations: lowercase, single spaces, no end punctuation."""
    return " ".join(sentence.lower().split()).rstrip(" .!?")


def persona_key(sentences: Sequence[str], salt: str) -> str:
    """sha256 of the salted, normalised, sorted sentence set: the identity of one persona."""
    norm = sorted({normalise_sentence(s) for s in sentences if s.strip()})
    return _key(salt, "\n".join(norm))


def persona_part(sentences: Sequence[str], config: PersonaSplitConfig) -> str:
    """The part of one persona: its salted hash as a uniform number u in [0, 1); u < test →
    ``test``, u < test + dev → ``dev``, else ``train``."""
    u = int(persona_key(sentences, config.salt)[:13], 16) / 16**13
    return "test" if u < config.test else "dev" if u < config.test + config.dev else "train"


def split_by_persona(personas: Sequence[Sequence[Sequence[str]]], config: PersonaSplitConfig | None = None
                     ) -> list[tuple[str, tuple[int, ...]]]:
    """(part, sides) of each conversation, split *by persona*.

    ``personas[i]`` holds conversation i's personas, one sentence list per side.
    Each persona (a normalised sentence set) gets a part from its salted hash
    (:func:`persona_part`). SPC reuses personas across many conversations (541
    distinct ones over 1,000 conversations), so a conversation cannot follow
    both of its personas; it goes to the *most held-out* part among them (test
    before dev before train), and ``sides`` names the sides (0-based) whose own
    persona is in that part: only their replies are scored there. So a test or
    dev persona never speaks, nor is spoken to, in a train conversation, and no
    conversation is in two parts. Single sentences ("I have a dog.") still recur
    across parts inside different personas. A pure function of the sentences:
    file order and RNG state do not matter."""
    config = config or PersonaSplitConfig()
    rank = {"test": 0, "dev": 1, "train": 2}
    out = []
    for sides in personas:
        own = [persona_part(p, config) if any(s.strip() for s in p) else None for p in sides]
        present = [p for p in own if p is not None]
        part = min(present, key=rank.__getitem__) if present else "train"
        out.append((part, tuple(i for i, p in enumerate(own) if p == part)))
    return out
