"""The PersonaPKT table on chitchat parts B and C (protocol in benchmarks/README.md).

    # quick (4 B + 4 C speakers, <= 32 train replies, 1 epoch; estimated 53 min on a quiet 2-core machine):
    .venv/bin/python benchmarks/personapkt_table.py --quick --out benchmarks/out/personapkt-quick
    # identification at K = 20 (20 B + 20 C speakers, <= 64 replies, 1 epoch; estimated 6.7 h):
    .venv/bin/python benchmarks/personapkt_table.py --size k20 --out benchmarks/out/personapkt-k20
    # the whole protocol (30 B + 42 usable C speakers, all replies, 3 epochs; estimated 131 h):
    .venv/bin/python benchmarks/personapkt_table.py --size full --out benchmarks/out/personapkt-full
    # what users get: 20 part-B speakers enrolled by `persona enroll --max-minutes 5` (defaults otherwise),
    # voice metrics, attribution and identification at K = 20, each acceptance bar (estimated 2h22m):
    .venv/bin/python benchmarks/personapkt_table.py --size voice20 --out benchmarks/out/voice20
    # any size: print the plan and its estimated wall time without running it
    .venv/bin/python benchmarks/personapkt_table.py --quick --estimate-only

To run a commit while the checkout changes (a 2-hour table), use a detached worktree on
``PYTHONPATH`` (``git worktree add --detach DIR COMMIT``). ``package-dir`` maps
``persona_sdk.cli`` and ``persona_sdk.exporters`` to the top-level ``cli/`` and ``exporters/``, so
without ``ln -s ../cli DIR/persona_sdk/cli`` and ``ln -s ../exporters DIR/persona_sdk/exporters``
the ``persona enroll`` subprocesses would import the CLI from the editable install's checkout.

Estimates come from per-unit costs (``COST``): 7 s per prefix train step of
batch 8 and 0.1-0.3 s per ORT scoring forward were measured here on a quiet
machine; the eval-batch, beam, sampling and full-fine-tuning costs are
extrapolated from those and BENCHMARKS.md's decode speeds. With the machine
shared, expect 2-4x. Every ``Size`` field can be overridden
(``--b-speakers 6 --epochs 2 ...``). An interrupted run continues where it
stopped when rerun with the same ``--out`` and arguments.

Settings (rows): backbone only; source prefix only; rand-init prefix; PersonaPKT
base (personal prefix from a plain-mixing source prefix); PersonaPKT temperature
(source with T = 10 mixing); PersonaPKT PPReptile (source meta-learned with
Reptile on the prefix); prompt-tuning; and Reptile + full fine-tuning of the
whole backbone on a small sample of speakers (the expensive reference: it
stores a full model per persona).

Columns: held-out perplexity (median over speakers), unigram F1, BLEU-1/2
(corpus), ROUGE-L, Dist-1/2 (for two decodings: beam 5 as PersonaPKT, and the
chat defaults), persona identification at K = 20 and K = all enrolled part
speakers, Hits@1 (reference among N distractors), stored parameters per
persona as % of the backbone, enroll (training) wall time per speaker.

Where things run: prefixes are trained with torch (the SDK trainer and
source trainer); every prefix setting is *scored and decoded through the ONNX
runtime* (``persona_sdk.runtime.Engine``, the product path). The full
fine-tuning reference changes the backbone weights, which the one shared ONNX
graph cannot take without a per-speaker export, so it is scored and decoded
with torch (HF ``generate``; the same prompt ids, same decoding settings).

The voice preset (``--size voice20``, ``VoiceSize``) is a table of its own: rows backbone only, the
shipped source prefix alone, and the persona the real ``persona enroll`` CLI makes (one process per
speaker, the speaker's train conversations written to a temporary chats.json, ``PERSONA_HOME`` in
the cache, wall time and the process's own peak RSS measured). All enrollments run first, alone;
then perplexity and identification are scored with the fp32 export (its prefill is faster than
int8's on a 2-core CPU) and replies are generated with the chat defaults on int8 (what ``persona
chat`` runs). Batching the scoring through onnxruntime did not pay: the fused graph refuses
batch > 1 for a multi-token input after a past (every persona is a past), and the optimum graph
batched over personas took 1.25x the CPU time per sequence of single calls at ~115 tokens (the
(B, T, vocab) logits dominate), so the budget is met with fewer scored replies
(``test_replies``, ``ident_replies``) instead. Outputs: ``table.md`` and ``results.json``.

Outputs in ``--out``: ``table.md``, ``results.json``, ``quality_vs_epochs.png``
(median validation perplexity vs training epochs per setting: PersonaPKT
Figure 2's analogue) and ``cache/`` (per-speaker, per-setting results, trained
prefixes, source prefixes, the Reptile meta model): an interrupted run resumes
from it. The cache holds generated replies next to the public chitchat
replies they answer (needed for corpus-level BLEU/Dist on resume): public
dataset text, no user data.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from persona_sdk.fileio import atomic_write

SETTINGS: dict[str, str] = {  # key -> row label, in table order
    "backbone": "backbone only",
    "source": "source prefix only",
    "rand": "rand-init prefix",
    "base": "PersonaPKT base (plain source)",
    "temperature": "PersonaPKT temperature",
    "ppreptile": "PersonaPKT PPReptile",
    "prompt": "prompt-tuning",
    "reptile-full": "Reptile + full fine-tuning",
    "enroll": "persona enroll (defaults)",  # the voice preset's row: the real CLI enrollment
}
PKT_ROWS = tuple(k for k in SETTINGS if k != "enroll")  # the rows of the quick / k20 / full sizes
PERSONAL = ("rand", "base", "temperature", "ppreptile", "prompt")  # a KV block trained per speaker
SOURCE_OF = {"base": "plain", "temperature": "temperature", "ppreptile": "ppreptile"}
METHOD_OF = {"rand": "rand-prefix", "base": "prefix", "temperature": "prefix", "ppreptile": "prefix",
             "prompt": "prompt"}
DECODINGS = ("beam5", "chat")
SOURCE_INIT_TEXT = "We are old friends chatting casually, and I reply in my own words."

# Per-unit costs on a quiet 2-core machine with SmolLM2-135M (DESIGN.md / BENCHMARKS.md
# measurements; loaded machines are 2-4x slower). Used for --estimate-only and the plan line.
COST = {
    "train_step": 7.0,  # one prefix train step, batch 8, ~112-token context (torch, fwd+bwd)
    "full_step": 11.0,  # one full fine-tuning step (weight gradients too; SGD)
    "eval_batch": 2.0,  # one no-grad validation batch of 8 (torch)
    "forward": 0.2,  # one ORT scoring forward (~150 tokens)
    "beam": 2.5,  # one beam-5 reply (<= max_new_tokens)
    "sample": 1.0,  # one chat-default reply
    "torch_decode": 6.0,  # one torch generate reply (full fine-tuning rows; both decodings)
}


@dataclass(frozen=True)
class Size:
    """How much of the protocol is run. ``FULL`` is the documented protocol."""

    b_speakers: int = 30  # part-B speakers enrolled (hash order); identification at K = 20 and K = this
    c_speakers: int = 50  # part-C speakers enrolled
    max_train: int = 0  # train replies per speaker (evenly spread; 0 = all)
    max_val: int = 32  # validation replies per speaker
    epochs: int = 3
    evals_per_epoch: int = 2  # validation points per epoch (the epochs plot)
    test_replies: int = 0  # scored test replies per speaker (0 = all)
    hits_replies: int = 8  # of those, ranked for Hits@1 (each costs 1 + distractors forwards)
    decode_replies: int = 8  # of those, decoded (beam 5 and chat defaults)
    distractors: int = 19
    max_new_tokens: int = 48  # per decoded reply (= the trained reply budget)
    source_steps: int = 200  # steps of each source prefix (plain / temperature / PPReptile)
    source_speakers: int = 0  # part-A speakers for source training (0 = all)
    source_per_speaker: int = 40
    source_val: int = 64
    reptile_speakers: int = 5  # speakers per part given the full fine-tuning reference
    reptile_outer_steps: int = 50  # Reptile outer steps of the full model over part A
    reptile_inner_steps: int = 2
    context_budget: int = 112
    reply_budget: int = 48
    batch_size: int = 8
    prefix_len: int = 16

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            low = 1 if name in ("epochs", "evals_per_epoch", "distractors", "max_new_tokens", "source_steps",
                                "reptile_inner_steps", "context_budget", "reply_budget", "batch_size",
                                "prefix_len", "max_val", "source_per_speaker", "source_val") else 0
            if not isinstance(value, int) or value < low:
                raise ValueError(f"Size.{name} must be an integer >= {low}, got {value!r}")


FULL = Size()
# --quick: 4 + 4 speakers, <= 32 train replies (1 epoch = 4 steps), 4 test replies each,
# 3 decoded per setting, 20-step sources, the full fine-tuning reference on 1 speaker per part.
QUICK = Size(b_speakers=4, c_speakers=4, max_train=32, max_val=16, epochs=1, evals_per_epoch=2,
             test_replies=4, hits_replies=2, decode_replies=3, max_new_tokens=32, source_steps=20,
             source_speakers=200, source_per_speaker=8, source_val=16, reptile_speakers=1,
             reptile_outer_steps=4)
# --size k20: the acceptance bar's identification at K = 20 in one night-ish run: 20 + 20 speakers,
# <= 64 train replies, 1 epoch, 8 test replies each, 100-step sources.
K20 = Size(b_speakers=20, c_speakers=20, max_train=64, max_val=16, epochs=1, evals_per_epoch=2,
           test_replies=8, hits_replies=2, decode_replies=4, max_new_tokens=32, source_steps=100,
           source_speakers=400, source_per_speaker=8, source_val=32, reptile_speakers=2,
           reptile_outer_steps=10)
SIZES = {"quick": QUICK, "k20": K20, "full": FULL}


# --- small utilities ------------------------------------------------------------------
def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _hms(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


def short_id(speaker: str) -> str:
    """A short, stable file-name id for a speaker (the dataset ids are long UUIDs)."""
    return hashlib.sha256(speaker.encode()).hexdigest()[:12]


def spread(n: int, k: int) -> list[int]:
    """``k`` indices evenly spread over ``range(n)`` (all if k is 0 or >= n)."""
    if k <= 0 or k >= n:
        return list(range(n))
    return sorted({int(i) for i in np.linspace(0, n - 1, k).round()})


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data, private=False)


class Cache:
    """JSON and prefix files under ``root``; a present file means "done" (resume)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def json(self, name: str, compute: Callable[[], Any]) -> Any:
        path = self.root / f"{name}.json"
        if path.is_file():
            return json.loads(path.read_text())
        value = compute()
        write_atomic(path, json.dumps(value).encode())
        return value

    def has(self, name: str) -> bool:
        return (self.root / f"{name}.json").is_file()

    def load(self, name: str) -> Any:
        return json.loads((self.root / f"{name}.json").read_text())

    def prefix(self, name: str, compute: Callable[[], Any]):
        """(Prefix, info dict); ``compute`` returns the same pair."""
        from persona_sdk.prefix import Prefix

        path, info = self.root / f"{name}.safetensors", self.root / f"{name}.info.json"
        if path.is_file() and info.is_file():
            return Prefix.from_bytes(path.read_bytes()), json.loads(info.read_text())
        prefix, meta = compute()
        write_atomic(path, prefix.to_bytes())
        write_atomic(info, json.dumps(meta).encode())
        return prefix, meta


class Progress:
    """``[done/total pct] what (elapsed, eta)`` lines on stderr."""

    def __init__(self, total_seconds: float) -> None:
        self.start = time.monotonic()
        self.planned = max(total_seconds, 1.0)
        self.spent_planned = 0.0

    def step(self, what: str, planned: float = 0.0) -> None:
        elapsed = time.monotonic() - self.start
        pct = 100 * min(self.spent_planned / self.planned, 1.0)
        rate = elapsed / self.spent_planned if self.spent_planned > 60 else 1.0
        eta = (self.planned - self.spent_planned) * rate
        say(f"[{pct:5.1f}% | {_hms(elapsed)} elapsed, ~{_hms(eta)} left] {what}")
        self.spent_planned += planned


# --- data --------------------------------------------------------------------------------
@dataclass
class Person:
    speaker: str
    part: str
    train: list
    val: list
    test: list  # scored test replies (capped)
    n_train_all: int = 0
    n_test_all: int = 0

    @property
    def sid(self) -> str:
        return short_id(self.speaker)


def examples_of(chats, conv_ids: Sequence[str], speaker: str, count: Callable[[str], int], ctx: int) -> list:
    from persona_sdk.reply_examples import build_examples
    from persona_sdk.split import select

    if not conv_ids:
        return []
    return list(build_examples(select(chats, conv_ids), speaker, count_tokens=count, context_budget=ctx,
                               val_fraction=0.0, min_replies=0).train)


def load_data(corpus: str | None, split_config, size: Size, count: Callable[[str], int]):
    """(people by part, test-reply pool by part, source speakers, source val, split summary)."""
    from persona_sdk.source import Speaker
    from persona_sdk.split import chitchat_split

    chats, split = chitchat_split(corpus, split_config)
    ctx = size.context_budget
    people: dict[str, list[Person]] = {}
    pools: dict[str, list[tuple[str, str]]] = {}
    for part, want in (("B", size.b_speakers), ("C", size.c_speakers)):
        members = split.part(part)
        pool: list[tuple[str, str]] = []
        chosen: list[Person] = []
        for s in members:
            test_all = examples_of(chats, s.test, s.speaker, count, ctx)
            pool += [(s.speaker, e.reply) for e in test_all]
            if len(chosen) >= want:
                continue
            train_all = examples_of(chats, s.train, s.speaker, count, ctx)
            if len(train_all) < 2 or not test_all:
                continue  # nothing to learn from or nothing to score: take the next speaker
            val = examples_of(chats, s.val, s.speaker, count, ctx)
            train = [train_all[i] for i in spread(len(train_all), size.max_train)]
            val = [val[i] for i in spread(len(val), size.max_val)] if val else []
            test = [test_all[i] for i in spread(len(test_all), size.test_replies)]
            chosen.append(Person(s.speaker, part, train, val, test, len(train_all), len(test_all)))
        people[part], pools[part] = chosen, pool
    rng = np.random.default_rng(0)
    sources, source_val = [], []
    for s in split.part("A"):
        if size.source_speakers and len(sources) >= size.source_speakers:
            break
        ex = examples_of(chats, s.train, s.speaker, count, ctx)
        if ex:
            if len(ex) > size.source_per_speaker:
                ex = [ex[i] for i in sorted(rng.choice(len(ex), size.source_per_speaker, replace=False))]
            sources.append(Speaker(s.speaker, ex))
        source_val += examples_of(chats, s.val, s.speaker, count, ctx)
    if len(source_val) > size.source_val:
        source_val = [source_val[i] for i in sorted(rng.choice(len(source_val), size.source_val, replace=False))]
    return people, pools, sources, source_val, split.summary()


# --- cost estimate -------------------------------------------------------------------------
def estimate(people: dict[str, list[Person]], size: Size, settings: Sequence[str]) -> dict[str, float]:
    """Planned seconds per stage from the COST table (quiet machine)."""
    bs = size.batch_size
    out = {"sources": 0.0, "train": 0.0, "score": 0.0, "identification": 0.0, "hits": 0.0, "decode": 0.0,
           "reptile-full": 0.0}
    n_sources = len({SOURCE_OF[s] for s in settings if s in SOURCE_OF} | ({"plain"} if "source" in settings else set()))
    out["sources"] = n_sources * (size.source_steps * COST["train_step"]
                                  + 5 * math.ceil(size.source_val / bs) * COST["eval_batch"])
    prefix_settings = [s for s in settings if s != "reptile-full"]
    for part, ps in people.items():
        for p in ps:
            steps = math.ceil(len(p.train) / bs) * size.epochs
            evals = size.epochs * size.evals_per_epoch + 1
            val_batches = math.ceil(max(len(p.val), 1) / bs)
            one = steps * COST["train_step"] + evals * val_batches * COST["eval_batch"]
            out["train"] += one * sum(s in PERSONAL for s in settings)
            t = len(p.test)
            n_hits, n_dec = min(size.hits_replies, t), min(size.decode_replies, t)
            out["score"] += len(prefix_settings) * t * COST["forward"]
            out["hits"] += len(prefix_settings) * n_hits * (size.distractors + 1) * COST["forward"]
            out["decode"] += len(prefix_settings) * n_dec * (COST["beam"] + COST["sample"])
        k = len(ps)
        n_rep = sum(len(p.test) for p in ps)
        out["identification"] += sum(s in PERSONAL for s in settings) * (k - 1) * n_rep * COST["forward"]
        if "reptile-full" in settings:
            for p in ps[: size.reptile_speakers]:
                steps = math.ceil(len(p.train) / bs) * size.epochs
                t = len(p.test)
                out["reptile-full"] += (steps * COST["full_step"] + (size.epochs + 1) * 2 * COST["eval_batch"]
                                        + t * 0.5 + min(size.hits_replies, t) * (size.distractors + 1) * 0.5
                                        + min(size.decode_replies, t) * COST["torch_decode"])
    if "reptile-full" in settings:
        out["reptile-full"] += size.reptile_outer_steps * 2 * size.reptile_inner_steps * COST["full_step"]
    out["total"] = sum(out.values())
    return out


# --- training -------------------------------------------------------------------------------
def train_config(size: Size, method: str, n_train: int, seed: int):
    from persona_sdk.trainer import TrainConfig

    steps_per_epoch = math.ceil(n_train / size.batch_size)
    # lr 1e-3 for every setting, as the published tables were made (the library's default policy
    # would give the settings without a source prefix 3e-3)
    return TrainConfig(method=method, prefix_len=size.prefix_len, lr=1e-3, epochs=size.epochs,
                       batch_size=size.batch_size,
                       context_budget=size.context_budget, reply_budget=size.reply_budget,
                       eval_every=max(1, steps_per_epoch // size.evals_per_epoch),
                       patience=2 * size.evals_per_epoch, min_examples=1, seed=seed)


def train_personal(bb, person: Person, setting: str, size: Size, sources: dict, seed: int):
    """(Prefix, info) of one speaker's personal block for ``setting``."""
    from persona_sdk.trainer import train_prefix

    cfg = train_config(size, METHOD_OF[setting], len(person.train), seed)
    init = sources[SOURCE_OF[setting]] if setting in SOURCE_OF else None
    t0 = time.monotonic()
    prefix, summary = train_prefix(person.train, person.val or None, backbone=bb, config=cfg, init=init)
    wall = time.monotonic() - t0
    spe = math.ceil(summary.train_examples / size.batch_size)
    curve = [[round(s / spe, 4), float(v)] for s, _, v in summary.history if v is not None]
    return prefix, {"wall_seconds": wall, "steps": summary.steps, "epochs": summary.epochs,
                    "stopped": summary.stopped, "train_examples": summary.train_examples,
                    "val_examples": summary.val_examples, "init_val_loss": summary.init_val_loss,
                    "best_val_loss": summary.best_val_loss, "curve": curve}


def train_sources(bb, needed: Sequence[str], speakers, val, size: Size, cache: Cache, seed: int,
                  shipped_base: bool, progress: Progress):
    from persona_sdk import source as src

    out: dict[str, Any] = {}
    info: dict[str, Any] = {}
    for method in needed:
        if method == "plain" and shipped_base:
            out[method] = src.load_source()
            info[method] = {"shipped": True, "method": out[method].method, **src_info()}
            continue
        if not (cache.root / f"sources/{method}.safetensors").is_file():
            progress.step(f"source prefix '{method}': {size.source_steps} steps over {len(speakers)} part-A speakers",
                          size.source_steps * COST["train_step"])
        cfg = src.SourceConfig(method=method, prefix_len=size.prefix_len, steps=size.source_steps,
                               batch_size=size.batch_size, context_budget=size.context_budget,
                               reply_budget=size.reply_budget, seed=seed, init_text=SOURCE_INIT_TEXT)

        def compute(cfg=cfg):
            prefix, summary = src.train_source(speakers, val, backbone=bb, config=cfg)
            return prefix, {**summary.as_meta(), "config": cfg.to_dict()}

        out[method], info[method] = cache.prefix(f"sources/{method}", compute)
    return out, info


def src_info() -> dict:
    from persona_sdk import source as src

    try:
        return {"SOURCE.json": json.loads((src.SHIPPED_DIR / src.SHIPPED_INFO).read_text()).get("command")}
    except (OSError, ValueError):
        return {}


# --- scoring through the ONNX runtime ---------------------------------------------------------
def gen_configs(size: Size) -> dict[str, Any]:
    from persona_sdk.config import GenerationConfig

    return {
        "beam5": GenerationConfig(num_beams=5, do_sample=False, max_new_tokens=size.max_new_tokens,
                                  context_budget=max(16, size.context_budget)),
        "chat": GenerationConfig(max_new_tokens=size.max_new_tokens, seed=0,
                                 context_budget=max(16, size.context_budget)),
    }


def score_ort(engine, prefix, person: Person, pool, size: Size) -> dict:
    """Per-reply losses, Hits@1 and decoded replies of one speaker under one prefix (ORT)."""
    from persona_sdk.evaluate import reply_token_losses
    from persona_sdk.metrics import pick_distractors

    ctx, rb = size.context_budget, size.reply_budget
    sums, counts = [], []
    for ex in person.test:
        losses = reply_token_losses(engine, prefix, ex.context, ex.reply, ctx, rb)  # (n_reply_tokens,)
        sums.append(float(losses.sum()))
        counts.append(int(losses.size))
    hits = []
    for i in spread(len(person.test), size.hits_replies)[: size.hits_replies]:
        ex = person.test[i]
        distract = pick_distractors(pool, person.speaker, f"{person.speaker}:{i}", size.distractors)
        ref = float(reply_token_losses(engine, prefix, ex.context, ex.reply, ctx, rb).mean())
        others = [float(reply_token_losses(engine, prefix, ex.context, d, ctx, rb).mean()) for d in distract]
        hits.append(int(ref < min(others)))
    decoded: dict[str, list[str]] = {d: [] for d in DECODINGS}
    refs = []
    for i in spread(len(person.test), size.decode_replies)[: size.decode_replies]:
        ex = person.test[i]
        refs.append(ex.reply)
        for name, gen in gen_configs(size).items():
            ids = engine.prompt_ids(list(ex.context), prefix, gen)
            decoded[name].append(engine.format.decode(list(engine.generate_ids(ids, prefix, gen))).strip())
    return {"loss_sums": sums, "token_counts": counts, "hits": hits, "refs": refs, **decoded}


def identification_row(engine, prefix, owner: Person, everyone: Sequence[Person], own: dict, size: Size) -> list:
    """Mean reply-token loss of every enrolled speaker's scored replies under ``owner``'s prefix."""
    from persona_sdk.evaluate import reply_token_losses

    row = []
    for p in everyone:
        if p.speaker == owner.speaker:  # already scored: reuse
            row += [s / max(c, 1) for s, c in zip(own["loss_sums"], own["token_counts"])]
            continue
        for ex in p.test:
            row.append(float(reply_token_losses(engine, prefix, ex.context, ex.reply, size.context_budget,
                                                size.reply_budget).mean()))
    return row


# --- Reptile + full fine-tuning (torch) -----------------------------------------------------------
def _set_trainable(model, on: bool) -> None:
    for p in model.parameters():
        p.requires_grad_(on)


def _state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def reptile_meta(backbone_dir: Path, speakers, size: Size, lr: float, seed: int, out_dir: Path):
    """Reptile over part-A speakers on the *whole* backbone (SGD inner steps; θ ← θ + mean(W_i − θ)).

    Saved with ``save_pretrained`` into ``out_dir`` (resume) and returned as a TrainBackbone."""
    import shutil

    import torch

    from persona_sdk import trainer as tr
    from persona_sdk.training import loop
    from persona_sdk.training.methods import mixing, reptile

    if (out_dir / "config.json").is_file() and (out_dir / "tokenizer.json").is_file():
        return tr.load_backbone(out_dir)
    bb = tr.load_backbone(backbone_dir)
    _set_trainable(bb.model, True)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    enc = [tr.encode(bb.fmt, s.examples, size.context_budget, size.reply_budget) for s in speakers]
    params = [p for p in bb.model.parameters()]

    def step(who) -> float:  # one outer step: 2 speakers, SGD inner steps on every weight
        loss, _ = reptile.reptile_step(
            params, [int(i) for i in who], inner_steps=size.reptile_inner_steps,
            make_optimizer=lambda ps: torch.optim.SGD(ps, lr=lr),
            inner_loss=lambda i: tr.batch_mean_loss(bb, mixing.draw(enc[i], size.batch_size, rng)),
            grad_clip=1.0, outer_lr=1.0)
        return loss

    loop.run(loop.Trainable(params, reptile.speaker_draws(len(enc), 2, rng), step),
             loop.LoopConfig(max_steps=size.reptile_outer_steps, schedule="constant",
                             label="Reptile meta-training of the full backbone"))
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    bb.model.save_pretrained(str(tmp), safe_serialization=True)
    shutil.copy(bb.path / "tokenizer.json", tmp / "tokenizer.json")
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    _set_trainable(bb.model, False)
    return bb


def full_finetune_and_score(meta_bb, meta_state: dict, person: Person, pool, size: Size, lr: float,
                            seed: int) -> dict:
    """Fine-tune the whole (Reptile-initialised) backbone on one speaker, then score and decode with torch."""
    import torch

    from persona_sdk import trainer as tr
    from persona_sdk.metrics import pick_distractors
    from persona_sdk.split import split_by_conversation
    from persona_sdk.training import loop
    from persona_sdk.training.data import epochs_of_batches

    bb = meta_bb
    bb.model.load_state_dict(meta_state)
    _set_trainable(bb.model, True)
    params = list(bb.model.parameters())
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    if person.val:
        train_ex, val_ex = person.train, person.val
    else:  # held out as train_prefix holds out when a speaker has no val conversations
        train_ex, val_ex = split_by_conversation(person.train, tr.TrainConfig.val_fraction, seed)
    train = tr.encode(bb.fmt, train_ex, size.context_budget, size.reply_budget)
    val = tr.encode(bb.fmt, val_ex, size.context_budget, size.reply_budget)
    spe = math.ceil(len(train) / size.batch_size)
    opt = torch.optim.SGD(params, lr=lr)
    t0 = time.monotonic()
    result = loop.run(
        loop.Trainable(params, epochs_of_batches(train, size.batch_size, rng, size.epochs),
                       step=lambda batch: loop.gradient_step(opt, params, lambda: tr.batch_mean_loss(bb, batch), 1.0),
                       evaluate=lambda: tr.mean_loss(bb, val, batch_size=size.batch_size)),
        loop.LoopConfig(total_steps=spe * size.epochs, eval_every=max(1, spe // size.evals_per_epoch),
                        schedule="constant", label="full fine-tuning"))
    wall = time.monotonic() - t0  # the model now holds the best state on validation
    curve = [[round(s / spe, 4), v] for s, _, v in result.history]
    step = result.steps
    _set_trainable(bb.model, False)

    def reply_loss(ex_context, reply) -> tuple[float, int]:
        e = tr.encode(bb.fmt, [type("E", (), {"context": ex_context, "reply": reply, "conversation": 0})()],
                      size.context_budget, size.reply_budget)
        with torch.no_grad():
            s, n = tr.batch_loss(bb, e)
        return float(s), n

    sums, counts = [], []
    for ex in person.test:
        s, n = reply_loss(ex.context, ex.reply)
        sums.append(s)
        counts.append(n)
    hits = []
    for i in spread(len(person.test), size.hits_replies)[: size.hits_replies]:
        ex = person.test[i]
        distract = pick_distractors(pool, person.speaker, f"{person.speaker}:{i}", size.distractors)
        ref = np.divide(*reply_loss(ex.context, ex.reply))
        others = [np.divide(*reply_loss(ex.context, d)) for d in distract]
        hits.append(int(ref < min(others)))
    decoded: dict[str, list[str]] = {d: [] for d in DECODINGS}
    refs = []
    end = bb.fmt.end_id
    for i in spread(len(person.test), size.decode_replies)[: size.decode_replies]:
        ex = person.test[i]
        refs.append(ex.reply)
        ids = bb.fmt.prompt_ids(list(ex.context), size.context_budget)
        x = torch.tensor([ids])
        for name, gen in gen_configs(size).items():
            kwargs = dict(max_new_tokens=gen.max_new_tokens, eos_token_id=end, pad_token_id=end,
                          attention_mask=torch.ones_like(x))
            if name == "beam5":
                kwargs.update(num_beams=5, do_sample=False, length_penalty=gen.length_penalty)
            else:
                torch.manual_seed(0)
                kwargs.update(do_sample=True, temperature=gen.temperature, top_k=gen.top_k, top_p=gen.top_p,
                              repetition_penalty=gen.repetition_penalty)
            with torch.no_grad():
                out = bb.model.generate(x, **kwargs)[0, len(ids):].tolist()
            out = [t for t in out if t != end]
            decoded[name].append(bb.fmt.decode(out).strip())
    return {"loss_sums": sums, "token_counts": counts, "hits": hits, "refs": refs, **decoded,
            "train": {"wall_seconds": wall, "steps": step, "epochs": size.epochs, "curve": curve,
                      "train_examples": len(train), "val_examples": len(val)}}


# --- aggregation -------------------------------------------------------------------------------------
def aggregate(units: dict[str, dict], ident: dict | None, stored_pct: float | None) -> dict:
    """One table row from per-speaker units ``{speaker: unit}`` (a setting within a part)."""
    from persona_sdk import metrics as M

    if not units:
        return {}
    ppl = [math.exp(sum(u["loss_sums"]) / max(sum(u["token_counts"]), 1)) for u in units.values()]
    pooled = math.exp(sum(sum(u["loss_sums"]) for u in units.values())
                      / max(sum(sum(u["token_counts"]) for u in units.values()), 1))
    hits = [h for u in units.values() for h in u["hits"]]
    row: dict[str, Any] = {
        "speakers": len(units),
        "perplexity_median": float(np.median(ppl)),
        "perplexity_pooled": pooled,
        "hits_at_1": float(np.mean(hits)) if hits else None,
        "hits_items": len(hits),
        "stored_params_pct": stored_pct,
    }
    walls = [u["train"]["wall_seconds"] for u in units.values() if u.get("train")]
    row["enroll_seconds_median"] = float(np.median(walls)) if walls else None
    refs = [r for u in units.values() for r in u["refs"]]
    for d in DECODINGS:
        hyps = [h for u in units.values() for h in u[d]]
        if not hyps:
            continue
        per_speaker_f1 = [np.mean([M.unigram_f1(h, r) for h, r in zip(u[d], u["refs"])])
                          for u in units.values() if u["refs"]]
        per_speaker_rl = [np.mean([M.rouge_l(h, r) for h, r in zip(u[d], u["refs"])])
                          for u in units.values() if u["refs"]]
        row[d] = {
            "f1": float(np.mean(per_speaker_f1)),
            "bleu1": M.corpus_bleu(hyps, refs, 1),
            "bleu2": M.corpus_bleu(hyps, refs, 2),
            "rouge_l": float(np.mean(per_speaker_rl)),
            "dist1": M.distinct_n(hyps, 1),
            "dist2": M.distinct_n(hyps, 2),
            "replies": len(hyps),
        }
    if ident:
        row.update(ident)
    return row


def identification(rows: dict[str, list], people: Sequence[Person]) -> dict:
    """Persona identification at K = 20 (first 20 enrolled, hash order) and K = all enrolled."""
    from persona_sdk.metrics import persona_identification

    enrolled = [p for p in people if p.speaker in rows]
    out: dict[str, Any] = {"ident_k20": None, "ident_all": None, "ident_all_k": len(enrolled)}
    if len(enrolled) < 2:
        return out
    owners = np.asarray([k for k, p in enumerate(enrolled) for _ in p.test])
    m = np.asarray([rows[p.speaker] for p in enrolled])  # (K, N)
    res = persona_identification(m, owners)
    out["ident_all"], out["ident_all_micro"] = res.accuracy, res.micro
    if len(enrolled) >= 20:
        keep = owners < 20
        sub = persona_identification(m[:20][:, keep], owners[keep])
        out["ident_k20"], out["ident_k20_micro"] = sub.accuracy, sub.micro
    return out


# --- outputs -------------------------------------------------------------------------------------------
COLUMNS = ("ppl (median)", "F1", "BLEU-1", "BLEU-2", "ROUGE-L", "Dist-1", "Dist-2", "ident K=20",
           "ident K=all", "Hits@1", "stored % of backbone", "enroll s (median)")


def _f(v, digits=3, pct=False) -> str:
    if v is None:
        return "—"
    return f"{100 * v:.1f}%" if pct else f"{v:.{digits}f}"


def markdown(results: dict) -> str:
    lines = ["# PersonaPKT table (chitchat-dataset, parts B and C)", ""]
    meta = results["meta"]
    lines += [f"- command: `{meta['command']}`", f"- commit: `{meta['commit']}`", f"- date (UTC): {meta['date']}",
              f"- backbone: `{meta['backbone']}` ({meta['backbone_params']:,} parameters); scoring/decoding: "
              f"ONNX runtime `{meta['export_variant']}` (full fine-tuning rows: torch)",
              f"- source prefixes: trained here, {meta['size']['source_steps']} steps each over "
              f"{meta['source_speakers']} part-A speakers (≤ {meta['size']['source_per_speaker']} replies each); "
              f"'source prefix only' and PersonaPKT base use "
              + ("the shipped source prefix" if meta["base_source"] == "shipped" else "the plain-mixing one"),
              f"- size: {meta['size_name']} — " + ", ".join(f"{k}={v}" for k, v in meta["size"].items()),
              f"- wall time: {_hms(meta['wall_seconds'])} (estimated beforehand: {_hms(meta['estimate']['total'])} "
              "on a quiet machine)", ""]
    for part in results["parts"]:
        pr = results["parts"][part]
        base = pr["settings"].get("base") or {}
        if base:
            lines += [f"**Part {part} against the target** (PersonaPKT base): perplexity gain vs source-only "
                      f"(median over speakers) {_f(pr.get('base_gain_vs_source_median'), pct=True)} (bar ≥ 10%); "
                      f"identification K=20 {_f(base.get('ident_k20'), pct=True)} (bar ≥ 50%; "
                      f"K=all={pr.get('k_all')}: {_f(base.get('ident_all'), pct=True)}); stored "
                      f"{base['stored_params_pct']:.3f}% of the backbone (bar ≤ 0.2%).", ""]
        for d, title in (("beam5", "beam 5"), ("chat", "chat defaults")):
            lines += [f"## Part {part} — decoding: {title}", "",
                      f"{pr['speakers']} speakers enrolled; identification chance: 1/K "
                      f"(K=all is {pr.get('k_all')}); Hits@1 chance {_f(1 / (meta['size']['distractors'] + 1), pct=True)}.",
                      "", "| setting | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
            for key, label in SETTINGS.items():
                row = pr["settings"].get(key)
                if not row:
                    continue
                dd = row.get(d, {})
                cells = [_f(row["perplexity_median"], 2), _f(dd.get("f1")), _f(dd.get("bleu1")), _f(dd.get("bleu2")),
                         _f(dd.get("rouge_l")), _f(dd.get("dist1")), _f(dd.get("dist2")),
                         _f(row.get("ident_k20"), pct=True), _f(row.get("ident_all"), pct=True),
                         _f(row.get("hits_at_1"), pct=True),
                         "shared" if row["stored_params_pct"] == 0 else f"{row['stored_params_pct']:.4f}%",
                         _f(row.get("enroll_seconds_median"), 1)]
                n = f" (n={row['speakers']})" if key == "reptile-full" else ""
                lines.append(f"| {label}{n} | " + " | ".join(cells) + " |")
            lines.append("")
    lines += ["Notes: perplexity is over reply tokens of held-out test replies (median over speakers); F1 and",
              "ROUGE-L are averaged per speaker then over speakers; BLEU is corpus BLEU; Dist-n is over all",
              "generated replies of the part. 'shared' = nothing is stored per persona (the backbone and the",
              "source prefix are shared). Enroll time is training wall time with the backbone already loaded.",
              "The full fine-tuning reference has no identification column: it would need K full models.", ""]
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = list(results["parts"])
    fig, axes = plt.subplots(1, len(parts), figsize=(6 * len(parts), 4.2), squeeze=False)
    epochs = results["meta"]["size"]["epochs"]
    grid = np.linspace(0, epochs, 4 * epochs + 1)
    for ax, part in zip(axes[0], parts):
        for key, curves in results["parts"][part]["curves"].items():
            if not curves:
                continue
            ys = []
            for c in curves:
                x = np.asarray([p[0] for p in c], dtype=float)
                y = np.exp(np.asarray([p[1] for p in c], dtype=float))
                ys.append(np.interp(grid, x, y))  # flat after the last point (early stop)
            ax.plot(grid, np.median(np.asarray(ys), axis=0), marker="o", ms=3, label=SETTINGS[key])
        ax.set_title(f"part {part}: quality vs training epochs")
        ax.set_xlabel("epochs")
        ax.set_ylabel("validation perplexity (median over speakers)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _commit() -> str:
    try:
        root = Path(__file__).resolve().parents[1]
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "persona_sdk", "benchmarks/personapkt_table.py"],
                               cwd=root, capture_output=True, text=True).stdout.strip()
        return sha + (" (with uncommitted changes)" if dirty else "") if sha else "unknown"
    except OSError:
        return "unknown"


# --- the voice preset: part-B speakers enrolled by `persona enroll` --------------------------------
# Rows: backbone only, the shipped source prefix alone, and the persona `persona enroll` makes with its
# defaults. Every enrollment is the real CLI in its own process (chats.json of the speaker's train
# conversations, --max-minutes, the default settings otherwise); scoring runs through the ONNX runtime.
VOICE_ROWS = ("backbone", "source", "enroll")
VOICE_PASSPHRASE = "personapkt-voice-table"  # encrypts the benchmark's own profiles (public data only)
GB = 1e9

# Per-unit costs of the voice preset on a quiet 2-core machine (SmolLM2-135M): the decode step and the
# prompt forwards are BENCHMARKS.md's quiet run-D figures (int8 24.7 ms/token, spinning off; fp32 and
# int8 time to first token on 200 tokens) scaled by this preset's token counts with CPU-time ratios
# measured here; reply lengths are the backbone's and the shipped source prefix's on part-B contexts
# (means of 107-118 and 29-44 tokens over 8-18 replies; the backbone often runs into the 128-token
# cap), the enrolled persona's is a guess. results.json
# records the measured seconds of every stage and the generated tokens per row.
VOICE_COST = {
    "enroll_overhead": 10.0,  # per enrollment beyond --max-minutes: interpreter + CLI start, chats.json
    "forward": 0.27,  # one fp32 scoring forward (~115 tokens: context <= 112, reply <= 48)
    "prefill": 0.5,  # the int8 prompt forward of one generated reply (~110 tokens)
    "token": 0.028,  # one int8 decode step + sampling
    "setup": 60.0,  # corpus and split, engines, profiles
    "voice": 60.0,  # style and topic shares, the attribution classifier over the speakers' training replies
}
VOICE_REPLY_TOKENS = {"backbone": 120, "source": 45, "enroll": 40}  # expected generated tokens per reply


@dataclass(frozen=True)
class VoiceSize:
    """How much of the voice preset is run (``--size voice20``; every field can be overridden)."""

    b_speakers: int = 20  # part-B speakers enrolled (hash order): the K of attribution and identification
    max_minutes: float = 5.0  # persona enroll --max-minutes (the budget of the whole enrollment)
    test_replies: int = 12  # held-out replies scored per speaker and row (perplexity), evenly spread
    ident_replies: int = 8  # of those, scored under every enrolled persona (identification at K)
    voice_contexts: int = 16  # held-out contexts the enrolled persona answers (chat defaults, seed + index)
    reference_contexts: int = 6  # of those, answered by the backbone and the source prefix too
    # every context is answered once per generation seed (seed + 1000 k + index, k < voice_seeds) and a
    # speaker's replies of all seeds are pooled: with one seed (16 replies) the length bar moved by
    # 10-25 points and attribution by 7 from seed to seed (BENCHMARKS.md, "length control")
    voice_seeds: int = 4
    context_budget: int = 112  # context tokens in front of a scored / answered reply (enrollment's budget)
    reply_budget: int = 48  # reply tokens scored (enrollment's budget)

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if name == "max_minutes":
                if not isinstance(value, (int, float)) or not value > 0:
                    raise ValueError(f"VoiceSize.max_minutes must be > 0, got {value!r}")
                continue
            low = 2 if name == "b_speakers" else 1
            if not isinstance(value, int) or value < low:
                raise ValueError(f"VoiceSize.{name} must be an integer >= {low}, got {value!r}")
        if self.ident_replies > self.test_replies:
            raise ValueError("VoiceSize.ident_replies must be <= test_replies (identification reuses scored replies)")
        if self.reference_contexts > self.voice_contexts:
            raise ValueError("VoiceSize.reference_contexts must be <= voice_contexts (a subset of the same contexts)")


VOICE20 = VoiceSize()
VOICE_SIZES = {"voice20": VOICE20}


@dataclass
class Speaker:
    """One part-B speaker of the voice preset: examples and which held-out ones each stage uses."""

    speaker: str
    train_conversations: tuple  # conversation ids written to the speaker's chats.json
    train: list  # every training reply example (topic words, attribution classes)
    test: list  # every held-out test example (the real replies)
    scored: list  # indices into test: perplexity
    ident: list  # positions in ``scored``: identification
    voice: list  # indices into test: contexts the enrolled persona answers
    reference: list  # indices into test (a subset of voice): contexts backbone and source answer

    @property
    def sid(self) -> str:
        return short_id(self.speaker)

    @property
    def profile(self) -> str:
        return f"b-{self.sid}"


def load_voice_people(corpus: str | None, split_config, size: VoiceSize, count: Callable[[str], int]):
    """(chats, the first ``b_speakers`` part-B speakers with train and test replies, split summary)."""
    from persona_sdk.split import chitchat_split

    chats, split = chitchat_split(corpus, split_config)
    ctx = size.context_budget
    people: list[Speaker] = []
    for s in split.part("B"):
        if len(people) >= size.b_speakers:
            break
        train = examples_of(chats, s.train, s.speaker, count, ctx)
        test = examples_of(chats, s.test, s.speaker, count, ctx)
        if len(train) < 2 or not test:
            continue  # nothing to learn from or nothing to score: take the next speaker
        scored = spread(len(test), size.test_replies)
        voice = spread(len(test), size.voice_contexts)
        people.append(Speaker(s.speaker, tuple(s.train), train, test, scored,
                              spread(len(scored), size.ident_replies),
                              voice, [voice[i] for i in spread(len(voice), size.reference_contexts)]))
    return chats, people, split.summary()


def voice_estimate(people: Sequence[Speaker], size: VoiceSize) -> dict[str, float]:
    """Planned seconds per stage from ``VOICE_COST`` (quiet machine)."""
    c, n = VOICE_COST, len(people)
    per_reply = {row: c["prefill"] + VOICE_REPLY_TOKENS[row] * c["token"] for row in VOICE_ROWS}
    out = {
        "enroll": n * (60 * size.max_minutes + c["enroll_overhead"]),
        "score": len(VOICE_ROWS) * sum(len(p.scored) for p in people) * c["forward"],
        "identification": max(n - 1, 0) * sum(len(p.ident) for p in people) * c["forward"],
        "generate": size.voice_seeds * sum(len(p.voice) * per_reply["enroll"]
                                           + len(p.reference) * (per_reply["backbone"] + per_reply["source"])
                                           for p in people),
        "setup": c["setup"],
        "voice": c["voice"],
    }
    out["total"] = sum(out.values())
    return out


def write_chats_json(chats, conversation_ids: Sequence[str], path: Path) -> int:
    """The conversations ``conversation_ids`` of ``chats`` as a chats.json (the documented format);
    returns the number of conversations written."""
    from persona_sdk.split import select

    convs = []
    for conv in select(chats, conversation_ids).conversations:
        msgs = []
        for m in conv.messages:
            msg = {"sender": m.sender, "text": m.text, "kind": m.kind}
            if m.time is not None:
                msg["time"] = m.time.isoformat()
            msgs.append(msg)
        convs.append({"id": conv.id, "messages": msgs})
    path.write_text(json.dumps({"conversations": convs}))
    return len(convs)


def enroll_command(chats_file: Path, person: Speaker, size: VoiceSize, backbone_dir: Path,
                   source_file: str | None) -> list[str]:
    """``persona enroll FILE --me SPEAKER --name NAME --max-minutes M --backbone DIR`` (the console
    script next to this interpreter, else ``python -m persona_sdk``); ``--source FILE`` only when a
    source prefix other than the shipped one is asked for."""
    script = Path(sys.executable).with_name("persona")
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "persona_sdk"]
    cmd += ["enroll", str(chats_file), "--me", person.speaker, "--name", person.profile,
            "--max-minutes", f"{size.max_minutes:g}", "--backbone", str(backbone_dir)]
    if source_file is not None:
        cmd += ["--source", str(source_file)]
    return cmd


def run_measured(cmd: Sequence[str], env: dict, out, timeout: float) -> dict:
    """Run ``cmd`` to its end: wall seconds, exit code, and the peak RSS of that child alone
    (``os.wait4``'s rusage of its pid, not the cumulative RUSAGE_CHILDREN). Killed after ``timeout``."""
    import threading

    t0 = time.monotonic()
    proc = subprocess.Popen(list(cmd), env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        proc.kill()

    timer = threading.Timer(timeout, kill)
    timer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except BaseException:  # Ctrl-C: do not leave the enrollment running
        timer.cancel()
        proc.kill()
        proc.wait()
        raise
    timer.cancel()
    wall = time.monotonic() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    rss = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)  # bytes (Linux reports KiB)
    return {"returncode": proc.returncode, "wall_seconds": wall, "peak_rss_bytes": int(rss),
            "timed_out": timed_out.is_set()}


class _Home:
    """``PERSONA_HOME`` pointed at the run's own folder while a :class:`Vault` is opened there."""

    def __init__(self, home: Path) -> None:
        self.home = home

    def vault(self):
        from persona_sdk.vault import Vault

        before = os.environ.get("PERSONA_HOME")
        os.environ["PERSONA_HOME"] = str(self.home)
        try:
            return Vault()  # its root is fixed when it is made
        finally:
            if before is None:
                os.environ.pop("PERSONA_HOME", None)
            else:
                os.environ["PERSONA_HOME"] = before


PROFILE_META = ("method", "source", "train_examples", "val_examples", "steps", "epochs", "init_val_loss",
                "best_val_loss", "best_step", "wall_seconds", "stopped", "bf16", "prefix_len", "lr")


def enroll_speaker(chats, person: Speaker, size: VoiceSize, backbone_dir: Path, source_file: str | None,
                   home: _Home, log_dir: Path, fingerprint: str) -> dict:
    """Enroll one speaker with the real CLI; the record (numbers, no chat text) of that enrollment."""
    import tempfile

    vault = home.vault()
    if vault.exists(person.profile):  # left by an interrupted run before its record was written
        vault.delete(person.profile)
    env = {**os.environ, "PERSONA_HOME": str(home.home), "PERSONA_PASSPHRASE": VOICE_PASSPHRASE}
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{person.sid}.log"
    with tempfile.TemporaryDirectory(prefix="personapkt-enroll-") as tmp:  # public dataset text, removed after
        chats_file = Path(tmp) / "chats.json"
        n_conv = write_chats_json(chats, person.train_conversations, chats_file)
        cmd = enroll_command(chats_file, person, size, backbone_dir, source_file)
        with open(log, "wb") as fh:
            run = run_measured(cmd, env, fh, timeout=3 * 60 * size.max_minutes + 300)
    record: dict[str, Any] = {**run, "ok": False, "train_conversations": n_conv, "train_replies": len(person.train)}
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    if run["returncode"] != 0 or not vault.exists(person.profile):
        record["reason"] = ("timed out" if run["timed_out"] else (lines[-1][:300] if lines else "no output"))
        return record
    prefix = vault.load(person.profile, VOICE_PASSPHRASE, fingerprint=fingerprint)
    record["ok"] = True
    record["profile"] = {k: prefix.meta[k] for k in PROFILE_META if k in prefix.meta}
    return record


def score_unit(engine, prefix, examples: Sequence, size: VoiceSize) -> dict:
    """Per-reply loss sums and reply-token counts of ``examples`` under ``prefix`` (ORT)."""
    from persona_sdk.evaluate import reply_token_losses

    sums, counts = [], []
    for ex in examples:
        losses = reply_token_losses(engine, prefix, ex.context, ex.reply, size.context_budget,
                                    size.reply_budget)  # (n_reply_tokens,)
        sums.append(float(losses.sum()))
        counts.append(int(losses.size))
    return {"loss_sums": sums, "token_counts": counts}


def generate_unit(engine, prefix, person: Speaker, indices: Sequence[int], seed: int, seeds: int = 1) -> dict:
    """Replies to the held-out contexts ``indices`` with the chat defaults, once per generation seed: with
    seed k (k < ``seeds``) context i uses seed + 1000 k + i (the same seeds for every row: only the prefix
    differs). Replies are listed seed by seed."""
    from persona_sdk import GenerationConfig

    replies, tokens = [], []
    for k in range(seeds):
        for i in indices:
            gen = GenerationConfig().replace(seed=seed + SEED_STRIDE * k + i)
            ids = engine.prompt_ids(list(person.test[i].context), prefix, gen)
            out = list(engine.generate_ids(ids, prefix, gen))
            replies.append(engine.format.decode(out).rstrip("\ufffd").strip())
            tokens.append(len(out))
    return {"replies": replies, "tokens": tokens, "seeds": seeds}


SEED_STRIDE = 1000  # generation seed k of a context starts at seed + 1000 k


def _ppl(unit: dict) -> float:
    return math.exp(sum(unit["loss_sums"]) / max(sum(unit["token_counts"]), 1))


VOICE_BARS = (  # key, what, target (the acceptance bars of the voice work)
    ("length", "generated median length within ±35% of the speaker's own", ">= 75% of speakers"),
    ("lowercase", "lowercase-start share within 0.15 of the speaker's own", ">= 75% of speakers"),
    ("attribution", "attribution top-1 at K = 20 (chance 5%)", ">= 35%"),
    ("identification", "perplexity identification top-1 at K = 20 (chance 5%)", ">= 60%"),
    ("gain", "median perplexity gain over the source prefix", ">= 10%"),
    ("enrolled", "speakers `persona enroll` enrolled (no error)", "all of them"),
    ("enroll_wall", "each enrollment's wall time", "<= 5 min"),
    ("enroll_rss", "enrollment peak RSS (max over speakers)", "<= 3 GB"),
)


def voice_bars(rows: dict, enrollments: dict, k_attr: int | None, k_ident: int) -> list[dict]:
    """Each bar: measured value, whether it holds (None: not measured at the bar's K), and by how much
    it misses (in the bar's unit; 0 when it holds)."""
    enroll = rows.get("enroll", {})
    real = rows.get("real", {})
    attempts = list(enrollments.values())
    out = []

    def bar(key: str, value, target: float, higher: bool, note: str = "", measured: bool = True) -> None:
        what, goal = next((w, g) for k, w, g in VOICE_BARS if k == key)
        holds = None if value is None or not measured else (value >= target if higher else value <= target)
        miss = None if holds is None else max(0.0, (target - value) if higher else (value - target))
        out.append({"key": key, "bar": what, "target": goal, "value": value, "holds": holds, "miss": miss,
                    "note": note})

    bar("length", enroll.get("length_within_tolerance"), 0.75, True)
    bar("lowercase", enroll.get("lowercase_within_tolerance"), 0.75, True)
    bar("attribution", enroll.get("attribution"), 0.35, True,
        f"K = {k_attr}; ceiling on the real held-out replies {_f(real.get('attribution'), pct=True)}"
        + ("" if k_attr == 20 else "; not the bar's K = 20"), measured=k_attr == 20)
    ident_value = enroll.get("ident_k20") if k_ident >= 20 else enroll.get("ident_all")
    bar("identification", ident_value, 0.60, True,
        "K = 20" if k_ident >= 20 else f"K = {k_ident}; not the bar's K = 20", measured=k_ident >= 20)
    bar("gain", enroll.get("gain_vs_source_median"), 0.10, True)
    ok = sum(e["ok"] for e in attempts)
    bar("enrolled", ok / len(attempts) if attempts else None, 1.0, True, f"{ok} of {len(attempts)}")
    walls = [e["wall_seconds"] for e in attempts]
    bar("enroll_wall", max(walls) / 60 if walls else None, 5.0, False,
        "minutes, max over every enrollment (failed ones included)")
    rss = [e["peak_rss_bytes"] for e in attempts]
    bar("enroll_rss", max(rss) / GB if rss else None, 3.0, False, "GB (10^9 bytes), max over enrollments")
    return out


def voice_rows(people: Sequence[Speaker], units: dict, voice: dict, ident: dict, enrollments: dict) -> dict:
    """One row per setting (and the real replies): perplexity, voice aggregates, identification, cost."""
    agg = voice["aggregate"]["settings"]
    rows: dict[str, dict] = {}
    real = agg.get("real", {})
    rows["real"] = {"speakers": real.get("speakers"), "median_words_median": real.get("median_words_median"),
                    "topic_share_median": real.get("topic_share_median"),
                    "attribution": real.get("attribution_macro"), "attribution_micro": real.get("attribution_micro")}
    for row in VOICE_ROWS:
        got = units.get(row, {})
        ppl = [_ppl(u) for u in got.values()]
        a = agg.get(row, {})
        r = {"speakers": len(got), "perplexity_median": float(np.median(ppl)) if ppl else None,
             "median_words_median": a.get("median_words_median"), "length_ratio_median": a.get("length_ratio_median"),
             "length_within_tolerance": a.get("length_within_tolerance"),
             "lowercase_within_tolerance": a.get("lowercase_within_tolerance"),
             "topic_share_median": a.get("topic_share_median"), "attribution": a.get("attribution_macro"),
             "attribution_micro": a.get("attribution_micro")}
        rows[row] = r
    gains = [(_ppl(units["source"][s]) - _ppl(u)) / _ppl(units["source"][s]) for s, u in units["enroll"].items()]
    rows["enroll"]["gain_vs_source_median"] = float(np.median(gains)) if gains else None
    rows["enroll"].update(ident)
    ok = [e for e in enrollments.values() if e["ok"]]
    rows["enroll"]["enroll_wall_median"] = float(np.median([e["wall_seconds"] for e in ok])) if ok else None
    rows["enroll"]["enroll_wall_max"] = max((e["wall_seconds"] for e in enrollments.values()), default=None)
    rows["enroll"]["enroll_rss_max"] = max((e["peak_rss_bytes"] for e in enrollments.values()), default=None)
    rows["enroll"]["enrolled"] = len(ok)
    return rows


def voice_markdown(results: dict) -> str:
    meta, rows = results["meta"], results["rows"]
    size = meta["size"]
    k_attr, k_id = results["voice"]["k"], results["identification"]["k"]
    lines = ["# Voice table: part-B speakers enrolled by `persona enroll` (chitchat-dataset)", "",
             f"- command: `{meta['command']}`", f"- commit: `{meta['commit']}`", f"- date (UTC): {meta['date']}",
             f"- backbone: `{meta['backbone']}`; scoring (perplexity, identification): ONNX runtime "
             f"`{meta['score_variant']}`; generation: ONNX runtime `{meta['generate_variant']}` with the chat "
             "defaults (`GenerationConfig()`, seed + context index, the same for every row"
             + (f"; length pull {g['length_pull']:g} toward the {g['length_from']} target, personas only"
                if (g := meta.get("generation") or {}).get("length_pull") else "") + ")",
             f"- enrollment: `{' '.join(meta['enroll_command'])}` in its own process per speaker (the speaker's "
             "train conversations as chats.json; the library's default training settings); "
             f"{rows['enroll'].get('enrolled')} of {len(results['enrollments'])} enrolled",
             f"- source prefix: {meta['source_prefix']}",
             f"- size: {meta['size_name']} — " + ", ".join(f"{k}={v}" for k, v in size.items()),
             f"- wall time: {_hms(meta['wall_seconds_all_runs'])} summed over every run that filled the cache, "
             "work later discarded included, e.g. enrollments redone after their cache entries were removed (this run "
             f"{_hms(meta['wall_seconds'])}; estimated beforehand: {_hms(meta['estimate']['total'])} on a quiet "
             "machine); per stage: " + ", ".join(
                 f"{k} {_hms(v)} (est. {_hms(meta['estimate'].get(k, 0))})"
                 for k, v in meta["stage_seconds_all_runs"].items()),
             "- generated tokens per reply (mean): " + ", ".join(
                 f"{k} {_f(rows[k].get('generated_tokens_mean'), 1)} (assumed {meta['reply_tokens_assumed'][k]})"
                 for k in VOICE_ROWS), "",
             "## Acceptance bars", "", "| bar | target | measured | holds | misses by | note |", "|---|---|---|---|---|---|"]
    for b in results["bars"]:
        unit = {"enroll_wall": " min", "enroll_rss": " GB"}.get(b["key"])
        val = "—" if b["value"] is None else (f"{b['value']:.2f}{unit}" if unit else _f(b["value"], pct=True))
        miss = ("—" if b["miss"] is None else "0" if b["holds"] else
                (f"{b['miss']:.2f}{unit}" if unit else f"{100 * b['miss']:.1f} points"))
        holds = ("not measured" if b["value"] is None else
                 {True: "yes", False: "**no**", None: "not judged: not at the bar's K"}[b["holds"]])
        lines.append(f"| {b['bar']} | {b['target']} | {val} | {holds} | {miss} | {b['note']} |")
    lines += ["", f"## Rows ({meta['speakers']} speakers; attribution K = {k_attr}, identification K = {k_id})", "",
              "| setting | ppl (median) | gain vs source (median) | median words (median) | length ratio (median) "
              "| within ±35% length | within 0.15 lowercase | topic share (median) | attribution top-1 "
              "| identification top-1 | enroll wall (median / max) | enroll peak RSS (max) |",
              "|---" * 12 + "|"]
    r = rows["real"]
    lines.append(f"| real held-out replies | — | — | {_f(r.get('median_words_median'), 1)} | 1 | — | — | "
                 f"{_f(r.get('topic_share_median'), pct=True)} | {_f(r.get('attribution'), pct=True)} (ceiling) "
                 "| — | — | — |")
    for key in VOICE_ROWS:
        r = rows[key]
        ident = ("—" if key != "enroll" else
                 _f(r.get("ident_k20") if k_id >= 20 else r.get("ident_all"), pct=True))
        wall = ("—" if key != "enroll" or r.get("enroll_wall_max") is None else
                f"{_f(r.get('enroll_wall_median'), 0)} s / {_f(r.get('enroll_wall_max'), 0)} s")
        rss = "—" if key != "enroll" or r.get("enroll_rss_max") is None else f"{r['enroll_rss_max'] / GB:.2f} GB"
        lines.append(f"| {SETTINGS[key]} | {_f(r.get('perplexity_median'), 2)} | "
                     f"{_f(r.get('gain_vs_source_median'), pct=True)} | {_f(r.get('median_words_median'), 1)} | "
                     f"{_f(r.get('length_ratio_median'), 2)} | {_f(r.get('length_within_tolerance'), pct=True)} | "
                     f"{_f(r.get('lowercase_within_tolerance'), pct=True)} | {_f(r.get('topic_share_median'), pct=True)} "
                     f"| {_f(r.get('attribution'), pct=True)} | {ident} | {wall} | {rss} |")
    lines += ["", "## Per speaker (enrolled persona vs the speaker's real held-out replies)", "",
              "| speaker | train replies | steps | stopped | enroll wall | peak RSS | ppl source → enroll | gain "
              "| median words real / gen | lowercase real / gen | topic share real / gen | attributed |",
              "|---" * 12 + "|"]
    for sid, sp in results["speakers"].items():
        e, v = sp["enrollment"], sp.get("voice", {})
        prof = e.get("profile", {})
        vr, ve = v.get("real", {}), v.get("enroll", {})
        ppl = sp.get("perplexity", {})
        status = prof.get("stopped", "—") if e["ok"] else f"failed: {e.get('reason', '')[:60]}"
        lines.append(
            f"| {sid} | {e['train_replies']} | {prof.get('steps', '—')} | {status} | {e['wall_seconds']:.0f} s | "
            f"{e['peak_rss_bytes'] / GB:.2f} GB | {_f(ppl.get('source'), 1)} → {_f(ppl.get('enroll'), 1)} | "
            f"{_f(sp.get('gain'), pct=True)} | {_f(vr.get('median_words'), 1)} / {_f(ve.get('median_words'), 1)} | "
            f"{_f(vr.get('lowercase_start'), pct=True)} / {_f(ve.get('lowercase_start'), pct=True)} | "
            f"{_f(vr.get('topic_share'), pct=True)} / {_f(ve.get('topic_share'), pct=True)} | "
            f"{_f(ve.get('attribution'), pct=True)} |")
    lines += ["", "Notes: perplexity is over reply tokens (≤ reply_budget) of the scored held-out test replies "
              "(median over speakers); gain = (source − enroll) / source per speaker, then the median. "
              "Generated replies answer held-out contexts (voice_contexts for the enrolled persona, "
              "reference_contexts of the same ones for the backbone and the source prefix), once per generation "
              "seed (voice_seeds; a speaker's replies of all seeds are pooled), and are compared "
              "with all of the speaker's real held-out replies (persona_sdk.voice.speakers_voice): topic words "
              "come from the speaker's training replies; the attribution classifier is trained on the K speakers' "
              "training replies and its accuracy on their real held-out replies is the ceiling. Identification: "
              "each enrolled persona scores ident_replies held-out replies of every enrolled speaker; a reply is "
              "identified when its speaker's persona gives it strictly the lowest loss. Enrollment wall time is "
              "the `persona enroll` process from start to exit; peak RSS is that process's (os.wait4).", ""]
    return "\n".join(lines)


class StageTimes:
    """Seconds per stage: this run's, and the sum over every run that filled the cache (a resumed run
    redoes only what is not cached, so the sum is what the whole table cost, including any work whose cache
    entries were later removed and redone: an upper bound on the table's cost, not its cost)."""

    def __init__(self) -> None:
        self.run: dict[str, float] = {}
        self.all: dict[str, float] = {}
        self.path: Path | None = None

    def attach(self, path: Path) -> None:
        self.path = path
        self.all = json.loads(path.read_text()) if path.is_file() else {}
        for stage, seconds in self.run.items():
            self._add_all(stage, seconds)

    def add(self, stage: str, seconds: float) -> None:
        self.run[stage] = self.run.get(stage, 0.0) + seconds
        if self.path is not None:
            self._add_all(stage, seconds)

    def _add_all(self, stage: str, seconds: float) -> None:
        self.all[stage] = self.all.get(stage, 0.0) + seconds
        write_atomic(self.path, json.dumps(self.all).encode())


def main_voice(args: argparse.Namespace, argv: Sequence[str] | None, overrides: dict, commit: str,
               t_start: float) -> dict:
    """The voice preset: enroll, then score and generate through the ONNX runtime, then the table."""
    from persona_sdk import backbone as bbmod
    from persona_sdk.conversation import ChatFormat
    from persona_sdk.split import SplitConfig
    from tokenizers import Tokenizer

    size = replace(VOICE_SIZES[args.size], **overrides)
    split_over = {k: getattr(args, "split_" + k) for k in ("n_b", "n_c", "b_min") if getattr(args, "split_" + k) is not None}
    split_config = SplitConfig(**split_over)
    out = Path(args.out)
    cache = Cache(out / "cache")
    backbone_dir = Path(bbmod.resolve(args.backbone, say))
    fmt = ChatFormat(Tokenizer.from_file(str(backbone_dir / "tokenizer.json")))
    say("loading the corpus and the split...")
    times = StageTimes()
    t0 = time.monotonic()
    chats, people, split_summary = load_voice_people(args.corpus, split_config, size, lambda t: len(fmt.encode(t)))
    times.add("setup", time.monotonic() - t0)
    plan = voice_estimate(people, size)
    say(f"plan: {len(people)} part-B speakers, rows {', '.join(VOICE_ROWS)}; estimated {_hms(plan['total'])} on a "
        "quiet 2-core machine (" + ", ".join(f"{k} {_hms(v)}" for k, v in plan.items() if k != "total" and v) + ")")
    if args.estimate_only:
        return {"estimate": plan, "speakers": {"B": len(people)}, "cost_model": VOICE_COST,
                "reply_tokens": VOICE_REPLY_TOKENS,
                "train_replies": [len(p.train) for p in people], "test_replies": [len(p.test) for p in people]}
    if len(people) < 2:
        raise SystemExit(f"only {len(people)} part-B speaker(s) with train and test replies; need at least 2")

    from persona_sdk import source as src
    from persona_sdk.config import RuntimeConfig
    from persona_sdk.engines import find_export
    from persona_sdk.runtime import Engine
    from persona_sdk.voice import SpeakerTexts, speakers_voice

    fingerprint = bbmod.fingerprint(backbone_dir)
    source_file = str(Path(args.source_prefix).resolve()) if args.source_prefix else None
    source = src.load_source(source_file)
    if source.backbone != fingerprint:
        raise SystemExit("the source prefix was trained for another backbone; give one for this backbone "
                         "with --source-prefix FILE")
    identity = {"preset": "voice", "size": asdict(size), "split": asdict(split_config), "seed": args.seed,
                "backbone": fingerprint, "corpus": args.corpus, "source": hashlib.sha256(source.kv.tobytes()).hexdigest(),
                "score_variant": args.score_variant, "generate_variant": args.variant, "export": args.export}
    stamp = cache.json("run", lambda: identity)
    if stamp != json.loads(json.dumps(identity)):
        raise SystemExit(f"{out} holds a cache of a different configuration; use another --out (or delete it)")
    times.attach(cache.root / "stage_seconds.json")
    progress = Progress(plan["total"])
    home = _Home((cache.root / "persona-home").resolve())

    # 1. enrollment: one `persona enroll` process per speaker, nothing else running (cached)
    t0 = time.monotonic()
    enrollments: dict[str, dict] = {}
    vault = home.vault()
    for n, p in enumerate(people, start=1):
        name = f"voice/enroll/{p.sid}"
        if cache.has(name) and cache.load(name)["ok"] and not vault.exists(p.profile):
            (cache.root / f"{name}.json").unlink()  # the profile went missing: enroll again
        if not cache.has(name):
            progress.step(f"speaker {n}/{len(people)}: enrolling with `persona enroll` ({len(p.train)} train "
                          f"replies, --max-minutes {size.max_minutes:g})",
                          60 * size.max_minutes + VOICE_COST["enroll_overhead"])
        enrollments[p.sid] = cache.json(name, lambda: enroll_speaker(
            chats, p, size, backbone_dir, source_file, home, cache.root / "voice" / "enroll-logs", fingerprint))
        e = enrollments[p.sid]
        say(f"  speaker {n}: " + (f"enrolled in {e['wall_seconds']:.0f} s, {e['profile'].get('steps')} steps, "
                                  f"stopped: {e['profile'].get('stopped')}" if e["ok"] else f"failed: {e['reason']}")
            + f"; peak RSS {e['peak_rss_bytes'] / GB:.2f} GB")
    times.add("enroll", time.monotonic() - t0)
    del chats

    # 2. engines and personas
    t0 = time.monotonic()
    export_of = {v: find_export(args.export or backbone_dir, v, say, build=True)
                 for v in dict.fromkeys([args.score_variant, args.variant])}
    engines = {v: Engine(d, RuntimeConfig(device="cpu", threads=args.threads)) for v, d in export_of.items()}
    for e in engines.values():
        if e.fingerprint != fingerprint:
            raise SystemExit("the ONNX export is not of the enrollment backbone (fingerprints differ)")
    scorer, generator = engines[args.score_variant], engines[args.variant]
    prefixes: dict[str, dict[str, Any]] = {"backbone": {}, "source": {}, "enroll": {}}
    for p in people:
        prefixes["backbone"][p.sid] = None
        prefixes["source"][p.sid] = source
        if enrollments[p.sid]["ok"]:
            prefixes["enroll"][p.sid] = vault.load(p.profile, VOICE_PASSPHRASE, fingerprint=fingerprint)
    enrolled = [p for p in people if p.sid in prefixes["enroll"]]
    times.add("setup", time.monotonic() - t0)

    # 3. perplexity of every row on the scored held-out replies (ORT, cached)
    t0 = time.monotonic()
    units: dict[str, dict[str, dict]] = {row: {} for row in VOICE_ROWS}
    for row in VOICE_ROWS:
        for n, p in enumerate(people, start=1):
            if p.sid not in prefixes[row]:
                continue
            name = f"voice/score/{row}/{p.sid}"
            if not cache.has(name):
                progress.step(f"{SETTINGS[row]} · speaker {n}/{len(people)}: scoring {len(p.scored)} held-out "
                              f"replies ({args.score_variant})", len(p.scored) * VOICE_COST["forward"])
            units[row][p.sid] = cache.json(name, lambda: score_unit(
                scorer, prefixes[row][p.sid], [p.test[i] for i in p.scored], size))
    times.add("score", time.monotonic() - t0)

    # 4. persona identification among the enrolled speakers
    t0 = time.monotonic()
    ident_people = [Person(p.sid, "B", [], [], [p.test[p.scored[j]] for j in p.ident]) for p in enrolled]
    rows_by_owner: dict[str, list] = {}
    for n, p in enumerate(enrolled, start=1):
        name = f"voice/ident/{p.sid}"
        if len(enrolled) < 2:
            break
        if not cache.has(name):
            progress.step(f"identification: persona {n}/{len(enrolled)} on the other speakers' replies",
                          sum(len(q.ident) for q in enrolled if q is not p) * VOICE_COST["forward"])

        def row_of(p=p) -> list:
            own = units["enroll"][p.sid]
            row: list = []
            for q in enrolled:
                if q is p:
                    row += [own["loss_sums"][j] / max(own["token_counts"][j], 1) for j in p.ident]
                else:
                    u = score_unit(scorer, prefixes["enroll"][p.sid], [q.test[q.scored[j]] for j in q.ident], size)
                    row += [s / max(c, 1) for s, c in zip(u["loss_sums"], u["token_counts"])]
            return row

        rows_by_owner[p.sid] = cache.json(name, row_of)
    ident = identification(rows_by_owner, ident_people)
    times.add("identification", time.monotonic() - t0)

    # 5. generated replies (chat defaults) for held-out contexts
    t0 = time.monotonic()
    generated: dict[str, dict[str, dict]] = {row: {} for row in VOICE_ROWS}
    for row in ("enroll", "source", "backbone"):
        for n, p in enumerate(people, start=1):
            if p.sid not in prefixes[row]:
                continue
            which = p.voice if row == "enroll" else p.reference
            name = f"voice/generate/{row}/{p.sid}"
            if not cache.has(name):
                progress.step(f"{SETTINGS[row]} · speaker {n}/{len(people)}: answering {len(which)} held-out "
                              f"contexts x {size.voice_seeds} seeds ({args.variant}, chat defaults)",
                              size.voice_seeds * len(which)
                              * (VOICE_COST["prefill"] + VOICE_REPLY_TOKENS[row] * VOICE_COST["token"]))
            generated[row][p.sid] = cache.json(name, lambda: generate_unit(generator, prefixes[row][p.sid], p, which,
                                                                           args.seed, size.voice_seeds))
    times.add("generate", time.monotonic() - t0)

    # 6. what a reader notices, at K = the speakers of the run (numbers only)
    t0 = time.monotonic()
    progress.step("voice metrics: style, topics, attribution", 0.0)
    texts = {p.sid: SpeakerTexts(train=[e.reply for e in p.train], real=[e.reply for e in p.test],
                                 generated={row: generated[row][p.sid]["replies"] for row in VOICE_ROWS
                                            if p.sid in generated[row]}) for p in people}
    voice = speakers_voice(texts, seed=args.seed)
    times.add("voice", time.monotonic() - t0)

    rows = voice_rows(people, units, voice, ident, enrollments)
    for row in VOICE_ROWS:
        toks = [t for u in generated[row].values() for t in u["tokens"]]
        rows[row]["generated_replies"] = len(toks)
        rows[row]["generated_tokens_mean"] = float(np.mean(toks)) if toks else None
    k_attr = voice["aggregate"]["k"]
    bars = voice_bars(rows, enrollments, k_attr, len(enrolled))
    speakers_out = {}
    for p in people:
        ppl = {row: _ppl(units[row][p.sid]) for row in VOICE_ROWS if p.sid in units[row]}
        gain = (ppl["source"] - ppl["enroll"]) / ppl["source"] if "enroll" in ppl else None
        speakers_out[p.sid] = {"enrollment": enrollments[p.sid], "perplexity": ppl, "gain": gain,
                               "test_replies": len(p.test), "scored": len(p.scored),
                               "voice": voice["per_speaker"][p.sid]}
    wall = time.monotonic() - t_start
    enroll_cmd = ["persona", "enroll", "chats.json", "--me", "SPEAKER", "--name", "NAME", "--max-minutes",
                  f"{size.max_minutes:g}", "--backbone", "DIR"] + (["--source", "FILE"] if source_file else [])
    results = {
        "preset": "voice",
        "bars": bars,
        "rows": rows,
        "identification": {**ident, "k": len(enrolled)},
        "voice": {"k": k_attr, "chance": voice["aggregate"]["chance"],
                  "length_tolerance": voice["aggregate"]["length_tolerance"],
                  "lowercase_tolerance": voice["aggregate"]["lowercase_tolerance"],
                  "settings": voice["aggregate"]["settings"]},
        "speakers": speakers_out,
        "enrollments": enrollments,
        "meta": {
            "command": "python benchmarks/personapkt_table.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "commit": commit, "date": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
            "backbone": backbone_dir.name, "backbone_fingerprint": fingerprint,
            "score_variant": json.loads((Path(export_of[args.score_variant]) / "manifest.json").read_text()).get("variant"),
            "generate_variant": json.loads((Path(export_of[args.variant]) / "manifest.json").read_text()).get("variant"),
            "source_prefix": f"`{source_file}`" if source_file else "the shipped one (persona enroll's default)",
            "enroll_command": enroll_cmd, "speakers": len(people),
            "size_name": args.size + (" (with overrides: " + ", ".join(overrides) + ")" if overrides else ""),
            "size": asdict(size), "split": {**asdict(split_config), "summary": split_summary},
            "seed": args.seed, "threads": args.threads, "estimate": plan, "stage_seconds": times.run,
            "stage_seconds_all_runs": times.all, "wall_seconds": wall,
            "wall_seconds_all_runs": sum(times.all.values()), "cost_model": VOICE_COST, "reply_tokens_assumed": VOICE_REPLY_TOKENS,
            "generation": asdict_generation(),
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "results.json", json.dumps(results, indent=2).encode())
    write_atomic(out / "table.md", voice_markdown(results).encode())
    say(f"done in {_hms(wall)}: {out / 'table.md'}, {out / 'results.json'}")
    print(voice_markdown(results))
    return results


def asdict_generation() -> dict:
    from persona_sdk import GenerationConfig

    g = GenerationConfig()
    return {f: getattr(g, f) for f in ("max_new_tokens", "do_sample", "temperature", "top_k", "top_p",
                                       "repetition_penalty", "num_beams", "context_budget", "length_pull",
                                       "length_from")}


# --- main ----------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/out/personapkt", help="output folder (also the resume cache)")
    ap.add_argument("--size", choices=[*SIZES, *VOICE_SIZES], default="full",
                    help="quick (< 1 h), k20 (identification at K = 20), full (the whole protocol; days), or "
                         "voice20 (20 part-B speakers enrolled by `persona enroll`: style, topics, attribution, "
                         "identification at K = 20; ~2.5 h)")
    ap.add_argument("--quick", action="store_const", const="quick", dest="size", help="same as --size quick")
    ap.add_argument("--backbone", default=None, help="HF backbone folder to train on (default: the embedded SmolLM2)")
    ap.add_argument("--export", default=None, help="ONNX export folder for scoring/decoding (default: the backbone's "
                                                   "cached export of --variant, built if missing)")
    ap.add_argument("--variant", default="int8", help="ONNX variant for scoring/decoding (int8 = the chat default); "
                                                      "voice20: generation only")
    ap.add_argument("--score-variant", default="fp32",
                    help="voice20: ONNX variant for perplexity and identification (fp32 prefills faster than int8)")
    ap.add_argument("--source-prefix", default=None,
                    help="voice20: a source prefix FILE for the source row and `persona enroll --source FILE` "
                         "(default: the shipped one, enroll's default)")
    ap.add_argument("--corpus", default=None, help="chitchat-format dataset.json (default: the chitchat-dataset package)")
    ap.add_argument("--settings", nargs="+", default=None, choices=list(PKT_ROWS),
                    help="rows to run (quick / k20 / full; voice20 always runs backbone, source and enroll)")
    ap.add_argument("--parts", nargs="+", default=["B", "C"], choices=["B", "C"])
    ap.add_argument("--base-source", choices=["plain", "shipped"], default="plain",
                    help="source of PersonaPKT base / source-only: a plain-mixing source trained here, or the shipped one")
    ap.add_argument("--full-lr", type=float, default=1e-2,
                    help="SGD lr of the Reptile inner steps and of full fine-tuning (PAML's alpha = 0.01)")
    ap.add_argument("--threads", type=int, default=2, help="torch and onnxruntime threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--estimate-only", action="store_true", help="print the plan and its estimated wall time, then exit")
    for f in Size.__dataclass_fields__:  # every size knob can be overridden: --b-speakers 6 ...
        ap.add_argument("--" + f.replace("_", "-"), type=int, default=None, dest="size_" + f,
                        help=f"override Size.{f}" + (" / VoiceSize." + f if f in VoiceSize.__dataclass_fields__ else ""))
    for f in VoiceSize.__dataclass_fields__:
        if f not in Size.__dataclass_fields__:
            ap.add_argument("--" + f.replace("_", "-"), type=float if f == "max_minutes" else int, default=None,
                            dest="size_" + f, help=f"override VoiceSize.{f} (voice20)")
    # split protocol (changing it is a different protocol; recorded in results.json)
    ap.add_argument("--split-n-b", type=int, default=None, help="SplitConfig.n_b")
    ap.add_argument("--split-n-c", type=int, default=None, help="SplitConfig.n_c")
    ap.add_argument("--split-b-min", type=int, default=None, help="SplitConfig.b_min")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    from persona_sdk import backbone as bbmod
    from persona_sdk.conversation import ChatFormat
    from persona_sdk.split import SplitConfig
    from tokenizers import Tokenizer

    t_start = time.monotonic()
    commit = _commit()  # the code that runs, not whatever HEAD is when a long run ends
    fields = VoiceSize.__dataclass_fields__ if args.size in VOICE_SIZES else Size.__dataclass_fields__
    given = {f[len("size_"):] for f, v in vars(args).items() if f.startswith("size_") and v is not None}
    if given - set(fields):
        raise SystemExit(f"--size {args.size} has no " + ", ".join("--" + f.replace("_", "-") for f in sorted(given - set(fields))))
    overrides = {f: getattr(args, "size_" + f) for f in fields if getattr(args, "size_" + f) is not None}
    if args.size in VOICE_SIZES:
        if args.settings is not None:
            raise SystemExit("--settings does not apply to --size voice20 (its rows are backbone, source and enroll)")
        return main_voice(args, argv, overrides, commit, t_start)
    size = replace(SIZES[args.size], **overrides)
    split_over = {k: getattr(args, "split_" + k) for k in ("n_b", "n_c", "b_min") if getattr(args, "split_" + k) is not None}
    split_config = SplitConfig(**split_over)
    settings = [s for s in PKT_ROWS if s in (args.settings or PKT_ROWS)]
    out = Path(args.out)
    cache = Cache(out / "cache")

    backbone_dir = Path(bbmod.resolve(args.backbone, say))
    fmt = ChatFormat(Tokenizer.from_file(str(backbone_dir / "tokenizer.json")))
    say("loading the corpus and the split...")
    people, pools, source_speakers, source_val, split_summary = load_data(
        args.corpus, split_config, size, lambda t: len(fmt.encode(t)))
    people = {p: people[p] for p in args.parts}
    plan = estimate(people, size, settings)
    say("plan: " + ", ".join(f"part {p}: {len(v)} speakers" for p, v in people.items())
        + f"; estimated {_hms(plan['total'])} on a quiet 2-core machine ("
        + ", ".join(f"{k} {_hms(v)}" for k, v in plan.items() if k != "total" and v) + ")")
    if args.estimate_only:
        return {"estimate": plan, "speakers": {p: len(v) for p, v in people.items()},
                "train_replies": {p: [len(x.train) for x in v] for p, v in people.items()},
                "test_replies": {p: [len(x.test) for x in v] for p, v in people.items()}}

    import torch

    from persona_sdk import trainer as tr
    from persona_sdk.config import RuntimeConfig
    from persona_sdk.engines import find_export
    from persona_sdk.runtime import Engine

    torch.set_num_threads(args.threads)
    progress = Progress(plan["total"])
    bb = tr.load_backbone(backbone_dir)
    n_params = int(sum(p.numel() for p in {id(p): p for p in bb.model.parameters()}.values()))
    export_dir = find_export(args.export or backbone_dir, args.variant, say, build=True)
    engine = Engine(export_dir, RuntimeConfig(device="cpu", threads=args.threads))
    if engine.fingerprint != bb.fingerprint:
        raise SystemExit("the ONNX export is not of the training backbone (fingerprints differ)")
    # the cache is only valid for the same sizes, split, sources, backbone and export: refuse to mix
    identity = {"size": asdict(size), "split": asdict(split_config), "base_source": args.base_source,
                "full_lr": args.full_lr, "seed": args.seed, "backbone": bb.fingerprint, "corpus": args.corpus,
                "export": json.loads((Path(export_dir) / "manifest.json").read_text()).get("variant")}
    stamp = cache.json("run", lambda: identity)
    if stamp != json.loads(json.dumps(identity)):
        raise SystemExit(f"{out} holds a cache of a different configuration; use another --out (or delete it)")
    block_pct = 100.0 * (bb.layers * 2 * bb.kv_heads * size.prefix_len * bb.head_dim) / n_params

    # 1. source prefixes (cached)
    needed = sorted({SOURCE_OF[s] for s in settings if s in SOURCE_OF} | ({"plain"} if "source" in settings else set()),
                    key=["plain", "temperature", "ppreptile"].index)
    sources, source_info = train_sources(bb, needed, source_speakers, source_val, size, cache, args.seed,
                                         args.base_source == "shipped", progress)

    # 2. per part, setting, speaker: train (personal settings) and score through ORT (cached)
    results: dict[str, Any] = {"parts": {}}
    for part, ps in people.items():
        pool = pools[part]
        units: dict[str, dict[str, dict]] = {s: {} for s in settings}
        prefixes: dict[str, dict[str, Any]] = {s: {} for s in settings}
        for setting in [s for s in settings if s != "reptile-full"]:
            for n, person in enumerate(ps, start=1):
                where = f"part {part} · {SETTINGS[setting]} · speaker {n}/{len(ps)}"
                name = f"{part}/{setting}/{person.sid}"
                info: dict[str, Any] = {}
                if setting in PERSONAL:
                    steps = math.ceil(len(person.train) / size.batch_size) * size.epochs
                    if not (cache.root / f"{name}.safetensors").is_file():
                        progress.step(f"{where}: training ({len(person.train)} replies, {steps} steps)",
                                      steps * COST["train_step"])
                    prefix, info = cache.prefix(name, lambda: train_personal(bb, person, setting, size, sources,
                                                                            args.seed))
                else:
                    prefix = None if setting == "backbone" else sources["plain"]
                prefixes[setting][person.speaker] = prefix
                if not cache.has(name):
                    progress.step(f"{where}: scoring + decoding {len(person.test)} test replies (ORT)",
                                  len(person.test) * (COST["forward"] + COST["beam"] + COST["sample"]))
                unit = cache.json(name, lambda: score_ort(engine, prefix, person, pool, size))
                units[setting][person.speaker] = {**unit, "train": info or None}
        # persona identification (personal settings): one row of the (K, N) loss matrix per prefix
        ident: dict[str, dict] = {}
        for setting in [s for s in settings if s in PERSONAL]:
            rows = {}
            if len(ps) >= 2:
                for n, person in enumerate(ps, start=1):
                    name = f"{part}/{setting}/ident-{person.sid}"
                    if not cache.has(name):
                        progress.step(f"part {part} · {SETTINGS[setting]} · identification row {n}/{len(ps)}",
                                      sum(len(p.test) for p in ps if p is not person) * COST["forward"])
                    rows[person.speaker] = cache.json(name, lambda: identification_row(
                        engine, prefixes[setting][person.speaker], person, ps, units[setting][person.speaker], size))
            ident[setting] = identification(rows, ps)
        # Reptile + full fine-tuning on a sample of speakers (torch)
        if "reptile-full" in settings:
            sample = ps[: size.reptile_speakers]
            todo = [p for p in sample if not cache.has(f"{part}/reptile-full/{p.sid}")]
            if todo:
                if not (cache.root / "sources" / "reptile-full" / "config.json").is_file():
                    progress.step(f"part {part} · Reptile meta-training of the full backbone "
                                  f"({size.reptile_outer_steps} outer steps; cached)",
                                  size.reptile_outer_steps * 2 * size.reptile_inner_steps * COST["full_step"])
                meta_bb = reptile_meta(backbone_dir, source_speakers, size, args.full_lr, args.seed,
                                       cache.root / "sources" / "reptile-full")
                meta_state = _state(meta_bb.model)
                for n, person in enumerate(sample, start=1):
                    progress.step(f"part {part} · full fine-tuning · speaker {n}/{len(sample)}",
                                  math.ceil(len(person.train) / size.batch_size) * size.epochs * COST["full_step"])
                    unit = cache.json(f"{part}/reptile-full/{person.sid}", lambda: full_finetune_and_score(
                        meta_bb, meta_state, person, pool, size, args.full_lr, args.seed))
                del meta_bb, meta_state
            for person in sample:
                units["reptile-full"][person.speaker] = cache.load(f"{part}/reptile-full/{person.sid}")
        # aggregate
        pr: dict[str, Any] = {"speakers": len(ps), "k_all": len(ps), "settings": {}, "curves": {}}
        for setting in settings:
            stored = 100.0 if setting == "reptile-full" else (0.0 if setting in ("backbone", "source") else block_pct)
            pr["settings"][setting] = aggregate(units[setting], ident.get(setting), stored)
            if setting in PERSONAL or setting == "reptile-full":
                pr["curves"][setting] = [u["train"]["curve"] for u in units[setting].values()
                                         if u.get("train") and u["train"].get("curve")]
        src_rows = pr["settings"]
        if "source" in src_rows and src_rows["source"] and "base" in src_rows and src_rows["base"]:
            # the target: personal prefix perplexity >= 10% below source-only (median over speakers)
            gains = []
            for sp in units["base"]:
                a, b = units["source"].get(sp), units["base"][sp]
                if a:
                    pa = math.exp(sum(a["loss_sums"]) / sum(a["token_counts"]))
                    pb = math.exp(sum(b["loss_sums"]) / sum(b["token_counts"]))
                    gains.append((pa - pb) / pa)
            pr["base_gain_vs_source_median"] = float(np.median(gains)) if gains else None
        results["parts"][part] = pr

    wall = time.monotonic() - t_start
    results["meta"] = {
        "command": "python benchmarks/personapkt_table.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "commit": commit,
        "date": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "backbone": str(backbone_dir.name), "backbone_fingerprint": bb.fingerprint, "backbone_params": n_params,
        "export_variant": json.loads((Path(export_dir) / "manifest.json").read_text()).get("variant"),
        "size_name": args.size + (" (with overrides: " + ", ".join(overrides) + ")" if overrides else ""), "size": asdict(size),
        "split": {**asdict(split_config), "summary": split_summary},
        "sources": source_info, "base_source": args.base_source, "settings": settings,
        "source_speakers": len(source_speakers), "prefix_stored_pct": block_pct,
        "estimate": plan, "wall_seconds": wall, "threads": args.threads, "cost_model": COST,
        "decoding": {k: {f: getattr(g, f) for f in ("num_beams", "do_sample", "temperature", "top_k", "top_p",
                                                     "repetition_penalty", "max_new_tokens")}
                     for k, g in gen_configs(size).items()},
    }
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "results.json", json.dumps(results, indent=2).encode())
    write_atomic(out / "table.md", markdown(results).encode())
    plot(results, out / "quality_vs_epochs.png")
    say(f"done in {_hms(wall)}: {out / 'table.md'}, {out / 'results.json'}, {out / 'quality_vs_epochs.png'}")
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
