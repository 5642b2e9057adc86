"""PAL (persona-aware alignment) on the backbone, as a LoRA adapter.

Stage 1, persona-aware learning: one mixed SFT over two prompt formats
(:mod:`persona_sdk.explicit.formats`), every labelled reply giving one of each:

- *selection*: context + all persona sentences (numbered) → the text of the
  relevant sentence;
- *generation*: context + that sentence → the reply.

The relevant sentence is a *silver* label (SPC has none): :func:`silver_label`
picks the persona sentence sharing the most content words with the gold reply
(token overlap, stop words and a crude plural/verb suffix removed); replies that
share none with any sentence, or tie between sentences, carry no label and are
left out. Token overlap rather than MiniLM similarity on purpose: the table
scores persona consistency with MiniLM, and labels drawn from the same
embedder would train towards the metric.

Stage 2, persona alignment: DPO (β = 0.1; :mod:`.methods.dpo`) from the
stage-1 model, on other labelled replies: prompt = generation format with the
silver sentence, chosen = the gold reply, rejected = the stage-1 model's own
greedy reply generated *without* the persona (the no-persona system prompt);
the reference model is the stage-1 model (its log-probs are computed once).

Both stages run in the one training loop (:mod:`.loop`: schedule, time budget,
best checkpoint on dev, cancellation, progress). Inference (select, then
generate with the *predicted* sentence) lives in :mod:`persona_sdk.explicit.pal`.
torch is imported only inside functions.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ConfigError, TrainingError
from ..explicit.formats import (PAL_FORMAT, persona_prompt_ids, selection_answer, selection_prompt_ids)
from ..fileio import atomic_write
from .config import PALConfig
from .backbone import TrainBackbone, bf16_supported, load_backbone, torch_module
from .data import Encoded, make_batches, mean_loss
from .loop import Clock, LoopConfig, ProgressFn, Trainable, gradient_step, run

Note = Callable[[str], None]

# --- silver labels ----------------------------------------------------------------------
STOP_WORDS = frozenset("""
a about above after again all also am an and any are as at be because been being both but by can could did
do does doing don down during each even every few for from get got had has have having he her here hers him
his how i if in into is it its just like likes liked love loves loved enjoy enjoys me more most much my
myself no nor not now of off on once one only or other our out over own really same she should so some such
than that the their them then there these they this those through to too under until up very was we were
what when where which while who whom why will with would yes you your yours thing things lot lots well oh
hi hey wow yeah sure im ive dont thats its youre what's i'm i've don't that's it's you're great good nice
fun cool think know want go going see make time day people way kind sound sounds
""".split())
_WORD = re.compile(r"[a-z0-9']+")


def content_words(text: str) -> set[str]:
    """Lowercased content words of ``text``: stop words dropped, a crude suffix stemmer applied."""
    out = set()
    for w in _WORD.findall(text.lower()):
        w = w.strip("'")
        if len(w) < 3 or w in STOP_WORDS:
            continue
        for suffix in ("ing", "ed", "es", "s"):
            if w.endswith(suffix) and len(w) - len(suffix) >= 3:
                w = w[: -len(suffix)]
                break
        out.add(w)
    return out


def silver_label(persona: Sequence[str], reply: str) -> int | None:
    """The index of the persona sentence sharing the most content words with ``reply``;
    None when no sentence shares one or the best two tie."""
    words = content_words(reply)
    scores = [len(words & content_words(s)) for s in persona]
    if not scores:
        return None
    best = max(scores)
    if best == 0 or scores.count(best) > 1:
        return None
    return scores.index(best)


@dataclass(frozen=True)
class Labelled:
    """A reply with its silver persona sentence (``label`` indexes ``example.persona``)."""

    example: Any  # PersonaExample-like: persona, context, reply, conversation, key
    label: int


def label_examples(examples: Sequence[Any]) -> list[Labelled]:
    """The replies that carry a silver label, in order."""
    out = []
    for ex in examples:
        label = silver_label(ex.persona, ex.reply)
        if label is not None:
            out.append(Labelled(ex, label))
    return out


@dataclass
class PALResult:
    """A trained PAL adapter: the stage-1 and final weights and how the run went."""

    stage1: dict  # adapter weights after stage 1 (best on dev)
    final: dict  # after stage 2 (best on dev)
    summary: dict  # numbers only
    peft_model: Any = field(repr=False, default=None)  # the model (holds the final weights)
    backbone: Any = field(repr=False, default=None)  # the TrainBackbone


# --- encoding -----------------------------------------------------------------------------
def encode_selection(fmt, item: Labelled, budget: int) -> Encoded:
    """Context + all sentences → the silver sentence (written out)."""
    ex = item.example
    prompt = selection_prompt_ids(fmt, ex.persona, ex.context, budget)
    return Encoded(tuple(prompt + fmt.reply_ids(selection_answer(ex.persona[item.label]))), len(prompt),
                   int(ex.conversation))


def encode_generation(fmt, sentences: Sequence[str], context, reply: str, budget: int, reply_budget: int,
                      conversation: int = 0) -> Encoded:
    """Context + ``sentences`` (none = no persona) → ``reply``."""
    prompt = persona_prompt_ids(fmt, sentences, context, budget)
    return Encoded(tuple(prompt + fmt.reply_ids(reply, reply_budget)), len(prompt), conversation)


def stage1_data(fmt, items: Sequence[Labelled], config: PALConfig) -> list[Encoded]:
    """One selection and one generation example per labelled reply."""
    out = []
    for it in items:
        ex = it.example
        out.append(encode_selection(fmt, it, config.context_budget))
        out.append(encode_generation(fmt, (ex.persona[it.label],), ex.context, ex.reply, config.context_budget,
                                     config.reply_budget, int(ex.conversation)))
    return out


def stage1_loss(bb: TrainBackbone, batch: Sequence[Encoded], how: str, bf16: bool = False):
    """Stage 1's loss on ``batch`` (a scalar with its graph). ``per-example``: the mean over examples of each
    example's mean token NLL, so a selection example (one short sentence and the end of turn) weighs as much as a
    generation example (a whole reply); ``per-token``: every predicted token alike."""
    from .data import batch_mean_loss, example_losses

    if how == "per-token":
        return batch_mean_loss(bb, batch, bf16=bf16)
    return example_losses(bb, batch, bf16=bf16).mean()


def stage1_dev_loss(bb: TrainBackbone, data: Sequence[Encoded], how: str, batch_size: int, bf16: bool = False
                    ) -> float:
    """Stage 1's loss over ``data``, averaged the way training averages it (``how``)."""
    if how == "per-token":
        return mean_loss(bb, data, batch_size=batch_size, bf16=bf16)
    from .data import example_losses

    torch = torch_module()
    total = 0.0
    with torch.no_grad():
        for s in range(0, len(data), batch_size):
            total += float(example_losses(bb, data[s : s + batch_size], bf16=bf16).sum())
    return total / max(len(data), 1)


def subsample(items: Sequence[Any], n: int, seed: int, salt: str,
              key: Callable[[Any], str] = lambda it: it.example.key) -> list:
    """``n`` items in a seeded order that does not depend on RNG state (hash of seed, salt and ``key``:
    a reply's key; PAL's labelled items by default, PAA passes its examples' own)."""
    def order(it):
        return hashlib.sha256(f"{seed}:{salt}:{key(it)}".encode()).digest()

    return sorted(items, key=order)[:n]


def data_sha256(items: Sequence[Labelled]) -> str:
    """A fingerprint of exactly which replies (and labels) trained."""
    text = "\n".join(f"{it.example.key}|{it.label}" for it in items)
    return hashlib.sha256(text.encode()).hexdigest()


# --- selection scoring (torch) --------------------------------------------------------------
def selection_scores(bb: TrainBackbone, persona: Sequence[str], context, budget: int, bf16: bool = False
                     ) -> np.ndarray:
    """Mean log-prob per token of each sentence written out (+ end of turn) after the selection prompt. (N,)"""
    from .methods.dpo import sequence_logps

    torch = torch_module()
    fmt = bb.fmt
    prompt = selection_prompt_ids(fmt, persona, context, budget)
    cands = [Encoded(tuple(prompt + fmt.reply_ids(selection_answer(s))), len(prompt), 0) for s in persona]
    lengths = np.array([len(c.ids) - c.n_prompt for c in cands])
    with torch.no_grad():
        return sequence_logps(bb, cands, bf16=bf16).numpy() / lengths


def selection_accuracy(bb: TrainBackbone, items: Sequence[Labelled], budget: int, bf16: bool = False) -> float:
    """Share of ``items`` whose predicted sentence (the best-scored one) is the silver one."""
    if not items:
        return float("nan")
    hits = sum(int(np.argmax(selection_scores(bb, it.example.persona, it.example.context, budget, bf16)))
               == it.label for it in items)
    return hits / len(items)


# --- rejected replies (torch generate) ------------------------------------------------------
def generate_replies(bb: TrainBackbone, prompts: Sequence[Sequence[int]], max_new_tokens: int, batch_size: int = 8,
                     deadline: float | None = None, clock: Clock = time.monotonic) -> list[str | None]:
    """Greedy replies (repetition penalty 1.1) to prompt ids, batched with left padding; None for
    prompts not reached before ``deadline``."""
    torch = torch_module()
    fmt = bb.fmt
    pad = fmt.end_id if fmt.end_id is not None else 0
    out: list[str | None] = [None] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    for start in range(0, len(order), batch_size):
        if deadline is not None and clock() > deadline:
            break
        idx = order[start : start + batch_size]
        length = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), length), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), length), dtype=torch.long)
        for r, i in enumerate(idx):
            p = prompts[i]
            ids[r, length - len(p):] = torch.tensor(list(p))
            mask[r, length - len(p):] = 1
        with torch.no_grad():
            gen = bb.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                    do_sample=False, repetition_penalty=1.1, eos_token_id=fmt.end_id,
                                    pad_token_id=pad)
        for r, i in enumerate(idx):
            new = [int(t) for t in gen[r, length:]]
            if fmt.end_id in new:
                new = new[: new.index(fmt.end_id)]
            out[i] = fmt.decode(new).strip()
    return out


@dataclass(frozen=True)
class Pair:
    chosen: Encoded
    rejected: Encoded
    ref_chosen: float = 0.0
    ref_rejected: float = 0.0


def preference_pairs(bb: TrainBackbone, items: Sequence[Labelled], config: PALConfig, deadline: float | None,
                     clock: Clock) -> tuple[list[Pair], int]:
    """DPO pairs for ``items`` (prompt: the silver sentence; chosen: gold; rejected: the model's reply
    without persona), and how many rejected replies were generated."""
    fmt = bb.fmt
    bare = [persona_prompt_ids(fmt, (), it.example.context, config.context_budget) for it in items]
    rejected = generate_replies(bb, bare, config.reply_budget, deadline=deadline, clock=clock)
    pairs = []
    for it, rej in zip(items, rejected):
        ex = it.example
        if rej is None or rej.strip().lower() == ex.reply.strip().lower():
            continue
        sentence = (ex.persona[it.label],)
        pairs.append(Pair(
            encode_generation(fmt, sentence, ex.context, ex.reply, config.context_budget, config.reply_budget),
            encode_generation(fmt, sentence, ex.context, rej, config.context_budget, config.reply_budget)))
    return pairs, sum(r is not None for r in rejected)


def with_reference(bb: TrainBackbone, pairs: Sequence[Pair], batch: int, bf16: bool) -> list[Pair]:
    """The pairs with the current model's (the reference's) summed log-probs filled in."""
    from .methods.dpo import sequence_logps

    torch = torch_module()
    out = []
    with torch.no_grad():
        for s in range(0, len(pairs), batch):
            chunk = pairs[s : s + batch]
            lp = sequence_logps(bb, [p.chosen for p in chunk] + [p.rejected for p in chunk], bf16=bf16)
            n = len(chunk)
            out += [Pair(p.chosen, p.rejected, float(lp[i]), float(lp[n + i])) for i, p in enumerate(chunk)]
    return out


def dpo_batch_loss(bb: TrainBackbone, pairs: Sequence[Pair], beta: float, bf16: bool = False):
    """(mean DPO loss with its graph, chosen rewards, rejected rewards) of a batch of pairs."""
    from .methods.dpo import dpo_loss, sequence_logps

    torch = torch_module()
    n = len(pairs)
    lp = sequence_logps(bb, [p.chosen for p in pairs] + [p.rejected for p in pairs], bf16=bf16)  # (2n,)
    ref_c = torch.tensor([p.ref_chosen for p in pairs], dtype=lp.dtype)
    ref_r = torch.tensor([p.ref_rejected for p in pairs], dtype=lp.dtype)
    return dpo_loss(lp[:n], lp[n:], ref_c, ref_r, beta)


def dpo_eval(bb: TrainBackbone, pairs: Sequence[Pair], beta: float, batch: int, bf16: bool) -> dict[str, float]:
    """Mean DPO loss, reward accuracy (chosen reward > rejected) and mean margin over ``pairs``."""
    torch = torch_module()
    losses, acc, margin = [], [], []
    with torch.no_grad():
        for s in range(0, len(pairs), batch):
            chunk = pairs[s : s + batch]
            loss, rc, rr = dpo_batch_loss(bb, chunk, beta, bf16)
            losses.append(float(loss) * len(chunk))
            acc += (rc > rr).tolist()
            margin += (rc - rr).tolist()
    n = max(len(pairs), 1)
    return {"loss": sum(losses) / n, "reward_accuracy": float(np.mean(acc)) if acc else float("nan"),
            "margin": float(np.mean(margin)) if margin else float("nan")}


# --- training --------------------------------------------------------------------------------
def train_pal(
    train: Sequence[Any],
    dev: Sequence[Any],
    *,
    backbone: Any = None,
    config: PALConfig | None = None,
    progress: ProgressFn | None = None,
    note: Note | None = None,
    should_stop: Callable[[], bool] | None = None,
    clock: Clock | None = None,
) -> PALResult:
    """Train PAL's LoRA adapter on persona replies (``PersonaExample``-like: persona, context, reply,
    conversation, key): stage 1 (mixed selection + generation SFT), then stage 2 (DPO)."""
    from .methods import lora, mixing

    config = config or PALConfig()
    clock = clock or time.monotonic
    say = note or (lambda msg: None)
    torch = torch_module()
    start = clock()
    budget = config.max_minutes * 60 if config.max_minutes else None
    labelled, dev_labelled = label_examples(train), label_examples(dev)
    need = config.stage1_replies + config.dpo_pairs
    if len(labelled) < 2:
        raise TrainingError("PAL needs labelled training replies (a persona sentence sharing a word with the reply)")
    if len(dev_labelled) < 2:
        raise TrainingError("PAL needs labelled dev replies to validate on")
    ordered = subsample(labelled, len(labelled), config.seed, "pal-train")
    if len(ordered) < need:  # keep the stages' shares when data is short
        n1 = max(1, round(len(ordered) * config.stage1_replies / need))
    else:
        n1 = config.stage1_replies
    stage1_items = ordered[:n1]
    dpo_items = ordered[n1 : n1 + config.dpo_pairs]
    dev_ordered = subsample(dev_labelled, len(dev_labelled), config.seed, "pal-dev")
    dev_items = dev_ordered[: config.dev_replies]
    dev_dpo_items = dev_ordered[config.dev_replies : config.dev_replies + config.dev_pairs] or dev_items[
        : config.dev_pairs]
    bb = backbone if isinstance(backbone, TrainBackbone) else load_backbone(backbone)
    use_bf16 = config.bf16 == "on" or (config.bf16 == "auto" and bf16_supported())
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    peft_model = lora.attach(bb, config.rank, config.lora_alpha, seed=config.seed, top_layers=config.top_layers)
    params = lora.trainable(peft_model)
    n_params = sum(p.numel() for p in params)
    say(f"PAL: LoRA rank {config.rank}, {n_params:,} trainable parameters "
        f"({100 * n_params / sum(p.numel() for p in bb.model.parameters()):.2f}% of the model)")

    # stage 1: mixed selection + generation SFT
    s1 = stage1_data(bb.fmt, stage1_items, config)
    s1_dev = stage1_data(bb.fmt, dev_items, config)
    steps1 = max(1, math.ceil(len(s1) / config.batch_size) * config.stage1_epochs)
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    batches = mixing.plain_batches([s1], config.batch_size, rng)

    def step1(batch):
        return gradient_step(opt, params, lambda: stage1_loss(bb, batch, config.stage1_loss, use_bf16),
                             config.grad_clip)

    def eval1() -> float:
        return stage1_dev_loss(bb, s1_dev, config.stage1_loss, config.batch_size, use_bf16)

    say(f"PAL stage 1: {len(stage1_items)} labelled replies → {len(s1)} examples, {steps1} steps; "
        f"dev {len(s1_dev)} examples")
    loop1 = LoopConfig(total_steps=steps1, max_steps=steps1, eval_every=max(1, steps1 // config.evals_per_stage),
                       warmup=config.warmup, steps_per_epoch=max(1, steps1 // config.stage1_epochs),
                       max_seconds=budget * config.stage1_share if budget else None,
                       schedule_by="time" if budget else "steps",
                       label="PAL stage 1", cancel_message="PAL training interrupted; nothing was saved")
    r1 = run(Trainable(params, batches, step1, eval1, opt), loop1, progress=progress, should_stop=should_stop,
             clock=clock, started=start)
    stage1 = lora.state(peft_model)
    sel_acc = selection_accuracy(bb, dev_items, config.context_budget, use_bf16) if config.score_selection else None
    say(f"PAL stage 1 done: dev loss {r1.init_val_loss:.3f} → {r1.best_val_loss:.3f} (step {r1.best_step})"
        + (f"; dev selection accuracy {sel_acc:.3f}" if sel_acc is not None else ""))

    # stage 2: rejected replies from the stage-1 model without persona, then DPO against it
    now = clock()
    deadline = None
    if budget:
        left = budget - (now - start)
        deadline = now + 0.35 * left  # generation may use about a third of what is left
    say(f"PAL stage 2: generating {len(dpo_items) + len(dev_dpo_items)} rejected replies (stage-1 model, "
        "no persona)...")
    dev_pairs, _ = preference_pairs(bb, dev_dpo_items, config, None, clock)
    pairs, generated = preference_pairs(bb, dpo_items, config, deadline, clock)
    if not pairs or not dev_pairs:
        raise TrainingError("PAL stage 2 has no preference pairs (the time budget ran out while generating, or "
                            "every rejected reply equalled the gold one)")
    pairs = with_reference(bb, pairs, config.dpo_batch, use_bf16)
    dev_pairs = with_reference(bb, dev_pairs, config.dpo_batch, use_bf16)
    steps2 = max(1, math.ceil(len(pairs) / config.dpo_batch) * config.dpo_epochs)
    opt2 = torch.optim.AdamW(params, lr=config.dpo_lr, weight_decay=0.0)

    def pair_batches():
        for _ in range(config.dpo_epochs):
            order = rng.permutation(len(pairs))
            for s in range(0, len(order), config.dpo_batch):
                yield [pairs[i] for i in order[s : s + config.dpo_batch]]

    def step2(batch):
        return gradient_step(opt2, params, lambda: dpo_batch_loss(bb, batch, config.beta, use_bf16)[0],
                             config.grad_clip)

    def eval2() -> float:
        return dpo_eval(bb, dev_pairs, config.beta, config.dpo_batch, use_bf16)["loss"]

    before = dpo_eval(bb, dev_pairs, config.beta, config.dpo_batch, use_bf16)
    say(f"PAL stage 2: {len(pairs)} pairs ({generated} rejected replies generated), {steps2} DPO steps; "
        f"dev {len(dev_pairs)} pairs")
    stage2_start = clock()
    loop2 = LoopConfig(total_steps=steps2, max_steps=steps2, eval_every=max(1, steps2 // config.evals_per_stage),
                       warmup=config.warmup, max_seconds=(budget - (stage2_start - start)) if budget else None,
                       schedule_by="time" if budget else "steps",
                       label="PAL stage 2 (DPO)", cancel_message="PAL training interrupted; nothing was saved")
    if loop2.max_seconds is not None and loop2.max_seconds <= 0:
        raise TrainingError("PAL's time budget ran out before stage 2; raise max_minutes")
    r2 = run(Trainable(params, pair_batches(), step2, eval2, opt2), loop2, progress=progress,
             should_stop=should_stop, clock=clock, started=stage2_start)
    final = lora.state(peft_model)
    after = dpo_eval(bb, dev_pairs, config.beta, config.dpo_batch, use_bf16)
    sel_final = (selection_accuracy(bb, dev_items, config.context_budget, use_bf16) if config.score_selection
                 else None)
    say(f"PAL stage 2 done: dev DPO loss {before['loss']:.3f} → {after['loss']:.3f}, reward accuracy "
        f"{after['reward_accuracy']:.3f}")
    summary = {
        "trainable_parameters": n_params,
        "train_labelled": len(labelled), "train_replies": len(train),
        "dev_labelled": len(dev_labelled), "dev_replies": len(dev),
        "stage1": {"replies": len(stage1_items), "examples": len(s1), "steps": r1.steps, "stopped": r1.stopped,
                   "init_dev_loss": r1.init_val_loss, "best_dev_loss": r1.best_val_loss,
                   "best_step": r1.best_step, "seconds": r1.seconds,
                   "curve": [[s, v] for s, _, v in r1.history],
                   "dev_selection_accuracy": sel_acc, "data_sha256": data_sha256(stage1_items)},
        "stage2": {"pairs": len(pairs), "rejected_generated": generated, "dev_pairs": len(dev_pairs),
                   "steps": r2.steps, "stopped": r2.stopped, "best_step": r2.best_step,
                   "seconds": r2.seconds, "curve": [[s, v] for s, _, v in r2.history],
                   "dev_before": before, "dev_after": after, "dev_selection_accuracy": sel_final,
                   "data_sha256": data_sha256(dpo_items)},
        "dev_data_sha256": data_sha256(dev_items + dev_dpo_items),
        "bf16": use_bf16,
        "wall_seconds": clock() - start,
    }
    return PALResult(stage1, final, _rounded(summary), peft_model, bb)


def _rounded(obj):
    if isinstance(obj, float):
        return round(obj, 5) if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_rounded(v) for v in obj]
    return obj


# --- saving ---------------------------------------------------------------------------------
PAL_INFO = "PAL.json"


def save_pal(result: PALResult, weights: dict, out_dir: str | Path, info: dict[str, Any]) -> Path:
    """Write an adapter (PEFT layout, float16) and ``PAL.json`` (``info`` + sha256 of the weights file,
    backbone fingerprint, shapes) into ``out_dir``; the folder."""
    from .methods import lora

    out = Path(out_dir)
    lora.save(result.peft_model, weights, out)
    data = (out / lora.ADAPTER_WEIGHTS).read_bytes()
    record = {**info, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
              "backbone": result.backbone.fingerprint, "method": "pal", "format": PAL_FORMAT,
              "parameters": int(sum(int(np.prod(v.shape)) for v in weights.values()))}
    atomic_write(out / PAL_INFO, (json.dumps(_rounded(record), indent=2, sort_keys=True) + "\n").encode(),
                 private=False)
    return out


__all__ = ["PALConfig", "PALResult", "Labelled", "silver_label", "content_words", "label_examples", "train_pal",
           "save_pal", "selection_scores", "selection_accuracy", "generate_replies", "encode_generation",
           "encode_selection", "PAL_INFO", "asdict"]
