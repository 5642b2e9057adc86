"""How a source-prefix batch mixes speakers (methods ``plain`` and ``temperature``).

Both train one KV block with AdamW on the loop's warm-up/decay schedule; they
differ only in the batches they draw:

- ``plain``: epochs over all speakers' replies pooled (a speaker's rate ∝ n);
- ``temperature``: each example's speaker drawn with rate ∝ n^(1/T) (T = 10),
  so prolific speakers do not drown out the rest.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from ...errors import ConfigError


def speaker_rates(sizes: Sequence[int], method: str, temperature: float) -> np.ndarray:
    """Sampling probability of each speaker: ∝ n (plain) or ∝ n^(1/T) (otherwise)."""
    n = np.asarray(sizes, dtype=np.float64)
    if (n <= 0).any():
        raise ConfigError("every speaker needs at least one example")
    w = n if method == "plain" else n ** (1.0 / temperature)
    return w / w.sum()


def draw(pool: Sequence, k: int, rng: np.random.Generator) -> list:
    """``k`` items of ``pool`` drawn uniformly with replacement."""
    return [pool[j] for j in rng.integers(0, len(pool), size=k)]


def plain_batches(speakers: Sequence[Sequence], batch_size: int, rng: np.random.Generator) -> Iterator[list]:
    """Endless batches: epochs over every speaker's items pooled, each epoch reshuffled."""
    flat = [(i, j) for i, e in enumerate(speakers) for j in range(len(e))]
    order: list = []
    while True:
        if len(order) < batch_size:
            order += [flat[k] for k in rng.permutation(len(flat))]
        picks, order = order[:batch_size], order[batch_size:]
        yield [speakers[i][j] for i, j in picks]


def temperature_batches(speakers: Sequence[Sequence], rates: np.ndarray, batch_size: int,
                        rng: np.random.Generator) -> Iterator[list]:
    """Endless batches: each example's speaker drawn with ``rates``, then one of its items."""
    while True:
        who = rng.choice(len(speakers), size=batch_size, p=rates)
        yield [draw(speakers[int(i)], 1, rng)[0] for i in who]
