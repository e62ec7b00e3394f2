"""Data parallelism across training workers: a share of every epoch's batches per worker, and
gradients averaged over the workers after each backward pass.

Why not DistributedDataParallel: the stages use the transformers model's own attributes
(``config``, ``base_model``, generation with a key-value cache), which DDP's wrapper hides.
Averaging gradients after ``backward`` gives the same update, without DDP's overlap of
communication and computation (which matters little for models this small).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """This worker's place among ``world`` data-parallel workers (rank 0 of 1: in process)."""

    rank: int = 0
    world: int = 1

    @property
    def is_first(self) -> bool:
        return self.rank == 0

    def take(self, items: Sequence[T]) -> list[T]:
        """Items rank, rank + world, ... (wrapping round): max(1, n // world) of them for every
        worker, so the workers' collective calls pair up one to one."""
        if not items:
            return []
        if self.world == 1:
            return list(items)
        per_worker = max(1, len(items) // self.world)
        return [items[(self.rank + k * self.world) % len(items)] for k in range(per_worker)]

    def share_of(self, total: int) -> int:
        """This worker's part of a global count: ceil(total / world)."""
        return -(-total // self.world)

    def average_gradients(self, parameters: Iterable[nn.Parameter]) -> None:
        """g <- (1 / world) sum over workers of g, for every parameter (a missing grad is 0)."""
        if self.world == 1:
            return
        params = [p for p in parameters if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world
        offset = 0
        for p in params:
            n = p.grad.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
            offset += n

    def barrier(self) -> None:
        """Wait until every worker has come here (nothing to wait for in process)."""
        if self.world > 1:
            dist.barrier()

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Each logged value averaged over the workers (identical in process)."""
        if self.world == 1 or not values:
            return values
        names = sorted(values)
        flat = torch.tensor([values[n] for n in names], dtype=torch.float64)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        return {n: float(v) / self.world for n, v in zip(names, flat.tolist(), strict=True)}


IN_PROCESS = Shard()
