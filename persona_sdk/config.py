"""Generation and runtime settings: dataclasses that reject bad values early."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from .errors import ConfigError
from .manifest import VARIANTS

DEVICES = ("auto", "cpu", "cuda")
# int8 weight-only MatMulNBits: close to fp32's perplexity at half its memory and faster; int4
# is smaller still but loses more quality (the measurements are in BENCHMARKS.md).
DEFAULT_VARIANT = "int8"
GPU_VARIANT = "fp16"
# the pull toward the length the persona's turns run at in this conversation (its profile's usual
# length before it has spoken): on by default at 5, measured best on the K = 20 voice table
# (BENCHMARKS.md, "length from the conversation"); 0 turns it off
LENGTH_PULL = 5.0
# where the pull's target comes from (GenerationConfig.length_from)
LENGTH_FROM = ("conversation", "profile", "blend")


def _meta(help: str) -> dict:
    return {"help": help}


@dataclass
class GenerationConfig:
    """How replies are decoded. ``temperature=0`` (or ``do_sample=False``) is greedy."""

    max_new_tokens: int = field(default=128, metadata=_meta("Most tokens in one reply."))
    do_sample: bool = field(default=True, metadata=_meta("Sample (True) or pick the most likely token (False)."))
    temperature: float = field(default=0.7, metadata=_meta("Softmax temperature for sampling; 0 means greedy."))
    top_k: int = field(default=50, metadata=_meta("Sample among the k most likely tokens; 0 disables."))
    top_p: float = field(default=0.9, metadata=_meta("Nucleus sampling mass in (0, 1]; 1 disables."))
    repetition_penalty: float = field(default=1.1, metadata=_meta("Penalty >= 1 on tokens already in the conversation."))
    num_beams: int = field(default=1, metadata=_meta("Beam search width; > 1 turns sampling off (PersonaPKT uses 5)."))
    length_penalty: float = field(default=1.0, metadata=_meta("Beam score = log-prob / length**length_penalty."))
    stop: tuple[str, ...] = field(default=(), metadata=_meta("Extra strings that end a reply (not included)."))
    seed: int | None = field(default=None, metadata=_meta("Seed for reproducible sampling; default: fresh randomness."))
    context_budget: int = field(default=1024, metadata=_meta("Most conversation tokens fed to the model; oldest turns drop first."))
    length_pull: float = field(default=LENGTH_PULL, metadata=_meta(
        "How strongly a reply is pulled toward its target length (see length_from): end-of-turn logits get "
        "length_pull * log((n + 1) / (target + 1)) after n tokens; 0 turns it off. Without target_tokens, only "
        "personas whose profile keeps a usual length are pulled (not the bare backbone)."))
    target_tokens: int | None = field(default=None, metadata=_meta(
        "Target reply length in tokens for length_pull; default: from length_from."))
    length_from: str = field(default="conversation", metadata=_meta(
        "Where length_pull's target comes from when target_tokens is not set: 'conversation' (default: the "
        "median length of the persona's turns so far in this conversation), 'profile' (the persona's usual "
        "reply length, kept in its profile) or 'blend' (their geometric mean); before the persona has "
        "spoken, the profile's."))

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be an int >= 1, got {self.max_new_tokens!r}")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ConfigError(f"top_k must be an int >= 0 (0 disables), got {self.top_k!r}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.repetition_penalty < 1:
            raise ConfigError(f"repetition_penalty must be >= 1, got {self.repetition_penalty!r}")
        if not isinstance(self.num_beams, int) or self.num_beams < 1:
            raise ConfigError(f"num_beams must be an int >= 1, got {self.num_beams!r}")
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        self.stop = tuple(s for s in self.stop if s)
        if not isinstance(self.context_budget, int) or self.context_budget < 16:
            raise ConfigError(f"context_budget must be an int >= 16, got {self.context_budget!r}")
        if not isinstance(self.length_pull, (int, float)) or not 0 <= self.length_pull <= 20:
            raise ConfigError(f"length_pull must be a number in [0, 20] (0 turns it off), got {self.length_pull!r}")
        if self.target_tokens is not None and (not isinstance(self.target_tokens, int) or self.target_tokens < 1):
            raise ConfigError(f"target_tokens must be an int >= 1 or None (the persona's own), got {self.target_tokens!r}")
        if self.length_from not in LENGTH_FROM:
            raise ConfigError(f"length_from must be one of {', '.join(LENGTH_FROM)}, got {self.length_from!r}")

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature == 0

    def replace(self, **changes) -> "GenerationConfig":
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ConfigError(f"unknown generation setting(s): {', '.join(sorted(unknown))}; "
                              f"allowed: {', '.join(f.name for f in fields(self))}")
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return GenerationConfig(**values)


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how the ONNX backbone runs."""

    device: str = field(default="auto", metadata=_meta("auto (CUDA when available), cpu or cuda."))
    variant: str | None = field(default=None, metadata=_meta(
        "ONNX variant: fp32, int8, int4 (CPU) or fp16 (GPU); default: int8 on CPU, fp16 on CUDA."))
    threads: int | None = field(default=None, metadata=_meta("Intra-op threads; None lets onnxruntime decide."))
    spin: bool = field(default=True, metadata=_meta(
        "Let onnxruntime's worker threads busy-wait between the ops of a run (faster decoding on an idle "
        "CPU, BENCHMARKS.md); they stop the moment a run returns, so nothing spins between tokens or replies. "
        "False: workers sleep between ops (better when other busy programs share few cores)."))

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.variant is not None and self.variant not in VARIANTS:
            raise ConfigError(f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ConfigError(f"threads must be a positive int or None, got {self.threads!r}")
        if not isinstance(self.spin, bool):
            raise ConfigError(f"spin must be True or False, got {self.spin!r}")
