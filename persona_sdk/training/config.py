"""Training settings: :class:`TrainConfig` (the personal prefix, :class:`DPConfig` when it is
trained privately), :class:`SourceConfig` (the source prefix), :class:`PALConfig` (the
explicit-persona PAL adapter) and :class:`PAAConfig` (PAA's fusion blocks), with the library's defaults and learning-rate policy.

Light on purpose (no numpy, no torch): every field carries its help text
(``field.metadata["help"]``), and the CLI takes its option defaults and help
from these fields, so the SDK and ``persona enroll`` / ``persona source train``
train alike.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..errors import ConfigError

METHODS = ("prefix", "rand-prefix", "prompt")
BF16_MODES = ("auto", "on", "off")
PAL_STAGE1_LOSS = ("per-example", "per-token")
DEFAULT_PROMPT_INIT = "Reply as yourself: in your own words, tone and style, as you always write to friends."
# The default learning rate. From a source prefix the block has to move far enough to change how
# replies *read* (length, casing, topics), not only their perplexity: a gentle rate refines the
# likelihood while the generated replies stay the source's (BENCHMARKS.md, enrollment defaults).
# 3e-2 rather than 1e-2: step-matched at K = 4 it tripled the margin by which a speaker's own
# prefix beats the others' on their replies, at no perplexity cost (BENCHMARKS.md, "Identification
# levers"), and at K = 20 it raised attribution from 29% to 41%. But with few replies the 5-minute
# budget runs 3+ epochs over them and 3e-2 over-fits (K = 20: the speakers with < 300 training
# replies lost perplexity against the source prefix, one never improved on it), so below
# FEW_REPLIES training replies the rate stays 1e-2 (BENCHMARKS.md, "The K = 20 table at lr 3e-2").
LR_FROM_SOURCE = 3e-2
LR_FROM_SOURCE_FEW = 1e-2
FEW_REPLIES = 300
LR_FROM_SCRATCH = 3e-3
# Peak memory of a training step is one forward/backward's activations: bounded by splitting a batch
# into micro-batches of at most this many padded tokens (BENCHMARKS.md, enrollment memory).
MICRO_BATCH_TOKENS = 512
# The default budget: one enrollment fits in this many minutes of a laptop's CPU (the whole
# budget is used, the learning rate decays over it).
DEFAULT_MINUTES = 5.0

SOURCE_METHODS = ("plain", "temperature", "ppreptile", "mtml", "amtml")
META_METHODS = ("ppreptile", "mtml", "amtml")


def _help(default: Any, text: str) -> Any:
    return field(default=default, metadata={"help": text})


@dataclass
class DPConfig:
    """Private training's target and DP-SGD's own settings (see :mod:`persona_sdk.training.methods.dp`)."""

    epsilon: float = _help(8.0, "target epsilon of (epsilon, delta)-DP per training reply (inf = clipping, "
                                "no noise)")
    delta: float = _help(1e-5, "target delta; must be below 1/n for n training replies")
    max_grad_norm: float = _help(1e-2, "C: each example's gradient is clipped to this L2 norm")
    batch_size: int = _help(32, "expected examples per step (Poisson sampling rate q = batch_size / n)")
    lr: float = _help(3e-3, "AdamW peak learning rate of private training (its own: noise changes what works)")
    insecure_seed: int | None = _help(None, "seed the sampling and the noise (tests only: a known seed voids "
                                            "the guarantee)")

    def __post_init__(self) -> None:
        if not (isinstance(self.epsilon, (int, float)) and self.epsilon > 0 and not math.isnan(self.epsilon)):
            raise ConfigError(f"epsilon must be > 0 (inf = no noise), got {self.epsilon!r}")
        if not 0 < self.delta < 1:
            raise ConfigError(f"delta must be in (0, 1), got {self.delta!r}")
        if not (self.max_grad_norm > 0 and math.isfinite(self.max_grad_norm)):
            raise ConfigError(f"max_grad_norm must be > 0, got {self.max_grad_norm!r}")
        if not isinstance(self.batch_size, int) or isinstance(self.batch_size, bool) or self.batch_size <= 0:
            raise ConfigError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive number, got {self.lr!r}")


@dataclass
class TrainConfig:
    """How the personal prefix is trained (each field's help is in its metadata)."""

    method: str = _help("prefix", "prefix (from the source prefix), rand-prefix or prompt (a soft prompt)")
    prefix_len: int = _help(16, "P, the number of virtual tokens in the KV block")
    lr: float | None = _help(None, f"AdamW peak learning rate (default: {LR_FROM_SOURCE:g} when training starts from "
                                   f"a source prefix, {LR_FROM_SOURCE_FEW:g} if it does with fewer than {FEW_REPLIES} "
                                   f"training replies, {LR_FROM_SCRATCH:g} otherwise)")
    epochs: int = _help(20, "maximum passes over the training replies (a time budget usually ends the run first)")
    batch_size: int = _help(8, "examples per optimisation step (length-bucketed)")
    micro_batch_tokens: int = _help(MICRO_BATCH_TOKENS, "most padded tokens in one forward/backward pass: a "
                                    "bigger batch is split and its gradients summed (the same step, less memory; "
                                    "0 = never split)")
    warmup: float = _help(0.06, "fraction of the steps with linear learning-rate warm-up (0..0.5)")
    weight_decay: float = _help(0.0, "AdamW weight decay on the KV block / soft prompt")
    grad_clip: float = _help(1.0, "max gradient L2 norm (0 disables clipping)")
    context_budget: int = _help(112, "max tokens of conversation context in front of a reply (oldest turns dropped)")
    reply_budget: int = _help(48, "max tokens of a reply that are trained on")
    eval_every: int = _help(0, "validate every N steps (0 = `evals` times, spread over the run)")
    evals: int = _help(4, "validations spread evenly over the run when eval_every is 0 (the last at its end)")
    max_val: int = _help(48, "validation replies scored each time, evenly spread over the held-out ones (0 = all)")
    patience: int = _help(0, "stop after this many validations in a row without improvement (0 = never)")
    max_minutes: float | None = _help(DEFAULT_MINUTES, "time budget in minutes, all of it used for training, the "
                                                       "learning rate decaying over it; keeps the best checkpoint "
                                                       "(None = no limit: the epochs end the run)")
    max_steps: int = _help(0, "stop after this many optimisation steps (0 = no limit)")
    min_examples: int = _help(20, "refuse to train (before loading the model) with fewer training replies")
    val_fraction: float = _help(0.1, "share of conversations held out for validation when no split is given")
    seed: int = _help(0, "random seed: same data + seed + config = same prefix")
    bf16: str = _help("auto", f"bfloat16 autocast, one of {BF16_MODES} (auto = only if the CPU has native bf16)")
    prompt_init: str = _help(DEFAULT_PROMPT_INIT, "text whose token embeddings initialise the soft prompt "
                                                  "(method 'prompt')")
    dp: DPConfig | None = _help(None, "train privately: DP-SGD with a stated epsilon, delta (its own batch size "
                                      "and lr; no best-checkpoint selection) -- None = ordinary training")

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.bf16 not in BF16_MODES:
            raise ConfigError(f"bf16 must be one of {BF16_MODES}, got {self.bf16!r}")
        positive_ints = ("prefix_len", "epochs", "batch_size", "context_budget", "reply_budget", "evals",
                         "min_examples")
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("eval_every", "max_steps", "seed", "patience", "max_val", "micro_batch_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive number or None (the default policy), got {self.lr!r}")
        if not 0 <= self.warmup <= 0.5:
            raise ConfigError(f"warmup must be a fraction in [0, 0.5], got {self.warmup!r}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ConfigError("weight_decay and grad_clip must be >= 0")
        if not 0 < self.val_fraction < 0.5:
            raise ConfigError(f"val_fraction must be in (0, 0.5), got {self.val_fraction!r}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ConfigError(f"max_minutes must be > 0 or None, got {self.max_minutes!r}")
        if self.prefix_len > 256:
            raise ConfigError(f"prefix_len must be at most 256, got {self.prefix_len}")
        if self.dp is not None and not isinstance(self.dp, DPConfig):
            raise ConfigError(f"dp must be a DPConfig or None, got {type(self.dp).__name__}")

    def learning_rate(self, from_source: bool, n_train: int | None = None) -> float:
        """``lr``, or the default policy: one rate from a source prefix (gentler when there are fewer than
        FEW_REPLIES training replies, ``n_train``; None = not few), another from scratch."""
        if self.lr is not None:
            return self.lr
        if not from_source:
            return LR_FROM_SCRATCH
        return LR_FROM_SOURCE_FEW if n_train is not None and n_train < FEW_REPLIES else LR_FROM_SOURCE

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "prompt_init"}
        d["dp"] = asdict(self.dp) if self.dp is not None else None
        return d


@dataclass
class SourceConfig:
    """How the source prefix is trained (each field's help is in its metadata)."""

    method: str = _help("plain", " | ".join(SOURCE_METHODS))
    prefix_len: int = _help(16, "P, virtual tokens of the block")
    steps: int = _help(200, "optimisation steps on batches (meta methods: inner steps in total)")
    lr: float = _help(3e-3, "AdamW learning rate (plain/temperature) or inner learning rate (meta methods)")
    batch_size: int = _help(8, "examples per step")
    warmup: float = _help(0.06, "fraction of steps with linear warm-up (plain/temperature)")
    grad_clip: float = _help(1.0, "max gradient L2 norm (0 disables)")
    temperature: float = _help(10.0, "T of temperature mixing: speaker rate ∝ n^(1/T)")
    inner_steps: int = _help(3, "k, inner steps per sampled speaker (meta methods)")
    outer_batch: int = _help(2, "speakers per outer step (meta methods)")
    outer_lr: float = _help(1.0, "β of the Reptile outer step θ ← θ + β·mean(W_i − θ)")
    alpha: float = _help(0.8, "α of L = α·L_res + (1−α)·L_rec (mtml/amtml)")
    context_budget: int = _help(112, "max context tokens in front of a reply")
    reply_budget: int = _help(48, "max reply tokens trained on")
    eval_every: int = _help(0, "validate every N steps (0 = 4 times per run)")
    max_minutes: float | None = _help(None, "time budget in minutes; stops at the best checkpoint so far")
    seed: int = _help(0, "random seed (same data + config + seed = same block)")
    init_text: str | None = _help(None, "start from the KV of this text (a hard prompt) instead of P random tokens")
    shards: int = _help(0, "plain/temperature: speaker shards, each drawing batch_size/shards of every batch from "
                           "its own stream (0 = one per process); the data order, and so the result, depends on "
                           "the seed and the shards, not on how many processes run them")

    def __post_init__(self) -> None:
        if self.method not in SOURCE_METHODS:
            raise ConfigError(f"source method must be one of {SOURCE_METHODS}, got {self.method!r}")
        for name in ("prefix_len", "steps", "batch_size", "inner_steps", "outer_batch", "context_budget",
                     "reply_budget"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not (self.lr > 0 and self.outer_lr > 0 and self.temperature > 0):
            raise ConfigError("lr, outer_lr and temperature must be > 0")
        if not 0 <= self.alpha <= 1:
            raise ConfigError(f"alpha must be in [0, 1], got {self.alpha!r}")
        if not 0 <= self.warmup <= 0.5:
            raise ConfigError(f"warmup must be in [0, 0.5], got {self.warmup!r}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ConfigError("max_minutes must be > 0 or None")
        if not isinstance(self.shards, int) or isinstance(self.shards, bool) or self.shards < 0:
            raise ConfigError(f"shards must be a non-negative integer, got {self.shards!r}")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class PALConfig:
    """How PAL (the explicit-persona LoRA adapter) is trained: stage 1 (mixed selection + generation SFT),
    then stage 2 (DPO). Each field's help is in its metadata."""

    rank: int = _help(8, "LoRA rank r (attention and MLP projections of every layer)")
    lora_alpha: float = _help(16.0, "LoRA alpha (scale alpha / r)")
    top_layers: int = _help(0, "LoRA in the top N decoder layers only (0 = all): backward stops there, "
                                 "steps are cheaper")
    lr: float = _help(3e-4, "stage-1 AdamW learning rate")
    batch_size: int = _help(8, "stage-1 examples per step")
    stage1_replies: int = _help(1600, "labelled train replies in stage 1 (each gives a selection and a "
                                        "generation example)")
    stage1_epochs: int = _help(1, "passes over the stage-1 examples")
    stage1_loss: str = _help("per-example", "how stage 1 averages its loss: per-example (each example's mean "
                                            "token loss, then the mean over examples: a short selection answer "
                                            "weighs as much as a whole reply) or per-token (every reply token "
                                            "alike: longer replies weigh more)")
    warmup: float = _help(0.06, "share of each stage with linear warm-up")
    grad_clip: float = _help(1.0, "max gradient L2 norm (0 disables)")
    dpo_pairs: int = _help(384, "preference pairs in stage 2 (other labelled replies than stage 1's)")
    dpo_batch: int = _help(4, "pairs per DPO step")
    dpo_epochs: int = _help(1, "passes over the pairs")
    dpo_lr: float = _help(5e-5, "stage-2 AdamW learning rate")
    beta: float = _help(0.1, "β of the DPO loss")
    dev_replies: int = _help(16, "labelled dev replies validating stage 1 (both formats) and scoring "
                                     "selection")
    dev_pairs: int = _help(8, "dev preference pairs validating stage 2")
    context_budget: int = _help(160, "max prompt tokens (persona system turn + context)")
    reply_budget: int = _help(48, "max reply tokens trained on (and generated for rejected replies)")
    evals_per_stage: int = _help(2, "validations per stage (the best checkpoint is kept)")
    max_minutes: float | None = _help(None, "wall-clock budget of the whole run (stage 1 gets stage1_share of "
                                            "it); with a budget each stage's learning rate decays over its time, "
                                            "and its planned steps are a cap")
    stage1_share: float = _help(0.7, "share of max_minutes for stage 1; rejected replies and DPO get the rest")
    bf16: str = _help("auto", "bfloat16 autocast: auto (if the CPU has native bf16), on or off")
    score_selection: bool = _help(True, "score the selection step on the dev replies after each stage "
                                         "(costs N forwards each)")
    seed: int = _help(0, "random seed (same data + config + seed + thread count = same adapter)")

    def __post_init__(self) -> None:
        if not isinstance(self.top_layers, int) or self.top_layers < 0:
            raise ConfigError(f"top_layers must be an integer >= 0, got {self.top_layers!r}")
        for name in ("rank", "batch_size", "stage1_replies", "stage1_epochs", "dpo_pairs", "dpo_batch",
                     "dpo_epochs", "dev_replies", "dev_pairs", "context_budget", "reply_budget", "evals_per_stage"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not (self.lr > 0 and self.dpo_lr > 0 and self.beta > 0 and self.lora_alpha > 0):
            raise ConfigError("lr, dpo_lr, beta and lora_alpha must be > 0")
        if not 0 <= self.warmup <= 0.5:
            raise ConfigError(f"warmup must be in [0, 0.5], got {self.warmup!r}")
        if not 0 < self.stage1_share < 1:
            raise ConfigError(f"stage1_share must be in (0, 1), got {self.stage1_share!r}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ConfigError("max_minutes must be > 0 or None")
        if self.bf16 not in BF16_MODES:
            raise ConfigError(f"bf16 must be one of {BF16_MODES}, got {self.bf16!r}")
        if self.stage1_loss not in PAL_STAGE1_LOSS:
            raise ConfigError(f"stage1_loss must be one of {PAL_STAGE1_LOSS}, got {self.stage1_loss!r}")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


MASK_GRADS = ("straight-through", "none")
PAA_REPLIES = ("all", "persona-labelled")


@dataclass
class PAAConfig:
    """How PAA (persona-adaptive attention on the frozen backbone) is built and trained: only its fusion
    blocks train. Each field's help is in its metadata."""

    paa_layers: int = _help(2, "decoder blocks, counted from the top, that get a PAA fusion after their "
                               "self-attention; each adds 8·hidden² + 2·hidden + 1 parameters (2,655,361 on "
                               "the default backbone)")
    masks: bool = _help(True, "the dynamic masks 1[w > τ] (persona) and 1[1 − w > τ] (context); False = the "
                              "plain gate mix w·o_P + (1 − w)·o_C ('PAA without masks')")
    decoder_context: bool = _help(True, "the decoder reads the conversation before the reply (self-attention over "
                                        "the context, as the bare backbone does), so an untrained PAA is the "
                                        "backbone with its context and the fusions only add the persona; False = "
                                        "the paper's layout, the decoder reads the reply only and the context "
                                        "reaches it through the fusions alone")
    mask_grad: str = _help("straight-through", f"how gradients cross the hard masks in training, one of "
                                               f"{MASK_GRADS}: straight-through (backward as if the mask were 1, "
                                               "so a gate below τ can still learn) or none (the masks' own "
                                               "zero gradient)")
    persona_budget: int = _help(64, "max tokens of the persona sentences fed to the persona encoder (the "
                                    "first ones are kept)")
    context_budget: int = _help(160, "max tokens of dialogue context fed to the context encoder (oldest "
                                     "turns dropped)")
    reply_budget: int = _help(48, "max reply tokens trained on")
    lr: float = _help(1e-3, "AdamW peak learning rate of the fusion parameters")
    batch_size: int = _help(8, "replies per optimisation step")
    epochs: int = _help(1, "passes over the training replies")
    train_replies: int = _help(1600, "training replies used (a seeded subsample; fewer if fewer exist)")
    replies: str = _help("persona-labelled", f"which training replies, one of {PAA_REPLIES}: only those that "
                                             "restate one of their persona's sentences (the silver label PAL's "
                                             "selection step uses), where the persona is what lowers the loss, "
                                             "or all (trained on all, PAA learned SPC's style and ignored the "
                                             "persona: BENCHMARKS.md); dev stays all replies")
    dev_replies: int = _help(32, "dev replies validating the run (the best checkpoint is kept)")
    evals: int = _help(2, "validations spread over the run (the last at its end)")
    warmup: float = _help(0.06, "share of the run with linear learning-rate warm-up (0..0.5)")
    grad_clip: float = _help(1.0, "max gradient L2 norm (0 disables clipping)")
    max_steps: int = _help(0, "stop after this many optimisation steps (0 = no limit)")
    max_minutes: float | None = _help(None, "wall-clock budget of the run; with one the learning rate decays "
                                            "over the time and the planned steps are a cap (None = no limit)")
    bf16: str = _help("auto", f"bfloat16 autocast, one of {BF16_MODES} (auto = only if the CPU has native bf16)")
    seed: int = _help(0, "random seed of the fusion's initialisation, the subsample and the batch order")

    def __post_init__(self) -> None:
        for name in ("paa_layers", "persona_budget", "context_budget", "reply_budget", "batch_size", "epochs",
                     "train_replies", "dev_replies", "evals"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("max_steps", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
        for name in ("masks", "decoder_context"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be one of (True, False), got {getattr(self, name)!r}")
        if self.replies not in PAA_REPLIES:
            raise ConfigError(f"replies must be one of {PAA_REPLIES}, got {self.replies!r}")
        if self.mask_grad not in MASK_GRADS:
            raise ConfigError(f"mask_grad must be one of {MASK_GRADS}, got {self.mask_grad!r}")
        if self.bf16 not in BF16_MODES:
            raise ConfigError(f"bf16 must be one of {BF16_MODES}, got {self.bf16!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive number, got {self.lr!r}")
        if not 0 <= self.warmup <= 0.5:
            raise ConfigError(f"warmup must be a fraction in [0, 0.5], got {self.warmup!r}")
        if not self.grad_clip >= 0:
            raise ConfigError(f"grad_clip must be >= 0, got {self.grad_clip!r}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ConfigError(f"max_minutes must be > 0 or None, got {self.max_minutes!r}")
        if self.reply_budget < 2:
            raise ConfigError(f"reply_budget must be at least 2 (a token and the end of turn), got {self.reply_budget}")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}
