"""What a person notices in a reply: its length, surface style, topics, and whose voice it is.

Perplexity can fall while generated replies still read like the backbone. These
metrics compare *generated* replies with a person's *real* held-out replies the
way a reader would:

* **length** -- median words per reply, and generated / real;
* **surface style** -- share of replies starting lowercase, ending without
  punctuation, containing an emoji, containing ``!`` or ``?``, and
  multi-message turns (several messages joined by newlines);
* **topics** -- the person's distinctive words, from their *training* replies
  against a background word-frequency table (weighted log-odds with an
  informative Dirichlet prior, Monroe et al. 2008), and the share of replies
  using at least one of them;
* **attribution** -- a stylometric classifier (character n-gram TF-IDF +
  logistic regression) trained on K speakers' replies names the author of each
  reply; top-1 accuracy, chance 1/K. The same classifier on real held-out
  replies is the ceiling.

It also holds the *training fingerprint* a profile keeps (inside its encrypted
file) so ``persona eval`` can warn when held-out chats overlap what the persona
was trained on: salted, truncated HMAC-SHA256 digests of (preceding message,
reply) pairs.

Pure functions on text; numpy only at import. scikit-learn (extra ``[eval]``)
is imported inside the attribution functions. Every result's ``to_dict()``
holds numbers only -- never reply text, never topic words.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
import secrets
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Mapping, Sequence

import numpy as np

from .errors import MetricError, MissingDependencyError
from .fileio import atomic_write

# --- surface style ---------------------------------------------------------------
# Unicode emoji blocks (pictographs, emoticons, transport, supplemental symbols,
# dingbats / misc symbols, a few arrows and clocks) or a common ASCII emoticon.
_EMOJI_CHARS = "\U0001F000-\U0001FAFF\u2600-\u27BF\u2B00-\u2BFF\u231A-\u23FF"
_EMOJI = re.compile(f"[{_EMOJI_CHARS}]")
_EMOTICON = re.compile(r"(?<![\w:/])(?:[:;=][-'^o]?[)(\]\[DPpO3/|*]+|<3+|\^_*\^|[xX]D+)(?!\w)")
_TRAILING_DECOR = re.compile(
    rf"(?:\s*(?:[{_EMOJI_CHARS}\uFE0F\u200D]|(?:[:;=][-'^o]?[)(\]\[DPpO3/|*]+|<3+|\^_*\^|[xX]D+)))+\s*$")
_EXCLAIM_QUESTION = frozenset("!?\uFF01\uFF1F\u00A1\u00BF")


def word_count(text: str) -> int:
    """Whitespace-separated words."""
    return len(text.split())


def median_words(texts: Sequence[str]) -> float:
    """Median words per reply."""
    if not texts:
        raise MetricError("median words needs at least one reply")
    return float(np.median([word_count(t) for t in texts]))


def length_ratio(generated: Sequence[str], real: Sequence[str]) -> float | None:
    """median words of ``generated`` / median words of ``real`` (None when the real median is 0)."""
    real_median = median_words(real)
    return None if real_median == 0 else median_words(generated) / real_median


def starts_lowercase(text: str) -> bool:
    """The first cased letter is lowercase ("i think so", "😂 lol"); False when no letter is cased."""
    for ch in text:
        if ch.lower() != ch.upper():
            return ch.islower()
    return False


def ends_without_punctuation(text: str) -> bool:
    """After trailing emoji / emoticons, the last character is not punctuation
    ("ok" and "great :)" yes; "ok." and "great! :)" no). A reply of only emoji counts as yes."""
    core = _TRAILING_DECOR.sub("", text).rstrip()
    return not core or not unicodedata.category(core[-1]).startswith("P")


def has_emoji(text: str) -> bool:
    """Holds a Unicode emoji or a common ASCII emoticon (:) ;-) :D <3 ^^ xD)."""
    return bool(_EMOJI.search(text) or _EMOTICON.search(text))


def has_exclaim_or_question(text: str) -> bool:
    """Holds ``!`` or ``?`` (full-width and inverted forms too)."""
    return any(ch in _EXCLAIM_QUESTION for ch in text)


def is_multi_message(text: str) -> bool:
    """Several messages in one turn (joined by newlines, as chats -> examples joins them)."""
    return "\n" in text.strip()


STYLE_FEATURES = ("lowercase_start", "no_end_punct", "emoji", "exclaim_question", "multi_message")
_STYLE_FN = {"lowercase_start": starts_lowercase, "no_end_punct": ends_without_punctuation, "emoji": has_emoji,
             "exclaim_question": has_exclaim_or_question, "multi_message": is_multi_message}
STYLE_LABELS = {
    "median_words": "median words per reply",
    "lowercase_start": "starts lowercase",
    "no_end_punct": "ends without punctuation",
    "emoji": "has an emoji",
    "exclaim_question": "has ! or ?",
    "multi_message": "multi-message turns",
}


def share(texts: Sequence[str], feature: str) -> float:
    """Share of ``texts`` with a surface feature (one of ``STYLE_FEATURES``)."""
    if feature not in _STYLE_FN:
        raise MetricError(f"style feature must be one of {STYLE_FEATURES}, got {feature!r}")
    if not texts:
        raise MetricError("a style share needs at least one reply")
    return float(np.mean([_STYLE_FN[feature](t) for t in texts]))


@dataclass(frozen=True)
class StyleStats:
    """Length and surface style of a set of replies (numbers only)."""

    replies: int
    median_words: float
    lowercase_start: float
    no_end_punct: float
    emoji: float
    exclaim_question: float
    multi_message: float

    def to_dict(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in ("replies", "median_words", *STYLE_FEATURES)}


def style_stats(texts: Sequence[str]) -> StyleStats:
    """:class:`StyleStats` of ``texts`` (at least one)."""
    if not texts:
        raise MetricError("style stats need at least one reply")
    return StyleStats(len(texts), median_words(texts), **{f: share(texts, f) for f in STYLE_FEATURES})


# --- topics ----------------------------------------------------------------------
_WORD = re.compile(r"[^\W\d_]+(?:['\u2019][^\W\d_]+)*")

# Function words and chat fillers: frequent everywhere, never a topic.
STOP_WORDS = frozenset("""
a about above after again against ago all almost also although always am among an and another any anybody anyone
anything anyway anyways are aren around as at away back be became because become been before being below between
both but by can cannot cant could couldn did didn do does doesn doing don done down during each either else enough
even ever every everyone everything few for from further get gets getting go goes going gone gonna got gotta had
hadn has hasn have haven having he her here hers herself him himself his how however i if in into is isn it its
itself just least less let like ll lot lots made make makes many may maybe me might mine more most much must my
myself need neither never no nobody none nor not nothing now of off often oh ok okay on once one only onto or other
others otherwise our ours ourselves out over own per perhaps quite rather re really right said same say says see
seem seems shall she should shouldn since so some somebody someone something sometimes somewhat soon still such
sure than that the their theirs them themselves then there these they thing things think this those though thus
to too toward towards under until up upon us use used using ve very via want wanna was wasn way we well went were
weren what whatever when whenever where whether which while who whoever whole whom whose why will with within
without won would wouldn yet you your yours yourself yourselves
yeah yes yep yup nope nah hey hi hello bye thanks thank thx please pls lol lmao haha hahaha hehe hmm hm um uh ah
aw awww wow omg idk im ive youre dont doesnt didnt cant wont isnt thats whats theres id ill ya u ur
good great nice cool fun pretty kind stuff guess know yea mean also though actually probably definitely totally
alright sorry whoa ooh ooo oooh awh aww awe ahh yay wait
""".split())


def words(text: str) -> list[str]:
    """Lowercased words (letters, inner apostrophes; no digits); a possessive "'s" is dropped."""
    out = []
    for m in _WORD.finditer(text):
        w = m.group(0).lower().replace("\u2019", "'")
        if w.endswith("'s"):
            w = w[:-2]
        out.append(w)
    return out


def word_counts(texts: Iterable[str]) -> Counter:
    """Word frequencies over ``texts`` (see :func:`words`)."""
    counts: Counter = Counter()
    for t in texts:
        counts.update(words(t))
    return counts


@dataclass(frozen=True)
class Background:
    """A background word-frequency table: counts of words seen at least ``min_count`` times,
    and the total number of word tokens (rarer words included)."""

    counts: Mapping[str, int]
    total: int
    min_count: int = 1

    def count(self, word: str) -> float:
        """Background count of ``word``; a word missing from a pruned table counts as seen once."""
        c = self.counts.get(word)
        return float(c) if c else 1.0


def log_odds(target: Mapping[str, int], background: Background, alpha0: float = 500.0) -> dict[str, float]:
    """Weighted log-odds z-scores of each word of ``target`` against ``background``, with an
    informative Dirichlet prior (Monroe, Colaresi & Quinn 2008, eq. 16-22).

    Prior: alpha_w = alpha0 * pi_w, pi_w = background share of w. With y counts and n totals
    (i = target, j = background):
    delta_w = log((y_iw + a_w) / (n_i + alpha0 - y_iw - a_w)) - log((y_jw + a_w) / (n_j + alpha0 - y_jw - a_w)),
    var_w ~ 1 / (y_iw + a_w) + 1 / (y_jw + a_w), z_w = delta_w / sqrt(var_w).
    Positive z = over-used by the target.
    """
    if alpha0 <= 0:
        raise MetricError(f"alpha0 must be > 0, got {alpha0}")
    n_i = float(sum(target.values()))
    n_j = float(background.total)
    if n_i <= 0 or n_j <= 0:
        raise MetricError("log-odds need words in both the target and the background")
    out: dict[str, float] = {}
    for w, y_i in target.items():
        y_j = background.count(w)
        a = alpha0 * y_j / n_j
        delta = (math.log((y_i + a) / (n_i + alpha0 - y_i - a))
                 - math.log((y_j + a) / (n_j + alpha0 - y_j - a)))
        out[w] = delta / math.sqrt(1.0 / (y_i + a) + 1.0 / (y_j + a))
    return out


def distinctive_words(
    texts: Sequence[str],
    background: Background | None = None,
    top: int = 30,
    *,
    min_count: int = 3,
    min_replies: int = 2,
    min_length: int = 3,
    max_length: int = 24,
    alpha0: float = 500.0,
) -> list[str]:
    """A speaker's ``top`` distinctive words from their (training) replies ``texts``.

    Candidates: not a stop word nor a contraction ("i'm"), ``min_length``..``max_length`` letters, used at least
    ``min_count`` times in at least ``min_replies`` different replies (a word one reply
    repeats is no topic). Ranked by :func:`log_odds` z-score against ``background``
    (default: the shipped table); only over-used words (z > 0) qualify. Ties: alphabetical.
    """
    if top < 1:
        raise MetricError(f"top must be >= 1, got {top}")
    background = background if background is not None else load_background()
    counts = word_counts(texts)
    if not counts:
        return []
    in_replies: Counter = Counter()
    for t in texts:
        in_replies.update(set(words(t)))
    z = log_odds(counts, background, alpha0)
    ranked = sorted(
        (w for w in counts
         if w not in STOP_WORDS and "'" not in w and min_length <= len(w) <= max_length
         and counts[w] >= min_count and in_replies[w] >= min_replies and z[w] > 0),
        key=lambda w: (-z[w], w),
    )
    return ranked[:top]


def topic_share(texts: Sequence[str], topic_words: Iterable[str]) -> float:
    """Share of ``texts`` using at least one of ``topic_words`` (0.0 when there are none)."""
    if not texts:
        raise MetricError("topic share needs at least one reply")
    vocab = set(topic_words)
    return float(np.mean([any(w in vocab for w in words(t)) for t in texts])) if vocab else 0.0


# --- the shipped background table -------------------------------------------------
BACKGROUND_DIR = Path(__file__).parent / "data" / "background"
BACKGROUND_FILE = "words.tsv"
BACKGROUND_INFO = "BACKGROUND.json"


def build_background(texts: Iterable[str], min_count: int = 3) -> tuple[dict[str, int], dict[str, int]]:
    """(counts of words seen >= ``min_count`` times, totals) over ``texts``. Counts only."""
    if min_count < 1:
        raise MetricError(f"min_count must be >= 1, got {min_count}")
    counts = Counter()
    n_texts = 0
    for t in texts:
        n_texts += 1
        counts.update(words(t))
    kept = {w: c for w, c in counts.items() if c >= min_count}
    totals = {"replies": n_texts, "tokens": int(sum(counts.values())), "distinct_words": len(counts),
              "kept_words": len(kept), "min_count": min_count}
    return kept, totals


def background_bytes(counts: Mapping[str, int]) -> bytes:
    """The table file: ``word<TAB>count`` lines, most frequent first (ties alphabetical)."""
    rows = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return "".join(f"{w}\t{c}\n" for w, c in rows).encode("utf-8")


def write_background(counts: Mapping[str, int], out_dir: str | Path, info: Mapping[str, Any]) -> Path:
    """Write ``words.tsv`` and ``BACKGROUND.json`` (``info`` + the table's sha256) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = background_bytes(counts)
    for name, payload in ((BACKGROUND_FILE, data), (BACKGROUND_INFO, None)):
        if payload is None:
            meta = {**info, "file": BACKGROUND_FILE, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            payload = (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode()
        atomic_write(out / name, payload, private=False)
    return out / BACKGROUND_FILE


_BACKGROUND_CACHE: dict[str, Background] = {}


def load_background(path: str | Path | None = None) -> Background:
    """The background table (None = the shipped one); checks the sha256 recorded next to it."""
    folder = Path(path) if path is not None else BACKGROUND_DIR
    if folder.is_file():
        folder = folder.parent
    key = str(folder.resolve())
    if key in _BACKGROUND_CACHE:
        return _BACKGROUND_CACHE[key]
    file, info_file = folder / BACKGROUND_FILE, folder / BACKGROUND_INFO
    try:
        data = file.read_bytes()
        info = json.loads(info_file.read_text())
    except (OSError, ValueError):
        raise MetricError(f"background word table missing or unreadable in {folder}") from None
    if hashlib.sha256(data).hexdigest() != info.get("sha256"):
        raise MetricError(f"{file.name} does not match the sha256 recorded in {BACKGROUND_INFO}")
    try:
        counts: dict[str, int] = {}
        for line in data.decode("utf-8").splitlines():
            w, _, c = line.partition("\t")
            counts[w] = int(c)
        bg = Background(counts, int(info["totals"]["tokens"]), int(info["totals"]["min_count"]))
    except (KeyError, TypeError, ValueError):
        raise MetricError(f"background word table in {folder} is malformed") from None
    _BACKGROUND_CACHE[key] = bg
    return bg


# --- attribution -------------------------------------------------------------------
def _mark(text: str) -> str:
    # start / end markers let n-grams see how a reply opens and closes (casing, final punctuation)
    return f"\x02{text}\x03"


def _sklearn():
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
    except ImportError:
        raise MissingDependencyError("attribution needs scikit-learn: pip install 'persona-sdk[eval]'") from None
    return TfidfVectorizer, LogisticRegression, make_pipeline


class Attributor:
    """Character n-gram TF-IDF (1-4 grams, case kept, start/end marked, sublinear tf, the
    ``max_features`` most frequent) + multinomial logistic regression (L2, ``c``, balanced class
    weights), trained on labelled replies. C = 1 and 50k features were chosen on chitchat part-B
    speakers (larger C or more features did no better; benchmarks/README.md has the protocol)."""

    def __init__(self, train: Mapping[Hashable, Sequence[str]], *, c: float = 1.0, max_features: int = 50_000,
                 seed: int = 0) -> None:
        labels = [k for k, texts in train.items() if len(texts)]
        if len(labels) < 2:
            raise MetricError("attribution needs replies of at least 2 speakers")
        TfidfVectorizer, LogisticRegression, make_pipeline = _sklearn()
        docs = [_mark(t) for k in labels for t in train[k]]
        y = [i for i, k in enumerate(labels) for _ in train[k]]
        self.labels = labels
        self.model = make_pipeline(
            TfidfVectorizer(analyzer="char", ngram_range=(1, 4), lowercase=False, sublinear_tf=True,
                            max_features=max_features, dtype=np.float32),
            LogisticRegression(C=c, max_iter=2000, class_weight="balanced", random_state=seed),
        )
        self.model.fit(docs, np.asarray(y))

    @property
    def k(self) -> int:
        return len(self.labels)

    def predict(self, texts: Sequence[str]) -> list[Hashable]:
        """The most likely author of each reply."""
        if not texts:
            return []
        idx = self.model.predict([_mark(t) for t in texts])
        return [self.labels[int(i)] for i in idx]

    def accuracy(self, texts: Sequence[str], author: Hashable) -> float:
        """Share of ``texts`` attributed to ``author`` (top-1)."""
        if not texts:
            raise MetricError("attribution accuracy needs at least one reply")
        return float(np.mean([p == author for p in self.predict(texts)]))


@dataclass(frozen=True)
class AttributionResult:
    """Top-1 attribution of one person's replies among K classes (numbers only).

    ``accuracy["real"]`` is the ceiling (real held-out replies); the other keys are settings
    whose generated replies were attributed."""

    k: int
    accuracy: Mapping[str, float]
    replies: Mapping[str, int]

    @property
    def chance(self) -> float:
        return 1.0 / self.k

    def to_dict(self) -> dict[str, Any]:
        return {"k": self.k, "chance": self.chance, "accuracy": dict(self.accuracy), "replies": dict(self.replies)}


def assign_folds(groups: Sequence[Hashable], folds: int = 2) -> list[int]:
    """Fold (0..folds-1) of each item: whole groups (conversations) go to one fold, groups
    dealt in first-seen order; with fewer groups than folds, items are dealt by position
    in contiguous blocks instead."""
    if folds < 2:
        raise MetricError(f"folds must be >= 2, got {folds}")
    order = list(dict.fromkeys(groups))
    if len(order) >= folds:
        rank = {g: i for i, g in enumerate(order)}
        return [rank[g] % folds for g in groups]
    n = len(groups)
    return [min(i * folds // max(n, 1), folds - 1) for i in range(n)]


def crossfit_attribution(
    real: Sequence[str],
    real_folds: Sequence[int],
    generated: Mapping[str, Sequence[str]],
    generated_folds: Mapping[str, Sequence[int]],
    distractors: Mapping[Hashable, Sequence[str]],
    *,
    seed: int = 0,
) -> AttributionResult:
    """Attribution of one person against distractor speakers, never scoring text the classifier saw.

    The person's class is trained on their ``real`` replies outside fold f; their real and
    generated replies *in* fold f are then attributed (for every fold). Distractors' replies
    are always training data (they are never scored). K = 1 + number of distractors.
    """
    if len(real) != len(real_folds):
        raise MetricError(f"{len(real)} real replies but {len(real_folds)} folds")
    for name, texts in generated.items():
        if len(texts) != len(generated_folds.get(name, ())):
            raise MetricError(f"setting {name!r}: replies and folds differ in length")
    others = {k: v for k, v in distractors.items() if len(v)}
    if not others:
        raise MetricError("attribution needs at least one distractor speaker")
    me = object()
    hits: dict[str, int] = {"real": 0, **{s: 0 for s in generated}}
    seen: dict[str, int] = {"real": 0, **{s: 0 for s in generated}}
    for f in sorted(set(real_folds)):
        train_me = [t for t, g in zip(real, real_folds) if g != f]
        if not train_me:
            continue
        model = Attributor({me: train_me, **others}, seed=seed)
        pools = {"real": [t for t, g in zip(real, real_folds) if g == f]}
        for s, texts in generated.items():
            pools[s] = [t for t, g in zip(texts, generated_folds[s]) if g == f]
        for s, texts in pools.items():
            if texts:
                hits[s] += sum(p is me for p in model.predict(texts))
                seen[s] += len(texts)
    if seen["real"] == 0:
        raise MetricError("attribution needs real replies in at least two folds")
    acc = {s: hits[s] / seen[s] for s in hits if seen[s]}
    return AttributionResult(1 + len(others), acc, {s: n for s, n in seen.items() if n})


# --- comparison record -----------------------------------------------------------
@dataclass
class VoiceComparison:
    """Real held-out replies vs generated ones per setting (persona, source, backbone)."""

    real: StyleStats
    generated: dict[str, StyleStats]
    topic_words: int = 0  # how many distinctive words were known (0: topics not measured)
    topic_share: dict[str, float] = field(default_factory=dict)  # "real" and each setting
    attribution: AttributionResult | None = None

    def length_ratio(self, setting: str) -> float | None:
        real = self.real.median_words
        return None if real == 0 else self.generated[setting].median_words / real

    def to_dict(self) -> dict[str, Any]:
        """Numbers only: no reply text, no topic words."""
        out: dict[str, Any] = {
            "real": self.real.to_dict(),
            "generated": {s: st.to_dict() for s, st in self.generated.items()},
            "length_ratio": {s: self.length_ratio(s) for s in self.generated},
            "topic_words": self.topic_words,
            "topic_share": dict(self.topic_share) if self.topic_words else None,
            "attribution": self.attribution.to_dict() if self.attribution is not None else None,
        }
        return out

    def summary_lines(self, names: Mapping[str, str] | None = None) -> list[str]:
        """A small table (numbers only)."""
        names = {"real": "you", **(names or {})}
        cols = ["real", *self.generated]
        head = f"{'':30}" + "".join(f"{names.get(c, c):>10}" for c in cols)
        stats = {"real": self.real, **self.generated}
        lines = [head, f"{'replies':30}" + "".join(f"{stats[c].replies:>10}" for c in cols)]
        lines.append(f"{STYLE_LABELS['median_words']:30}" + "".join(f"{stats[c].median_words:>10.1f}" for c in cols))
        ratios = [self.length_ratio(c) for c in self.generated]
        lines.append(f"{'  x your length':30}{'':>10}" + "".join(
            f"{'-' if r is None else f'{r:.2f}':>10}" for r in ratios))
        for f in STYLE_FEATURES:
            lines.append(f"{STYLE_LABELS[f]:30}" + "".join(f"{100 * getattr(stats[c], f):>9.0f}%" for c in cols))
        if self.topic_words:
            label = f"uses your topics ({self.topic_words} words)"
            lines.append(f"{label:30}" + "".join(
                f"{100 * self.topic_share[c]:>9.0f}%" if c in self.topic_share else f"{'-':>10}" for c in cols))
        if self.attribution is not None:
            a = self.attribution
            label = f"attributed to you (K={a.k})"
            lines.append(f"{label:30}" + "".join(
                f"{100 * a.accuracy[c]:>9.0f}%" if c in a.accuracy else f"{'-':>10}" for c in cols))
            lines.append(f"  (chance {100 * a.chance:.0f}%; the 'you' column is the ceiling: your real replies)")
        return lines


def compare(
    real: Sequence[str],
    generated: Mapping[str, Sequence[str]],
    topic_words: Sequence[str] = (),
    attribution: AttributionResult | None = None,
) -> VoiceComparison:
    """Style, length and topic share of ``real`` vs each setting's ``generated`` replies."""
    if not real:
        raise MetricError("the comparison needs at least one real reply")
    gen = {s: style_stats(t) for s, t in generated.items() if len(t)}
    shares: dict[str, float] = {}
    if topic_words:
        shares = {"real": topic_share(real, topic_words),
                  **{s: topic_share(t, topic_words) for s, t in generated.items() if len(t)}}
    return VoiceComparison(style_stats(real), gen, len(set(topic_words)), shares, attribution)


# --- K speakers (the benchmark table) ---------------------------------------------
@dataclass(frozen=True)
class SpeakerTexts:
    """One speaker's replies: ``train`` (what they were enrolled on), ``real`` (held-out), and
    ``generated[setting]`` (replies generated for their held-out contexts)."""

    train: Sequence[str]
    real: Sequence[str]
    generated: Mapping[str, Sequence[str]]


def speakers_voice(
    speakers: Mapping[str, SpeakerTexts],
    *,
    background: Background | None = None,
    top: int = 30,
    length_tolerance: float = 0.35,
    lowercase_tolerance: float = 0.15,
    attribution: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Per-speaker and aggregate voice numbers for K speakers (numbers only; keyed by the given names).

    Per speaker and setting: style stats, length ratio, lowercase gap, topic share (topic words
    from the speaker's ``train`` replies), attribution accuracy. Attribution: one classifier
    trained on the K speakers' ``train`` replies attributes every real held-out reply (the
    ceiling) and every generated reply; top-1, chance 1/K. Aggregate per setting: median
    length ratio, share of speakers within ``length_tolerance`` of their own median length and
    within ``lowercase_tolerance`` of their own lowercase-start share, median topic shares,
    attribution macro (mean over speakers) and micro (over all replies).
    """
    if len(speakers) < 1:
        raise MetricError("speakers_voice needs at least one speaker")
    background = background if background is not None else load_background()
    settings = list(dict.fromkeys(s for sp in speakers.values() for s in sp.generated))
    model = None
    if attribution and len(speakers) >= 2:
        model = Attributor({name: sp.train for name, sp in speakers.items()}, seed=seed)
    per: dict[str, dict[str, Any]] = {}
    hits: dict[str, list[int]] = {s: [0, 0] for s in ["real", *settings]}
    for name, sp in speakers.items():
        if not sp.real:
            raise MetricError(f"speaker {name!r} has no real held-out replies")
        topics = distinctive_words(sp.train, background, top) if sp.train else []
        row: dict[str, Any] = {"real": {**style_stats(sp.real).to_dict(), "topic_share": topic_share(sp.real, topics)},
                               "topic_words": len(topics)}
        real_st = style_stats(sp.real)
        pools = {"real": list(sp.real), **{s: list(t) for s, t in sp.generated.items() if len(t)}}
        for s in settings:
            texts = pools.get(s)
            if not texts:
                continue
            st = style_stats(texts)
            ratio = None if real_st.median_words == 0 else st.median_words / real_st.median_words
            row[s] = {**st.to_dict(), "length_ratio": ratio,
                      "lowercase_gap": st.lowercase_start - real_st.lowercase_start,
                      "topic_share": topic_share(texts, topics)}
        if model is not None and name in model.labels:
            for s, texts in pools.items():
                pred = model.predict(texts)
                n_hit = sum(p == name for p in pred)
                row.setdefault(s, {})["attribution"] = n_hit / len(texts)
                hits[s][0] += n_hit
                hits[s][1] += len(texts)
        per[name] = row

    agg: dict[str, Any] = {"speakers": len(speakers), "k": model.k if model is not None else None,
                           "chance": 1.0 / model.k if model is not None else None, "settings": {}}
    for s in ["real", *settings]:
        rows = [r[s] for r in per.values() if s in r and "replies" in r[s]]
        if not rows:
            continue
        a: dict[str, Any] = {"speakers": len(rows),
                             "median_words_median": float(np.median([r["median_words"] for r in rows])),
                             "topic_share_median": float(np.median([r["topic_share"] for r in rows]))}
        if s != "real":
            ratios = [r["length_ratio"] for r in rows if r["length_ratio"] is not None]
            a["length_ratio_median"] = float(np.median(ratios)) if ratios else None
            a["length_within_tolerance"] = (float(np.mean([abs(x - 1) <= length_tolerance for x in ratios]))
                                            if ratios else None)
            a["lowercase_within_tolerance"] = float(np.mean([abs(r["lowercase_gap"]) <= lowercase_tolerance + 1e-12
                                                             for r in rows]))
        att = [r["attribution"] for r in rows if "attribution" in r]
        if att:
            a["attribution_macro"] = float(np.mean(att))
            a["attribution_micro"] = hits[s][0] / hits[s][1]
        agg["settings"][s] = a
    agg["length_tolerance"] = length_tolerance
    agg["lowercase_tolerance"] = lowercase_tolerance
    return {"per_speaker": per, "aggregate": agg}


# --- training fingerprint (overlap warning) -----------------------------------------
DIGEST_BYTES = 6  # 48-bit truncated HMAC: ~1e-8 chance of one false match over 5M pairs
MAX_DIGESTS = 4096  # 32 KB of base64 in the prefix header; above it a bottom-k sample is kept
META_KEY = "voice"
META_FORMAT = 1
REPLY_TOKENS_KEY = "reply_tokens"  # the owner's median reply length in tokens (the chat-time length pull)


def _normalise(text: str) -> str:
    from .chatdata import strip_marks

    return " ".join(unicodedata.normalize("NFKC", strip_marks(text)).split()).casefold()


def reply_digest(key: bytes, previous: str, reply: str) -> bytes:
    """Truncated HMAC-SHA256 of a normalised (preceding message, reply) pair under ``key``."""
    msg = (_normalise(previous) + "\x1f" + _normalise(reply)).encode("utf-8")
    return hmac.new(key, msg, hashlib.sha256).digest()[:DIGEST_BYTES]


def example_pair(example: Any) -> tuple[str, str]:
    """(preceding message, reply) of an :class:`persona_sdk.reply_examples.Example`."""
    return (example.context[-1].text if example.context else "", example.reply)


@dataclass(frozen=True)
class Overlap:
    """How many held-out replies were also training replies (numbers only)."""

    replies: int  # held-out replies checked
    matched: int  # of them found among the training digests
    checkable: int  # held-out replies that fall in the kept digest range (== replies when exact)
    exact: bool

    @property
    def estimated(self) -> float:
        """Overlapping held-out replies (exact count, or estimated from the bottom-k sample)."""
        if self.exact:
            return float(self.matched)
        return self.matched * self.replies / self.checkable if self.checkable else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"replies": self.replies, "overlapping": self.estimated, "exact": self.exact}


@dataclass(frozen=True)
class TrainingDigests:
    """Salted digests of the (preceding message, reply) pairs a profile was trained on.

    ``cut`` is None when every digest is kept; otherwise only the ``MAX_DIGESTS`` smallest
    digests are (a bottom-k sample of the pairs, uniform because the digests are), ``cut`` is
    the largest kept value, and overlap is estimated from held-out pairs at or below it."""

    key: bytes
    digests: frozenset
    total: int  # distinct training pairs
    cut: int | None = None

    @classmethod
    def of(cls, pairs: Iterable[tuple[str, str]], key: bytes | None = None,
           max_digests: int = MAX_DIGESTS) -> "TrainingDigests":
        key = key if key is not None else secrets.token_bytes(16)
        all_digests = sorted({reply_digest(key, p, r) for p, r in pairs})
        if len(all_digests) <= max_digests:
            return cls(key, frozenset(all_digests), len(all_digests), None)
        kept = all_digests[:max_digests]
        return cls(key, frozenset(kept), len(all_digests), int.from_bytes(kept[-1], "big"))

    def overlap(self, pairs: Sequence[tuple[str, str]]) -> Overlap:
        ds = [reply_digest(self.key, p, r) for p, r in pairs]
        if self.cut is None:
            return Overlap(len(ds), sum(d in self.digests for d in ds), len(ds), True)
        checkable = [d for d in ds if int.from_bytes(d, "big") <= self.cut]
        return Overlap(len(ds), sum(d in self.digests for d in checkable), len(checkable), False)

    def to_meta(self) -> dict[str, Any]:
        return {"key": self.key.hex(), "digests": base64.b64encode(b"".join(sorted(self.digests))).decode("ascii"),
                "total": self.total, "cut": self.cut}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> "TrainingDigests":
        try:
            raw = base64.b64decode(meta["digests"], validate=True)
            if len(raw) % DIGEST_BYTES:
                raise ValueError("digest block length")
            digests = frozenset(raw[i:i + DIGEST_BYTES] for i in range(0, len(raw), DIGEST_BYTES))
            cut = meta.get("cut")
            return cls(bytes.fromhex(meta["key"]), digests, int(meta["total"]), None if cut is None else int(cut))
        except (KeyError, ValueError, TypeError):
            raise MetricError("the profile's training fingerprint is malformed") from None


def median_reply_tokens(replies: Sequence[str], count_tokens: Callable[[str], int]) -> int:
    """The median length of ``replies`` in tokens (at least 1): the target of the chat-time length pull."""
    if not replies:
        raise MetricError("median reply tokens needs at least one reply")
    return max(1, int(round(float(np.median([count_tokens(r) for r in replies])))))


def enrollment_meta(train: Sequence[Any], val: Sequence[Any] = (), *, background: Background | None = None,
                    top: int = 30, key: bytes | None = None,
                    count_tokens: Callable[[str], int] | None = None) -> dict[str, Any]:
    """What a profile keeps (inside its encrypted file): for ``persona eval``, the distinctive words
    of the ``train`` replies and salted digests of every (preceding message, reply) pair enrollment
    read (train and validation); for chat, the median ``train`` reply length in tokens (with
    ``count_tokens``; see ``sampling.length_target``). Returned as ``{"voice": {...}}`` to merge
    into ``Prefix.meta``."""
    topics = distinctive_words([e.reply for e in train], background, top) if train else []
    digests = TrainingDigests.of([example_pair(e) for e in [*train, *val]], key)
    meta: dict[str, Any] = {"format": META_FORMAT, "topic_words": topics, "digests": digests.to_meta()}
    if count_tokens is not None and train:
        meta[REPLY_TOKENS_KEY] = median_reply_tokens([e.reply for e in train], count_tokens)
    return {META_KEY: meta}


def profile_topic_words(meta: Mapping[str, Any]) -> list[str] | None:
    """The distinctive words a profile keeps (None: enrolled before they were kept)."""
    v = meta.get(META_KEY)
    if not isinstance(v, dict) or not isinstance(v.get("topic_words"), list):
        return None
    return [str(w) for w in v["topic_words"]]


def profile_reply_tokens(meta: Mapping[str, Any] | None) -> int | None:
    """The median reply length (tokens) a profile keeps (None: enrolled before it was kept, or with DP)."""
    v = (meta or {}).get(META_KEY)
    n = v.get(REPLY_TOKENS_KEY) if isinstance(v, dict) else None
    return int(n) if isinstance(n, (int, float)) and not isinstance(n, bool) and n >= 1 else None


def profile_digests(meta: Mapping[str, Any]) -> TrainingDigests | None:
    """The training fingerprint a profile keeps (None: enrolled before it was kept)."""
    v = meta.get(META_KEY)
    if not isinstance(v, dict) or not isinstance(v.get("digests"), dict):
        return None
    return TrainingDigests.from_meta(v["digests"])
