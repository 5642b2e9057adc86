"""The torch side of parity: the backbone with a persona KV block, three ways.

Export/test only (imports torch, transformers, peft lazily). Everything works on
the block layout the runtime uses, ``(layers, 2, kv_heads, P, head_dim)``.

- :func:`cache_from_block`: a transformers ``DynamicCache`` holding the block.
- :func:`peft_prefix_model`: PEFT prefix-tuning with the block loaded as the
  prefix encoder's output (no reparametrisation MLP), i.e. what a trained
  persona is in PEFT terms.
- :func:`greedy_reference`: logits of a prompt and greedy continuation with the
  block injected, the reference the ONNX graph is validated against.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from persona_sdk.errors import BackboneError, MissingDependencyError


def _torch():
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError:
        raise MissingDependencyError("this needs the [export] extra (torch, transformers)") from None
    return torch


def load_model(backbone_dir: Path, dtype: str = "float32") -> Any:
    """The backbone as an eval-mode ``AutoModelForCausalLM`` (eager attention)."""
    torch = _torch()
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(backbone_dir), dtype=getattr(torch, dtype), attn_implementation="eager"
        )
    except (OSError, ValueError, KeyError) as exc:
        raise BackboneError(
            f"{backbone_dir} could not be loaded as a causal LM ({type(exc).__name__})"
        ) from None
    return model.eval()


def cache_from_block(kv: np.ndarray) -> Any:
    """A ``DynamicCache`` whose layer l holds ``kv[l, 0]`` / ``kv[l, 1]`` (batch 1)."""
    torch = _torch()
    from transformers import DynamicCache

    cache = DynamicCache()
    for layer in range(kv.shape[0]):  # kv: (layers, 2, kv_heads, P, head_dim)
        k = torch.from_numpy(np.ascontiguousarray(kv[layer, 0], dtype=np.float32))[None].clone()
        v = torch.from_numpy(np.ascontiguousarray(kv[layer, 1], dtype=np.float32))[None].clone()
        cache.update(k, v, layer)  # (1, kv_heads, P, head_dim)
    return cache


def block_to_peft_embedding(kv: np.ndarray) -> np.ndarray:
    """The block as PEFT's prefix-encoder table ``(P, layers * 2 * kv_heads * head_dim)``.

    PEFT views the table as ``(batch, P, layers*2, kv_heads, head_dim)`` and
    permutes to ``(layers*2, batch, kv_heads, P, head_dim)``; row ``2l`` is layer
    l's keys, ``2l+1`` its values.
    """
    layers, two, heads, length, dim = kv.shape
    return np.ascontiguousarray(kv.transpose(3, 0, 1, 2, 4).reshape(length, layers * two * heads * dim))


def peft_prefix_model(model: Any, kv: np.ndarray) -> Any:
    """PEFT prefix-tuning around ``model`` whose virtual tokens are exactly ``kv``."""
    torch = _torch()
    from peft import PrefixTuningConfig, TaskType, get_peft_model

    layers, _, heads, length, dim = kv.shape
    config = PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=length, prefix_projection=False)
    peft_model = get_peft_model(model, config)
    pcfg = peft_model.active_peft_config
    if (pcfg.num_layers, pcfg.num_attention_heads, pcfg.token_dim // pcfg.num_attention_heads) != (layers, heads, dim):
        raise BackboneError(
            f"PEFT sees (layers, kv_heads, head_dim) = {(pcfg.num_layers, pcfg.num_attention_heads, pcfg.token_dim // pcfg.num_attention_heads)}, "
            f"the block has {(layers, heads, dim)}"
        )
    table = torch.from_numpy(block_to_peft_embedding(kv.astype(np.float32)))
    with torch.no_grad():
        peft_model.prompt_encoder[peft_model.active_adapter].embedding.weight.copy_(table)
    return peft_model.eval()


def greedy_reference(model: Any, kv: np.ndarray | None, prompt_ids: list[int], steps: int,
                     peft: bool = False) -> tuple[np.ndarray, list[int], np.ndarray]:
    """Greedy decoding with ``kv`` injected: prompt logits ``(T, V)``, ``steps``
    tokens, and step logits ``(steps, V)`` (step j's logits predict token j).

    ``peft=True`` means ``model`` is a PEFT prefix-tuning model that supplies
    the block itself (PEFT prepends P mask ones and offsets positions by P);
    later steps continue on its base model with the cache PEFT returned, which
    holds the prefix. Otherwise the block goes in as a ``DynamicCache``.
    """
    torch = _torch()
    length = 0 if kv is None else kv.shape[3]
    ids = torch.tensor([prompt_ids])
    n = ids.shape[1]
    with torch.no_grad():
        if peft:
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True)
            base = model.get_base_model()
        else:
            base = model
            out = model(
                input_ids=ids, attention_mask=torch.ones(1, length + n, dtype=torch.long),
                position_ids=torch.arange(length, length + n)[None],
                past_key_values=cache_from_block(kv) if kv is not None else None, use_cache=True,
            )
        prompt_logits = out.logits[0].float().numpy()  # (T, vocab)
        cache = out.past_key_values
        tokens: list[int] = []
        step_logits = [prompt_logits[-1]]
        pos = length + n
        for j in range(steps):
            tokens.append(int(step_logits[-1].argmax()))
            if j == steps - 1:
                break
            out = base(
                input_ids=torch.tensor([[tokens[-1]]]), attention_mask=torch.ones(1, pos + 1, dtype=torch.long),
                position_ids=torch.tensor([[pos]]), past_key_values=cache, use_cache=True,
            )
            cache = out.past_key_values
            pos += 1
            step_logits.append(out.logits[0, -1].float().numpy())
    return prompt_logits, tokens, np.stack(step_logits)
