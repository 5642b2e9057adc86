"""PAA at chat time (``explicit="paa"``): persona-adaptive attention through its two ONNX graphs.

No torch here: onnxruntime and numpy only. The trained fusions are installed in
one place, ``<data dir>/explicit/paa/`` (:func:`~.paa_store.installed_dir`;
``persona explicit train paa`` writes there by default, ``persona explicit
export paa --from FOLDER`` installs a trained folder there). Their ONNX export
(:mod:`.paa_store` has the contract, ``persona_sdk.exporters.paa_export`` builds
it, validated against torch) lives in the cache and is built on first use when
the mode is opened with ``build=True`` (``persona chat`` does), announced.

Each reply, as in training (:mod:`.formats`, the helpers
``persona_sdk.training.paa_model.encode_paa`` uses):

1. ``prepare``: three token sequences: the persona sentences joined (the
   persona encoder's input), the conversation + reply header (the context
   encoder's input), and the decoder's prompt: that same conversation + reply
   header (or, for a PAA trained on the paper's layout, the reply header only;
   the export's record says which);
2. ``stream``: the encoder graph runs once over persona and context, giving
   each fused block's cross-attention keys and values; the decoder graph then
   runs its prompt and one token per step on its own KV cache, with those
   keys/values as fixed inputs, and the runtime's :class:`~persona_sdk.sampling.Sampler`
   picks each token (so every :class:`~persona_sdk.config.GenerationConfig`
   option means what it means for the other modes; beam search excepted);
3. ``reply_losses``: the same, teacher-forced on a given reply.

``masks=False`` runs the same export with the dynamic masks off (the table's
"PAA without masks" row); by default the trained config's setting.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..config import GenerationConfig, RuntimeConfig
from ..conversation import ChatFormat, Turn
from ..errors import AdapterError, ConfigError, ExportNotReadyError, GenerationError, ModelFileError, PersonaSentencesError
from ..manifest import ATTENTION_MASK, INPUT_IDS, LOGITS, LOGITS_TO_KEEP, MANIFEST, past_names, present_names
from ..runtime import Engine, StepOutput, _log_softmax, choose_providers, session_options
from ..sampling import Sampler, length_target
from . import paa_store as S
from .base import ExplicitMode, Prepared, Progress, check_history
from .formats import paa_context_ids, paa_decoder_prompt, paa_persona_ids


@dataclass(frozen=True)
class PAAPrepared(Prepared):
    """A PAA reply's inputs: ``prompt_ids`` is the decoder's prompt (the context, or the reply header)."""

    persona_ids: tuple[int, ...] = ()  # the persona encoder's input
    context_ids: tuple[int, ...] = ()  # the context encoder's input (conversation + reply header)


class PAAEngine:
    """The two PAA graphs of one export: encoder once per turn, decoder with its KV cache per token.
    Thread-compatible; the agent's lock serialises replies."""

    def __init__(self, export_dir: Path, runtime: RuntimeConfig | None = None) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        from ..backbone import BackboneSpec

        self.export_dir = Path(export_dir)
        self.runtime = runtime or RuntimeConfig()
        self.record = r = S.read_record(self.export_dir)
        self.fingerprint: str = r["backbone"]
        self.layers, self.kv_heads, self.head_dim = r["layers"], r["kv_heads"], r["head_dim"]
        self.vocab_size, self.paa_layers = r["vocab_size"], r["paa_layers"]
        self.masks = bool(r["masks"])
        self.decoder_context = bool(r["decoder_context"])  # the decoder reads the context before the reply
        config = self.export_dir / "config.json"
        self.max_positions = (BackboneSpec.from_config(json.loads(config.read_text())).max_positions
                              if config.is_file() else 2048)
        self.persona_budget = min(r["persona_budget"], self.max_positions)
        self.context_budget = min(r["context_budget"], self.max_positions)
        providers = choose_providers(self.runtime.device)
        opts = session_options(self.runtime)
        sessions = []
        for name in (S.ENCODER, S.DECODER):
            try:
                sessions.append(ort.InferenceSession(str(self.export_dir / name), opts, providers=providers))
            except Exception as exc:  # onnxruntime raises its own exception types
                raise ModelFileError(f"onnxruntime could not load {self.export_dir / name} ({type(exc).__name__}); "
                                     f"rebuild it with `{S.EXPORT_COMMAND}`") from None
        self.encoder, self.decoder = sessions
        self.cross_names = S.cross_names(self.paa_layers)
        wanted = {INPUT_IDS, ATTENTION_MASK, LOGITS_TO_KEEP, S.USE_MASKS, *self.cross_names,
                  *past_names(self.layers)}
        if not wanted <= {i.name for i in self.decoder.get_inputs()} or \
                [o.name for o in self.encoder.get_outputs()] != self.cross_names:
            raise ModelFileError(f"{self.export_dir} does not hold PAA graphs for {self.layers} layers and "
                                 f"{self.paa_layers} fusions; rebuild it with `{S.EXPORT_COMMAND}`")
        self.device = "cuda" if self.decoder.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        self._device_type = self.device
        self.past_names, self.present_names = past_names(self.layers), present_names(self.layers)
        self.tokenizer = Tokenizer.from_file(str(self.export_dir / "tokenizer.json"))
        self.format = ChatFormat(self.tokenizer)
        self.stop_ids = set(int(i) for i in r["stop_token_ids"])
        self._ort = ort
        self._run_options = ort.RunOptions()

    # the agent's interface to an engine -----------------------------------------------------
    def check_prefix(self, prefix: Any) -> None:
        if prefix is not None:
            raise ConfigError("the paa mode speaks as persona sentences; it takes no enrolled persona (prefix)")

    # text pieces from token ids: the runtime's own (it only reads self.format)
    detokenize = Engine.detokenize

    def sampler(self, gen: GenerationConfig, seen_ids: Sequence[int]) -> Sampler:
        """A reply's token picker, as :meth:`Engine.sampler`: ``gen``'s settings, ``seen_ids`` (persona,
        context and prompt) as the tokens already in the conversation."""
        return Sampler(gen, self.vocab_size, seen_ids, stop_ids=self.stop_ids, target_tokens=length_target(gen, None))

    # --- the two graphs ----------------------------------------------------------------------
    def encode(self, persona_ids: Sequence[int], context_ids: Sequence[int]) -> dict[str, Any]:
        """Run the encoder once: each fusion's persona/context keys and values (OrtValues, (1, heads, P|U, d))
        and the two key masks (1, P) / (1, U), by decoder input name."""
        if not persona_ids or not context_ids:
            raise GenerationError("PAA needs persona and context tokens")
        p = np.asarray([persona_ids], dtype=np.int64)
        c = np.asarray([context_ids], dtype=np.int64)
        masks = {S.PERSONA_MASK: np.ones_like(p), S.CONTEXT_MASK: np.ones_like(c)}
        feed = {S.PERSONA_IDS: p, S.CONTEXT_IDS: c, **masks}
        outs = self.encoder.run_with_ort_values(self.cross_names, {k: self._value(v) for k, v in feed.items()},
                                                self._run_options)
        cross = dict(zip(self.cross_names, outs))
        cross.update({k: self._value(v) for k, v in masks.items()})
        return cross

    def empty_past(self) -> list:
        empty = np.zeros((1, self.kv_heads, 0, self.head_dim), dtype=np.float32)
        return [self._value(empty) for _ in self.past_names]

    def forward(self, ids: Sequence[int], past: list, past_len: int, cross: dict, masks: bool,
                all_logits: bool = False) -> StepOutput:
        """Run the decoder over ``ids`` after ``past`` (length ``past_len``) with the turn's ``cross`` inputs."""
        t = len(ids)
        if past_len + t > self.max_positions:
            raise GenerationError(f"{past_len + t} reply positions exceed the backbone's context of "
                                  f"{self.max_positions}; ask for fewer new tokens")
        binding = self.decoder.io_binding()
        binding.bind_cpu_input(INPUT_IDS, np.asarray([ids], dtype=np.int64))
        binding.bind_cpu_input(ATTENTION_MASK, np.ones((1, past_len + t), dtype=np.int64))
        binding.bind_cpu_input(LOGITS_TO_KEEP, np.array([0 if all_logits else 1], dtype=np.int64))
        binding.bind_cpu_input(S.USE_MASKS, np.array([1.0 if masks else 0.0], dtype=np.float32))
        for name, value in cross.items():
            binding.bind_ortvalue_input(name, value)
        for name, value in zip(self.past_names, past):
            binding.bind_ortvalue_input(name, value)
        binding.bind_output(LOGITS, "cpu")
        for name in self.present_names:
            binding.bind_output(name, self._device_type)
        self.decoder.run_with_iobinding(binding, self._run_options)
        outs = binding.get_outputs()
        logits = outs[0].numpy()  # (1, T', V)
        logits = logits[0] if all_logits else logits[0, -1]
        return StepOutput(np.asarray(logits, dtype=np.float32), list(outs[1:]), past_len + t)

    def _value(self, array: np.ndarray):
        return self._ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self._device_type, 0)

    # --- a reply --------------------------------------------------------------------------------
    def generate_ids(self, prepared: PAAPrepared, gen: GenerationConfig | None = None,
                     should_stop: Callable[[], bool] | None = None, masks: bool | None = None) -> Iterator[int]:
        """Reply token ids one at a time (greedy or sampled by the runtime's Sampler); stops at end of turn."""
        gen = gen or GenerationConfig()
        if gen.num_beams > 1:
            raise GenerationError("beam search (num_beams > 1) is not available in the paa mode; use num_beams=1")
        masks = self.masks if masks is None else masks
        prompt = list(prepared.prompt_ids)
        sampler = self.sampler(gen, [*prepared.persona_ids, *prepared.context_ids, *prompt])
        cross = self.encode(prepared.persona_ids, prepared.context_ids)  # once per turn
        out = self.forward(prompt, self.empty_past(), 0, cross, masks)
        steps = min(gen.max_new_tokens, self.max_positions - len(prompt))
        for n in range(steps):
            token = sampler.pick(out.logits)
            if token in self.stop_ids:
                return
            yield token
            if n == steps - 1 or (should_stop is not None and should_stop()):
                return
            sampler.observe(token)
            out = self.forward([token], out.past, out.past_len, cross, masks)

    def stream_text(self, prepared: PAAPrepared, gen: GenerationConfig | None = None,
                    should_stop: Callable[[], bool] | None = None, masks: bool | None = None) -> Iterator[str]:
        gen = gen or GenerationConfig()
        return self.detokenize(self.generate_ids(prepared, gen, should_stop, masks), gen.stop)

    def token_losses(self, prepared: PAAPrepared, target_ids: Sequence[int], masks: bool | None = None) -> np.ndarray:
        """NLL (nats) of each of ``target_ids`` after the decoder prompt, persona and context. (targets,)"""
        if not target_ids:
            raise GenerationError("token_losses needs at least one target token")
        masks = self.masks if masks is None else masks
        ids = [*prepared.prompt_ids, *target_ids]
        cross = self.encode(prepared.persona_ids, prepared.context_ids)
        out = self.forward(ids, self.empty_past(), 0, cross, masks, all_logits=True)
        n = len(prepared.prompt_ids)
        logp = _log_softmax(out.logits[n - 1 : len(ids) - 1])  # (targets, V)
        return -logp[np.arange(len(target_ids)), np.asarray(target_ids, dtype=np.int64)]


class PAAMode(ExplicitMode):
    """Persona and context through PAA's encoders, the reply from its decoder (see the module doc)."""

    name = "paa"

    def __init__(self, sentences: Sequence[str], engine: PAAEngine, masks: bool | None = None) -> None:
        super().__init__(sentences, engine)
        self.masks = engine.masks if masks is None else bool(masks)

    @classmethod
    def open(cls, sentences: Sequence[str], *, backbone: str | Path | None = None,
             runtime: RuntimeConfig | None = None, progress: Progress | None = None, build: bool = False,
             engine: Any = None, paa: str | Path | None = None, masks: bool | None = None) -> "PAAMode":
        """PAA on ``engine`` (a :class:`PAAEngine`), or on the export of the PAA in ``paa`` (None = the installed
        one, :func:`~.paa_store.installed_dir`) for ``backbone`` (None = the default), found or built
        (``build=True``)."""
        from .persona import persona_sentences

        sentences = persona_sentences(sentences)
        if engine is None:
            engine = open_paa_engine(backbone, runtime, progress, build=build, paa=paa)
        if not isinstance(engine, PAAEngine):
            raise ConfigError("the paa mode runs on its own engine (PAA's ONNX export), not the backbone's")
        return cls(sentences, engine, masks=masks)

    def prepare(self, history: Sequence[Turn], gen: GenerationConfig | None = None) -> PAAPrepared:
        check_history(history)
        gen = gen or GenerationConfig()
        eng = self.engine
        persona = paa_persona_ids(eng.format, self.sentences, eng.persona_budget)
        if not persona:
            raise PersonaSentencesError("the persona sentences encode to no tokens")
        context = paa_context_ids(eng.format, history, min(eng.context_budget, gen.context_budget))
        prompt = paa_decoder_prompt(eng.format, context, eng.decoder_context)
        return PAAPrepared(tuple(prompt), tuple(range(len(self.sentences))), tuple(persona), tuple(context))

    def stream(self, prepared: Prepared, gen: GenerationConfig | None = None,
               should_stop: Callable[[], bool] | None = None) -> Iterator[str]:
        return self.engine.stream_text(_paa(prepared), gen or GenerationConfig(), should_stop, self.masks)

    def reply_losses(self, prepared: Prepared, reply: str, reply_budget: int | None = None) -> np.ndarray:
        """Per-token NLL (nats) of ``reply`` (and its end of turn) after ``prepared``. (reply tokens,)"""
        return self.engine.token_losses(_paa(prepared), self.engine.format.reply_ids(reply, reply_budget), self.masks)

    def describe(self) -> str:
        return f"paa mode (masks {'on' if self.masks else 'off'}), {len(self.sentences)} persona sentence(s)"


def _paa(prepared: Prepared) -> PAAPrepared:
    if not isinstance(prepared, PAAPrepared):
        raise GenerationError("the paa mode decodes what its own prepare() made (persona and context ids)")
    return prepared


# --- where the engine comes from -------------------------------------------------------------------
def export_command(variant: str, backbone: str | Path | None = None) -> str:
    """The command line that builds PAA's ``variant`` export for ``backbone``."""
    import shlex

    command = S.EXPORT_COMMAND
    if variant != S.DEFAULT_VARIANT:
        command += f" --variant {variant}"
    if backbone is not None and str(backbone) not in ("", "default"):
        command += f" --backbone {shlex.quote(str(backbone))}"
    return command


def paa_variant(runtime: RuntimeConfig | None) -> str:
    """The PAA export to open: the runtime's variant when it is one PAA has, else fp32."""
    variant = runtime.variant if runtime is not None else None
    if variant is None:
        return S.DEFAULT_VARIANT
    if variant not in S.VARIANTS:
        raise ConfigError(f"the paa mode's export comes as {' or '.join(S.VARIANTS)}, not {variant}")
    return variant


def open_paa_engine(backbone: str | Path | None = None, runtime: RuntimeConfig | None = None,
                    progress: Progress | None = None, *, build: bool = False, paa: str | Path | None = None
                    ) -> PAAEngine:
    """An engine on the export of the PAA in ``paa`` (None = the installed one) for ``backbone``; a missing
    or stale export is built first with ``build=True``, else an :class:`ExportNotReadyError` names the command."""
    from .. import backbone as bb

    folder, info = S.installed_info(paa)
    variant = paa_variant(runtime)
    default = backbone is None or str(backbone) in ("", "default")
    if not default and (Path(backbone).expanduser() / MANIFEST).is_file():
        raise AdapterError("PAA runs on its own export of the backbone: pass a Hugging Face model folder (or "
                           "nothing for the default), not an ONNX export folder")
    command = export_command(variant, backbone) + (f" --from {folder}" if paa is not None else "")
    if default and not build and not bb.is_materialised(bb.default_dir()):
        raise ExportNotReadyError(f"the default backbone is not set up yet; build PAA's export once with `{command}`")
    base_dir = bb.resolve(backbone, progress)
    fp = bb.fingerprint(base_dir)
    if info["backbone"] != fp:
        raise AdapterError(f"the PAA in {folder} was trained for another backbone "
                           f"({info['backbone'][:16]}…, this one is {fp[:16]}…)")
    target = S.export_dir_for(info["sha256"], variant)
    status, why = S.export_status(target, folder, info, fp)
    if status != S.CURRENT:
        from ..engines import build_paa_export

        problem = (f"PAA's {variant} ONNX export is not built yet" if status == S.MISSING
                   else f"PAA's {variant} ONNX export is unusable ({why})")
        target = build_paa_export(folder, base_dir, variant, progress, build=build, command=command, problem=problem)
    return PAAEngine(target, runtime)


def install_paa(folder: str | Path) -> Path:
    """Copy the trained PAA in ``folder`` (checked: sha256) into :func:`~.paa_store.installed_dir`, replacing what
    is there only once the copy is complete and checked; the installed folder."""
    source, info = Path(folder), S.paa_info(folder)
    target = S.installed_dir(create=False)
    if source.resolve() == target.resolve():
        return target
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".install-paa-", dir=parent))
    try:
        staged = tmp / "paa"
        staged.mkdir()
        for name in (S.PAA_WEIGHTS, S.PAA_INFO):
            shutil.copyfile(source / name, staged / name)
        if S.paa_info(staged).get("sha256") != info.get("sha256"):  # pragma: no cover - a copy that changed
            raise AdapterError(f"copying the PAA from {source} changed it; nothing was installed")
        if target.exists():
            old = tmp / "old"
            target.rename(old)
        staged.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
