"""Stage 3, the multi-grained reward: a page-level head R_c and an item-level head R_f.

Both read the final hidden states of one backbone over [q_u || sigma]:
  R_c(sigma) = w_c . h_last           the pooled state (the page's closing [EOS])
  R_f(sigma) = (1/K) sum_k w_f . h_k  h_k the state at the k-th list entry
each trained with its Bradley-Terry loss on (chosen, rejected) pairs,
  L_coarse = -mean log sigmoid(R_c(chosen) - R_c(rejected)), and L_fine likewise with R_f.
The reward PPO maximises is R = R_c + R_f, or one head alone (the ablations).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from learner.ablations import RewardHeads
from learner.constrained_decoding import left_pad
from learner.data_parallel import IN_PROCESS, Shard
from learner.page_prompts import page_tokens, prompt_tokens
from learner.settings import RewardSettings
from learner.training_loop import KeepBest, TrainingCurve, shuffled_batches, train_epochs
from learner.vocabulary import Vocabulary


@dataclass(frozen=True)
class PageBatch:
    """Prompt + page sequences, left-padded, with a mask of the list entries."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    entries: torch.Tensor  # (batch, width) True at the page's item positions


def page_batch(
    vocab: Vocabulary, requests: Sequence[tuple[str, Sequence[str]]], pages: Sequence[Sequence[str]]
) -> PageBatch:
    """Encode (user, history) + page for each row; pages may differ in length."""
    sequences, page_lengths = [], []
    for (user, history), page in zip(requests, pages, strict=True):
        sequences.append(vocab.encode(prompt_tokens(user, history) + page_tokens(page)))
        page_lengths.append(len(page))
    ids, mask = left_pad(sequences, vocab.tokenizer.pad_token_id)
    entries = torch.zeros_like(ids, dtype=torch.bool)
    for row, n in enumerate(page_lengths):
        entries[row, ids.shape[1] - 1 - n : ids.shape[1] - 1] = True  # the last token is [EOS]
    return PageBatch(ids, mask, entries)


class RewardModel(nn.Module):
    """A decoder body with the two scalar heads."""

    def __init__(self, body: nn.Module, hidden_size: int) -> None:
        super().__init__()
        self.body = body
        self.page_head = nn.Linear(hidden_size, 1)
        self.item_head = nn.Linear(hidden_size, 1)

    def forward(self, batch: PageBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(R_c, R_f), each of shape (batch,)."""
        positions = (batch.attention_mask.cumsum(1) - 1).clamp(min=0)
        hidden = self.body(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=positions
        ).last_hidden_state
        page_reward = self.page_head(hidden[:, -1, :]).squeeze(-1)
        per_entry = self.item_head(hidden).squeeze(-1) * batch.entries
        item_reward = per_entry.sum(1) / batch.entries.sum(1).clamp(min=1)
        return page_reward, item_reward


def combined_reward(page: torch.Tensor, item: torch.Tensor, heads: RewardHeads) -> torch.Tensor:
    """R = R_c + R_f, or the one head an ablation keeps (zero for 'none')."""
    return {
        "both": page + item,
        "page": page,
        "item": item,
        "none": torch.zeros_like(page),
    }[heads]


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """L = -mean log sigmoid(R(chosen) - R(rejected))."""
    return -F.logsigmoid(chosen - rejected).mean()


def pair_accuracy(chosen: torch.Tensor, rejected: torch.Tensor) -> float:
    """Share of pairs with R(chosen) > R(rejected)."""
    return float((chosen > rejected).float().mean())


@dataclass(frozen=True)
class LabelledPair:
    """(q_u, chosen, rejected) of one family."""

    user: str
    history: tuple[str, ...]
    family: str
    chosen: tuple[str, ...]
    rejected: tuple[str, ...]


def pair_rewards(
    model: RewardModel, vocab: Vocabulary, pairs: Sequence[LabelledPair]
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """((R_c, R_f) of the chosen lists, (R_c, R_f) of the rejected), one forward pass."""
    requests = [(p.user, p.history) for p in pairs] * 2
    pages = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    page, item = model(page_batch(vocab, requests, pages))
    n = len(pairs)
    return (page[:n], item[:n]), (page[n:], item[n:])


def bradley_terry_terms(chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, torch.Tensor]:
    """L_coarse and L_fine from (2, n) scores: row 0 R_c, row 1 R_f, of n pairs."""
    return {
        "page_bradley_terry": bradley_terry_loss(chosen[0], rejected[0]),
        "item_bradley_terry": bradley_terry_loss(chosen[1], rejected[1]),
    }


def reward_loss_terms(
    model: RewardModel, vocab: Vocabulary, pairs: Sequence[LabelledPair]
) -> dict[str, torch.Tensor]:
    """L_coarse and L_fine of a batch of pairs."""
    chosen, rejected = pair_rewards(model, vocab, pairs)
    return bradley_terry_terms(torch.stack(chosen), torch.stack(rejected))


@torch.no_grad()
def scored_pairs(
    model: RewardModel, vocab: Vocabulary, pairs: Sequence[LabelledPair], batch_size: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) scores of every pair, each (2, n): row 0 R_c, row 1 R_f. Scored
    ``batch_size`` pairs at a time, so memory is one batch's whatever the number of pairs:
    3,400 validation pairs in one pass took 3 GB (bench-eval-scale's reward stage)."""
    if not pairs:
        return torch.empty(2, 0), torch.empty(2, 0)
    training = model.training
    model.eval()
    chosen, rejected = [], []
    for start in range(0, len(pairs), batch_size):
        c, r = pair_rewards(model, vocab, pairs[start : start + batch_size])
        chosen.append(torch.stack(c))
        rejected.append(torch.stack(r))
    model.train(training)
    return torch.cat(chosen, 1), torch.cat(rejected, 1)


def accuracies_by_family(
    chosen: torch.Tensor, rejected: torch.Tensor, families: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Per family: the share of its pairs each head (and R_c + R_f) ranks chosen over rejected
    (``families[k]`` is pair k's)."""
    out = {}
    for family in sorted(set(families)):
        k = torch.tensor([n for n, f in enumerate(families) if f == family])
        c, r = chosen[:, k], rejected[:, k]
        out[family] = {
            "page": pair_accuracy(c[0], r[0]),
            "item": pair_accuracy(c[1], r[1]),
            "both": pair_accuracy(c[0] + c[1], r[0] + r[1]),
        }
    return out


def pair_accuracies(
    model: RewardModel, vocab: Vocabulary, pairs: Sequence[LabelledPair]
) -> dict[str, dict[str, float]]:
    """Per family: the share of pairs each head (and R_c + R_f) ranks chosen over rejected."""
    return accuracies_by_family(*scored_pairs(model, vocab, pairs), [p.family for p in pairs])


def train_reward_model(
    model: RewardModel,
    vocab: Vocabulary,
    train: Sequence[LabelledPair],
    validation: Sequence[LabelledPair],
    settings: RewardSettings,
    curve: TrainingCurve,
    shard: Shard = IN_PROCESS,
) -> None:
    """Both Bradley-Terry losses; stops when the validation log-likelihood stops improving and
    keeps the best epoch's weights."""
    model.train()
    best = KeepBest(model, settings.patience, higher_is_better=False)

    families = [p.family for p in validation]

    def after_epoch(epoch: int) -> bool:
        if not validation:
            return False
        chosen, rejected = scored_pairs(model, vocab, validation, settings.batch_size)
        loss = float(sum(bradley_terry_terms(chosen, rejected).values()))
        curve.add("validation_bradley_terry", loss)
        for family, acc in accuracies_by_family(chosen, rejected, families).items():
            curve.add(f"validation_accuracy_{family}", acc["both"])
        return best.stop_after(epoch, loss)

    train_epochs(
        list(model.parameters()),
        settings.epochs,
        settings.lr,
        lambda rng: shuffled_batches(train, settings.batch_size, rng),
        lambda batch: reward_loss_terms(model, vocab, batch),
        curve,
        settings.seed,
        after_epoch,
        shard,
    )
    best.restore()
