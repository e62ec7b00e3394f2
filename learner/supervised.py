"""Stage 2, the supervised warm-up: meta pre-training, then fine-tuning on golden lists.

Meta pre-training minimises L_meta = L_next-token(meta prompts) + w * L_rating, with
L_rating = mean (r_ui - f(u, i))^2 and f a scalar head on the last hidden state of
"[BOS] user [RATED] item". Fine-tuning minimises L_ft = -mean log p(sigma_gt | q_u). The
fine-tuned policy, frozen, is the reference policy of PPO.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from learner.backbone import last_hidden_states, output_logits
from learner.data_parallel import IN_PROCESS, Shard
from learner.settings import SupervisedSettings
from learner.token_sequences import IGNORE, RatingExample, TokenExample, collate
from learner.training_loop import (
    Batch,
    KeepBest,
    TrainingCurve,
    shuffled_batches,
    train_epochs,
)

META_TERMS = ("meta_next_token", "meta_page_set")
FINETUNE_TERMS = ("finetune_nll", "finetune_page_set")


class RatingHead(nn.Module):
    """f(u, i): a scalar from the hidden state of the last token of '[BOS] user [RATED] item'."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.score = nn.Linear(hidden_size, 1)

    def forward(self, last_hidden: torch.Tensor) -> torch.Tensor:
        return self.score(last_hidden).squeeze(-1)


def token_losses(
    model: nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The next-token loss and the page-set loss of a batch, from one forward pass.

    Next-token: -mean over labelled t of log softmax(W h_{t-1})[x_t], the logits only where
    scored (padding and prompts are most of a batch's positions, so this is the full-sequence
    loss at a fraction of the output layer's cost; the same value: tested).
    Page set: ``page_set_loss`` over the batch's page examples (0 when it has none, so that
    every batch logs the same terms: data-parallel workers average them by name)."""
    hidden = last_hidden_states(
        model, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    )
    targets = batch["labels"][:, 1:]
    scored = targets != IGNORE
    logits = output_logits(model, hidden[:, :-1][scored])
    next_token = F.cross_entropy(logits.float(), targets[scored])
    if not len(batch["page_rows"]):
        return next_token, next_token.new_zeros(())
    first_slot = output_logits(model, hidden[batch["page_rows"], batch["page_slot"]])
    return next_token, page_set_loss(first_slot, batch["page_items"])


def page_set_loss(first_slot_logits: torch.Tensor, page_items: torch.Tensor) -> torch.Tensor:
    """-mean over pages of (1/|page|) sum_{i in page} log softmax(z)[i], z the first slot's
    logits: the first slot learns the whole next page, not only its first item.

    Recommendations rank items by the first slot's distribution (``offline_eval``), and a
    user's held-out positives are a set; next-token training alone teaches that slot only the
    item that came first."""
    log_p = F.log_softmax(first_slot_logits.float(), dim=-1)
    present = page_items != IGNORE
    picked = log_p.gather(1, page_items.clamp(min=0)) * present
    return -(picked.sum(1) / present.sum(1)).mean()


def rating_loss(
    model: nn.Module, head: RatingHead, examples: Sequence[RatingExample]
) -> torch.Tensor:
    """L_rating = mean (r - f(u, i))^2 (all rating prompts have the same length)."""
    ids = torch.tensor([e.ids for e in examples])
    hidden = last_hidden_states(model, input_ids=ids)[:, -1, :]
    target = torch.tensor([e.rating for e in examples])
    return torch.mean((target - head(hidden)) ** 2)


def sequence_terms(
    names: tuple[str, str],
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    settings: SupervisedSettings,
) -> dict[str, torch.Tensor]:
    """A stage's token loss terms under ``names``: next-token, and the weighted page set."""
    next_token, page_set = token_losses(model, batch)
    terms = {names[0]: next_token}
    if settings.page_set_weight > 0:
        terms[names[1]] = settings.page_set_weight * page_set
    return terms


def meta_pretrain(
    model: nn.Module,
    head: RatingHead,
    meta: Sequence[TokenExample],
    ratings: Sequence[RatingExample],
    settings: SupervisedSettings,
    curve: TrainingCurve,
    pad_id: int,
    shard: Shard = IN_PROCESS,
    validation_score: Callable[[nn.Module], float] | None = None,
) -> None:
    """Next-token loss on meta prompts plus w * rating regression, a batch of each per step.

    With ``validation_score`` and ``meta_patience``, the best epoch's weights are kept
    (``train_keeping_best``): order-free windows make every epoch a larger step towards the
    training users' own items, and how many epochs help differs by dataset (short MovieLens
    histories peaked at the third of eight)."""

    def epoch_batches(rng: random.Random) -> list[Batch]:
        meta_batches = shuffled_batches(meta, settings.batch_size, rng)
        rating_batches = shuffled_batches(ratings, settings.batch_size, rng)
        n = max(len(meta_batches), len(rating_batches))
        return [
            (
                meta_batches[i % len(meta_batches)] if meta_batches else [],
                rating_batches[i % len(rating_batches)] if rating_batches else [],
            )
            for i in range(n)
        ]

    def loss_terms(batch: Batch) -> dict[str, torch.Tensor]:
        meta_batch, rating_batch = batch
        terms = {}
        if meta_batch:
            terms |= sequence_terms(META_TERMS, model, collate(meta_batch, pad_id), settings)
        if rating_batch and settings.rating_loss_weight > 0:
            mse = rating_loss(model, head, rating_batch)
            terms["rating_mse"] = settings.rating_loss_weight * mse
        return terms

    train_keeping_best(
        model,
        list(model.parameters()) + list(head.parameters()),
        epochs=settings.meta_epochs,
        lr=settings.meta_lr,
        seed=settings.seed,
        epoch_batches=epoch_batches,
        loss_terms=loss_terms,
        curve=curve,
        shard=shard,
        validation_score=validation_score,
        patience=settings.meta_patience,
        score_start=False,
    )


def finetune_on_golden_lists(
    model: nn.Module,
    examples: Sequence[TokenExample],
    settings: SupervisedSettings,
    curve: TrainingCurve,
    pad_id: int,
    shard: Shard = IN_PROCESS,
    validation_score: Callable[[nn.Module], float] | None = None,
) -> None:
    """L_ft = -mean log p(sigma_gt | q_u), over the page tokens only.

    With ``validation_score`` and ``finetune_patience``, the best weights are kept, those before
    the first epoch included: golden lists are a user's older positives while the meta stage's
    next-page windows teach what comes next, so fine-tuning can lower validation NDCG (dense
    MovieLens: 0.255 before it, 0.222 after one epoch); short histories, with few windows,
    gain from it.
    """
    train_keeping_best(
        model,
        list(model.parameters()),
        epochs=settings.finetune_epochs,
        lr=settings.finetune_lr,
        seed=settings.seed,
        epoch_batches=lambda rng: shuffled_batches(examples, settings.batch_size, rng),
        loss_terms=lambda batch: sequence_terms(
            FINETUNE_TERMS, model, collate(batch, pad_id), settings
        ),
        curve=curve,
        shard=shard,
        validation_score=validation_score,
        patience=settings.finetune_patience,
        score_start=True,
    )


def train_keeping_best(
    model: nn.Module,
    parameters: list[nn.Parameter],
    *,
    epochs: int,
    lr: float,
    seed: int,
    epoch_batches: Callable[[random.Random], list[Batch]],
    loss_terms: Callable[[Batch], dict[str, torch.Tensor]],
    curve: TrainingCurve,
    shard: Shard,
    validation_score: Callable[[nn.Module], float] | None,
    patience: int | None,
    score_start: bool,
) -> None:
    """``train_epochs``; with ``validation_score`` (higher is better) and a ``patience``, the
    weights are scored after each epoch (and before the first when ``score_start``), logged as
    ``validation_ndcg@100``, training stops after ``patience`` epochs without a better score,
    and the best weights are put back."""
    best = None
    if validation_score is not None and patience is not None:
        best = KeepBest(model, patience, higher_is_better=True)

    def score(epoch: int) -> bool:
        """Score the weights after ``epoch`` (-1: before training); True: stop."""
        value = validation_score(model)  # type: ignore[misc]
        model.train()
        curve.add("validation_ndcg@100", value)
        return best.stop_after(epoch, value)  # type: ignore[union-attr]

    if best is not None and score_start:
        score(-1)
    model.train()
    train_epochs(
        parameters,
        epochs,
        lr,
        epoch_batches,
        loss_terms,
        curve,
        seed,
        score if best is not None else None,
        shard,
    )
    if best is not None:
        best.restore()
