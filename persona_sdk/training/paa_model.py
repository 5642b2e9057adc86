"""PAA attached to the frozen backbone, in torch: the model, its loss and a small trainer.

:func:`PAAModel` builds PAA (persona-adaptive attention) from the backbone alone:

- **encoders**: the frozen backbone itself, run once over the persona sentences
  and once over the dialogue context (no gradient); their last hidden states
  (after the final norm) are ``E_P`` (B, P, hidden) and ``E_C`` (B, U, hidden),
  each with a key mask (1 = real token). The persona is its sentences joined by
  spaces (the first ``persona_budget`` tokens); the context is the ChatML turns
  plus the reply header, exactly as :meth:`ChatFormat.prompt_ids` renders them
  (so ``|U|`` > 0 even before the first turn);
- **decoder**: the frozen backbone over the context tokens (the context encoder's
  input again: the conversation and the reply header) and then the reply and
  end of turn, i.e. exactly the bare backbone's example; with
  ``decoder_context=False`` over the *response* only (reply header, reply, end of
  turn), the paper's layout, where the context reaches the decoder through the
  fusions alone. In each of the top ``paa_layers`` decoder blocks a
  :func:`~.paa.PAAFusion` is added to the residual stream right after the
  block's self-attention::

      h = x + SelfAttn(LN1(x))                          # (B, T, hidden), as in the bare block
      h = h + PAAFusion(LN2(h), E_P, E_C, masks)[0]     # (B, T, hidden), the PAA term
      out = h + MLP(LN2(h))                             # (B, T, hidden), as in the bare block

  where LN1 / LN2 are the block's own (frozen) input and post-attention norms:
  the fusion's queries ``h_R`` see the post-attention state on the scale the
  block's MLP sees it. The fusion is attached by hooks for the duration of one
  forward only, so ``bb.model`` stays the bare backbone outside it.

Only the fusions' parameters train (the backbone is frozen). Their output
projections start at zero, so an untrained PAA model computes exactly the bare
backbone's logits on the decoder's tokens: with the context read by the decoder,
the backbone's own reply likelihood given the conversation, which training can
only improve on (the best dev checkpoint is kept). The fusions run at every
decoder position, context included. The loss is the reply tokens'
cross-entropy; persona and context are inputs, never targets.

:func:`train_paa` trains the fusions on SPC persona replies (the
``PersonaExample``\\ s of :mod:`.corpora`, split by persona like PAL's) in the one
training loop (:mod:`.loop`). The token layout comes from :mod:`persona_sdk.explicit.formats`, shared with
the paa chat mode; the ONNX export (encoders once per turn, the decoder with its KV cache) is
``persona_sdk.exporters.paa_export``, the runtime path :mod:`persona_sdk.explicit.paa`.
:func:`save_paa` / :func:`load_paa` write and read trained fusions
the way PAL's adapter is kept (float16 safetensors + ``PAA.json`` with the sha256, the backbone's
fingerprint and the shapes). torch is imported only inside functions.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import AdapterError, ConfigError, TrainingError
from ..explicit.formats import paa_context_ids, paa_decoder_prompt, paa_persona_ids
from ..explicit.paa_store import PAA_INFO, PAA_WEIGHTS
from ..explicit.paa_store import paa_info as _checked_info
from ..fileio import atomic_write
from .backbone import TrainBackbone, bf16_supported, load_backbone, torch_module
from .config import PAAConfig
from .data import PAD_MULTIPLE, Encoded, collate
from .loop import Clock, LoopConfig, ProgressFn, Trainable, gradient_step, run
from .paa import PAAFusion, added_parameters
from .pal import _rounded, label_examples, subsample

Note = Callable[[str], None]


def paa_parameter_count(hidden: int, paa_layers: int) -> int:
    """Parameters PAA adds: per fused block, 8 hidden×hidden projections (q, k, v, o of the persona
    and of the context cross-attention) and the gate FC (2·hidden weights + 1 bias)."""
    return paa_layers * (8 * hidden * hidden + 2 * hidden + 1)


# --- encoding ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class PAAEncoded:
    """One reply as PAA's three token sequences."""

    persona: tuple[int, ...]  # persona sentences (encoder input)
    context: tuple[int, ...]  # dialogue context + reply header (encoder input)
    response: Encoded  # decoder prompt + reply + end of turn (decoder input); loss on response.ids[n_prompt:]


def encode_paa(fmt, persona: Sequence[str], context, reply: str, config: PAAConfig, conversation: int = 0
               ) -> PAAEncoded:
    """Token ids of one reply for PAA (see the module doc), built by the same helpers the paa chat mode
    uses (:mod:`persona_sdk.explicit.formats`)."""
    if not persona:
        raise TrainingError("PAA needs at least one persona sentence per reply")
    p_ids = paa_persona_ids(fmt, persona, config.persona_budget)
    if not p_ids:
        raise TrainingError("PAA's persona sentences encode to no tokens")
    c_ids = paa_context_ids(fmt, tuple(context), config.context_budget)
    prompt = paa_decoder_prompt(fmt, c_ids, config.decoder_context)
    resp = prompt + fmt.reply_ids(reply, config.reply_budget)
    return PAAEncoded(tuple(p_ids), tuple(c_ids), Encoded(tuple(resp), len(prompt), conversation))


def encode_examples(fmt, examples: Sequence[Any], config: PAAConfig) -> list[PAAEncoded]:
    """``PersonaExample``-like items (persona, context, reply, conversation) → :class:`PAAEncoded`."""
    return [encode_paa(fmt, ex.persona, ex.context, ex.reply, config, int(getattr(ex, "conversation", 0)))
            for ex in examples]


def _pad(torch, seqs: Sequence[Sequence[int]]):
    """Right-padded ids (B, S) and key mask (B, S) (1 = real), S a multiple of PAD_MULTIPLE."""
    length = -(-max(len(s) for s in seqs) // PAD_MULTIPLE) * PAD_MULTIPLE
    ids = torch.zeros((len(seqs), length), dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[b, : len(s)] = 1
    return ids, mask


def collate_paa(batch: Sequence[PAAEncoded]) -> dict:
    """Tensors of a batch: persona/context ids and masks (B, P) / (B, U); response ids (B, T), the
    positions that predict a reply token ``sel`` (B, T) and their targets (B, T)."""
    torch = torch_module()
    p_ids, p_mask = _pad(torch, [e.persona for e in batch])
    c_ids, c_mask = _pad(torch, [e.context for e in batch])
    ids, sel, tgt = collate([e.response for e in batch])
    return {"persona_ids": p_ids, "persona_mask": p_mask, "context_ids": c_ids, "context_mask": c_mask,
            "ids": ids, "sel": sel, "targets": tgt}


# --- the model --------------------------------------------------------------------------------
def PAAModel(backbone: TrainBackbone, config: PAAConfig | None = None) -> Any:
    """PAA on ``backbone`` (frozen): a :class:`torch.nn.Module` whose only parameters are the fusions'.

    ``forward(persona_ids, persona_mask, context_ids, context_mask, ids)`` → logits (B, T, vocab) of the
    response ``ids`` (B, T); ``hidden(...)``: the decoder's final hidden states (B, T, hidden);
    ``encode(ids, mask)``: an encoder's states (B, S, hidden)."""
    torch = torch_module()
    nn = torch.nn
    config = config or PAAConfig()
    bb = backbone
    blocks = bb.model.model.layers
    if config.paa_layers > len(blocks):
        raise ConfigError(f"paa_layers must be one of 1..{len(blocks)} (this backbone's decoder blocks), "
                          f"got {config.paa_layers}")
    for name in ("self_attn", "input_layernorm", "post_attention_layernorm", "mlp"):
        if not hasattr(blocks[0], name):
            raise TrainingError(f"PAA attaches to Llama-style decoder blocks; this backbone's have no {name}")
    heads = int(bb.model.config.num_attention_heads)
    for p in bb.model.parameters():
        p.requires_grad_(False)

    class _PAAModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bb = bb  # a plain attribute: the backbone's parameters are not this module's
            self.config = config
            self.fused = list(range(len(blocks) - config.paa_layers, len(blocks)))  # block indices, bottom up
            torch.manual_seed(config.seed)
            self.fusions = nn.ModuleList(
                PAAFusion(bb.hidden, heads, use_masks=config.masks,
                          straight_through=config.mask_grad == "straight-through")
                for _ in self.fused)
            with torch.no_grad():  # start as the bare backbone: the fused term is 0 until training moves it
                for f in self.fusions:
                    f.persona["o"].weight.zero_()
                    f.context["o"].weight.zero_()
            self.gates: list | None = None  # when a list, each fused block's gate w (B, T, 1) is appended to it
            self.train(False)

        def train(self, mode: bool = True):  # the backbone stays in eval mode (no dropout), always
            super().train(mode)
            bb.model.eval()
            return self

        def encode(self, ids, mask):
            """The frozen backbone's last hidden states over ``ids`` (B, S) → (B, S, hidden), no gradient."""
            with torch.no_grad():
                return bb.model.model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state

        def hidden(self, persona_ids, persona_mask, context_ids, context_mask, ids):
            e_p = self.encode(persona_ids, persona_mask)  # (B, P, hidden)
            e_c = self.encode(context_ids, context_mask)  # (B, U, hidden)
            p_mask, c_mask = persona_mask.to(e_p.dtype), context_mask.to(e_c.dtype)  # (B, P), (B, U)
            handles = []
            for fusion, index in zip(self.fusions, self.fused):
                handles += self._attach(blocks[index], fusion, e_p, e_c, p_mask, c_mask, self.gates)
            try:
                B, T = ids.shape
                out = bb.model.model(input_ids=ids, attention_mask=torch.ones(B, T, dtype=torch.long),
                                     use_cache=False)
            finally:
                for h in handles:
                    h.remove()
            return out.last_hidden_state  # (B, T, hidden)

        @staticmethod
        def _attach(block, fusion, e_p, e_c, p_mask, c_mask, gates: list | None = None) -> list:
            """Hooks adding ``fusion`` after ``block``'s self-attention. The block computes
            ``x + a`` from its input ``x`` and its self-attention's output ``a``; the hook returns
            ``a + PAAFusion(LN2(x + a), ...)``, so the block's residual stream after self-attention is
            ``h + fused`` and its MLP reads that. The gate goes to ``gates`` when one is given."""
            seen = {}

            def keep_input(module, args, kwargs):
                seen["x"] = args[0] if args else kwargs["hidden_states"]  # (B, T, hidden) the block's input

            def add_fusion(module, args, output):
                a, *rest = output  # a: (B, T, hidden) the self-attention's output
                h = seen.pop("x") + a  # (B, T, hidden) the residual stream after self-attention
                fused, w = fusion(block.post_attention_layernorm(h), e_p, e_c, p_mask, c_mask)  # (B, T, hidden)
                if gates is not None:
                    gates.append(w.detach())  # (B, T, 1)
                return (a + fused, *rest)

            return [block.register_forward_pre_hook(keep_input, with_kwargs=True),
                    block.self_attn.register_forward_hook(add_fusion)]

        def forward(self, persona_ids, persona_mask, context_ids, context_mask, ids):
            h = self.hidden(persona_ids, persona_mask, context_ids, context_mask, ids)  # (B, T, hidden)
            return bb.model.lm_head(h)  # (B, T, vocab)

    return _PAAModel()


def set_masks(model: Any, on: bool) -> None:
    """Switch the dynamic masks of every fusion on or off (the 'PAA without masks' row)."""
    for f in model.fusions:
        f.use_masks = bool(on)


def gate_stats(model: Any, data: Sequence[PAAEncoded], batch_size: int = 8) -> list[dict]:
    """What the gates and the dynamic masks do on ``data``, per fused block (bottom up), over the decoder
    positions that predict a reply token: the mean gate ``w`` and τ, and the shares of those positions whose
    persona side is open (w > τ), context side is open (1 − w > τ), or both are closed (the fusion adds
    nothing there when the masks are on). Masks on and off give the same replies when ``context_open`` is
    0 and ``w`` is near 1 (the context term is then weighted ~0 either way)."""
    from .paa import paa_tau

    torch = torch_module()
    keys = ("w", "tau", "persona_open", "context_open", "both_closed")
    sums = [dict.fromkeys(keys, 0.0) for _ in model.fusions]
    count = 0
    model.gates = []
    try:
        with torch.no_grad():
            for batch in _batches(data, batch_size, None):
                t = collate_paa(batch)
                model.gates.clear()
                model.hidden(t["persona_ids"], t["persona_mask"], t["context_ids"], t["context_mask"], t["ids"])
                sel = t["sel"]  # (B, T) positions that predict a reply token
                tau = paa_tau(t["context_mask"].sum(-1), t["persona_mask"].sum(-1))  # (B,)
                tau = tau[:, None].expand(sel.shape)[sel]  # (N,)
                for acc, w in zip(sums, model.gates):
                    w = w[..., 0].float()[sel]  # (N,)
                    p_open, c_open = w > tau, (1 - w) > tau
                    acc["w"] += float(w.sum())
                    acc["tau"] += float(tau.sum())
                    acc["persona_open"] += float(p_open.sum())
                    acc["context_open"] += float(c_open.sum())
                    acc["both_closed"] += float((~p_open & ~c_open).sum())
                count += int(sel.sum())
    finally:
        model.gates = None
    return [{"block": b, **{k: round(v / max(count, 1), 4) for k, v in acc.items()}, "positions": count}
            for b, acc in zip(model.fused, sums)]


def fusion_state(model: Any) -> dict:
    """The trained parameters (the fusions'), as detached copies by name."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --- loss ---------------------------------------------------------------------------------------
def paa_batch_loss(model: Any, batch: Sequence[PAAEncoded], bf16: bool = False):
    """(sum of response-token NLL with its graph, number of response tokens) of one batch: the loss is on
    the reply tokens (and the end of turn) only; persona and context are inputs, never targets."""
    torch = torch_module()
    t = collate_paa(batch)
    sel, tgt = t["sel"], t["targets"]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        h = model.hidden(t["persona_ids"], t["persona_mask"], t["context_ids"], t["context_mask"], t["ids"])
        logits = model.bb.model.lm_head(h[sel])  # (N, vocab) only where a reply token is predicted
    loss = torch.nn.functional.cross_entropy(logits.float(), tgt[sel], reduction="sum")
    return loss, int(sel.sum())


def paa_mean_loss(model: Any, data: Sequence[PAAEncoded], batch_size: int = 8, bf16: bool = False) -> float:
    """Mean response-token NLL (nats) over ``data``, no gradient; exp() of it is the perplexity."""
    torch = torch_module()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in _batches(data, batch_size, None):
            loss, n = paa_batch_loss(model, batch, bf16)
            total += float(loss)
            count += n
    return total / max(count, 1)


def _batches(data: Sequence[PAAEncoded], batch_size: int, rng: np.random.Generator | None) -> list:
    """Batches of similar total length; shuffled with ``rng``, in a fixed order without."""
    idx = list(np.arange(len(data)) if rng is None else rng.permutation(len(data)))
    chunk = batch_size * 32

    def size(i):
        e = data[i]
        return len(e.response.ids) + len(e.context)

    out = []
    for s in range(0, len(idx), chunk):
        part = sorted(idx[s : s + chunk], key=size)
        out += [[data[i] for i in part[j : j + batch_size]] for j in range(0, len(part), batch_size)]
    if rng is not None:
        out = [out[i] for i in rng.permutation(len(out))]
    return out


# --- training -----------------------------------------------------------------------------------
@dataclass
class PAAResult:
    """Trained PAA fusions: their weights (best on dev), how the run went (numbers only), the model."""

    state: dict
    summary: dict
    model: Any = field(repr=False, default=None)  # holds the best weights
    backbone: Any = field(repr=False, default=None)  # the TrainBackbone


def data_sha256(examples: Sequence[Any]) -> str:
    """A fingerprint of exactly which replies were used."""
    return hashlib.sha256("\n".join(ex.key for ex in examples).encode()).hexdigest()


def train_paa(
    train: Sequence[Any],
    dev: Sequence[Any],
    *,
    backbone: Any = None,
    config: PAAConfig | None = None,
    progress: ProgressFn | None = None,
    note: Note | None = None,
    should_stop: Callable[[], bool] | None = None,
    clock: Clock | None = None,
) -> PAAResult:
    """Train PAA's fusions on persona replies (``PersonaExample``-like: persona, context, reply,
    conversation, key) with the backbone frozen; validation on ``dev`` keeps the best checkpoint."""
    config = config or PAAConfig()
    clock = clock or time.monotonic
    say = note or (lambda msg: None)
    torch = torch_module()
    start = clock()
    if not train:
        raise TrainingError("PAA needs training replies")
    if not dev:
        raise TrainingError("PAA needs dev replies to validate on")
    if config.replies == "persona-labelled":
        train = [item.example for item in label_examples(train)]
        if not train:
            raise TrainingError("none of the training replies restates a persona sentence (replies='persona-labelled')")
    train_items = subsample(train, config.train_replies, config.seed, "paa-train", key=lambda ex: ex.key)
    dev_items = subsample(dev, config.dev_replies, config.seed, "paa-dev", key=lambda ex: ex.key)
    bb = backbone if isinstance(backbone, TrainBackbone) else load_backbone(backbone)
    use_bf16 = config.bf16 == "on" or (config.bf16 == "auto" and bf16_supported())
    model = PAAModel(bb, config)
    params = [p for p in model.parameters() if p.requires_grad]
    n_params = added_parameters(model)
    n_backbone = sum(p.numel() for p in bb.model.parameters())
    say(f"PAA: fusions in the top {config.paa_layers} of {bb.layers} blocks, {n_params:,} trainable parameters "
        f"({100 * n_params / n_backbone:.2f}% of the backbone); masks {'on' if config.masks else 'off'}")
    data = encode_examples(bb.fmt, train_items, config)
    dev_data = encode_examples(bb.fmt, dev_items, config)
    per_epoch = math.ceil(len(data) / config.batch_size)
    steps = per_epoch * config.epochs
    if config.max_steps:
        steps = min(steps, config.max_steps)
    rng = np.random.default_rng(config.seed)
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)

    def batches():
        for _ in range(config.epochs):
            yield from _batches(data, config.batch_size, rng)

    def step(batch):
        def loss_fn():
            loss_sum, n = paa_batch_loss(model, batch, use_bf16)
            return loss_sum / max(n, 1)

        return gradient_step(opt, params, loss_fn, config.grad_clip)

    def evaluate() -> float:
        model.eval()
        try:
            return paa_mean_loss(model, dev_data, config.batch_size, use_bf16)
        finally:
            model.train()

    budget = config.max_minutes * 60 if config.max_minutes else None
    say(f"PAA: {len(data)} training replies, {steps} steps; dev {len(dev_data)} replies")
    loop = LoopConfig(total_steps=steps, max_steps=steps, evals=config.evals, warmup=config.warmup,
                      steps_per_epoch=per_epoch, epochs=config.epochs, max_seconds=budget,
                      schedule_by="both" if budget else "steps", label="PAA",
                      cancel_message="PAA training interrupted; nothing was saved")
    model.train()
    try:
        r = run(Trainable(params, batches(), step, evaluate, opt), loop, progress=progress,
                should_stop=should_stop, clock=clock, started=start)
    finally:
        model.eval()
    say(f"PAA done: dev loss {r.init_val_loss:.3f} → {r.best_val_loss:.3f} (step {r.best_step} of {r.steps})")
    gates = gate_stats(model, dev_data, config.batch_size)
    say("PAA gates on dev replies: " + "; ".join(
        f"block {g['block']}: mean w {g['w']:.2f}, τ {g['tau']:.2f}, persona open {g['persona_open']:.0%}, "
        f"context open {g['context_open']:.0%}, both closed {g['both_closed']:.0%}" for g in gates))
    summary = {
        "trainable_parameters": n_params, "backbone_parameters": n_backbone,
        "paa_layers": config.paa_layers, "masks": config.masks, "mask_grad": config.mask_grad,
        "replies": config.replies,
        "train_replies": len(train_items), "dev_replies": len(dev_items),
        "steps": r.steps, "stopped": r.stopped, "init_dev_loss": r.init_val_loss,
        "best_dev_loss": r.best_val_loss, "best_step": r.best_step, "seconds": r.seconds,
        "curve": [[s, v] for s, _, v in r.history],
        "data_sha256": data_sha256(train_items), "dev_data_sha256": data_sha256(dev_items),
        "bf16": use_bf16, "config": config.to_dict(), "gates": gates,
    }
    return PAAResult(fusion_state(model), summary, model, bb)


# --- saving and loading -----------------------------------------------------------------------
# PAA_INFO / PAA_WEIGHTS: the file names, shared with the runtime (persona_sdk.explicit.paa_store)


def save_paa(result: PAAResult, out_dir: str | Path, info: dict[str, Any]) -> Path:
    """Write the fusions' weights (safetensors, float16 as PAL's adapter) and ``PAA.json`` (``info`` + sha256
    and byte size of the weights file, backbone fingerprint, shapes, the model's config) into ``out_dir``,
    each file atomically; the folder."""
    from safetensors.torch import save as to_bytes

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bb, config = result.backbone, result.model.config
    data = to_bytes({k: v.detach().half().contiguous() for k, v in result.state.items()}, metadata={"format": "pt"})
    atomic_write(out / PAA_WEIGHTS, data, private=False)
    record = {**info, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "dtype": "float16",
              "backbone": bb.fingerprint, "method": "paa", "hidden": bb.hidden, "layers": bb.layers,
              "paa_layers": config.paa_layers, "config": config.to_dict(),
              "parameters": int(sum(int(np.prod(v.shape)) for v in result.state.values()))}
    record = {**_rounded(record), "config": config.to_dict()}  # the config exact: load_paa rebuilds from it
    atomic_write(out / PAA_INFO, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode(),
                 private=False)
    return out


def paa_info(folder: str | Path) -> dict:
    """``PAA.json`` of a saved PAA folder, the weights file checked against its sha256 (AdapterError if not)."""
    return _checked_info(folder)


def load_paa(folder: str | Path, backbone: Any = None) -> Any:
    """A :func:`PAAModel` on ``backbone`` (a TrainBackbone, a folder, None = the default) with the fusions saved
    in ``folder``; AdapterError for a missing or altered file, one made for another backbone, or shapes that do
    not fit this backbone."""
    from safetensors.torch import load as from_bytes

    folder = Path(folder)
    info = paa_info(folder)
    bb = backbone if isinstance(backbone, TrainBackbone) else load_backbone(backbone)
    if info.get("backbone") != bb.fingerprint:
        raise AdapterError(f"the PAA in {folder} was trained for another backbone "
                           f"({str(info.get('backbone'))[:16]}…, this one is {bb.fingerprint[:16]}…)")
    if info.get("hidden") != bb.hidden or info.get("layers") != bb.layers:
        raise AdapterError(f"the PAA in {folder} is for hidden size {info.get('hidden')} and "
                           f"{info.get('layers')} blocks; this backbone has {bb.hidden} and {bb.layers}")
    try:
        # a PAA saved before these fields existed was trained on the paper's layout, on all replies
        config = PAAConfig(**{"decoder_context": False, "replies": "all", **info["config"]})
    except (KeyError, TypeError, ConfigError) as exc:
        raise AdapterError(f"{folder / PAA_INFO} holds no valid PAA config ({type(exc).__name__})") from None
    if config.paa_layers > bb.layers:
        raise AdapterError(f"the PAA in {folder} fuses {config.paa_layers} blocks; this backbone has {bb.layers}")
    try:
        state = {k: v.float() for k, v in from_bytes((folder / PAA_WEIGHTS).read_bytes()).items()}
    except Exception as exc:
        raise AdapterError(f"{folder / PAA_WEIGHTS} is corrupt ({type(exc).__name__})") from None
    model = PAAModel(bb, config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError:  # missing / unexpected names or other shapes
        raise AdapterError(f"the weights in {folder / PAA_WEIGHTS} do not fit a {config.paa_layers}-block PAA "
                           f"on this backbone") from None
    return model.eval()


__all__ = ["PAAConfig", "PAAModel", "PAAEncoded", "PAAResult", "encode_paa", "encode_examples", "collate_paa",
           "paa_batch_loss", "paa_mean_loss", "paa_parameter_count", "set_masks", "fusion_state", "gate_stats", "train_paa",
           "added_parameters", "save_paa", "load_paa", "paa_info", "PAA_INFO", "PAA_WEIGHTS"]
