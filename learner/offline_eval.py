"""Offline evaluation under the paper's protocol, and what it writes for others to check.

Recommendations are ranked by the policy's own scores: log pi(item | q_u) at the first slot of
the page, over every catalogue item except the user's train and validation items (the
protocol's candidates). The page metrics (WAS, PWKT, WMRD, DPA against the golden list; ILD and
category entropy) are computed on the K-item page the policy generates greedily.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

import torch
from matplotlib.figure import Figure
from torch import nn

from learner.constrained_decoding import generate_pages, left_pad, position_ids
from learner.page_prompts import prompt_tokens
from learner.ranking_metrics import (
    category_entropy,
    discounted_positional_accuracy,
    intra_list_diversity,
    ndcg_at_k,
    position_weighted_kendall_tau,
    recall_at_k,
    weighted_agreement_score,
    weighted_mean_rank_difference,
)
from learner.training_loop import TrainingCurve
from learner.vocabulary import Vocabulary
from streams.derive.training_snapshot import TrainingSnapshot

RECOMMENDATIONS = 100


def excluded_items(snapshot: TrainingSnapshot, user: str, for_validation: bool) -> set[str]:
    """The items no list for ``user`` may hold: their training items, and their validation
    items unless the list is scored on them (the protocol's candidates are the rest)."""
    seen = set(snapshot.train_ratings.get(user, {}))
    return seen if for_validation else seen | set(snapshot.validation[user])


@torch.no_grad()
def first_slot_scores(
    policy: nn.Module, vocab: Vocabulary, requests: Sequence[tuple[str, Sequence[str]]]
) -> torch.Tensor:
    """(batch, items): log pi(item | q_u) at the first page slot, unmasked."""
    prompts = [vocab.encode(prompt_tokens(user, history)) for user, history in requests]
    ids, mask = left_pad(prompts, vocab.tokenizer.pad_token_id)
    logits = policy(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits
    return torch.log_softmax(logits[:, -1, :].float(), dim=-1)[:, vocab.item_ids]


def recommend(
    policy: nn.Module,
    vocab: Vocabulary,
    snapshot: TrainingSnapshot,
    users: Sequence[str],
    n: int = RECOMMENDATIONS,
    batch_size: int = 64,
    on_batch: Callable[[int], None] = lambda done: None,
    for_validation: bool = False,
    among: Collection[str] | None = None,
) -> dict[str, list[str]]:
    """user -> the n best items by the policy's first-slot score, the user's train items and
    (unless the lists are ``for_validation``) validation items excluded; only items ``among``
    when it is given."""
    policy.eval()
    allowed = set(among) if among is not None else None
    outside = (
        torch.tensor([n for n, i in enumerate(vocab.items) if i not in allowed], dtype=torch.long)
        if allowed is not None
        else None
    )
    out = {}
    for start in range(0, len(users), batch_size):
        chunk = users[start : start + batch_size]
        scores = first_slot_scores(policy, vocab, [(u, snapshot.histories[u]) for u in chunk])
        for row, user in enumerate(chunk):
            seen = excluded_items(snapshot, user, for_validation)
            banned = [vocab.item_index[i] for i in seen if i in vocab.item_index]
            scores[row, banned] = float("-inf")
            if outside is not None:
                scores[row, outside] = float("-inf")
            left = int(torch.isfinite(scores[row]).sum())
            top = torch.topk(scores[row], min(n, left)).indices
            out[user] = [vocab.items[i] for i in top.tolist()]
        on_batch(len(chunk))
    return out


@torch.no_grad()
def recommend_by_pages(
    policy: nn.Module,
    vocab: Vocabulary,
    snapshot: TrainingSnapshot,
    users: Sequence[str],
    k: int,
    n: int = RECOMMENDATIONS,
    batch_size: int = 64,
    for_validation: bool = False,
) -> dict[str, list[str]]:
    """user -> n items as successive greedy pages of k: page j is generated with the items of
    pages 1..j-1 banned, so the ranking is the order in which the policy fills its pages (what
    PPO trained), not its first slot alone. Bans as in ``recommend``."""
    policy.eval()
    out = {}
    for start in range(0, len(users), batch_size):
        chunk = users[start : start + batch_size]
        requests = [(u, snapshot.histories[u]) for u in chunk]
        seen = [excluded_items(snapshot, u, for_validation) for u in chunk]
        ranked: list[list[str]] = [[] for _ in chunk]
        while (wanted := n - len(ranked[0])) > 0:
            banned = [s | set(r) for s, r in zip(seen, ranked, strict=True)]
            # The history is banned by the generator too; a page never outgrows what is left.
            left = min(
                len(vocab.items) - len((b | set(h)) & vocab.item_index.keys())
                for b, (_, h) in zip(banned, requests, strict=True)
            )
            size = min(k, wanted, left)
            if size <= 0:
                break
            pages = generate_pages(
                policy, vocab, requests, size, greedy=True, also_banned=banned
            ).pages
            for row, page in enumerate(pages):
                ranked[row] += page
        out.update(zip(chunk, ranked, strict=True))
    return out


def relevance_metrics(
    recommendations: dict[str, list[str]], test: dict[str, tuple[str, ...]]
) -> dict[str, float]:
    """Recall@20, Recall@40, NDCG@100 averaged over test users (no list scores 0)."""
    users = [u for u, items in test.items() if items]
    sums = {"recall@20": 0.0, "recall@40": 0.0, "ndcg@100": 0.0}
    for user in users:
        ranked, relevant = recommendations.get(user, []), set(test[user])
        sums["recall@20"] += recall_at_k(ranked, relevant, 20)
        sums["recall@40"] += recall_at_k(ranked, relevant, 40)
        sums["ndcg@100"] += ndcg_at_k(ranked, relevant, 100)
    return {k: v / max(len(users), 1) for k, v in sums.items()}


@torch.no_grad()
def page_quality(
    policy: nn.Module, vocab: Vocabulary, snapshot: TrainingSnapshot, k: int, batch_size: int = 64
) -> dict[str, float]:
    """Greedy K-item pages against the golden lists: the consistency and diversity metrics."""
    category = {i: c.category for i, c in snapshot.catalogue.items()}
    users = sorted(u for u, g in snapshot.golden.items() if g.items)
    sums = dict.fromkeys(("was", "pwkt", "wmrd", "dpa", "ild", "category_entropy"), 0.0)
    for start in range(0, len(users), batch_size):
        chunk = users[start : start + batch_size]
        requests = [(u, snapshot.prompts[u].items) for u in chunk]
        pages = generate_pages(policy, vocab, requests, k, greedy=True).pages
        for user, page in zip(chunk, pages, strict=True):
            gold = snapshot.golden[user].items
            sums["was"] += weighted_agreement_score(page, gold)
            sums["pwkt"] += position_weighted_kendall_tau(page, gold)
            sums["wmrd"] += weighted_mean_rank_difference(page, gold)
            sums["dpa"] += discounted_positional_accuracy(page, gold)
            sums["ild"] += intra_list_diversity(page, category)
            sums["category_entropy"] += category_entropy(page, category)
    return {k: v / max(len(users), 1) for k, v in sums.items()}


def write_recommendations(path: Path, recommendations: dict[str, list[str]]) -> None:
    """CSV: user_id, then the ranked item ids separated by spaces."""
    with open(path, "w", newline="") as sink:
        writer = csv.writer(sink)
        writer.writerow(["user_id", "items"])
        for user, items in sorted(recommendations.items()):
            writer.writerow([user, " ".join(items)])


def write_metrics(path: Path, metrics: dict[str, object]) -> None:
    path.write_text(json.dumps(metrics, indent=2, sort_keys=True))


CURVE_PANELS = (
    ("supervised loss", "finetune", "finetune_"),
    ("meta pre-training", "meta", "meta_"),
    ("fine-tuning validation NDCG@100", "finetune", "validation_ndcg@100"),
    ("reward head validation", "reward", "validation_accuracy_"),
    ("PPO mean reward", "ppo_", "mean_reward"),
    ("PPO KL to reference", "ppo_", "kl_to_reference"),
)


def plot_training_curves(curves: dict[str, TrainingCurve], path: Path) -> Path:
    """One panel per quantity: SFT losses and validation NDCG, reward accuracy, PPO mean reward
    and KL, by epoch or iteration."""
    fig = Figure(figsize=(4 * len(CURVE_PANELS), 3.2))
    axes = fig.subplots(1, len(CURVE_PANELS))
    for ax, (title, stage_prefix, term_prefix) in zip(axes, CURVE_PANELS, strict=True):
        for stage, curve in sorted(curves.items()):
            if not stage.startswith(stage_prefix):
                continue
            for term, values in curve.epochs.items():
                if term.startswith(term_prefix):
                    label = stage if term == term_prefix else f"{stage}:{term[len(term_prefix) :]}"
                    ax.plot(range(1, len(values) + 1), values, label=label)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch / iteration", fontsize=8)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def validation_ndcg(policy: nn.Module, vocab: Vocabulary, snapshot: TrainingSnapshot) -> float:
    """NDCG@100 of the first-slot ranking on the validation items (train items excluded)."""
    users = sorted(u for u, items in snapshot.validation.items() if items)
    recs = recommend(policy, vocab, snapshot, users, for_validation=True)
    return relevance_metrics(recs, {u: snapshot.validation[u] for u in users})["ndcg@100"]
