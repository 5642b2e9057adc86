"""Reptile (method ``ppreptile``; also the meta loop of ``mtml`` / ``amtml``).

Per outer step, a few tasks (speakers) are drawn; from θ, ``inner_steps``
optimiser steps on a task's loss give W_i; then θ ← θ + β·mean_i(W_i − θ).
PPReptile runs it on the prefix only; the benchmark's full fine-tuning
reference runs the same step on every weight of the backbone.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..backbone import torch_module


def speaker_draws(n_speakers: int, per_step: int, rng: np.random.Generator,
                  rates: np.ndarray | None = None) -> Iterator[np.ndarray]:
    """Endless outer-step task lists: ``per_step`` speaker indices drawn with ``rates`` (None = uniform)."""
    while True:
        yield rng.choice(n_speakers, size=per_step, replace=n_speakers < per_step, p=rates)


def reptile_step(
    params: Sequence,
    tasks: Sequence[Any],
    *,
    inner_steps: int,
    make_optimizer: Callable[[Sequence], Any],
    inner_loss: Callable[[Any], Any],
    grad_clip: float = 0.0,
    outer_lr: float = 1.0,
    after_inner: Callable[[Any, Any], None] | None = None,
) -> tuple[float, int]:
    """One outer step, in place on ``params``; returns (last inner loss, inner steps taken).

    For each task: a fresh optimiser (``make_optimizer(params)``) takes
    ``inner_steps`` steps on ``inner_loss(task)`` from θ, ``after_inner(task,
    optimizer)`` may take one more (AMTML), W_i − θ is kept and the parameters
    go back to θ. Then θ ← θ + ``outer_lr``·mean_i(W_i − θ)."""
    torch = torch_module()
    base = [p.detach().clone() for p in params]
    total: list | None = None  # sum over tasks of W_i − θ, one tensor per parameter
    last = 0.0
    for task in tasks:
        opt = make_optimizer(params)
        for _ in range(inner_steps):
            opt.zero_grad(set_to_none=True)
            loss = inner_loss(task)
            loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            opt.step()
            last = float(loss.detach())
        if after_inner is not None:
            after_inner(task, opt)
        with torch.no_grad():
            deltas = [p.detach() - b for p, b in zip(params, base)]
            if total is None:
                total = deltas
            else:
                for t, d in zip(total, deltas):
                    t += d
            for p, b in zip(params, base):
                p.copy_(b)
    with torch.no_grad():
        for p, b, t in zip(params, base, total or []):
            p.copy_(b + outer_lr * (t / len(tasks)))
    return last, inner_steps * len(tasks)
