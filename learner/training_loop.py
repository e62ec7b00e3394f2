"""The one optimisation loop every stage uses: AdamW over epochs of named loss terms."""

from __future__ import annotations

import copy
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from learner.data_parallel import IN_PROCESS, Shard

log = logging.getLogger(__name__)


@dataclass
class TrainingCurve:
    """Mean loss per epoch, per named term (what the PNG of the training curves draws)."""

    epochs: dict[str, list[float]] = field(default_factory=dict)
    # Called after every optimiser step with the stage's expected number of steps (progress bars).
    on_step: Callable[[int], None] | None = None

    def add(self, name: str, value: float) -> None:
        self.epochs.setdefault(name, []).append(value)


Batch = Any  # a list of examples, or a (meta, rating) pair of lists


def shuffled_batches(items: Sequence[Any], size: int, rng: random.Random) -> list[list[Any]]:
    order = list(items)
    rng.shuffle(order)
    return [order[i : i + size] for i in range(0, len(order), size)]


def train_epochs(
    parameters: list[nn.Parameter],
    epochs: int,
    lr: float,
    epoch_batches: Callable[[random.Random], list[Batch]],
    loss_terms: Callable[[Batch], dict[str, torch.Tensor]],
    curve: TrainingCurve,
    seed: int,
    after_epoch: Callable[[int], bool] | None = None,
    shard: Shard = IN_PROCESS,
) -> None:
    """AdamW over ``epochs``: minimise the sum of each batch's named loss terms, log each term.

    ``after_epoch(epoch)`` may evaluate and return True to stop early. Under data parallelism
    every worker draws the same batch order (same seed), takes its share, and the gradients
    are averaged before each step, so all workers hold the same weights throughout.
    """
    optimizer = torch.optim.AdamW(parameters, lr=lr)
    rng = random.Random(seed)
    for epoch in range(epochs):
        totals: dict[str, float] = {}
        batches = shard.take(epoch_batches(rng))
        for batch in batches:
            terms = loss_terms(batch)
            loss = torch.stack(list(terms.values())).sum()
            optimizer.zero_grad()
            loss.backward()
            shard.average_gradients(parameters)
            optimizer.step()
            for name, value in terms.items():
                totals[name] = totals.get(name, 0.0) + float(value.detach())
            if curve.on_step is not None:
                curve.on_step(epochs * len(batches))
        means = shard.mean({name: total / max(len(batches), 1) for name, total in totals.items()})
        for name, value in means.items():
            curve.add(name, value)
        stop = after_epoch is not None and after_epoch(epoch)
        log.info(
            "epoch %d/%d: %s",
            epoch + 1,
            epochs,
            {k: round(v[-1], 4) for k, v in curve.epochs.items()},
        )
        if stop:
            break


class KeepBest:
    """Early stopping on a validation score: remembers the best epoch's weights, says when
    ``patience`` epochs have passed without a better score, and puts the best weights back."""

    def __init__(self, model: nn.Module, patience: int, higher_is_better: bool) -> None:
        self.model, self.patience, self.sign = model, patience, 1.0 if higher_is_better else -1.0
        self.best_score, self.best_epoch = float("-inf"), -1
        self.state = copy.deepcopy(model.state_dict())

    def stop_after(self, epoch: int, score: float) -> bool:
        if self.sign * score > self.best_score:
            self.best_score, self.best_epoch = self.sign * score, epoch
            self.state = copy.deepcopy(self.model.state_dict())
        return epoch - self.best_epoch >= self.patience

    def restore(self) -> None:
        self.model.load_state_dict(self.state)
