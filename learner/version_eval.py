"""A version's figures on a snapshot's held-out users: what the promotion gates compare.

The same users, items and pairs score both versions. A version can only score users, prompt
items and pairs its vocabulary holds, so the gate's users are those every compared version
knows, and both rank only the items both know: a new item's embedding row is still the random
one the warm start gave it, so letting it into the candidate's ranking would measure that
noise rather than what was learned. The candidate's figures over every test user and item it
knows are reported beside them (``all_*``).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from learner.artifacts import load_policy, load_reward_model
from learner.constrained_decoding import generate_pages
from learner.offline_eval import recommend, relevance_metrics
from learner.ppo import forward_page
from learner.promotion_gates import KL, PAIR_ACCURACY, PAIRS_OF
from learner.reward_heads import LabelledPair, RewardModel, pair_accuracies
from learner.vocabulary import Vocabulary, item_token, user_token
from streams.derive.training_snapshot import TrainingSnapshot

# A version's model directory (a registered version's ``model/``).
VOCABULARY, REFERENCE, REWARD, POLICY = "vocabulary", "reference", "reward", "policy"


@dataclass
class VersionModels:
    vocab: Vocabulary
    policy: nn.Module
    reference: nn.Module
    reward_model: RewardModel


def load_version_models(model_dir: Path) -> VersionModels:
    return VersionModels(
        vocab=Vocabulary.load(model_dir / VOCABULARY),
        policy=load_policy(model_dir / POLICY),
        reference=load_policy(model_dir / REFERENCE),
        reward_model=load_reward_model(model_dir / REWARD),
    )


def knows(vocab: Vocabulary, user: str, items: Sequence[str]) -> bool:
    """Whether ``vocab`` has a token for the user and for every one of ``items``."""
    try:
        vocab.encode([user_token(user), *(item_token(i) for i in items)])
    except KeyError:
        return False
    return True


def shared_test_users(snapshot: TrainingSnapshot, vocabs: Sequence[Vocabulary]) -> list[str]:
    """Test users whose request (their last L positives) every vocabulary can write."""
    return sorted(
        u
        for u, items in snapshot.test.items()
        if items and all(knows(v, u, snapshot.histories[u]) for v in vocabs)
    )


def shared_pairs(pairs: Sequence[LabelledPair], vocabs: Sequence[Vocabulary]) -> list[LabelledPair]:
    """Pairs every vocabulary can write."""
    return [
        p
        for p in pairs
        if all(knows(v, p.user, (*p.history, *p.chosen, *p.rejected)) for v in vocabs)
    ]


@torch.no_grad()
def kl_to_reference(
    models: VersionModels,
    requests: Sequence[tuple[str, Sequence[str]]],
    k: int,
    seed: int = 0,
    batch_size: int = 64,
) -> float:
    """KL(pi || pi_ref) per page, in nats: the mean over pages sampled from pi of
    sum_t (log pi(a_t) - log pi_ref(a_t)) under the decoding masks."""
    generator = torch.Generator(next(models.policy.parameters()).device).manual_seed(seed)
    total, pages = 0.0, 0
    for start in range(0, len(requests), batch_size):
        chunk = requests[start : start + batch_size]
        sampled = generate_pages(models.policy, models.vocab, chunk, k, generator=generator)
        logprobs, _ = forward_page(models.policy, sampled, models.vocab, k)
        ref_logprobs, _ = forward_page(models.reference, sampled, models.vocab, k)
        total += float((logprobs - ref_logprobs).sum())
        pages += len(chunk)
    return total / max(pages, 1)


def shared_items(vocabs: Sequence[Vocabulary]) -> set[str]:
    """Items every vocabulary holds."""
    return set.intersection(*(set(v.items) for v in vocabs))


def relevance_figures(
    models: VersionModels,
    snapshot: TrainingSnapshot,
    users: Sequence[str],
    among: Collection[str] | None = None,
) -> dict[str, float]:
    """NDCG@100, Recall@20 and Recall@40 on ``users``' test items, ranking only ``among``."""
    recs = recommend(models.policy, models.vocab, snapshot, list(users), among=among)
    relevance = relevance_metrics(recs, {u: snapshot.test[u] for u in users})
    return {name: relevance[name] for name in ("ndcg@100", "recall@20", "recall@40")}


def version_figures(
    models: VersionModels,
    snapshot: TrainingSnapshot,
    users: Sequence[str],
    pairs: Sequence[LabelledPair],
    page_length: int,
    seed: int = 0,
    among: Collection[str] | None = None,
) -> dict[str, float]:
    """Relevance on ``users``' test items (ranking only ``among``), pair accuracy (R_c + R_f)
    per family on ``pairs``, and the policy's KL to its reference on the users' requests."""
    figures: dict[str, float] = {"users": float(len(users)), "pairs": float(len(pairs))}
    if users:
        figures |= relevance_figures(models, snapshot, users, among)
        requests = [(u, snapshot.histories[u]) for u in users]
        figures[KL] = kl_to_reference(models, requests, page_length, seed)
    if pairs:
        for family, accuracy in pair_accuracies(models.reward_model, models.vocab, pairs).items():
            figures[f"{PAIR_ACCURACY}{family}"] = accuracy["both"]
            figures[f"{PAIRS_OF}{family}"] = float(sum(p.family == family for p in pairs))
    return figures
