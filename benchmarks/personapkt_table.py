"""The PersonaPKT table on chitchat parts B and C (protocol in benchmarks/README.md).

    # quick (4 B + 4 C speakers, <= 32 train replies, 1 epoch; estimated 53 min on a quiet 2-core machine):
    .venv/bin/python benchmarks/personapkt_table.py --quick --out benchmarks/out/personapkt-quick
    # identification at K = 20 (20 B + 20 C speakers, <= 64 replies, 1 epoch; estimated 6.7 h):
    .venv/bin/python benchmarks/personapkt_table.py --size k20 --out benchmarks/out/personapkt-k20
    # the whole protocol (30 B + 42 usable C speakers, all replies, 3 epochs; estimated 131 h):
    .venv/bin/python benchmarks/personapkt_table.py --size full --out benchmarks/out/personapkt-full
    # any size: print the plan and its estimated wall time without running it
    .venv/bin/python benchmarks/personapkt_table.py --quick --estimate-only

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
}
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
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "persona_sdk", "benchmarks/personapkt_table.py"],
                               cwd=root, capture_output=True, text=True).stdout.strip()
        return sha + (" (with uncommitted changes)" if dirty else "") if sha else "unknown"
    except OSError:
        return "unknown"


# --- main ----------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/out/personapkt", help="output folder (also the resume cache)")
    ap.add_argument("--size", choices=list(SIZES), default="full",
                    help="quick (< 1 h), k20 (identification at K = 20) or full (the whole protocol; days)")
    ap.add_argument("--quick", action="store_const", const="quick", dest="size", help="same as --size quick")
    ap.add_argument("--backbone", default=None, help="HF backbone folder to train on (default: the embedded SmolLM2)")
    ap.add_argument("--export", default=None, help="ONNX export folder for scoring/decoding (default: the backbone's "
                                                   "cached export of --variant, built if missing)")
    ap.add_argument("--variant", default="int8", help="ONNX variant for scoring/decoding (int8 = the chat default)")
    ap.add_argument("--corpus", default=None, help="chitchat-format dataset.json (default: the chitchat-dataset package)")
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS), help="rows to run")
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
                        help=f"override Size.{f}")
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
    size = SIZES[args.size]
    overrides = {f: getattr(args, "size_" + f) for f in Size.__dataclass_fields__ if getattr(args, "size_" + f) is not None}
    size = replace(size, **overrides)
    split_over = {k: getattr(args, "split_" + k) for k in ("n_b", "n_c", "b_min") if getattr(args, "split_" + k) is not None}
    split_config = SplitConfig(**split_over)
    settings = [s for s in SETTINGS if s in args.settings]
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
