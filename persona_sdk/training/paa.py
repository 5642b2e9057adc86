"""PAA (persona-adaptive attention): the decoder block's persona/context fusion, in torch.

Not a chat mode yet: this module holds the parts of PAA that are independent of
how it is attached to the backbone, and their ONNX export, so they can be tested
on their own:

- :func:`paa_tau`: the masking threshold ``τ = |U| / (|U| + |P|)`` (``|U|``
  context tokens, ``|P|`` persona tokens): the longer the context relative to
  the persona, the higher the bar either side must clear;
- :func:`paa_masks`: the dynamic masks ``1[w > τ]`` (persona) and
  ``1[1 − w > τ]`` (context);
- :class:`PAAFusion`: given the decoder's hidden states ``h_R`` (after its
  self-attention) and the encoded persona ``E_P`` and context ``E_C``, the two
  cross-attentions ``o_P = CA_P(h_R, E_P)``, ``o_C = CA_C(h_R, E_C)``, the gate
  ``w = σ(FC([h_R; o_P]))`` and the fused output
  ``w·M_P·o_P + (1 − w)·M_C·o_C`` (masks off: ``w·o_P + (1 − w)·o_C``).

The masks are hard 0/1, so no gradient crosses them: where both sides are masked
(``1 − τ ≤ w ≤ τ``, any token when τ > 1/2 and the gate starts near 1/2) nothing
trains. ``straight_through=True`` (training only) keeps the forward exactly as
above and lets the backward pass through the masks as if they were 1, so the
gate can learn to cross τ. The attached model (:mod:`.paa_model`) is in
:func:`PAAModel <persona_sdk.training.paa_model.PAAModel>`.

torch is imported inside functions; building the module needs the [train] extra.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .backbone import torch_module


def paa_tau(context_len: Any, persona_len: Any) -> Any:
    """``τ = |U| / (|U| + |P|)`` per sequence: ints, or tensors of lengths ``(B,)`` → ``(B,)``."""
    if isinstance(context_len, int) and isinstance(persona_len, int):
        if context_len < 0 or persona_len < 0 or context_len + persona_len == 0:
            raise ConfigError("PAA needs a non-empty context or persona (lengths >= 0, not both 0)")
        return context_len / (context_len + persona_len)
    torch = torch_module()
    u, p = (x.to(torch.float32) if torch.is_tensor(x) else torch.tensor(x, dtype=torch.float32)
            for x in (context_len, persona_len))  # tensors stay tensors: an ONNX trace keeps them as inputs
    return u / (u + p).clamp_min(1.0)


def paa_masks(w: Any, tau: Any) -> tuple[Any, Any]:
    """(persona mask ``1[w > τ]``, context mask ``1[1 − w > τ]``) as floats like ``w``.

    ``w``: ``(B, T, 1)`` gate; ``tau``: a float or ``(B,)`` (broadcast over T)."""
    torch = torch_module()
    tau = tau.to(w.dtype) if torch.is_tensor(tau) else torch.tensor(tau, dtype=w.dtype)
    if tau.dim() == 1:
        tau = tau.view(-1, *([1] * (w.dim() - 1)))  # (B, 1, 1)
    return (w > tau).to(w.dtype), ((1 - w) > tau).to(w.dtype)


def _cross_attention(torch, q, k, v, key_mask, heads: int):
    """Multi-head attention of ``q`` (B, T, H·d) over ``k``/``v`` (B, S, H·d); ``key_mask`` (B, S) 1 = real."""
    b, t, hd = q.shape
    s = k.shape[1]
    d = hd // heads
    q = q.view(b, t, heads, d).transpose(1, 2)  # (B, heads, T, d)
    k = k.view(b, s, heads, d).transpose(1, 2)  # (B, heads, S, d)
    v = v.view(b, s, heads, d).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / d ** 0.5  # (B, heads, T, S)
    scores = scores.masked_fill(key_mask[:, None, None, :] <= 0, torch.finfo(scores.dtype).min)
    return (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, hd)  # (B, T, H·d)


def _pass_through(x: Any, mask: Any) -> Any:
    """``x · mask`` forward; backward as if ``mask`` were 1 (straight-through)."""
    return x * mask + (x - x.detach()) * (1 - mask)


def PAAFusion(hidden: int, heads: int, use_masks: bool = True, straight_through: bool = False) -> Any:
    """A :class:`torch.nn.Module` fusing persona and context into decoder states (see the module doc).

    ``forward(h, e_p, e_c, p_mask, c_mask)``: ``h`` (B, T, hidden), ``e_p`` (B, P, hidden),
    ``e_c`` (B, U, hidden), masks (B, P) / (B, U) with 1 for real tokens → (fused (B, T, hidden),
    w (B, T, 1)). τ comes from the masks' lengths. ``straight_through``: gradients cross the masks
    while the module is training (the forward is unchanged)."""
    torch = torch_module()
    nn = torch.nn
    if hidden % heads:
        raise ConfigError(f"hidden size {hidden} is not divisible by {heads} heads")

    class _PAAFusion(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.heads, self.use_masks, self.straight_through = heads, use_masks, straight_through
            self.persona = nn.ModuleDict({n: nn.Linear(hidden, hidden, bias=False) for n in ("q", "k", "v", "o")})
            self.context = nn.ModuleDict({n: nn.Linear(hidden, hidden, bias=False) for n in ("q", "k", "v", "o")})
            self.gate = nn.Linear(2 * hidden, 1)

        def attend(self, proj, h, e, mask):
            return proj["o"](_cross_attention(torch, proj["q"](h), proj["k"](e), proj["v"](e), mask, self.heads))

        def forward(self, h, e_p, e_c, p_mask, c_mask):
            o_p = self.attend(self.persona, h, e_p, p_mask)  # (B, T, hidden)
            o_c = self.attend(self.context, h, e_c, c_mask)  # (B, T, hidden)
            w = torch.sigmoid(self.gate(torch.cat([h, o_p], dim=-1)))  # (B, T, 1)
            if self.use_masks:
                tau = paa_tau(c_mask.sum(-1), p_mask.sum(-1))  # (B,)
                m_p, m_c = paa_masks(w, tau)  # (B, T, 1) each
                if self.straight_through and self.training:
                    return _pass_through(w * o_p, m_p) + _pass_through((1 - w) * o_c, m_c), w
                return w * m_p * o_p + (1 - w) * m_c * o_c, w
            return w * o_p + (1 - w) * o_c, w

    return _PAAFusion()


def added_parameters(module: Any) -> int:
    """Trainable parameters PAA adds (the backbone's are not counted)."""
    return int(sum(p.numel() for p in module.parameters()))


def export_fusion(module: Any, path: str | Path, example: tuple) -> Path:
    """Export a :func:`PAAFusion` to ONNX (dynamic batch and lengths) at ``path``."""
    torch = torch_module()
    path = Path(path)
    names = ["h", "e_p", "e_c", "p_mask", "c_mask"]
    axes = {"h": {0: "batch", 1: "t"}, "e_p": {0: "batch", 1: "p"}, "e_c": {0: "batch", 1: "u"},
            "p_mask": {0: "batch", 1: "p"}, "c_mask": {0: "batch", 1: "u"}, "fused": {0: "batch", 1: "t"},
            "w": {0: "batch", 1: "t"}}
    module.eval()
    with torch.no_grad():
        torch.onnx.export(module, example, str(path), input_names=names, output_names=["fused", "w"],
                          dynamic_axes=axes, opset_version=17, dynamo=False)
    return path


__all__ = ["paa_tau", "paa_masks", "PAAFusion", "added_parameters", "export_fusion"]
