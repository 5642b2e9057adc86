"""Implicit personas on Synthetic-Persona-Chat: plain vs MTML vs AMTML source prefixes, then few-shot enrollment.

    # the real run (on this machine: nice, in the background; every finished stage is cached in --out)
    nice -n 10 .venv/bin/python benchmarks/implicit_spc.py \\
        --spc-csv ../shared/data/spc/Synthetic-Persona-Chat_valid.csv --out benchmarks/out/implicit_spc

SPC speakers have gold persona sentences, so an *implicit* persona -- a KV prefix learned from a
speaker's replies, never shown their sentences -- can be checked against them. On the explicit
table's split by persona (:func:`explicit_table.load_data`: the same train / dev / test part, the
same 20 consistency candidates per test persona):

1. **source prefixes** (``--methods``, default plain, mtml, amtml) trained on the *train* part, one
   speaker per (conversation, side) with its persona sentences (MTML/AMTML's reconstruction task;
   plain ignores them), validated on replies of the *dev* part; all with the same step budget
   (``--source-steps``; the meta methods count inner steps, as ``SourceConfig.steps`` does), seed,
   α and library defaults otherwise. A step budget, not minutes: on a shared machine a time budget
   would hand the methods different amounts of training depending on the load; the seconds each
   took are recorded (an MTML inner step also computes the reconstruction loss, so it costs more).
2. **enrollment**: N test personas (``--speakers``; hash order, those with at least two test
   conversations) each enroll from their own turns of one conversation (``--enroll-min``..
   ``--enroll-max`` replies) by the default path (:func:`persona_sdk.trainer.train_prefix` with
   ``TrainConfig``'s defaults: its learning-rate policy, its validation split, its best checkpoint)
   from each source prefix, under a stated budget (``--enroll-minutes`` and/or ``--enroll-steps``);
   ``min_examples`` is passed (``--min-examples``), the default 20 refuses few-shot speakers.
   Their turns in their *other* conversations are held out.
3. **scoring** through the product's runtime (the ONNX export, ``Engine.generate_ids`` with the
   prefix; greedy, repetition penalty 1.1, as the explicit table decodes) -- for each method, rows
   "source only" and "source + enrolled", plus the bare backbone and the real human replies:
   persona consistency at K = 20 (MiniLM; the reply's own persona among 20), copy rate, perspective,
   F1 (all from :func:`explicit_table.score`) on the first ``--generate`` held-out replies of each
   speaker, and perplexity of the first ``--heldout`` held-out replies. With N this small the table
   gives 95% bootstrap intervals over speakers and paired differences between rows (same resamples).

Outputs in ``--out``: ``source/<method>/`` (the prefix + SOURCE.json: config, summary, sha256),
``enrolled/<method>/<speaker>.*``, ``cache/<row>/<speaker>.json`` (generated replies and losses), and
``table.md`` + ``results.json`` (command, commit, date, budgets, sizes). A rerun reuses every stage
made alike. Data: Synthetic-Persona-Chat (CC-BY 4.0; Jandaghi et al. 2023), whose replies the cache
quotes (public data; no user's text).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import persona_sdk  # noqa: E402,F401  (first: switches onnxruntime's telemetry off before anything imports it)
import explicit_table as xt  # noqa: E402

say = xt.say
METHOD_LABELS = {"plain": "plain", "temperature": "temperature", "ppreptile": "PPReptile", "mtml": "MTML",
                 "amtml": "AMTML"}


# --- data ------------------------------------------------------------------------------------------
@dataclass
class Person:
    """One test persona: its index among the explicit table's test personas, its enrollment replies (one
    conversation) and its held-out replies (its other conversations)."""

    index: int
    enroll: list  # PersonaExample, in turn order
    heldout: list  # PersonaExample, in hash order


@dataclass
class Data:
    table: Any  # explicit_table.Data: test personas, consistency candidates, owners
    people: list[Person]
    speakers: list  # Speaker of the train part (one per conversation side, with its persona sentences)
    val: list  # PersonaExample of the dev part
    provenance: dict


def load_data(args) -> Data:
    from persona_sdk.source import Speaker
    from persona_sdk.split import PersonaSplitConfig
    from persona_sdk.training.corpora import speaker_list_sha256, spc_explicit_split, spc_persona_examples

    xargs = xt.parse_args(["--spc-csv", str(args.spc_csv), "--out", str(args.out), "--per-persona", str(10**9),
                           "--hits-per-persona", "0", "--selection-replies", "0",
                           "--candidates", str(args.candidates), "--split-dev", str(args.split_dev),
                           "--split-test", str(args.split_test)])
    table = xt.load_data(xargs)  # decode = every test reply (per persona, hash order)
    by_owner: dict[int, list] = defaultdict(list)
    for ex in table.decode:
        by_owner[table.owner[ex.key]].append(ex)
    people = []
    for i in range(len(table.personas)):  # hash order
        convs = sorted({ex.conversation for ex in by_owner[i]}, key=lambda c: xt._h("implicit-enroll", i, c))
        if len(convs) < 2:
            continue
        own = sorted((ex for ex in by_owner[i] if ex.conversation == convs[0]), key=lambda ex: ex.turn)
        if len(own) < args.enroll_min:
            continue
        held = sorted((ex for ex in by_owner[i] if ex.conversation != convs[0]),
                      key=lambda ex: xt._h("implicit-heldout", ex.key))
        people.append(Person(i, own[: args.enroll_max], held[: args.heldout]))
        if len(people) == args.speakers:
            break
    if len(people) < 2:
        raise SystemExit(f"only {len(people)} test personas have two conversations and {args.enroll_min} "
                         "replies in one of them; at least two are needed")
    parts, _ = spc_explicit_split(args.spc_csv, PersonaSplitConfig(dev=args.split_dev, test=args.split_test))
    sides: dict[tuple, list] = defaultdict(list)
    for ex in spc_persona_examples(parts["train"]):
        sides[(ex.conversation, ex.side)].append(ex)
    speakers = [Speaker(f"spc-{c}-{s}", exs, " ".join(exs[0].persona)) for (c, s), exs in sorted(sides.items())]
    if args.source_speakers:
        speakers = sorted(speakers, key=lambda sp: xt._h("implicit-source", sp.id))[: args.source_speakers]
    val = sorted(spc_persona_examples(parts["dev"]), key=lambda ex: xt._h("implicit-val", ex.key))[: args.source_val]
    provenance = {
        **table.provenance,
        "source_speakers": len(speakers), "source_replies": sum(len(s.examples) for s in speakers),
        "source_speaker_list_sha256": speaker_list_sha256(speakers), "source_val_replies": len(val),
        "test_speakers": len(people), "test_persona_indices": [p.index for p in people],
        "enroll_replies": [len(p.enroll) for p in people], "heldout_replies": [len(p.heldout) for p in people],
        "generated_per_speaker": [min(len(p.heldout), args.generate) for p in people],
    }
    return Data(table, people, speakers, val, provenance)


# --- stages ----------------------------------------------------------------------------------------
def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _keys(examples: Sequence) -> list[str]:
    return [ex.key for ex in examples]


class Backbone:
    """The training backbone, loaded on first use (a rerun from the cache never loads torch)."""

    def __init__(self, path):
        self.path, self.bb = path, None

    def get(self):
        if self.bb is None:
            from persona_sdk.trainer import load_backbone

            self.bb = load_backbone(self.path)
        return self.bb


def source_config(args, method: str):
    from persona_sdk.source import SourceConfig

    return SourceConfig(method=method, steps=args.source_steps, max_minutes=args.source_minutes or None,
                        alpha=args.alpha, seed=args.seed)


def train_sources(args, data: Data, bb: Backbone) -> dict[str, dict]:
    """One source prefix per method, cached in ``out/source/<method>/``: {method: {"prefix", "info"}}."""
    from persona_sdk import source as S

    out = {}
    for method in args.methods:
        config = source_config(args, method)
        stamp = _digest(["source", config.to_dict(), data.provenance["source_speaker_list_sha256"],
                         _keys(data.val), data.provenance["file_sha256"], args.backbone])
        folder = args.out / "source" / method
        info_file = folder / S.SHIPPED_INFO
        if info_file.is_file() and json.loads(info_file.read_text()).get("stamp") == stamp:
            say(f"source {method}: cached")
        else:
            say(f"source {method}: training ({config.steps} steps"
                + (f", at most {config.max_minutes} min" if config.max_minutes else "") + ") ...")
            prefix, summary = S.train_source(data.speakers, data.val, backbone=bb.get(), config=config,
                                             progress=_progress(f"source {method}"))
            S.save_source(prefix, folder, {"stamp": stamp, "config": config.to_dict(), "summary": summary.as_meta(),
                                           "speakers": len(data.speakers), "val_replies": len(data.val)})
        out[method] = {"prefix": S.load_source(folder), "info": json.loads(info_file.read_text())}
    return out


def enroll_config(args):
    from persona_sdk.trainer import TrainConfig

    return TrainConfig(min_examples=args.min_examples, max_minutes=args.enroll_minutes or None,
                       max_steps=args.enroll_steps, seed=args.seed)


def enroll_all(args, data: Data, sources: dict, bb: Backbone) -> dict[str, list[dict]]:
    """Each person's personal prefix from each source prefix, speaker by speaker (so load drift on a shared
    machine falls on every method alike); cached in ``out/enrolled/<method>/``."""
    from persona_sdk import trainer
    from persona_sdk.fileio import atomic_write
    from persona_sdk.prefix import Prefix

    config = enroll_config(args)
    out: dict[str, list[dict]] = {m: [] for m in args.methods}
    for n, person in enumerate(data.people):
        for method in args.methods:
            src = sources[method]["info"]["sha256"]
            stamp = _digest(["enroll", config.to_dict(), src, _keys(person.enroll)])
            folder = args.out / "enrolled" / method
            file, info_file = folder / f"{person.index}.safetensors", folder / f"{person.index}.json"
            info = json.loads(info_file.read_text()) if info_file.is_file() else {}
            if info.get("stamp") != stamp or not file.is_file() or _sha(file.read_bytes()) != info.get("sha256"):
                prefix, summary = trainer.train_prefix(person.enroll, None, backbone=bb.get(), config=config,
                                                       init=sources[method]["prefix"])
                blob = prefix.to_bytes()
                folder.mkdir(parents=True, exist_ok=True)
                atomic_write(file, blob, private=False)
                info = {"stamp": stamp, "sha256": _sha(blob), "source_sha256": src, "summary": summary.as_meta()}
                atomic_write(info_file, (json.dumps(info, indent=2) + "\n").encode(), private=False)
                s = info["summary"]
                say(f"enroll {n + 1}/{len(data.people)} from {method}: {s['steps']} steps, best step "
                    f"{s['best_step']}, {s['wall_seconds']:.0f} s")
            out[method].append({"prefix": Prefix.from_bytes(file.read_bytes()), "info": info})
    return out


def _sha(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def _progress(label: str):
    last = [0.0]

    def report(p) -> None:
        if p.phase == "eval" or time.monotonic() - last[0] > 60:
            last[0] = time.monotonic()
            val = f", val {p.val_loss:.4f}" if p.val_loss is not None else ""
            say(f"  {label}: step {p.step}/{p.total_steps}, {p.elapsed:.0f} s{val}")

    return report


# --- rows ------------------------------------------------------------------------------------------
def row_keys(args) -> list[str]:
    keys = ["backbone"] if args.backbone_row else []
    for m in args.methods:
        keys += [f"source-{m}", f"enrolled-{m}"]
    return keys


def row_label(key: str, args) -> str:
    if key == "backbone":
        return "backbone (no prefix)"
    if key == "human":
        return "human (real held-out replies)"
    kind, method = key.split("-", 1)
    name = METHOD_LABELS.get(method, method) + (f" (α = {args.alpha:g})" if method in ("mtml", "amtml") else "")
    return f"{name}: source only" if kind == "source" else f"{name}: source + enrolled"


def prefix_of(key: str, i: int, sources: dict, enrolled: dict):
    if key == "backbone":
        return None, None
    kind, method = key.split("-", 1)
    unit = sources[method] if kind == "source" else enrolled[method][i]
    return unit["prefix"], unit["info"]["sha256"]


def run_unit(engine, prefix, person: Person, args) -> dict:
    """One row for one person: replies to their first held-out contexts, and the token losses of their held-out
    replies."""
    from persona_sdk.config import GenerationConfig
    from persona_sdk.evaluate import reply_token_losses

    gen = GenerationConfig(max_new_tokens=args.max_new_tokens, do_sample=False, repetition_penalty=1.1,
                           context_budget=args.context_budget)
    replies = []
    for ex in person.heldout[: args.generate]:
        ids = engine.prompt_ids(list(ex.context), prefix, gen)
        replies.append(engine.format.decode(list(engine.generate_ids(ids, prefix, gen))).strip())
    losses = [[float(x) for x in reply_token_losses(engine, prefix, ex.context, ex.reply, args.context_budget,
                                                    args.reply_budget)] for ex in person.heldout]
    return {"replies": replies, "losses": losses}


def run_rows(args, data: Data, sources: dict, enrolled: dict) -> dict[str, list[dict]]:
    """{row: [unit per person]}, each unit cached in ``out/cache/<row>/<person>.json``."""
    from persona_sdk.config import RuntimeConfig
    from persona_sdk.fileio import atomic_write

    engine = None
    settings = {k: getattr(args, k) for k in ("variant", "generate", "max_new_tokens", "context_budget",
                                              "reply_budget")}
    raw: dict[str, list[dict]] = {}
    for key in row_keys(args):
        raw[key] = []
        start = time.monotonic()
        for i, person in enumerate(data.people):
            prefix, sha = prefix_of(key, i, sources, enrolled)
            stamp = _digest(["unit", key, sha, settings, _keys(person.heldout), args.backbone])
            path = args.out / "cache" / key / f"{person.index}.json"
            unit = json.loads(path.read_text()) if path.is_file() else {}
            if unit.get("stamp") != stamp:
                if engine is None:
                    from persona_sdk.engines import open_engine

                    engine = open_engine(args.backbone, RuntimeConfig(variant=args.variant, threads=args.threads),
                                         say, build=True)
                unit = {**run_unit(engine, prefix, person, args), "stamp": stamp}
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(path, json.dumps(unit).encode(), private=False)
            raw[key].append(unit)
        say(f"{key}: {len(data.people)} speakers ({time.monotonic() - start:.0f} s)")
    return raw


# --- scoring -----------------------------------------------------------------------------------------
def memo(embed):
    """``embed`` with a cache per text (the per-speaker scores re-embed the same replies)."""
    seen: dict[str, np.ndarray] = {}

    def cached(texts):
        todo = [t for t in dict.fromkeys(texts) if t not in seen]
        if todo:
            seen.update(zip(todo, np.asarray(embed(todo))))
        return np.stack([seen[t] for t in texts])

    return cached


def score_row(units: list[dict], data: Data, embed, cache: dict) -> tuple[dict, list[dict]]:
    """The row's scores over every person (explicit_table's :func:`score`) and per person (for the intervals)."""
    def part(people, us):
        decode = [ex for p, u in zip(people, us) for ex in p.heldout[: len(u["replies"])]]
        raw = {"replies": [r for u in us for r in u["replies"]], "hits": [], "selection": []}
        if all("losses" in u for u in us):
            raw["losses"] = [loss for u in us for loss in u["losses"]]
        return xt.score(raw, dataclasses.replace(data.table, decode=decode), embed, cache)

    whole = part(data.people, units)
    each = []
    for person, unit in zip(data.people, units):
        row = part([person], [unit])
        row["n"] = len(unit["replies"])
        if "losses" in unit:
            row["loss_sum"] = float(sum(sum(x) for x in unit["losses"]))
            row["tokens"] = int(sum(len(x) for x in unit["losses"]))
        each.append(row)
    return whole, each


SHARES = ("consistency", "copy_rate", "perspective")


def bootstrap(per_speaker: dict[str, list[dict]], samples: int, seed: int) -> list[dict[str, dict[str, float]]]:
    """``samples`` resamples of the speakers (with replacement; the same ones for every row): per resample and
    row, the shares (weighted by replies) and the pooled perplexity."""
    rng = np.random.default_rng(seed)
    n = len(next(iter(per_speaker.values())))
    out = []
    for _ in range(samples):
        pick = rng.integers(0, n, size=n)
        stats: dict[str, dict[str, float]] = {}
        for key, rows in per_speaker.items():
            sel = [rows[j] for j in pick]
            weight = sum(r["n"] for r in sel)
            s = {c: sum(r[c] * r["n"] for r in sel) / weight for c in SHARES}
            if "tokens" in sel[0]:
                s["perplexity"] = float(np.exp(sum(r["loss_sum"] for r in sel) / sum(r["tokens"] for r in sel)))
            stats[key] = s
        out.append(stats)
    return out


def interval(values: Sequence[float]) -> list[float]:
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def comparisons(args) -> list[tuple[str, str]]:
    """(row, baseline row) pairs whose paired difference the table reports."""
    pairs = [(f"enrolled-{m}", f"source-{m}") for m in args.methods]
    if "plain" in args.methods:
        for m in args.methods:
            if m != "plain":
                pairs += [(f"source-{m}", "source-plain"), (f"enrolled-{m}", "enrolled-plain")]
    if args.backbone_row:
        pairs += [(f"source-{m}", "backbone") for m in args.methods]
    return pairs


def differences(rows: dict, boots: list, args) -> list[dict]:
    out = []
    for a, b in comparisons(args):
        for col in ("consistency", "perplexity"):
            diffs = [s[a][col] - s[b][col] for s in boots]
            lo, hi = interval(diffs)
            out.append({"row": a, "baseline": b, "column": col, "difference": rows[a][col] - rows[b][col],
                        "interval": [lo, hi], "beyond_noise": bool(lo > 0 or hi < 0)})
    return out


# --- report ------------------------------------------------------------------------------------------
COLUMNS = [("perplexity", "PPL", "{:.2f}"), ("consistency", "Cons@20", "{:.3f}"), ("copy_rate", "Copy", "{:.3f}"),
           ("perspective", "Persp.", "{:.3f}"), ("f1", "F1", "{:.3f}"), ("median_words", "Words", "{:.0f}")]
WITH_INTERVAL = ("perplexity", "consistency")


def table_md(results: dict) -> str:
    head = "| row | " + " | ".join(c[1] for c in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    for key, row in results["rows"].items():
        cells = []
        for col, _, fmt in COLUMNS:
            if row.get(col) is None:
                cells.append("–")
                continue
            cell = fmt.format(row[col])
            ci = results["intervals"].get(key, {}).get(col)
            if col in WITH_INTERVAL and ci:
                cell += " [" + ", ".join(fmt.format(x) for x in ci) + "]"
            cells.append(cell)
        lines.append(f"| {results['labels'][key]} | " + " | ".join(cells) + " |")
    s, k = results["settings"], results["settings"]["candidates"]
    lines += ["", f"[a, b]: 95% bootstrap interval over the {results['data']['test_speakers']} speakers "
              f"({s['bootstrap']} resamples). Cons@20 = persona consistency at K = {k} (chance {1 / k:.3f}), "
              "Copy = copy rate, Persp. = perspective, F1 and Words on the generated replies; PPL on the held-out "
              "replies.", "", "Paired differences (row - baseline, the same speaker resamples):", ""]
    labels = results["labels"]
    for d in results["differences"]:
        fmt = "{:+.2f}" if d["column"] == "perplexity" else "{:+.3f}"
        name = "PPL" if d["column"] == "perplexity" else "Cons@20"
        same = d["difference"] == 0 and d["interval"] == [0, 0]
        verdict = "beyond noise" if d["beyond_noise"] else "identical" if same else "within noise"
        lines.append(f"- {labels[d['row']]} vs {labels[d['baseline']]}: {name} {fmt.format(d['difference'])} "
                     f"[{fmt.format(d['interval'][0])}, {fmt.format(d['interval'][1])}] ({verdict})")
    lines += ["", "Budgets:", ""]
    for m, src in results["sources"].items():
        sm = src["summary"]
        lines.append(f"- source {m}: {sm['steps']} steps ({sm['stopped']}), {sm['wall_seconds']:.0f} s, val loss "
                     f"{sm['init_val_loss']:.4f} -> {sm['best_val_loss']:.4f} (best at step {sm['best_step']}); "
                     f"sha256 {src['sha256'][:16]}")
    for m, e in results["enrollments"].items():
        lines.append(f"- enrolled from {m}: median {e['median_steps']:g} steps, {e['median_seconds']:.0f} s; "
                     f"{e['kept_source']} of {e['n']} kept the source block (no validation gain)")
    b, meta = results["budgets"], results["meta"]
    lines += ["", f"- source budget: {b['source']}", f"- enrollment budget: {b['enrollment']}",
              f"- command: `{meta['command']}`", f"- commit: `{meta['commit']}`", f"- date (UTC): {meta['date']}",
              f"- sizes: {json.dumps(results['sizes'], sort_keys=True)}"]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    from persona_sdk.source import SOURCE_METHODS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spc-csv", required=True, type=Path, help="Synthetic-Persona-Chat CSV")
    ap.add_argument("--out", required=True, type=Path, help="output folder (a rerun reuses its finished stages)")
    ap.add_argument("--backbone", default=None, help="backbone folder (default: the embedded SmolLM2-135M)")
    ap.add_argument("--variant", default="int8", help="ONNX variant every row runs on")
    ap.add_argument("--methods", default="plain,mtml,amtml", help=f"source methods, of {', '.join(SOURCE_METHODS)}")
    ap.add_argument("--backbone-row", action=argparse.BooleanOptionalAction, default=True,
                    help="score the bare backbone too (the reference the source prefixes move from)")
    ap.add_argument("--speakers", type=int, default=20, help="N, test personas enrolled and scored")
    ap.add_argument("--enroll-min", type=int, default=5, help="fewest own replies in the enrollment conversation")
    ap.add_argument("--enroll-max", type=int, default=15, help="most own replies enrolled (the conversation's first)")
    ap.add_argument("--heldout", type=int, default=24, help="held-out replies per speaker scored for perplexity")
    ap.add_argument("--generate", type=int, default=6, help="held-out contexts per speaker answered per row")
    ap.add_argument("--source-steps", type=int, default=120,
                    help="every source prefix's step budget (meta methods: inner steps)")
    ap.add_argument("--source-minutes", type=float, default=None, help="and a time cap per source prefix (0 = none)")
    ap.add_argument("--source-val", type=int, default=64, help="dev replies validating the source prefixes")
    ap.add_argument("--source-speakers", type=int, default=0, help="train speakers used (hash order; 0 = all)")
    ap.add_argument("--alpha", type=float, default=0.8, help="α of MTML/AMTML")
    ap.add_argument("--enroll-minutes", type=float, default=1.0,
                    help="enrollment time budget (TrainConfig.max_minutes; 0 = none)")
    ap.add_argument("--enroll-steps", type=int, default=0, help="enrollment step cap (TrainConfig.max_steps; 0 = none)")
    ap.add_argument("--min-examples", type=int, default=4,
                    help="TrainConfig.min_examples (its default 20 refuses few-shot speakers)")
    ap.add_argument("--seed", type=int, default=0, help="seed of every source prefix and enrollment")
    ap.add_argument("--candidates", type=int, default=20, help="K of persona consistency")
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--reply-budget", type=int, default=48, help="held-out reply tokens scored")
    ap.add_argument("--context-budget", type=int, default=160, help="prompt tokens (as the explicit table)")
    ap.add_argument("--split-dev", type=float, default=0.1)
    ap.add_argument("--split-test", type=float, default=0.1)
    ap.add_argument("--embedder", default="minilm", help="minilm (the table) or bow (smoke tests)")
    ap.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples over speakers")
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime threads")
    args = ap.parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in args.methods if m not in SOURCE_METHODS]
    if unknown or not args.methods or len(set(args.methods)) != len(args.methods):
        raise SystemExit(f"--methods must name distinct methods of {', '.join(SOURCE_METHODS)}, "
                         f"got {unknown or args.methods}")
    if not 1 <= args.enroll_min <= args.enroll_max:
        raise SystemExit("--enroll-min must be at least 1 and at most --enroll-max")
    if args.generate < 1 or args.heldout < args.generate:
        raise SystemExit("--generate must be at least 1 and at most --heldout")
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    argv = list(argv if argv is not None else sys.argv[1:])
    args = parse_args(argv)
    meta = {"command": "benchmarks/implicit_spc.py " + " ".join(argv),
            "commit": xt._commit(("persona_sdk", "benchmarks/implicit_spc.py", "benchmarks/explicit_table.py")),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    data = load_data(args)
    say(f"{len(data.speakers)} source speakers, {len(data.val)} dev replies; {len(data.people)} test speakers")
    bb = Backbone(args.backbone)
    seconds: dict[str, float] = {}
    t = time.monotonic()
    sources = train_sources(args, data, bb)
    seconds["sources"], t = time.monotonic() - t, time.monotonic()
    enrolled = enroll_all(args, data, sources, bb)
    seconds["enrollment"], t = time.monotonic() - t, time.monotonic()
    bb.bb = None  # the scoring runs on the ONNX runtime
    raw = run_rows(args, data, sources, enrolled)
    seconds["scoring"], t = time.monotonic() - t, time.monotonic()
    raw["human"] = [{"replies": [ex.reply for ex in p.heldout[: args.generate]]} for p in data.people]
    embed, cache = memo(xt.embedder(args.embedder)), {}
    rows, per_speaker = {}, {}
    for key, units in raw.items():
        rows[key], per_speaker[key] = score_row(units, data, embed, cache)
    boots = bootstrap(per_speaker, args.bootstrap, args.seed)
    intervals = {key: {col: interval([s[key][col] for s in boots]) for col in boots[0][key]} for key in rows}
    seconds["metrics"] = time.monotonic() - t
    enrollments = {}
    for m in args.methods:
        sums = [e["info"]["summary"] for e in enrolled[m]]
        enrollments[m] = {"n": len(sums), "median_steps": float(np.median([s["steps"] for s in sums])),
                          "median_seconds": float(np.median([s["wall_seconds"] for s in sums])),
                          "kept_source": sum(s["best_step"] == 0 for s in sums),
                          "per_speaker": [{**s, "sha256": e["info"]["sha256"]} for s, e in zip(sums, enrolled[m])]}
    config = enroll_config(args)
    results = {
        "meta": meta, "data": data.provenance, "rows": rows, "labels": {k: row_label(k, args) for k in rows},
        "intervals": intervals, "differences": differences(rows, boots, args),
        "per_speaker": {k: [{c: v[c] for c in ("consistency", "copy_rate", "perspective", "perplexity", "n")
                             if c in v} for v in vs] for k, vs in per_speaker.items()},
        "sources": {m: {"config": s["info"]["config"], "summary": s["info"]["summary"], "sha256": s["info"]["sha256"]}
                    for m, s in sources.items()},
        "enrollments": enrollments,
        "budgets": {
            "source": f"equal steps: {args.source_steps} per method (meta methods: inner steps)"
                      + (f", at most {args.source_minutes} min each" if args.source_minutes else "")
                      + f"; seed {args.seed}, alpha {args.alpha}",
            "enrollment": "default path (trainer.train_prefix, TrainConfig defaults) with min_examples "
                          f"{config.min_examples}, max_minutes {config.max_minutes}, "
                          f"max_steps {config.max_steps or 'none'}, seed {config.seed}; "
                          f"lr {config.learning_rate(from_source=True, n_train=0):g} (policy from a source, few replies)",
            "enroll_config": config.to_dict()},
        "sizes": {"speakers": len(data.people), "source_speakers": len(data.speakers),
                  "source_val_replies": len(data.val),
                  "enroll_replies_range": [min(data.provenance["enroll_replies"]),
                                           max(data.provenance["enroll_replies"])],
                  "generated_replies_per_row": sum(data.provenance["generated_per_speaker"]),
                  "heldout_replies_scored": sum(data.provenance["heldout_replies"])},
        "settings": {"variant": args.variant, "decoding": "greedy, repetition penalty 1.1",
                     "max_new_tokens": args.max_new_tokens, "context_budget": args.context_budget,
                     "reply_budget": args.reply_budget, "candidates": args.candidates, "embedder": args.embedder,
                     "bootstrap": args.bootstrap, "generate": args.generate, "heldout": args.heldout},
        "seconds": seconds,
    }
    return xt.write_outputs(args.out, results, table_md)


if __name__ == "__main__":
    main()
