"""PAL at chat time (``explicit="pal"``): select, then generate, on PAL's own ONNX backbone.

The shipped adapter (``persona_sdk/data/pal_adapter/``: PEFT layout, float16,
``PAL.json`` with recipe, seed, data hash and sha256) is merged into the default
backbone and exported like any backbone (fused graph, int8 by default, validated
against torch) the first time PAL is used, announced; afterwards the runtime
:class:`~persona_sdk.runtime.Engine` opens the cached export like the backbone's.

Each reply takes two steps on that one engine:

1. *select*: the selection prompt (all sentences, numbered) is run once, and
   every sentence, written out as the answer (+ end of turn), is scored after it
   (mean log-prob per token); the best-scored sentence is the prediction. Only
   the conversation and the sentences the mode was opened with go in: there is
   no argument through which a gold label could reach this step.
2. *generate*: the generation prompt with the predicted sentence, decoded by
   the engine's ordinary decode loop.

``select=False`` conditions on all sentences instead (the table's "PAL without
select-then-generate" row).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..config import GenerationConfig, RuntimeConfig
from ..conversation import Turn
from ..errors import AdapterError
from .base import ExplicitMode, Prepared, Progress, check_history
from .formats import PAL_FORMAT, persona_prompt_ids, selection_answer, selection_prompt_ids

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "data" / "pal_adapter"
INFO = "PAL.json"
WEIGHTS = "adapter_model.safetensors"
BUILD_COMMAND = "persona explicit export pal"


def adapter_info(adapter_dir: str | Path | None = None) -> tuple[Path, dict]:
    """(folder, PAL.json) of an adapter (None = the shipped one), its weights checked against the sha256."""
    folder = Path(adapter_dir) if adapter_dir is not None else SHIPPED_DIR
    weights = folder / WEIGHTS
    if not weights.is_file() or not (folder / INFO).is_file():
        where = "no PAL adapter is shipped in this install" if adapter_dir is None else f"there is no PAL adapter in {folder}"
        raise AdapterError(f"{where} ({WEIGHTS} + {INFO}); train one with `persona explicit train pal`")
    try:
        info = json.loads((folder / INFO).read_text())
    except (OSError, ValueError):
        raise AdapterError(f"{folder / INFO} is corrupt (not valid JSON)") from None
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    if not isinstance(info, dict) or info.get("sha256") != digest:
        raise AdapterError(f"{weights} does not match the sha256 recorded in {INFO}")
    if info.get("format") != PAL_FORMAT:
        raise AdapterError(f"the PAL adapter in {folder} was trained on an older prompt layout (format "
                           f"{info.get('format', 1)}, this version reads {PAL_FORMAT}); train it again with "
                           "`persona explicit train pal`")
    return folder, info


class PALMode(ExplicitMode):
    """Select the relevant persona sentence, then generate conditioned on it."""

    name = "pal"

    def __init__(self, sentences: Sequence[str], engine: Any, select: bool = True) -> None:
        super().__init__(sentences, engine)
        self.select = bool(select)
        self.last_selection: tuple[int, ...] = ()

    @classmethod
    def open(cls, sentences: Sequence[str], *, backbone: str | Path | None = None,
             runtime: RuntimeConfig | None = None, progress: Progress | None = None, build: bool = False,
             engine: Any = None, adapter: str | Path | None = None, select: bool = True) -> "PALMode":
        """PAL on ``engine`` (an engine of PAL's merged export), or on the merged export of ``adapter``
        (None = the shipped one) and ``backbone`` (None = the default), found or built (``build=True``)."""
        from .persona import persona_sentences

        sentences = persona_sentences(sentences)
        if engine is None:
            engine = open_pal_engine(backbone, runtime, progress, build=build, adapter=adapter)
        return cls(sentences, engine, select=select)

    # --- select ----------------------------------------------------------------------------
    def selection_scores(self, history: Sequence[Turn], gen: GenerationConfig | None = None) -> np.ndarray:
        """Mean log-prob per token of each sentence written out (+ end of turn) after the selection prompt
        (the prompt is run once; each candidate continues from its KV cache). (N,)"""
        gen = gen or GenerationConfig()
        eng = self.engine
        fmt = eng.format
        prompt = selection_prompt_ids(fmt, self.sentences, history, self.budget(gen))
        past, plen = eng.initial_past(None)
        out = eng.forward(np.asarray([prompt], dtype=np.int64), past, plen)
        first = _log_softmax(out.logits[0])  # (V,) predicts the answer's first token
        scores = []
        for sentence in self.sentences:
            cand = fmt.reply_ids(selection_answer(sentence))  # the sentence's tokens + end of turn
            total = float(first[cand[0]])
            if len(cand) > 1:
                step = eng.forward(np.asarray([cand[:-1]], dtype=np.int64), out.past, out.past_len, all_logits=True)
                logp = _log_softmax(step.logits[0])  # (len(cand) - 1, V)
                total += float(logp[np.arange(len(cand) - 1), cand[1:]].sum())
            scores.append(total / len(cand))
        return np.asarray(scores)

    def predict(self, history: Sequence[Turn], gen: GenerationConfig | None = None) -> tuple[int, ...]:
        """The predicted relevant sentence(s): the best-scored one (a lone sentence needs no choosing)."""
        if len(self.sentences) == 1:
            return (0,)
        return (int(np.argmax(self.selection_scores(history, gen))),)

    # --- then generate -----------------------------------------------------------------------
    def prepare(self, history: Sequence[Turn], gen: GenerationConfig | None = None) -> Prepared:
        check_history(history)
        gen = gen or GenerationConfig()
        chosen = self.predict(history, gen) if self.select else tuple(range(len(self.sentences)))
        self.last_selection = chosen
        ids = persona_prompt_ids(self.engine.format, [self.sentences[i] for i in chosen], history, self.budget(gen))
        return Prepared(tuple(ids), chosen)

    def describe(self) -> str:
        how = "select-then-generate" if self.select else "all sentences"
        return f"pal mode ({how}), {len(self.sentences)} persona sentence(s)"


def open_pal_engine(backbone: str | Path | None = None, runtime: RuntimeConfig | None = None,
                    progress: Progress | None = None, *, build: bool = False, adapter: str | Path | None = None):
    """An engine on PAL's merged export: the adapter merged into ``backbone`` (built with ``build=True``)."""
    from .. import backbone as bb
    from ..engines import open_engine
    from .merge import ensure_merged

    folder, info = adapter_info(adapter)
    if backbone is not None and str(backbone) not in ("", "default") and (Path(backbone) / "manifest.json").is_file():
        raise AdapterError("PAL runs on its own merged backbone: pass a Hugging Face model folder (or nothing for "
                           "the default), not an ONNX export folder")
    if not build and (backbone is None or str(backbone) in ("", "default")) and not bb.is_materialised(bb.default_dir()):
        from ..errors import ExportNotReadyError

        raise ExportNotReadyError(f"the default backbone is not set up yet; build PAL once with `{BUILD_COMMAND}`")
    base_dir = bb.resolve(backbone, progress)
    base_fp = bb.fingerprint(base_dir)
    if info.get("backbone") != base_fp:
        raise AdapterError(f"the PAL adapter in {folder} was trained for another backbone "
                           f"({str(info.get('backbone'))[:16]}…, this one is {base_fp[:16]}…)")
    merged = ensure_merged("pal", base_dir, folder, info["sha256"], base_fp, build=build, command=BUILD_COMMAND,
                           progress=progress)
    return open_engine(merged, runtime, progress, build=build)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64, copy=False)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))
