"""Source-prefix training on several processes or machines: DistributedDataParallel over the prefix.

Started by ``torchrun`` (or ``accelerate launch``, which runs torchrun's
launcher): both set ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``
and ``MASTER_PORT``, and :func:`context` joins the process group from them --
gloo on CPU, nccl when CUDA is there. Without them it is one process and
nothing changes.

What makes a run deterministic given the seed and the number of shards, and
equal to a one-process run with the same shards (see :mod:`.source`):

- the speakers are split into ``shards`` by :func:`shard_speakers` (balanced by
  replies, deterministic); rank r takes the shards r, r + W, ...; each shard
  draws its part of every global batch from its own seeded stream;
- a step's loss is the sum of the rank's reply-token NLL divided by the
  *global* token count, times W, so DDP's gradient average equals the gradient
  of the global batch's mean loss;
- validation replies are split across ranks and their losses summed with an
  all-reduce, so every rank sees the same validation loss and keeps the same
  best checkpoint;
- every rank reads the time from rank 0 (:func:`synced_clock`), so budget and
  schedule decisions agree.

Only rank 0 reports progress, writes the prefix and the checkpoints; a resume
is read by rank 0 and broadcast, so a multi-node run needs no shared disk.
torch is imported inside functions.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ..errors import ConfigError
from .backbone import torch_module

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class DistContext:
    """This process's place in the run (rank 0 of 1 without a launcher)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None  # "gloo" | "nccl" | None (one process)
    device: str = "cpu"

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def launched() -> bool:
    """True when a launcher (torchrun / accelerate launch) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def context(backend: str | None = None) -> DistContext:
    """Join the process group the launcher set up (idempotent); one process without a launcher."""
    if not launched():
        return DistContext()
    torch = torch_module()
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    backend = backend or ("nccl" if cuda else "gloo")
    if backend not in ("gloo", "nccl"):
        raise ConfigError(f"backend must be gloo or nccl, got {backend!r}")
    device = f"cuda:{local}" if backend == "nccl" else "cpu"
    if backend == "nccl":
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistContext(rank, world, local, backend, device)


def shard_speakers(sizes: Sequence[int], shards: int) -> list[list[int]]:
    """Speaker indices per shard: largest first onto the lightest shard (ties: lowest index)."""
    if shards < 1:
        raise ConfigError(f"shards must be >= 1, got {shards}")
    if len(sizes) < shards:
        raise ConfigError(f"{len(sizes)} speakers cannot fill {shards} shards; use fewer processes or more speakers")
    load = [0] * shards
    out: list[list[int]] = [[] for _ in range(shards)]
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        s = min(range(shards), key=lambda j: (load[j], j))
        out[s].append(i)
        load[s] += sizes[i]
    return [sorted(x) for x in out]


def all_sum(ctx: DistContext, values: Sequence[float]) -> list[float]:
    """Element-wise sum over ranks (float64); the values themselves in one process."""
    if not ctx.distributed:
        return list(values)
    torch = torch_module()
    import torch.distributed as dist

    t = torch.tensor(list(values), dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return t.cpu().tolist()


def synced_clock(ctx: DistContext, clock: Callable[[], float] = time.monotonic) -> Callable[[], float]:
    """A clock every rank reads the same from (rank 0's), so time decisions agree."""
    if not ctx.distributed:
        return clock
    torch = torch_module()
    import torch.distributed as dist

    def read() -> float:
        t = torch.tensor([clock() if ctx.main else 0.0], dtype=torch.float64, device=ctx.device)
        dist.broadcast(t, 0)
        return float(t.item())

    return read


def broadcast_object(ctx: DistContext, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not ctx.distributed:
        return obj
    import torch.distributed as dist

    box = [obj if ctx.main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        import torch.distributed as dist

        dist.barrier()


def shutdown(ctx: DistContext) -> None:
    if ctx.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def prefix_module(param):
    """A module whose forward returns ``param``: what DistributedDataParallel wraps (its gradient
    hook averages the prefix's gradient over the ranks)."""
    torch = torch_module()

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.kv = param  # the trainer's own Parameter

        def forward(self):
            return self.kv

    return Block()
