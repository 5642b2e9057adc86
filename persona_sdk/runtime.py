"""The ONNX Runtime decode loop with persona prefix injection. No torch here.

The backbone is an ordinary "decoder with past" graph::

    inputs   input_ids (B, T)   attention_mask (B, past+T)   [position_ids (B, T)]
             past_key_values.{i}.key / .value   (B, kv_heads, past, head_dim)
             [logits_to_keep (1,): 0 = logits for every position, k = the last k only]
    outputs  logits (B, T, V)   present.{i}.key / .value   (B, kv_heads, past+T, head_dim)

``position_ids`` exists in the optimum graph only; the fused graph
(GroupQueryAttention) puts token i of the input at position past+i itself,
each row after its own past length (the number of ones in its mask row).

A persona is fed as the initial past: the KV block ``(layers, 2, kv_heads, P,
head_dim)`` becomes the first P positions of the row, the attention mask gets
P leading ones and positions start at P. Without a persona the initial past is
empty (length 0).

Decoding runs on a KV cache (:mod:`persona_sdk.kvcache`): with the fused graph
on CPU, preallocated buffers bound as both past and present, which the
attention kernel extends in place (no per-step KV copy, no per-step
allocation); with any other graph, the ``present`` OrtValues of one step are
bound as the ``past`` of the next (IO binding, no copies through numpy).
A :class:`~persona_sdk.kvcache.DecodeState` keeps one conversation's KV
between turns, so a chat feeds only the new turn, not its whole history.

Threads: onnxruntime's intra-op workers may busy-wait between the ops of one
run (``RuntimeConfig.spin``, on by default) and are told to stop the moment a
run returns (``session.force_spinning_stop``), so an idle app burns no CPU
between replies, or between the tokens of a paused stream.

The graph's names and the manifest come from :mod:`persona_sdk.manifest`;
finding (or building) the export a chat runs on is :mod:`persona_sdk.engines`'
job, not this module's: the runtime opens exports, it never makes them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from .backbone import BackboneSpec
from .config import GenerationConfig, RuntimeConfig
from .conversation import ChatFormat, Turn
from .errors import DeviceError, GenerationError, ModelFileError
from .kvcache import PREFILL_CHUNK, CopyCache, DecodeState, SharedKVCache
from .manifest import (ATTENTION_MASK, INPUT_IDS, LOGITS, LOGITS_TO_KEEP, MODEL, POSITION_IDS, past_names,
                       present_names, read_manifest)
from .prefix import Prefix, PrefixSpec
from .sampling import Sampler, length_target

log = logging.getLogger(__name__)

def load_manifest(export_dir: Path) -> dict:
    """An export's manifest after checking it, its model files (sizes) and tokenizer."""
    manifest = read_manifest(export_dir)
    if not (Path(export_dir) / "tokenizer.json").is_file():
        raise ModelFileError(f"{Path(export_dir) / 'tokenizer.json'} is missing; delete {export_dir} and re-export")
    return manifest


def session_options(runtime: RuntimeConfig):
    """onnxruntime session options for ``runtime``: full graph optimisation, its thread count, quiet logs."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if runtime.threads:
        opts.intra_op_num_threads = runtime.threads
    opts.log_severity_level = 3
    # Spinning workers save a futex wake-up per op (~400 ops a token) but hold a core while
    # they wait: spin only inside a run, stop the moment it returns (no idle burn between
    # tokens or replies).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if runtime.spin else "0")
    opts.add_session_config_entry("session.force_spinning_stop", "1")
    return opts


def choose_providers(device: str) -> list[str]:
    """onnxruntime execution providers for ``device`` (auto | cpu | cuda)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    has_cuda = "CUDAExecutionProvider" in available
    if device == "cuda":
        if not has_cuda:
            raise DeviceError(
                "CUDA was requested but onnxruntime has no CUDA provider here "
                f"(available: {', '.join(available)}); install persona-sdk[gpu] on a machine with an NVIDIA GPU, "
                "or use --device cpu"
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return (["CUDAExecutionProvider"] if has_cuda else []) + ["CPUExecutionProvider"]


@dataclass
class StepOutput:
    logits: np.ndarray  # (B, V) float32, last position
    past: list  # OrtValues: [l0.key, l0.value, l1.key, ...] each (B, kv_heads, past, head_dim)
    past_len: int


class Engine:
    """One ONNX backbone session. Thread-compatible; :class:`PersonaAgent` adds the lock."""

    def __init__(self, export_dir: Path, runtime: RuntimeConfig | None = None) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.export_dir = Path(export_dir)
        self.runtime = runtime or RuntimeConfig()
        self.manifest = load_manifest(self.export_dir)
        m = self.manifest
        self.fingerprint: str = m["fingerprint"]
        self.layers, self.kv_heads, self.head_dim = int(m["layers"]), int(m["kv_heads"]), int(m["head_dim"])
        self.vocab_size = int(m["vocab_size"])
        self.kv_dtype = np.dtype(m["kv_dtype"])
        config = self.export_dir / "config.json"
        self.max_positions = (BackboneSpec.from_config(json.loads(config.read_text())).max_positions
                              if config.is_file() else 2048)
        providers = choose_providers(self.runtime.device)
        opts = session_options(self.runtime)
        try:
            self.session = ort.InferenceSession(str(self.export_dir / MODEL), opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelFileError(
                f"onnxruntime could not load {self.export_dir / MODEL} ({type(exc).__name__}); "
                "the file is corrupt or from an incompatible export: export the backbone again"
            ) from None
        used = self.session.get_providers()
        if self.runtime.device == "auto" and providers[0] == "CUDAExecutionProvider" and used[0] != providers[0]:
            log.warning("CUDA provider is installed but no GPU could be used; running on CPU")
        self.device = "cuda" if used[0] == "CUDAExecutionProvider" else "cpu"
        names = [i.name for i in self.session.get_inputs()]
        self.past_names = past_names(self.layers)
        self.present_names = present_names(self.layers)
        expected = {INPUT_IDS, ATTENTION_MASK, *self.past_names}
        if not expected <= set(names):
            raise ModelFileError(f"{self.export_dir / MODEL} is not a decoder-with-past graph for "
                                 f"{self.layers} layers (inputs: {', '.join(names[:6])}...)")
        self.has_position_ids = POSITION_IDS in names
        self.has_logits_to_keep = LOGITS_TO_KEEP in names
        # the fused graph's attention kernel can extend a preallocated past in place (CPU buffers)
        self.shares_kv = (not self.has_position_ids and self.device == "cpu"
                          and m.get("graph", "fused") == "fused")
        self._run_options = ort.RunOptions()
        self.tokenizer = Tokenizer.from_file(str(self.export_dir / "tokenizer.json"))
        self.format = ChatFormat(self.tokenizer)
        # eos ids and the end-of-turn token, recorded by the exporter (backbone.stop_token_ids)
        self.stop_ids = set(int(i) for i in m["stop_token_ids"])
        self._ort = ort
        self._device_type = "cuda" if self.device == "cuda" else "cpu"

    # --- prefix ----------------------------------------------------------------
    @property
    def spec(self) -> PrefixSpec:
        return PrefixSpec(self.layers, self.kv_heads, 1, self.head_dim, self.kv_dtype.name)

    def check_prefix(self, prefix: Prefix | None) -> None:
        if prefix is None:
            return
        prefix.check(self.spec, self.fingerprint)

    def initial_past(self, prefix: Prefix | None, batch: int = 1) -> tuple[list, int]:
        """The persona block as per-layer past OrtValues, or an empty past."""
        if prefix is None:
            block = np.zeros((self.layers, 2, self.kv_heads, 0, self.head_dim), self.kv_dtype)
        else:
            self.check_prefix(prefix)
            block = prefix.kv.astype(self.kv_dtype, copy=False)  # (layers, 2, kv_heads, P, head_dim)
        plen = block.shape[3]
        past = []
        for l in range(self.layers):
            for kv in (0, 1):
                arr = np.ascontiguousarray(np.broadcast_to(block[l, kv][None], (batch, *block[l, kv].shape)))
                past.append(self._ort.OrtValue.ortvalue_from_numpy(arr, self._device_type, 0))
        return past, plen

    # --- one forward -------------------------------------------------------------
    def forward(self, ids: np.ndarray, past: list, past_len: int, all_logits: bool = False) -> StepOutput:
        """Run ``ids`` (B, T) after ``past`` of length ``past_len`` (prefix included)."""
        batch, t = ids.shape
        if batch > 1 and t > 1 and past_len > 0 and not self.has_position_ids:
            # the fused attention kernel prefills one sequence at a time after a past
            raise GenerationError("the fused graph runs a multi-token input after a past for batch size 1 only")
        if past_len + t > self.max_positions:
            raise GenerationError(f"{past_len + t} positions (persona + text) exceed the backbone's context of "
                                  f"{self.max_positions}; shorten the input")
        binding = self.session.io_binding()
        binding.bind_cpu_input(INPUT_IDS, np.ascontiguousarray(ids, dtype=np.int64))
        binding.bind_cpu_input(ATTENTION_MASK, np.ones((batch, past_len + t), dtype=np.int64))
        if self.has_position_ids:
            pos = np.broadcast_to(np.arange(past_len, past_len + t, dtype=np.int64), (batch, t))
            binding.bind_cpu_input(POSITION_IDS, np.ascontiguousarray(pos))
        if self.has_logits_to_keep:  # 1: the lm_head on the last position only
            binding.bind_cpu_input(LOGITS_TO_KEEP, np.array([0 if all_logits else 1], dtype=np.int64))
        for name, value in zip(self.past_names, past):
            binding.bind_ortvalue_input(name, value)
        binding.bind_output(LOGITS, "cpu")
        for name in self.present_names:
            binding.bind_output(name, self._device_type)
        self.run(binding)
        outs = binding.get_outputs()
        logits = outs[0].numpy()  # (B, T, V)
        logits = logits if all_logits else logits[:, -1, :]
        return StepOutput(np.asarray(logits, dtype=np.float32), list(outs[1:]), past_len + t)

    def token_losses(self, ids: Sequence[int], n_prompt: int, prefix: Prefix | None = None) -> np.ndarray:
        """Negative log-likelihood of ``ids[n_prompt:]`` given what precedes it (and the persona)."""
        if not 0 < n_prompt < len(ids):
            raise GenerationError("token_losses needs at least one prompt and one target token")
        past, plen = self.initial_past(prefix)
        out = self.forward(np.asarray([ids], dtype=np.int64), past, plen, all_logits=True)
        logits = out.logits[0, n_prompt - 1 : len(ids) - 1]  # (n_target, V)
        targets = np.asarray(ids[n_prompt:], dtype=np.int64)
        logp = _log_softmax(logits)
        return -logp[np.arange(len(targets)), targets]

    def run(self, binding) -> None:
        """Run the graph on an IOBinding (the one place the decode paths call onnxruntime)."""
        self.session.run_with_iobinding(binding, self._run_options)

    # --- caches ------------------------------------------------------------------
    def new_cache(self, slots: int = 1, capacity: int = 256) -> SharedKVCache | CopyCache:
        """A KV cache of ``slots`` rows: in-place shared buffers where the graph allows, else copies."""
        return SharedKVCache(self, slots, capacity) if self.shares_kv else CopyCache(self, slots, capacity)

    def new_state(self, prefix: Prefix | None = None, capacity: int = 256) -> DecodeState:
        """One conversation's KV cache, starting from ``prefix``'s block (reused across turns)."""
        return DecodeState(self, prefix, capacity)

    # --- generation --------------------------------------------------------------
    def budget(self, prefix: Prefix | None, gen: GenerationConfig) -> int:
        plen = prefix.length if prefix is not None else 0
        return max(16, min(gen.context_budget, self.max_positions - plen - gen.max_new_tokens))

    def prompt_ids(self, history: Sequence[Turn], prefix: Prefix | None, gen: GenerationConfig) -> list[int]:
        return self.format.prompt_ids(history, self.budget(prefix, gen))

    def generate_ids(
        self,
        prompt_ids: Sequence[int],
        prefix: Prefix | None = None,
        gen: GenerationConfig | None = None,
        should_stop: Callable[[], bool] | None = None,
        state: DecodeState | None = None,
    ) -> Iterator[int]:
        """Yield reply token ids one at a time (sampling/greedy). Stops at end-of-turn.

        ``state``: a conversation's :class:`DecodeState` (made with ``new_state(prefix)``):
        the prompt tokens it already holds are not fed again, and it holds the
        prompt and the reply afterwards. Without one, a fresh cache is used.
        """
        gen = gen or GenerationConfig()
        if gen.num_beams > 1:
            yield from self.beam_search(prompt_ids, prefix, gen)
            return
        if state is None:
            state = self.new_state(prefix, capacity=len(prompt_ids) + gen.max_new_tokens + 1
                                   + (prefix.length if prefix is not None else 0))
        sampler = self.sampler(gen, prompt_ids, prefix)
        logits = state.start(prompt_ids, PREFILL_CHUNK)
        for n in range(gen.max_new_tokens):
            token = sampler.pick(logits)
            if token in self.stop_ids:
                return
            yield token
            if n == gen.max_new_tokens - 1 or (should_stop is not None and should_stop()):
                return
            sampler.observe(token)
            logits = state.feed(token)

    def sampler(self, gen: GenerationConfig, prompt_ids: Sequence[int], prefix: Prefix | None = None) -> Sampler:
        """A reply's token picker: ``gen``'s settings, the prompt as seen tokens, the persona's length target."""
        return Sampler(gen, self.vocab_size, prompt_ids, stop_ids=self.stop_ids,
                       target_tokens=length_target(gen, prefix, self.format.own_turn_tokens(prompt_ids)
                                                   if gen.length_pull else ()))

    def beam_search(self, prompt_ids: Sequence[int], prefix: Prefix | None, gen: GenerationConfig) -> Iterator[int]:
        """Beam search (log-prob / length**length_penalty); yields the best beam's tokens."""
        k = gen.num_beams
        past, plen = self.initial_past(prefix, batch=1)
        out = self.forward(np.asarray([prompt_ids], dtype=np.int64), past, plen)
        logp = _log_softmax(out.logits)  # (1, V)
        beams: list[list[int]] = [[]]
        scores = np.zeros(1, dtype=np.float64)
        finished: list[tuple[float, list[int]]] = []
        past_np = [v.numpy() for v in out.past]  # each (1, kv_heads, L, head_dim)
        past_len = out.past_len
        for step in range(gen.max_new_tokens):
            cand = scores[:, None] + logp  # (beams, V)
            n = min(2 * k, cand.size)
            top = np.argpartition(-cand, n - 1, axis=None)[:n]
            flat = top[np.argsort(-cand.ravel()[top], kind="stable")]
            next_beams, next_scores, parents = [], [], []
            for idx in flat:
                b, tok = divmod(int(idx), self.vocab_size)
                seq = beams[b] + [tok]
                if tok in self.stop_ids:
                    finished.append((float(cand[b, tok]) / max(len(seq) - 1, 1) ** gen.length_penalty, beams[b]))
                    continue
                next_beams.append(seq)
                next_scores.append(float(cand[b, tok]))
                parents.append(b)
                if len(next_beams) == k:
                    break
            best_open = max(next_scores) / (step + 1) ** gen.length_penalty if next_scores else -np.inf
            if len(finished) >= k and max(f[0] for f in finished) >= best_open:
                break
            if not next_beams:
                break
            beams, scores = next_beams, np.asarray(next_scores)
            if step == gen.max_new_tokens - 1:
                break
            order = np.asarray(parents)
            past = [self._ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(p[order]), self._device_type, 0)
                    for p in past_np]
            step_ids = np.asarray([[s[-1]] for s in beams], dtype=np.int64)
            out = self.forward(step_ids, past, past_len)
            past_np = [v.numpy() for v in out.past]
            past_len = out.past_len
            logp = _log_softmax(out.logits)
        for seq, score in zip(beams, scores):
            finished.append((float(score) / max(len(seq), 1) ** gen.length_penalty, seq))
        best = max(finished, key=lambda f: f[0])[1] if finished else []
        yield from best

    def stream_text(
        self,
        prompt_ids: Sequence[int],
        prefix: Prefix | None = None,
        gen: GenerationConfig | None = None,
        should_stop: Callable[[], bool] | None = None,
        state: DecodeState | None = None,
    ) -> Iterator[str]:
        """Yield reply text pieces as they are decoded, honouring stop strings."""
        gen = gen or GenerationConfig()
        return self.detokenize(self.generate_ids(prompt_ids, prefix, gen, should_stop, state), gen.stop)

    def detokenize(self, tokens: Iterable[int], stops: Sequence[str] = ()) -> Iterator[str]:
        """Text pieces of a stream of reply token ids: whole characters only, cut at the first stop string.

        Stops consuming ``tokens`` (and closes it, when it is a generator) at a stop string.
        """
        text = TextStream(self.format, stops)
        try:
            for token in tokens:
                piece = text.push(token)
                if piece:
                    yield piece
                if text.stopped:
                    return
            piece = text.finish()
            if piece:
                yield piece
        finally:
            close = getattr(tokens, "close", None)
            if close is not None:
                close()


class TextStream:
    """Reply token ids in, text pieces out: whole characters only, cut at the first stop string.

    ``push(token)`` returns the text that became final (maybe ""); once a stop
    string appears, ``stopped`` is True and the text before it has been returned.
    ``finish()`` returns what is left at the end of the reply.
    """

    def __init__(self, fmt: ChatFormat, stops: Sequence[str] = ()) -> None:
        self.format = fmt
        self.stops = tuple(stops)
        self._hold = max((len(s) for s in self.stops), default=1) - 1
        self._ids: list[int] = []
        self._sent = 0
        self._text = ""
        self.stopped = False

    def push(self, token: int) -> str:
        if self.stopped:
            return ""
        self._ids.append(int(token))
        self._text = text = self.format.decode(self._ids)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for more bytes
            return ""
        cut = _find_stop(text, self.stops)
        if cut is not None:
            self.stopped = True
            return self._take(cut)
        return self._take(len(text) - self._hold if self.stops else len(text))

    def finish(self) -> str:
        if self.stopped:
            return ""
        text = self._text.rstrip("\ufffd")
        cut = _find_stop(text, self.stops)
        return self._take(cut if cut is not None else len(text))

    def _take(self, end: int) -> str:
        if end <= self._sent:
            return ""
        piece, self._sent = self._text[self._sent:end], end
        return piece


def _find_stop(text: str, stops: Sequence[str]) -> int | None:
    hits = [text.find(s) for s in stops if s in text]
    return min(hits) if hits else None


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64, copy=False)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))

