"""Private enrollment benchmark: quality at ε = 1, 4, 8, ∞ and canary exposure with and without DP.

    nice -n 10 .venv/bin/python benchmarks/dp_bench.py --out benchmarks/dp_results.json
    .venv/bin/python benchmarks/dp_bench.py --backbone TINY_DIR --smoke --out /tmp/dp.json   # CI smoke

Quality: for a few part-B chitchat speakers (the evaluation split, ``persona_sdk.split``)
each setting trains a personal prefix from the shipped source prefix on the speaker's
train replies and is scored on their held-out test replies: perplexity (torch) and
the voice metrics of ``persona_sdk.voice`` on replies generated for the test contexts
(ONNX runtime, seeded sampling): median length ratio, lowercase gap, topic share,
attribution among the K speakers. Settings: ``source`` (no personal training),
``non-private`` (ordinary enrollment), ``eps=inf`` (DP-SGD with clipping, no noise),
``eps=8``, ``eps=4``, ``eps=1``.

Canary (Carlini et al., "The Secret Sharer"): a random secret of a fixed shape
("my locker code is 4 1 9 7 3 0") is planted k times as one speaker's reply (k extra
training examples whose contexts are drawn from their chats); enrolled without and
with DP, the canary's mean reply-token loss is ranked among the losses of 1,000
random sentences of the same shape under the same prefix. exposure = log2(1000) −
log2(rank); rank 1 (the canary is the likeliest) gives the maximum, ~10 bits; a
never-seen secret averages about 1.4 bits.

Results are appended as they finish (``--out``, a JSON file rewritten atomically), so
an interrupted run keeps what it measured; ``--resume`` skips what is there.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

CANARY_PROMPT = "by the way, what's your locker code again?"
CANARY_SHAPE = "my locker code is {}"


def say(msg: str) -> None:
    print(f"[dp_bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def canary_text(rng: np.random.Generator) -> str:
    return CANARY_SHAPE.format(" ".join(str(d) for d in rng.integers(0, 10, size=6)))


def write_atomic(path: Path, data: dict) -> None:
    from persona_sdk.fileio import atomic_write

    atomic_write(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode("utf-8"), private=False)


def load_people(k: int, max_train: int, max_test: int, min_train: int, ctx: int, count) -> list[dict]:
    """The first ``k`` part-B speakers (hash order) with at least ``min_train`` train replies."""
    from persona_sdk.reply_examples import build_examples
    from persona_sdk.split import chitchat_split, select

    def ex_of(chats, ids, who):
        if not ids:
            return []
        return list(build_examples(select(chats, ids), who, count_tokens=count, context_budget=ctx,
                                   val_fraction=0.0, min_replies=0).train)

    chats, split = chitchat_split()
    rng = np.random.default_rng(0)
    people = []
    for s in split.part("B"):
        train = ex_of(chats, s.train, s.speaker)
        if len(train) < min_train:
            continue
        if len(train) > max_train:
            train = [train[i] for i in sorted(rng.choice(len(train), max_train, replace=False))]
        val, test = ex_of(chats, s.val, s.speaker), ex_of(chats, s.test, s.speaker)[:max_test]
        if len(val) < 2 or len(test) < 2:
            continue
        people.append({"speaker": s.speaker, "train": train, "val": val, "test": test})
        if len(people) == k:
            break
    return people


def settings_of(eps_list: Sequence[float]) -> list[str]:
    return ["source", "non-private"] + [f"eps={'inf' if math.isinf(e) else f'{e:g}'}" for e in eps_list]


def epsilon_of(setting: str) -> float:
    return float(setting.split("=")[1])


def enroll_one(bb, train, val, setting: str, init, args) -> tuple[Any, dict]:
    """(prefix, numbers) for one setting; ``source`` is the source prefix itself."""
    from persona_sdk import trainer as tr
    from persona_sdk.training.methods.dp import DPConfig

    if setting == "source":
        return init, {}
    base = dict(method="prefix", epochs=args.epochs, context_budget=args.context_budget,
                reply_budget=args.reply_budget, min_examples=8, seed=0, batch_size=args.batch_size)
    dp = None
    if setting.startswith("eps="):
        dp = DPConfig(epsilon=epsilon_of(setting), delta=args.delta, batch_size=args.dp_batch_size, lr=args.dp_lr,
                      max_grad_norm=args.clip)
    t = time.monotonic()
    prefix, summary = tr.train_prefix(train, val, backbone=bb, config=tr.TrainConfig(**base, dp=dp), init=init,
                                      progress=log_progress)
    info = {"steps": summary.steps, "train_seconds": round(time.monotonic() - t, 1),
            "val_loss": round(summary.best_val_loss, 4), "init_val_loss": round(summary.init_val_loss, 4)}
    info.update({k: v for k, v in prefix.meta.items() if k.startswith("dp_") and isinstance(v, (int, float))})
    return prefix, info


def log_progress(p) -> None:
    """Validations and every 5th step on stderr (numbers only), so a long run shows it is alive."""
    if p.phase == "eval" or (p.phase == "train" and p.step % 5 == 0):
        loss = p.val_loss if p.phase == "eval" else p.train_loss
        say(f"  {p.phase} step {p.step}/{p.total_steps} loss {loss if loss is None else round(loss, 4)}")


def test_loss(bb, prefix, examples, args) -> float:
    from persona_sdk.training.data import reply_loss

    return reply_loss(bb, examples, prefix, args.context_budget, args.reply_budget)


def generate(engine, prefix, examples, args) -> list[str]:
    from persona_sdk.config import GenerationConfig

    gen = GenerationConfig(max_new_tokens=args.max_new_tokens, seed=0, context_budget=max(16, args.context_budget))
    out = []
    for ex in examples[: args.decode]:
        ids = engine.prompt_ids(list(ex.context), prefix, gen)
        out.append(engine.format.decode(list(engine.generate_ids(ids, prefix, gen))).strip())
    return out


def canary_exposure(bb, prefix, canary: str, others: Sequence[str], args) -> dict:
    """Rank of the canary's reply loss among ``others`` (same shape) under ``prefix``; exposure in bits."""
    from types import SimpleNamespace

    from persona_sdk.conversation import USER, Turn
    from persona_sdk.training.data import encode

    torch = __import__("torch")
    ctx = (Turn(USER, CANARY_PROMPT),)
    texts = [canary, *others]
    data = encode(bb.fmt, [SimpleNamespace(context=ctx, reply=t, conversation=0) for t in texts],
                  args.context_budget, args.reply_budget)
    kv = None if prefix is None else torch.from_numpy(prefix.kv.astype(np.float32))
    losses = shared_start_losses(bb, data, kv)
    # 1 = the canary is the likeliest; exact ties count half (a model that cannot tell them apart exposes nothing)
    rank = 1 + float((losses[1:] < losses[0]).sum()) + 0.5 * float((losses[1:] == losses[0]).sum())
    n = len(others)
    return {"rank": rank, "candidates": n, "exposure": round(math.log2(n) - math.log2(rank), 3),
            "canary_loss": round(float(losses[0]), 4), "median_other_loss": round(float(np.median(losses[1:])), 4)}


def shared_start_losses(bb, data: Sequence, kv=None, batch_size: int = 64) -> np.ndarray:
    """Each example's mean reply-token loss, as ``example_losses`` gives it, for examples that share
    their context and the reply's first tokens (the candidates of a canary): the shared start runs
    through the model once, then only each example's own tail does, behind the start's KV.

    ``data``: encoded examples with one ``n_prompt``; ``kv`` (layers, 2, kv_heads, P, head_dim) or None."""
    import os

    import torch

    from persona_sdk.training.data import Encoded, cache_from_kv, collate, hidden

    n_prompt = data[0].n_prompt
    if any(e.n_prompt != n_prompt for e in data):
        raise ValueError("the examples must share their context")
    s = len(os.path.commonprefix([list(e.ids) for e in data])) - 1  # the tail keeps one shared token
    if s < n_prompt:
        raise ValueError("the examples' replies must start alike")
    ids0 = torch.tensor(data[0].ids[: s + 1])
    P = 0 if kv is None else kv.shape[-2]
    with torch.no_grad():
        from transformers import DynamicCache

        cache = cache_from_kv(kv, 1) if kv is not None else DynamicCache()
        out = bb.model.model(input_ids=ids0[None, :s], past_key_values=cache,
                             position_ids=torch.arange(P, P + s)[None], attention_mask=torch.ones(1, P + s, dtype=torch.long),
                             use_cache=True)
        # positions n_prompt-1 .. s-1 predict the shared reply tokens n_prompt .. s
        logits = bb.model.lm_head(out.last_hidden_state[0, n_prompt - 1 : s])  # (s - n_prompt + 1, vocab)
        shared = float(torch.nn.functional.cross_entropy(logits.float(), ids0[n_prompt : s + 1], reduction="sum"))
        c = out.past_key_values
        layers = range(len(c.layers)) if hasattr(c, "layers") else range(len(c.key_cache))
        pairs = [(c.layers[i].keys, c.layers[i].values) if hasattr(c, "layers") else (c.key_cache[i], c.value_cache[i])
                 for i in layers]
        ext = torch.stack([torch.stack([k[0], v[0]]) for k, v in pairs])  # (layers, 2, kv_heads, P + s, head_dim)
        tails = [Encoded(tuple(e.ids[s:]), 1, e.conversation) for e in data]  # from the last shared token on
        losses = []
        for i in range(0, len(tails), batch_size):
            batch = tails[i : i + batch_size]
            ids, sel, tgt = collate(batch)
            h = hidden(bb, ids, kv=ext)[sel]  # (N, hidden)
            nll = torch.nn.functional.cross_entropy(bb.model.lm_head(h).float(), tgt[sel], reduction="none")
            sums = torch.zeros(len(batch), dtype=nll.dtype).index_add(0, sel.nonzero()[:, 0], nll)  # (B,)
            losses += [(shared + float(t)) / (len(e.ids) - n_prompt) for t, e in zip(sums, data[i : i + batch_size])]
    return np.asarray(losses)


def plant(train: list, canary: str, k: int, rng: np.random.Generator) -> list:
    """``train`` plus k examples whose reply is the canary (contexts from k random train examples + the ask)."""
    from types import SimpleNamespace

    from persona_sdk.conversation import USER, Turn

    picks = rng.choice(len(train), size=k, replace=k > len(train))
    extra = [SimpleNamespace(context=tuple(train[i].context) + (Turn(USER, CANARY_PROMPT),), reply=canary,
                             conversation=getattr(train[i], "conversation", 0)) for i in picks]
    return list(train) + extra


def tables(results: dict) -> str:
    """BENCHMARKS.md's tables (markdown) from a results file: what each setting's block scores on the
    speaker's held-out test replies, and each canary run's exposure."""
    lines = []
    quality = results.get("quality", {})
    if quality:
        lines += ["| speaker | setting | steps | ε spent | noise σ | test loss | test ppl |", "|---|---|---|---|---|---|---|"]
        for key, row in quality.items():
            for setting in settings_of([math.inf, 8.0, 4.0, 1.0]):
                r = row.get(setting)
                if r is None:
                    continue
                eps, sigma = r.get("dp_epsilon_spent"), r.get("dp_noise_multiplier")
                lines.append(f"| {key} ({row['train_replies']} train / {row['test_replies']} test) | {setting} | "
                             f"{r.get('steps', '—')} | {'—' if eps is None else f'{eps:.3g}'} | "
                             f"{'—' if sigma is None else f'{sigma:.3g}'} | {r['test_loss']:.3f} | {r['test_ppl']:.1f} |")
        lines.append("")
    canary = results.get("canary", {})
    if canary:
        lines += ["| canary run | k | ε spent | rank among candidates | exposure (bits) | canary loss | median other loss |",
                  "|---|---|---|---|---|---|---|"]
        for key, r in canary.items():
            eps = r.get("dp_epsilon_spent")
            lines.append(f"| {key} | {r.get('k', '—')} | {'—' if eps is None else f'{eps:.3g}'} | "
                         f"{r['rank']:g} / {r['candidates']} | {r['exposure']:.2f} | {r['canary_loss']:.3f} | "
                         f"{r['median_other_loss']:.3f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="results JSON (rewritten as results arrive)")
    ap.add_argument("--backbone", default=None, help="backbone folder (default: the embedded SmolLM2-135M)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (CI): 2 speakers, few steps, 20 candidates")
    ap.add_argument("--resume", action="store_true", help="keep the results already in --out and skip them")
    ap.add_argument("--speakers", type=int, default=3)
    ap.add_argument("--eps", type=float, nargs="*", default=[math.inf, 8.0, 4.0, 1.0])
    ap.add_argument("--canary-k", type=int, nargs="*", default=[0, 1, 5, 20])
    ap.add_argument("--canary-eps", type=float, nargs="*", default=[8.0, 1.0])
    ap.add_argument("--candidates", type=int, default=1000, help="random sentences the canary is ranked among")
    ap.add_argument("--max-train", type=int, default=120)
    ap.add_argument("--min-train", type=int, default=60)
    ap.add_argument("--max-test", type=int, default=40)
    ap.add_argument("--decode", type=int, default=16, help="test contexts to generate replies for (voice)")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--dp-batch-size", type=int, default=None, help="expected DP batch (default: DPConfig's)")
    ap.add_argument("--dp-lr", type=float, default=None, help="DP learning rate (default: DPConfig's)")
    ap.add_argument("--clip", type=float, default=None, help="DP clipping norm C (default: DPConfig's)")
    ap.add_argument("--delta", type=float, default=1e-5)
    ap.add_argument("--context-budget", type=int, default=112)
    ap.add_argument("--reply-budget", type=int, default=48)
    ap.add_argument("--variant", default=None, help="ONNX variant the replies are generated with (default: int8)")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--skip-canary", action="store_true")
    ap.add_argument("--table", action="store_true", help="print the markdown tables of the results in --out and stop")
    args = ap.parse_args(argv)
    if args.table:
        print(tables(json.loads(args.out.read_text())))
        return {}
    from persona_sdk.training.methods.dp import DPConfig

    d = DPConfig()
    args.dp_batch_size = args.dp_batch_size or d.batch_size
    args.dp_lr = args.dp_lr or d.lr
    args.clip = args.clip or d.max_grad_norm
    if args.smoke:
        args.speakers, args.max_train, args.min_train, args.max_test, args.decode = 2, 16, 12, 4, 2
        args.candidates, args.epochs, args.max_new_tokens = 20, 1, 6
        args.context_budget, args.reply_budget, args.dp_batch_size, args.delta = 48, 16, 8, 1e-3
        args.eps, args.canary_k, args.canary_eps = [1.0], [2], [1.0]

    from persona_sdk import backbone as bb_mod
    from persona_sdk import source as src
    from persona_sdk import voice as vm
    from persona_sdk.conversation import count_tokens_fn
    from persona_sdk.engines import open_engine
    from persona_sdk.trainer import load_backbone

    results: dict = {"quality": {}, "canary": {}}
    if args.resume and args.out.is_file():
        results = json.loads(args.out.read_text())
    results["config"] = {k: (v if not isinstance(v, Path) else str(v)) for k, v in vars(args).items()}
    results["config"]["eps"] = [str(e) for e in args.eps]

    backbone_dir = bb_mod.resolve(args.backbone) if args.backbone else bb_mod.ensure_default()
    bb = load_backbone(backbone_dir)
    init = None
    if src.shipped_available():
        shipped = src.load_source()
        if shipped.backbone == bb.fingerprint:
            init = shipped
    results["config"]["source"] = "shipped" if init is not None else "none (random start)"
    say(f"backbone {Path(backbone_dir).name}, source prefix: {results['config']['source']}")
    people = load_people(args.speakers, args.max_train, args.max_test, args.min_train, args.context_budget,
                         count_tokens_fn(bb.fmt))
    say(f"{len(people)} part-B speakers: {[len(p['train']) for p in people]} train replies")
    engine = None

    # --- quality ---------------------------------------------------------------------------------
    if not args.skip_quality:
        from persona_sdk.config import RuntimeConfig

        engine = open_engine(backbone_dir, RuntimeConfig(variant=args.variant), build=True)
        texts: dict = {}
        for i, person in enumerate(people):
            key = f"speaker-{i + 1}"
            row = results["quality"].setdefault(key, {"train_replies": len(person["train"]),
                                                      "test_replies": len(person["test"])})
            gen: dict = row.setdefault("_generated", {})
            for setting in settings_of(args.eps):
                if setting in row and setting in gen:
                    continue
                say(f"{key}: {setting}")
                prefix, info = enroll_one(bb, person["train"], person["val"], setting, init, args)
                loss = test_loss(bb, prefix, person["test"], args)
                row[setting] = {**info, "test_loss": round(loss, 4), "test_ppl": round(math.exp(loss), 2)}
                gen[setting] = generate(engine, prefix, person["test"], args)
                write_atomic(args.out, results)
            texts[key] = vm.SpeakerTexts([e.reply for e in person["train"]],
                                         [e.reply for e in person["test"][: args.decode]], gen)
        voice = vm.speakers_voice(texts, attribution=len(texts) >= 2)
        results["voice"] = voice
        write_atomic(args.out, results)

    # --- canary ----------------------------------------------------------------------------------
    if not args.skip_canary:
        person = people[0]
        rng = np.random.default_rng(1234)
        canary = canary_text(rng)
        others = [canary_text(rng) for _ in range(args.candidates)]
        while canary in others:  # pragma: no cover - 1 in 1000
            others.remove(canary)
        for k in args.canary_k:
            for setting in ["non-private"] + [f"eps={e:g}" for e in args.canary_eps]:
                key = f"k={k} {setting}"
                if key in results["canary"] or (k == 0 and setting != "non-private"):
                    continue
                say(f"canary {key}")
                train = plant(person["train"], canary, k, np.random.default_rng(k)) if k else person["train"]
                prefix, info = enroll_one(bb, train, person["val"], setting, init, args)
                results["canary"][key] = {**canary_exposure(bb, prefix, canary, others, args), **info, "k": k,
                                          "setting": setting}
                write_atomic(args.out, results)
        results["canary"]["backbone+source only"] = canary_exposure(bb, init, canary, others, args)
    for row in results["quality"].values():
        row.pop("_generated", None)  # generated text is public-corpus output; kept out of the results file
    write_atomic(args.out, results)
    say(f"done: {args.out}")
    return results


if __name__ == "__main__":
    main()
