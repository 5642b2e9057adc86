"""`persona eval`: how well a persona explains its owner's *held-out* replies.

For every reply of "me" in the given chats (context -> reply, the same
examples enrollment builds), the reply tokens are scored by the ONNX backbone
three ways: with the persona prefix, without any prefix, and (when given) with
the source prefix the persona started from. Reported: perplexity of each, the
relative gain, and how often the persona explains a reply better than the
source prefix (a two-way persona identification; chance 50%).

What a person notices (:mod:`persona_sdk.voice`): for a spread of held-out
contexts, the persona, the source prefix and the bare backbone each generate a
reply with the chat defaults (fixed seed per context); their length, surface
style, use of the person's distinctive topic words (kept inside the encrypted
profile at enrollment) and stylometric attribution (the person's real replies
vs chitchat source speakers, cross-fitted by conversation so no scored text was
trained on) are compared with the real replies. A few of them are shown side
by side. The profile's salted digests of its training replies reveal held-out
chats that overlap the training chats (a warning: such scores mislead).

Runtime side: onnxruntime + numpy only, no torch. Privacy: the report's numbers
(:meth:`EvalReport.to_dict`, :meth:`EvalReport.summary_lines`) hold no chat
text; the side-by-side samples live in memory and are written only where the
caller asks (stdout, or an HTML file the user named).

The chats must be ones the persona was NOT trained on, else the numbers
measure memorisation.
"""

from __future__ import annotations

import html
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import numpy as np

from . import metrics
from . import voice as vm
from .config import GenerationConfig
from .conversation import Turn
from .errors import ConfigError, EvalError, MetricError, MissingDependencyError
from .fileio import atomic_write
from .prefix import Prefix

if TYPE_CHECKING:  # pragma: no cover
    from .chatdata import Chats
    from .reply_examples import Example
    from .runtime import Engine


@dataclass(frozen=True)
class EvalConfig:
    """How much of the held-out chats is scored, and how samples are decoded."""

    context_budget: int = 256  # context tokens in front of each reply
    reply_budget: int = 64  # reply tokens scored per reply (longer replies are cut)
    max_replies: int = 100  # at most this many replies are scored (evenly spread; ~3 forwards each)
    samples: int = 3  # side-by-side replies shown (taken from the voice replies when voice > 0)
    max_new_tokens: int = 48  # per side-by-side sample when voice == 0
    seed: int = 0  # sampling seed; held-out context i is answered with seed + i
    voice: int = 40  # held-out contexts every setting answers for the voice comparison (0 = none)
    generation: GenerationConfig | None = None  # decoding of the voice replies; None = the chat defaults
    attribution_k: int = 20  # attribution classes: you + (k - 1) distractor speakers
    distractor_replies: int = 100  # replies per distractor speaker the classifier learns from

    def __post_init__(self) -> None:
        for name, low in (("context_budget", 16), ("reply_budget", 1), ("max_replies", 1),
                          ("samples", 0), ("max_new_tokens", 1), ("seed", 0), ("voice", 0),
                          ("attribution_k", 2), ("distractor_replies", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"EvalConfig.{name} must be an integer >= {low}, got {value!r}")
        if self.generation is not None and not isinstance(self.generation, GenerationConfig):
            raise ConfigError("EvalConfig.generation must be a GenerationConfig or None (the chat defaults)")


@dataclass(frozen=True)
class SideBySide:
    """One held-out reply next to what the models say in its place (in memory only)."""

    context: tuple[Turn, ...]
    real: str
    persona: str
    backbone: str


@dataclass
class EvalReport:
    me: str
    conversations: int  # conversations with at least one reply of me
    replies_available: int
    replies: int  # scored
    tokens: int  # reply tokens scored
    ppl_backbone: float
    ppl_persona: float
    ppl_source: float | None
    persona_tokens: int  # virtual tokens of the persona prefix
    losses: np.ndarray = field(repr=False)  # (replies, 2 or 3) mean reply-token loss: backbone, persona[, source]
    samples: list[SideBySide] = field(default_factory=list, repr=False)
    voice: vm.VoiceComparison | None = None  # style / topics / attribution (numbers only)
    overlap: vm.Overlap | None = None  # held-out replies that were training replies (None: unknown)
    notes: list[str] = field(default_factory=list)  # what was skipped and why (no chat text)

    @property
    def warnings(self) -> list[str]:
        """Reasons the numbers may mislead (no chat text)."""
        if self.overlap is None or self.overlap.matched == 0:
            return []
        o = self.overlap
        n = f"{o.estimated:.0f}" if o.exact else f"about {o.estimated:.0f}"
        return [f"warning: {n} of the {o.replies} held-out replies ({100 * o.estimated / o.replies:.0f}%) are "
                "replies this persona was trained on; scores on them measure memory, not your voice -- "
                "evaluate on chats the persona has not seen"]

    @property
    def gain_vs_backbone(self) -> float:
        return metrics.relative_gain(self.ppl_backbone, self.ppl_persona)

    @property
    def gain_vs_source(self) -> float | None:
        return None if self.ppl_source is None else metrics.relative_gain(self.ppl_source, self.ppl_persona)

    @property
    def beats_source(self) -> float | None:
        """Share of replies the persona explains strictly better than the source prefix."""
        if self.ppl_source is None:
            return None
        return float(np.mean(self.losses[:, 1] < self.losses[:, 2]))

    @property
    def beats_backbone(self) -> float:
        return float(np.mean(self.losses[:, 1] < self.losses[:, 0]))

    @property
    def sample_f1(self) -> float | None:
        """Mean unigram F1 of the persona's generated samples against the real replies."""
        if not self.samples:
            return None
        return float(np.mean([metrics.unigram_f1(s.persona, s.real) for s in self.samples]))

    def to_dict(self) -> dict:
        """Numbers only, no chat text."""
        return {
            "conversations": self.conversations,
            "replies_available": self.replies_available,
            "replies_scored": self.replies,
            "reply_tokens": self.tokens,
            "perplexity": {"backbone": self.ppl_backbone, "persona": self.ppl_persona, "source": self.ppl_source},
            "gain_vs_backbone": self.gain_vs_backbone,
            "gain_vs_source": self.gain_vs_source,
            "persona_beats_source": self.beats_source,
            "persona_beats_backbone": self.beats_backbone,
            "persona_tokens": self.persona_tokens,
            "samples": len(self.samples),
            "sample_unigram_f1": self.sample_f1,
            "voice": self.voice.to_dict() if self.voice is not None else None,
            "overlap": self.overlap.to_dict() if self.overlap is not None else None,
        }

    def summary_lines(self) -> list[str]:
        """Human-readable numbers (no chat text)."""
        lines = [
            f"held-out replies scored: {self.replies} of {self.replies_available} "
            f"({self.tokens} reply tokens, {self.conversations} conversations)",
            f"perplexity, backbone only:  {self.ppl_backbone:8.2f}",
        ]
        if self.ppl_source is not None:
            lines.append(f"perplexity, source prefix:  {self.ppl_source:8.2f}")
        lines.append(f"perplexity, your persona:   {self.ppl_persona:8.2f}")
        lines.append(f"gain vs backbone: {100 * self.gain_vs_backbone:+.1f}% "
                     f"(persona better on {100 * self.beats_backbone:.0f}% of replies)")
        if self.ppl_source is not None:
            lines.append(f"gain vs source prefix: {100 * self.gain_vs_source:+.1f}%")
            lines.append(f"persona identification vs source prefix: {100 * self.beats_source:.0f}% "
                         "of your replies are better explained by your persona (chance 50%)")
        else:
            lines.append("persona identification vs source prefix: skipped (no source prefix given)")
        if self.sample_f1 is not None:
            lines.append(f"unigram F1 of {len(self.samples)} generated samples vs your replies: {self.sample_f1:.3f}")
        if self.voice is not None:
            n = next(iter(self.voice.generated.values())).replies if self.voice.generated else 0
            lines.append("")
            lines.append(f"what a reader notices: your {self.voice.real.replies} real held-out replies vs the "
                         f"replies each setting wrote to {n} of their contexts (chat defaults, fixed seeds)")
            lines.extend(self.voice.summary_lines({"persona": "persona", "source": "source", "backbone": "backbone"}))
        if self.overlap is not None and not self.overlap.matched:
            lines.append(f"overlap with the training chats: none of the {self.overlap.replies} held-out replies"
                         + ("" if self.overlap.exact else " (checked on a sample)"))
        lines.extend(self.warnings)
        return lines


def reply_token_losses(engine: "Engine", prefix: Prefix | None, context: Sequence[Turn], reply: str,
                       context_budget: int = 256, reply_budget: int | None = 64) -> np.ndarray:
    """Per-token losses ``(n_reply_tokens,)`` of ``reply`` after ``context``, with ``prefix``
    (None = backbone only). Reply tokens include the closing end-of-turn token."""
    ids, n_prompt = engine.format.example_ids(list(context), reply, context_budget, reply_budget)
    return engine.token_losses(ids, n_prompt, prefix)


def _spread(n: int, k: int) -> list[int]:
    """k indices evenly spread over range(n) (all of them if k >= n)."""
    if k >= n:
        return list(range(n))
    return sorted({int(i) for i in np.linspace(0, n - 1, k).round()})


def held_out_examples(engine: "Engine", chats: "Chats", me: str, config: EvalConfig) -> list["Example"]:
    """Every reply of ``me`` with context, as enrollment builds them (no split, no minimum)."""
    from .reply_examples import build_examples

    fmt = engine.format
    ex = build_examples(chats, me, count_tokens=lambda t: len(fmt.encode(t)),
                        context_budget=config.context_budget, val_fraction=0.0, min_replies=1)
    return list(ex.train)


def evaluate(
    engine: "Engine",
    persona: Prefix,
    examples: Sequence["Example"],
    *,
    me: str = "me",
    source: Prefix | None = None,
    config: EvalConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
    distractors: Mapping[str, Sequence[str]] | None = None,
    voice_progress: Callable[[int, int], None] | None = None,
) -> EvalReport:
    """Score ``examples`` (held-out replies of ``me``) with and without ``persona``.

    With ``config.voice`` > 0 the persona, ``source`` and the bare backbone also answer held-out
    contexts and the replies are compared with the real ones (:class:`persona_sdk.voice.VoiceComparison`);
    ``distractors`` (speaker -> replies, e.g. :func:`source_speakers`) enable attribution. The
    persona's meta supplies the distinctive topic words and the training digests (overlap check).
    """
    config = config or EvalConfig()
    if not examples:
        raise EvalError("no replies to evaluate: the chats hold no reply of yours with context before it")
    engine.check_prefix(persona)
    if source is not None:
        engine.check_prefix(source)
    fmt = engine.format
    chosen = _spread(len(examples), config.max_replies)
    settings: list[Prefix | None] = [None, persona] + ([source] if source is not None else [])
    per_token: list[list[np.ndarray]] = [[] for _ in settings]  # setting -> reply -> (n_reply_tokens,)
    for step, i in enumerate(chosen):
        ex = examples[i]
        ids, n_prompt = fmt.example_ids(list(ex.context), ex.reply, config.context_budget, config.reply_budget)
        for s, prefix in enumerate(settings):
            per_token[s].append(engine.token_losses(ids, n_prompt, prefix))
        if progress is not None:
            progress(step + 1, len(chosen))
    losses = np.array([[float(l.mean()) for l in per_token[s]] for s in range(len(settings))]).T  # (N, S)
    ppl = [metrics.perplexity(per_token[s]) for s in range(len(settings))]

    notes: list[str] = []
    overlap = _overlap(persona, examples, notes)
    comparison, samples = None, []
    if config.voice:
        comparison, samples = _voice(engine, persona, source, examples, config, distractors, notes, voice_progress)
    elif config.samples:
        gen = GenerationConfig(max_new_tokens=config.max_new_tokens, seed=config.seed)
        for i in _spread(len(chosen), config.samples):
            ex = examples[chosen[i]]
            samples.append(SideBySide(
                context=tuple(ex.context), real=ex.reply,
                persona=_generate(engine, ex.context, persona, gen),
                backbone=_generate(engine, ex.context, None, gen),
            ))
    return EvalReport(
        me=me,
        conversations=len({examples[i].conversation for i in range(len(examples))}),
        replies_available=len(examples),
        replies=len(chosen),
        tokens=int(sum(len(l) for l in per_token[0])),
        ppl_backbone=ppl[0], ppl_persona=ppl[1], ppl_source=ppl[2] if source is not None else None,
        persona_tokens=persona.length,
        losses=losses,
        samples=samples,
        voice=comparison,
        overlap=overlap,
        notes=notes,
    )


def _overlap(persona: Prefix, examples: Sequence["Example"], notes: list[str]) -> vm.Overlap | None:
    try:
        digests = vm.profile_digests(persona.meta)
    except MetricError as exc:
        notes.append(f"overlap check skipped: {exc}")
        return None
    if digests is None:
        notes.append("overlap check skipped: this profile was enrolled before training digests were kept "
                     "(enroll again to get the check)")
        return None
    return digests.overlap([vm.example_pair(e) for e in examples])


def _voice(engine: "Engine", persona: Prefix, source: Prefix | None, examples: Sequence["Example"],
           config: EvalConfig, distractors: Mapping[str, Sequence[str]] | None, notes: list[str],
           progress: Callable[[int, int], None] | None) -> tuple[vm.VoiceComparison, list[SideBySide]]:
    """Generate the settings' replies for a spread of held-out contexts and compare them with the real ones."""
    settings: dict[str, Prefix | None] = {"persona": persona, **({"source": source} if source is not None else {}),
                                          "backbone": None}
    chosen = _spread(len(examples), config.voice)
    base = config.generation or GenerationConfig()
    generated: dict[str, list[str]] = {s: [] for s in settings}
    for n, i in enumerate(chosen):
        gen = base.replace(seed=config.seed + i)  # the same seed for every setting: only the prefix differs
        for name, prefix in settings.items():
            generated[name].append(_generate(engine, examples[i].context, prefix, gen))
        if progress is not None:
            progress(n + 1, len(chosen))
    real = [e.reply for e in examples]
    topics = vm.profile_topic_words(persona.meta)
    if topics is None:
        notes.append("topics skipped: this profile was enrolled before its distinctive words were kept")
    elif not topics:
        notes.append("topics skipped: enrollment found no distinctive words in your replies")
    attribution = None
    if distractors:
        folds = vm.assign_folds([e.conversation for e in examples])
        try:
            attribution = vm.crossfit_attribution(
                real, folds, generated, {s: [folds[i] for i in chosen] for s in generated}, distractors,
                seed=config.seed)
        except (MetricError, MissingDependencyError) as exc:
            notes.append(f"attribution skipped: {exc}")
    comparison = vm.compare(real, generated, topics or (), attribution)
    samples = [SideBySide(context=tuple(examples[chosen[j]].context), real=examples[chosen[j]].reply,
                          persona=generated["persona"][j], backbone=generated["backbone"][j])
               for j in _spread(len(chosen), config.samples)] if config.samples else []
    return comparison, samples


def source_speakers(k: int, per_speaker: int = 100, *, min_replies: int = 30, seed: int = 0,
                    corpus: str | None = None) -> dict[str, list[str]]:
    """Attribution distractors: the training replies of ``k`` chitchat part-A (source) speakers.

    Speakers in the split's hash order with at least ``min_replies`` training replies; at most
    ``per_speaker`` replies each (a seeded sample). Raises :class:`MissingDependencyError` when the
    chitchat-dataset package is not installed (and no ``corpus`` file is given).
    """
    import importlib.util

    from .reply_examples import build_examples
    from .split import chitchat_split, select

    if corpus is None and importlib.util.find_spec("chitchat_dataset") is None:
        raise MissingDependencyError("the chitchat-dataset package is not installed (pip install chitchat-dataset)")
    chats, split = chitchat_split(corpus)
    rng = np.random.default_rng(seed)
    out: dict[str, list[str]] = {}
    for s in split.part("A"):
        if len(out) >= k:
            break
        if not s.train:
            continue
        replies = [e.reply for e in build_examples(select(chats, s.train), s.speaker, min_replies=0,
                                                   val_fraction=0.0).train]
        if len(replies) < min_replies:
            continue
        if len(replies) > per_speaker:
            replies = [replies[i] for i in sorted(rng.choice(len(replies), per_speaker, replace=False))]
        out[f"source-{len(out) + 1}"] = replies
    return out


def _generate(engine: "Engine", context: Sequence[Turn], prefix: Prefix | None, gen: GenerationConfig) -> str:
    ids = engine.prompt_ids(list(context), prefix, gen)
    return engine.format.decode(list(engine.generate_ids(ids, prefix, gen))).rstrip("\ufffd").strip()


def format_samples(report: EvalReport, context_turns: int = 2) -> list[str]:
    """Side-by-side samples as text lines (contains chat text: print only on request)."""
    out: list[str] = []
    for n, s in enumerate(report.samples, start=1):
        out.append(f"--- sample {n} ---")
        for t in s.context[-context_turns:]:
            out.append(f"  [{'them' if t.role == 'user' else 'you'}] {_one_line(t.text)}")
        out.append(f"  you said:       {_one_line(s.real)}")
        out.append(f"  your persona:   {_one_line(s.persona)}")
        out.append(f"  backbone only:  {_one_line(s.backbone)}")
    return out


def _one_line(text: str) -> str:
    return " / ".join(part.strip() for part in text.splitlines() if part.strip()) or "(empty)"


# --- HTML report -------------------------------------------------------------------
def _scatter_svg(losses: np.ndarray, size: int = 360) -> str:
    """Per-reply loss, backbone (x) vs persona (y): points under the diagonal are
    replies the persona explains better."""
    x, y = losses[:, 0], losses[:, 1]  # (N,), (N,)
    lo = float(min(x.min(), y.min()))
    hi = float(max(x.max(), y.max()))
    if not math.isfinite(lo) or hi - lo < 1e-9:
        hi = lo + 1.0
    pad = 40

    def px(v: float) -> float:
        return pad + (v - lo) / (hi - lo) * (size - 2 * pad)

    def py(v: float) -> float:
        return size - pad - (v - lo) / (hi - lo) * (size - 2 * pad)

    dots = "".join(f'<circle cx="{px(a):.1f}" cy="{py(b):.1f}" r="2.5" fill="#3366cc" fill-opacity="0.6"/>'
                   for a, b in zip(x, y))
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" role="img">'
        f'<rect x="{pad}" y="{pad}" width="{size - 2 * pad}" height="{size - 2 * pad}" fill="none" stroke="#999"/>'
        f'<line x1="{px(lo)}" y1="{py(lo)}" x2="{px(hi)}" y2="{py(hi)}" stroke="#cc3333" stroke-dasharray="4"/>'
        f"{dots}"
        f'<text x="{size / 2}" y="{size - 8}" text-anchor="middle" font-size="12">loss per reply, backbone only '
        f"({lo:.2f}–{hi:.2f})</text>"
        f'<text x="12" y="{size / 2}" text-anchor="middle" font-size="12" transform="rotate(-90 12 {size / 2})">'
        "loss per reply, your persona</text></svg>"
    )


def render_html(report: EvalReport) -> str:
    """A self-contained HTML report (numbers, plot, side-by-side samples)."""
    e = html.escape
    rows = "".join(f"<li>{e(line)}</li>" for line in report.summary_lines())
    samples = []
    for n, s in enumerate(report.samples, start=1):
        ctx = "".join(f"<div class='ctx'><b>{'them' if t.role == 'user' else 'you'}:</b> {e(t.text)}</div>"
                      for t in s.context[-3:])
        samples.append(
            f"<h3>Sample {n}</h3>{ctx}<table><tr><th>you said</th><th>your persona</th><th>backbone only</th></tr>"
            f"<tr><td>{e(s.real)}</td><td>{e(s.persona)}</td><td>{e(s.backbone)}</td></tr></table>"
        )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>persona eval</title>"
        "<style>body{font-family:sans-serif;max-width:900px;margin:2em auto}td,th{border:1px solid #ccc;"
        "padding:6px;vertical-align:top;white-space:pre-wrap}table{border-collapse:collapse}"
        ".ctx{color:#555;white-space:pre-wrap}</style></head><body>"
        f"<h1>persona eval</h1><ul>{rows}</ul>"
        "<h2>Loss per held-out reply</h2><p>Each dot is one of your replies; dots below the dashed "
        "diagonal are replies your persona explains better than the backbone alone.</p>"
        f"{_scatter_svg(report.losses)}"
        f"<h2>Side by side</h2>{''.join(samples) or '<p>(no samples)</p>'}"
        "<p><small>This file contains your chat text. It was written only because you asked for it.</small></p>"
        "</body></html>"
    )


def write_html(report: EvalReport, path: str | os.PathLike) -> Path:
    """Write the HTML report atomically, readable by the owner only (it holds chat text)."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise EvalError(f"cannot write the report: folder {folder} does not exist")
    data = render_html(report).encode("utf-8")
    try:
        atomic_write(path, data)  # 0600
    except OSError as exc:
        raise EvalError(f"cannot write the report to {path}: {exc.strerror or type(exc).__name__}") from None
    return path
