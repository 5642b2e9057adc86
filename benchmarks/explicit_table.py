"""The explicit-persona table on Synthetic-Persona-Chat's test part (split by persona).

    # the real table (on this machine: nice, with the shipped PAL adapter and the stage-1 one)
    nice -n 10 .venv/bin/python benchmarks/explicit_table.py \\
        --spc-csv ../shared/data/spc/Synthetic-Persona-Chat_valid.csv --out benchmarks/out/explicit

Rows (``ROWS``; each opens an :class:`~persona_sdk.explicit.base.ExplicitMode`
for a persona, on an engine opened once per run from ``ENGINES``): the bare
backbone (no persona), prompting (the sentences in the system turn), PAL stage 1
only, PAL, PAL without select-then-generate (conditioned on all sentences), PAA
(the installed one, or ``--paa DIR``) and PAA without masks (a PAA trained
without them, ``--paa-no-masks DIR``, else the same PAA with its masks switched
off at decode time; the label says which). A
new mode is one ``ENGINES`` entry (if it has its own model) and one ``ROWS``
entry. Every row runs through the product path: the runtime ``Engine`` on the
row's ONNX export (int8 by default; PAA on its own export, fp32 by default as in
``persona chat``: its int8 export drifts further), prompts built by the mode itself.
PAA's persona goes through its persona encoder (its own budget), so only the
context counts against the table's prompt budget.

Columns (scored on the test part only, never touched by training):

- perplexity of the gold reply after the mode's prompt (PAL: after its own
  predicted selection), pooled over reply tokens; beside it the same with
  another test persona's sentences in place of the reply's own ("PPL other"),
  and their ratio ("reliance" = PPL other / PPL): 1.00 for a row that ignores
  the persona, above 1 the more the right persona helps. A row can lower its
  perplexity by learning the corpus's style alone; reliance tells that apart
  from using the persona;
- unigram F1, BLEU-1/2 (sacrebleu corpus BLEU, hypothesis = the generated
  reply, reference = the gold one), ROUGE-L, Dist-1/2 and Ent-4 (over all
  generated replies), greedy decoding (repetition penalty 1.1, <= 40 tokens), every
  row's prompt within the same 160 tokens (PAL's training budget);
- Hits@1: the gold reply has the lowest loss among itself and 19 distractor
  replies of other test personas (chance 5%);
- persona consistency at K = 20: the share of generated replies whose
  best-matching persona among 20 (their own + 19 other test personas) by MiniLM
  similarity is their own (chance 5%); beside it the copy rate (replies
  restating a persona sentence nearly verbatim) and the perspective (first
  person, not handing the persona to the user) -- see
  :mod:`persona_sdk.explicit.metrics`. The gold replies get these three too (the
  "human" row);
- selection accuracy (PAL's first step): the predicted sentence equals the
  silver one (the token-overlap label PAL trains with) on labelled test replies.

Sampling is deterministic (salted hashes of reply keys). Outputs in ``--out``:
``table.md``, ``results.json`` and ``cache/`` (one JSON per finished row: a
rerun resumes). Data: Synthetic-Persona-Chat (CC-BY 4.0; Jandaghi et al. 2023),
whose replies the cache and results quote.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SALT = "persona-explicit-table-v1"


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- rows: which mode, on which engine ----------------------------------------------------------
@dataclass(frozen=True)
class Row:
    label: str
    engine: str  # a key of ENGINES
    open: Callable[[Sequence[str], Any], Any]  # (sentences, engine) -> ExplicitMode
    selects: bool = False  # scores PAL's selection step


def _bare(sentences, engine):
    from persona_sdk.explicit.base import ExplicitMode, Prepared

    class Bare(ExplicitMode):
        """The backbone with no persona at all (the sentences are ignored)."""

        name = "backbone"

        def prepare(self, history, gen=None):
            from persona_sdk.config import GenerationConfig

            gen = gen or GenerationConfig()
            return Prepared(tuple(self.engine.format.prompt_ids(history, self.budget(gen))), ())

    return Bare(sentences, engine)


def _prompt(sentences, engine):
    from persona_sdk.explicit.prompt import PromptMode

    return PromptMode(sentences, engine)


def _pal(select: bool):
    def make(sentences, engine):
        from persona_sdk.explicit.pal import PALMode

        return PALMode(sentences, engine, select=select)

    return make


def _paa_mode(masks: bool):
    def make(sentences, engine):
        from persona_sdk.explicit.paa import PAAMode

        return PAAMode(sentences, engine, masks=masks)

    return make


ROWS: dict[str, Row] = {
    "backbone": Row("backbone (no persona)", "base", _bare),
    "prompt": Row("prompting", "base", _prompt),
    "pal-stage1": Row("PAL stage 1 only", "pal-stage1", _pal(True), selects=True),
    "pal": Row("PAL", "pal", _pal(True), selects=True),
    "pal-no-sg": Row("PAL without select-then-generate", "pal", _pal(False)),
    "paa": Row("PAA", "paa", _paa_mode(True)),
    "paa-no-masks": Row("PAA without masks", "paa-no-masks", _paa_mode(False)),
}


def _open_base(args, runtime):
    from persona_sdk.engines import open_engine

    return open_engine(args.backbone, runtime, say, build=True)


def _open_pal(adapter_arg: str):
    def make(args, runtime):
        from persona_sdk.explicit.pal import open_pal_engine

        return open_pal_engine(args.backbone, runtime, say, build=True, adapter=getattr(args, adapter_arg))

    return make


def _open_paa(engine: str):
    def make(args, runtime):
        from persona_sdk.config import RuntimeConfig
        from persona_sdk.explicit.paa import open_paa_engine

        runtime = RuntimeConfig(variant=args.paa_variant, threads=args.threads)
        return open_paa_engine(args.backbone, runtime, say, build=True, paa=paa_folder(args, engine))

    return make


def paa_folder(args: argparse.Namespace, engine: str) -> str | None:
    """The PAA folder engine "paa" or "paa-no-masks" opens (None = the installed one): the latter's is
    ``--paa-no-masks``, else ``--paa``'s."""
    if engine == "paa-no-masks" and args.paa_no_masks is not None:
        return args.paa_no_masks
    return args.paa


def engine_key(key: str, args: argparse.Namespace) -> str:
    """The engine a row runs on: without a PAA trained without masks, "PAA without masks" shares PAA's engine."""
    engine = ROWS[key].engine
    return "paa" if engine == "paa-no-masks" and args.paa_no_masks is None else engine


def row_label(key: str, args: argparse.Namespace) -> str:
    if key != "paa-no-masks":
        return ROWS[key].label
    how = "trained without them" if args.paa_no_masks is not None else "switched off at decode"
    return f"{ROWS[key].label} ({how})"


ENGINES: dict[str, Callable[[argparse.Namespace, Any], Any]] = {
    "base": _open_base,
    "pal": _open_pal("pal_adapter"),
    "pal-stage1": _open_pal("pal_stage1"),
    "paa": _open_paa("paa"),
    "paa-no-masks": _open_paa("paa-no-masks"),
}


def model_sha256(key: str, args: argparse.Namespace) -> str | None:
    """The sha256 of the trained weights row ``key`` runs (PAL adapter, PAA fusions), None for the backbone rows
    (or when they are missing: the row then fails when its engine opens)."""
    engine = ROWS[key].engine
    try:
        if engine in ("pal", "pal-stage1"):
            from persona_sdk.explicit.pal import adapter_info

            return adapter_info({"pal": args.pal_adapter, "pal-stage1": args.pal_stage1}[engine])[1].get("sha256")
        if engine in ("paa", "paa-no-masks"):
            from persona_sdk.explicit.paa_store import installed_info

            return installed_info(paa_folder(args, engine))[1].get("sha256")
    except Exception:  # noqa: BLE001 - a missing model is reported when its row runs
        return None
    return None


# --- data ----------------------------------------------------------------------------------------
def _h(*parts: object) -> bytes:
    return hashlib.sha256(":".join(str(p) for p in (SALT, *parts)).encode()).digest()


@dataclass
class Data:
    personas: list[tuple[str, ...]]  # test personas, in hash order
    decode: list  # PersonaExamples generated for and scored
    hits: list  # PersonaExamples ranked against distractors
    selection: list  # Labelled (silver) test replies for PAL's selection step
    distractors: dict  # example key -> 19 replies of other personas
    candidates: dict  # persona index -> K persona indices (own first)
    owner: dict  # example key -> persona index
    pool_replies: int
    provenance: dict


def load_data(args) -> Data:
    from persona_sdk.metrics import pick_distractors
    from persona_sdk.split import PersonaSplitConfig, persona_key
    from persona_sdk.training.corpora import spc_explicit_split, spc_persona_examples
    from persona_sdk.training.pal import label_examples

    config = PersonaSplitConfig(dev=args.split_dev, test=args.split_test)
    parts, provenance = spc_explicit_split(args.spc_csv, config)
    test = spc_persona_examples(parts["test"])
    # one persona = one normalised sentence set (SPC lists a persona's sentences in varying order)
    by_key: dict[str, list] = {}
    for ex in test:
        by_key.setdefault(persona_key(ex.persona, config.salt), []).append(ex)
    keys = sorted(by_key, key=lambda k: _h("persona", k))
    personas = [min(ex.persona for ex in by_key[k]) for k in keys]  # a stable representative ordering
    owner = {ex.key: i for i, k in enumerate(keys) for ex in by_key[k]}
    by_persona = {personas[i]: by_key[k] for i, k in enumerate(keys)}
    if len(personas) < args.candidates:
        raise SystemExit(f"only {len(personas)} test personas; --candidates {args.candidates} needs as many")
    decode, hits = [], []
    for p in personas[: args.personas or None]:  # candidates still come from every test persona
        ranked = sorted(by_persona[p], key=lambda e: _h("reply", e.key))
        decode += ranked[: args.per_persona]
        if not args.hits_replies or len(hits) < args.hits_replies:
            hits += ranked[args.per_persona : args.per_persona + args.hits_per_persona]
    if args.hits_replies:
        hits = hits[: args.hits_replies]
    pool = [(str(owner[e.key]), e.reply) for e in test]
    distractors = {e.key: pick_distractors(pool, str(owner[e.key]), e.key, args.distractors) for e in hits}
    candidates = {}
    for i, p in enumerate(personas):
        others = sorted((j for j in range(len(personas)) if j != i), key=lambda j: _h("cand", i, j))
        candidates[i] = [i] + others[: args.candidates - 1]
    labelled = sorted(label_examples(test), key=lambda it: _h("select", it.example.key))[: args.selection_replies]
    provenance = {**provenance, "test_replies": len(test), "test_personas": len(personas),
                  "decode_replies": len(decode), "hits_replies": len(hits), "selection_replies": len(labelled),
                  "labelled_test_replies": len(label_examples(test))}
    return Data(personas, decode, hits, labelled, distractors, candidates, owner, len(pool), provenance)


# --- one row ---------------------------------------------------------------------------------------
def table_generation(args):
    """The decoding every row uses: greedy, repetition penalty 1.1, the table's budgets."""
    from persona_sdk.config import GenerationConfig

    return GenerationConfig(max_new_tokens=args.max_new_tokens, do_sample=False, repetition_penalty=1.1,
                            context_budget=args.context_budget)


def modes_of(row: Row, engine) -> Callable[[tuple[str, ...]], Any]:
    """The row's mode for a persona, opened once per persona."""
    modes: dict[tuple[str, ...], Any] = {}

    def mode_for(persona):
        if persona not in modes:
            modes[persona] = row.open(persona, engine)
        return modes[persona]

    return mode_for


def run_row(key: str, row: Row, engine, data: Data, args) -> dict:
    """Generated replies, losses, Hits@1 and selection for one row (JSON-able)."""
    gen = table_generation(args)
    mode_for = modes_of(row, engine)

    out: dict[str, Any] = {"replies": [], "losses": [], "hits": [], "selection": [], "conditioned_on": []}
    start = time.monotonic()
    for n, ex in enumerate(data.decode):
        mode = mode_for(ex.persona)
        prepared = mode.prepare(list(ex.context), gen)  # the conversation only: no gold label, no gold reply
        reply = "".join(mode.stream(prepared, gen)).strip()
        out["replies"].append(reply)
        out["conditioned_on"].append(list(prepared.conditioned_on))
        out["losses"].append([float(x) for x in mode.reply_losses(prepared, ex.reply, args.reply_budget)])
        if n % 10 == 9:
            say(f"  {key}: {n + 1}/{len(data.decode)} replies ({time.monotonic() - start:.0f} s)")
    for ex in data.hits:
        mode = mode_for(ex.persona)
        prepared = mode.prepare(list(ex.context), gen)
        own = float(np.mean(mode.reply_losses(prepared, ex.reply, args.reply_budget)))
        others = [float(np.mean(mode.reply_losses(prepared, d, args.reply_budget))) for d in data.distractors[ex.key]]
        out["hits"].append(bool(own < min(others)))
    if row.selects:
        for it in data.selection:
            predicted = mode_for(it.example.persona).predict(list(it.example.context), gen)
            out["selection"].append(bool(predicted == (it.label,)))
    out["seconds"] = time.monotonic() - start
    return out


def other_persona(ex, data: Data) -> tuple[str, ...]:
    """Another test persona's sentences for ``ex``: the first other candidate of its own persona."""
    return data.personas[data.candidates[data.owner[ex.key]][1]]


def run_other_persona(row: Row, engine, data: Data, args) -> dict:
    """The gold replies' losses of the decoded examples with another test persona's sentences (JSON-able)."""
    gen = table_generation(args)
    mode_for = modes_of(row, engine)
    out: dict[str, Any] = {"losses": []}
    start = time.monotonic()
    for ex in data.decode:
        mode = mode_for(other_persona(ex, data))
        prepared = mode.prepare(list(ex.context), gen)
        out["losses"].append([float(x) for x in mode.reply_losses(prepared, ex.reply, args.reply_budget)])
    out["seconds"] = time.monotonic() - start
    return out


# --- scoring ---------------------------------------------------------------------------------------
def score(raw: dict, data: Data, embed, cache: dict) -> dict:
    """The table's numbers for one row's generated replies (or the gold ones: ``raw["replies"]``)."""
    from persona_sdk import metrics as M
    from persona_sdk.explicit import metrics as X

    replies = raw["replies"]
    gold = [ex.reply for ex in data.decode]
    personas = [ex.persona for ex in data.decode]  # the sentences each reply was made for
    owners = [data.owner[ex.key] for ex in data.decode]
    vecs = embed(replies)
    if "persona_vecs" not in cache:
        cache["persona_vecs"] = [embed(list(p)) for p in data.personas]
    candidates = [data.candidates[o] for o in owners]
    copied = X.copies(replies, personas)
    row = {
        "consistency": X.consistency_at_k(vecs, cache["persona_vecs"], owners, candidates),
        # the same, a restated persona sentence counting as a miss: echoing the persona games Cons@20
        "consistency_no_copy": X.consistency_at_k(vecs, cache["persona_vecs"], owners, candidates, exclude=copied),
        "copy_rate": float(np.mean(copied)),
        **X.perspective(replies, personas),
    }
    if raw.get("losses"):
        row.update({
            "perplexity": M.perplexity(raw["losses"]),
            "f1": float(np.mean([M.unigram_f1(h, r) for h, r in zip(replies, gold)])),
            "bleu1": M.corpus_bleu(replies, gold, 1), "bleu2": M.corpus_bleu(replies, gold, 2),
            "rouge_l": float(np.mean([M.rouge_l(h, r) for h, r in zip(replies, gold)])),
            "dist1": M.distinct_n(replies, 1), "dist2": M.distinct_n(replies, 2), "ent4": M.entropy_n(replies, 4),
            "hits_at_1": float(np.mean(raw["hits"])) if raw["hits"] else None,
            "selection_accuracy": float(np.mean(raw["selection"])) if raw["selection"] else None,
            "median_words": float(np.median([len(r.split()) for r in replies])),
        })
    if raw.get("other_losses"):
        row["perplexity_other"] = M.perplexity(raw["other_losses"])
        row["reliance"] = row["perplexity_other"] / row["perplexity"]
    return row


def embedder(kind: str):
    if kind == "minilm":
        from persona_sdk.metrics import MiniLMEmbedder

        return MiniLMEmbedder()
    if kind == "bow":  # smoke tests only: hashed bag of words, no model
        def embed(texts):
            out = np.zeros((len(texts), 256))
            for i, t in enumerate(texts):
                for w in t.lower().split():
                    out[i, int(hashlib.md5(w.encode()).hexdigest(), 16) % 256] += 1
            return out + 1e-6
        return embed
    raise SystemExit(f"--embedder must be minilm or bow, got {kind!r}")


# --- report ----------------------------------------------------------------------------------------
COLUMNS = [("perplexity", "PPL", "{:.2f}"), ("perplexity_other", "PPL other", "{:.2f}"),
           ("reliance", "Reliance", "{:.3f}"), ("f1", "F1", "{:.3f}"), ("bleu1", "BLEU-1", "{:.3f}"),
           ("bleu2", "BLEU-2", "{:.3f}"), ("rouge_l", "ROUGE-L", "{:.3f}"), ("dist1", "Dist-1", "{:.3f}"),
           ("dist2", "Dist-2", "{:.3f}"), ("ent4", "Ent-4", "{:.2f}"), ("hits_at_1", "Hits@1", "{:.3f}"),
           ("consistency", "Cons@20", "{:.3f}"), ("consistency_no_copy", "Cons@20 w/o copies", "{:.3f}"),
           ("copy_rate", "Copy", "{:.3f}"),
           ("perspective", "Persp.", "{:.3f}"), ("selection_accuracy", "Sel. acc", "{:.3f}"),
           ("median_words", "Words", "{:.0f}")]


def table_md(results: dict) -> str:
    k = results["settings"]["candidates"]
    head = "| row | " + " | ".join(c[1] for c in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    for key, row in results["rows"].items():
        cells = [(fmt.format(row[c]) if row.get(c) is not None else "–") for c, _, fmt in COLUMNS]
        lines.append(f"| {results['labels'][key]} | " + " | ".join(cells) + " |")
    lines += vs_prompting(results)
    meta = results["meta"]
    lines += ["", f"Cons@20 = persona consistency at K = {k} (chance {1 / k:.3f}); \"w/o copies\": a reply "
              "restating one of its persona's sentences (Copy) counts as a miss; Hits@1 chance "
              f"{1 / (results['settings']['distractors'] + 1):.3f}; selection chance "
              f"{results['selection_chance']:.3f} (mean 1/N).", "",
              f"- command: `{meta['command']}`", f"- commit: `{meta['commit']}`", f"- date (UTC): {meta['date']}",
              f"- data: {json.dumps(results['data'], sort_keys=True)}"]
    return "\n".join(lines) + "\n"


# what each row is judged on against prompting: (column, label, higher is better)
VERSUS = [("consistency", "Cons@20", True), ("bleu1", "BLEU-1", True), ("perplexity", "PPL", False)]


def vs_prompting(results: dict) -> list[str]:
    """One line per row: its difference from the prompting row on the judged columns, and whether it beats
    prompting or by how much it misses."""
    base = results["rows"].get("prompt")
    if base is None:
        return []
    out = ["", "Against prompting (difference = row - prompting):", ""]
    for key, row in results["rows"].items():
        if key in ("prompt", "human"):
            continue
        cells = []
        for col, label, higher in VERSUS:
            if row.get(col) is None or base.get(col) is None:
                continue
            diff = row[col] - base[col]
            better = diff > 0 if higher else diff < 0
            verdict = "beats it" if better else ("ties" if diff == 0 else f"misses by {abs(diff):.3f}")
            cells.append(f"{label} {diff:+.3f} ({verdict})")
        out.append(f"- {results['labels'][key]}: " + "; ".join(cells))
    return out


MODEL_FOLDERS = ("pal_adapter", "pal_stage1", "paa", "paa_no_masks")


def row_stamp(key: str, args: argparse.Namespace, data: Data) -> str:
    """What a cached row depends on: the settings that change its replies or scores, the data, and the adapter
    its engine merges (a rerun resumes only from rows made alike)."""
    paa = ROWS[key].engine.startswith("paa")  # PAA's options are no part of another row's making
    # the model folders count by what they hold (model_sha256), not by where they are
    settings = {k: v for k, v in vars(args).items()
                if k not in ("out", "rows", "threads", "embedder", "spc_csv", *MODEL_FOLDERS)
                and (paa or not k.startswith("paa"))}
    blob = json.dumps([key, settings, data.provenance, model_sha256(key, args)], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _commit(paths: Sequence[str] = ("persona_sdk", "benchmarks/explicit_table.py")) -> str:
    """HEAD, marked when ``paths`` (what the results depend on) have uncommitted changes."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        # tracked files only: an untracked file matters only once tracked code imports it (itself a change)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", *paths],
                               cwd=ROOT, capture_output=True, text=True).stdout.strip()
        return sha + (" (with uncommitted changes)" if dirty else "") if sha else "unknown"
    except OSError:
        return "unknown"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spc-csv", required=True, help="Synthetic-Persona-Chat CSV")
    ap.add_argument("--out", required=True, type=Path, help="output folder (resumes from its cache/)")
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows of {', '.join(ROWS)}")
    ap.add_argument("--backbone", default=None, help="backbone folder (default: the embedded SmolLM2-135M)")
    ap.add_argument("--variant", default="int8", help="ONNX variant every row runs on")
    ap.add_argument("--pal-adapter", default=None, help="PAL adapter folder (default: the shipped one)")
    ap.add_argument("--pal-stage1", default=str(ROOT / "benchmarks" / "data" / "pal_stage1"),
                    help="the stage-1-only PAL adapter folder")
    ap.add_argument("--paa", default=None, help="trained PAA folder (default: the installed one)")
    ap.add_argument("--paa-no-masks", default=None,
                    help="a PAA trained without masks for its row (default: --paa with masks off at decode time)")
    ap.add_argument("--paa-variant", default="fp32", help="ONNX variant of PAA's own export (fp32 or int8)")
    ap.add_argument("--personas", type=int, default=0,
                    help="decode for the first N test personas only (hash order; 0 = all); each reply's "
                         "consistency candidates still come from every test persona")
    ap.add_argument("--per-persona", type=int, default=2, help="decoded and scored replies per test persona")
    ap.add_argument("--hits-per-persona", type=int, default=1, help="replies per persona ranked for Hits@1")
    ap.add_argument("--hits-replies", type=int, default=0, help="cap on the replies ranked for Hits@1 (0 = no cap)")
    ap.add_argument("--selection-replies", type=int, default=120, help="labelled test replies for selection accuracy")
    ap.add_argument("--distractors", type=int, default=19)
    ap.add_argument("--candidates", type=int, default=20, help="K of persona consistency")
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--reply-budget", type=int, default=48, help="gold reply tokens scored")
    ap.add_argument("--context-budget", type=int, default=160,
                    help="prompt tokens (persona + context) for every row: PAL's training budget")
    ap.add_argument("--split-dev", type=float, default=0.1)
    ap.add_argument("--split-test", type=float, default=0.1)
    ap.add_argument("--embedder", default="minilm", help="minilm (the table) or bow (smoke tests)")
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime threads")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    from persona_sdk.config import RuntimeConfig
    from persona_sdk.fileio import atomic_write

    args = parse_args(argv)
    meta = {"command": "benchmarks/explicit_table.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "commit": _commit(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    rows = [r for r in args.rows.split(",") if r]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; known: {', '.join(ROWS)}")
    for key in rows:  # a missing PAA stops the run now, not after the rows before it
        if ROWS[key].engine.startswith("paa"):
            from persona_sdk.errors import AdapterError
            from persona_sdk.explicit.paa_store import installed_info

            try:
                installed_info(paa_folder(args, ROWS[key].engine))
            except AdapterError as e:
                raise SystemExit(f"row {key}: {e} (or leave the PAA rows out with --rows)") from None
    data = load_data(args)
    say(f"{data.provenance['test_personas']} test personas; {len(data.decode)} replies decoded per row, "
        f"{len(data.hits)} ranked for Hits@1, {len(data.selection)} for selection")
    runtime = RuntimeConfig(variant=args.variant, threads=args.threads)
    cache_dir = args.out / "cache"
    cache_dir.mkdir(parents=True, exist_ok=True)
    engines: dict[str, Any] = {}

    def engine_of(key: str):  # each engine opened once, when a row first needs it
        ek = engine_key(key, args)
        if ek not in engines:
            engines[ek] = ENGINES[ek](args, runtime)
        return engines[ek]

    raw: dict[str, dict] = {}
    for key in rows:
        path = cache_dir / f"{key}.json"
        stamp = row_stamp(key, args, data)
        if path.is_file():
            cached = json.loads(path.read_text())
            if cached.get("stamp") == stamp:
                raw[key] = cached
                say(f"{key}: cached")
                continue
            say(f"{key}: cached with other settings, data or adapter: running it again")
        say(f"{key}: {row_label(key, args)} ...")
        raw[key] = {**run_row(key, ROWS[key], engine_of(key), data, args), "stamp": stamp}
        atomic_write(path, json.dumps(raw[key]).encode(), private=False)
    for key in rows:  # the same gold replies with another persona's sentences (cached apart: rows made before it)
        path = cache_dir / f"{key}.other-persona.json"
        stamp = row_stamp(key, args, data)
        cached = json.loads(path.read_text()) if path.is_file() else {}
        if cached.get("stamp") != stamp:
            say(f"{key}: the gold replies with another test persona's sentences ...")
            cached = {**run_other_persona(ROWS[key], engine_of(key), data, args), "stamp": stamp}
            atomic_write(path, json.dumps(cached).encode(), private=False)
        raw[key]["other_losses"] = cached["losses"]
    embed = embedder(args.embedder)
    cache: dict = {}
    scored = {key: score(raw[key], data, embed, cache) for key in rows}
    scored["human"] = score({"replies": [ex.reply for ex in data.decode]}, data, embed, cache)
    labels = {**{k: row_label(k, args) for k in rows}, "human": "human (gold replies)"}
    adapters = {k: model_sha256(k, args) for k in rows if ROWS[k].engine != "base"}
    chance = float(np.mean([1 / len(it.example.persona) for it in data.selection])) if data.selection else 0.0
    results = {
        "meta": meta, "data": data.provenance, "rows": scored, "labels": labels,
        "settings": {"variant": args.variant, "paa_variant": args.paa_variant,
                     "decoding": "greedy, repetition penalty 1.1",
                     "context_budget": args.context_budget,
                     "max_new_tokens": args.max_new_tokens, "reply_budget": args.reply_budget,
                     "distractors": args.distractors, "candidates": args.candidates, "embedder": args.embedder,
                     "personas": args.personas, "per_persona": args.per_persona, "hits_per_persona": args.hits_per_persona},
        "adapters_sha256": adapters, "selection_chance": chance,
        "seconds": {k: raw[k].get("seconds") for k in rows},
    }
    return write_outputs(args.out, results, table_md)


def write_outputs(out: Path, results: dict, render: Callable[[dict], str]) -> dict:
    """``results.json`` and ``table.md`` (``render(results)``) into ``out``, each whole or not at all; the table
    is also printed. Returns ``results``."""
    from persona_sdk.fileio import atomic_write

    table = render(results)
    atomic_write(out / "results.json", (json.dumps(results, indent=2) + "\n").encode(), private=False)
    atomic_write(out / "table.md", table.encode(), private=False)
    say(table)
    return results


if __name__ == "__main__":
    main()
