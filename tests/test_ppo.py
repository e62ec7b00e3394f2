"""PPO: each term by hand, and the loop raises a known toy reward with a bounded KL."""

from __future__ import annotations

import random

import pytest
import torch

from learner.backbone import build_policy
from learner.ppo import (
    PPOTrainer,
    RunningMoments,
    clipped_policy_loss,
    generalized_advantages,
    token_rewards,
)
from learner.settings import BackboneSettings, PPOSettings
from learner.vocabulary import build_vocabulary

torch.set_num_threads(1)
ITEMS = [f"i{n:02d}" for n in range(40)]
USERS = [f"u{n}" for n in range(20)]
TARGET = set(ITEMS[:10])


def share_of_target(_requests, pages) -> torch.Tensor:
    """The toy reward: the share of a page's items that are targets."""
    return torch.tensor([len(TARGET & set(page)) / len(page) for page in pages])


def test_token_rewards_put_the_kl_penalty_on_every_token_and_r_on_the_last() -> None:
    rewards = token_rewards(torch.tensor([2.0]), torch.tensor([[-1.0, -2.0]]),
                            torch.tensor([[-1.5, -1.0]]), kl_coef=0.1)  # fmt: skip
    # -0.1 * (0.5) = -0.05; -0.1 * (-1.0) + 2 = 2.1
    assert rewards[0].tolist() == pytest.approx([-0.05, 2.1])


def test_gae_with_gamma_one_and_lambda_one_is_return_minus_value() -> None:
    rewards, values = torch.tensor([[0.0, 1.0, 2.0]]), torch.tensor([[0.5, 0.5, 0.5]])
    advantages, returns = generalized_advantages(rewards, values, gamma=1.0, lam=1.0)
    # returns-to-go 3, 3, 2
    assert returns[0].tolist() == pytest.approx([3.0, 3.0, 2.0])
    assert advantages[0].tolist() == pytest.approx([2.5, 2.5, 1.5])
    # lam = 0: one-step TD errors r_t + V_{t+1} - V_t
    advantages, _ = generalized_advantages(rewards, values, gamma=1.0, lam=0.0)
    assert advantages[0].tolist() == pytest.approx([0.0, 1.0, 1.5])


def test_clipped_policy_loss_by_hand() -> None:
    old = torch.zeros(2)
    new = torch.log(torch.tensor([1.5, 0.5]))  # ratios 1.5 and 0.5
    loss, clip_fraction, _ = clipped_policy_loss(new, old, torch.tensor([1.0, -1.0]), clip=0.2)
    # A=+1: max(-1.5, -1.2) = -1.2; A=-1: max(0.5, 0.8) = 0.8; mean -0.2
    assert loss.item() == pytest.approx(-0.2)
    assert clip_fraction.item() == 1.0


def test_running_moments() -> None:
    m = RunningMoments()
    m.update(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert (m.mean, m.std) == pytest.approx((2.5, (5 / 3) ** 0.5))


def test_ppo_raises_a_known_reward_while_the_kl_stays_bounded() -> None:
    vocab = build_vocabulary(USERS, ITEMS, ["c"])
    policy = build_policy(vocab, BackboneSettings(n_embd=32, n_layer=1, n_head=2), seed=0)
    rng = random.Random(0)
    requests = [(u, rng.sample(ITEMS[10:], 3)) for u in USERS]

    settings = PPOSettings(iterations=12, batch_size=20, minibatch_size=10, epochs=4, lr=3e-3,
                           page_length=5, kl_coef=0.05)  # fmt: skip
    trainer = PPOTrainer(policy, vocab, share_of_target, settings, hidden_size=32)
    history: list[dict[str, float]] = []
    trainer.train(requests, history.append)
    start = sum(h["mean_reward"] for h in history[:2]) / 2
    end = sum(h["mean_reward"] for h in history[-2:]) / 2
    assert start < 0.4  # about 10 of 37 allowed items are targets
    assert end > start + 0.25, [round(h["mean_reward"], 3) for h in history]
    assert max(h["kl_to_reference"] for h in history) < 15.0
    for term in ("policy_loss", "value_loss", "clip_fraction", "approx_kl"):
        assert all(term in h for h in history)


def test_a_larger_kl_coefficient_keeps_the_policy_closer_to_the_reference() -> None:
    vocab = build_vocabulary(USERS, ITEMS, ["c"])
    rng = random.Random(0)
    requests = [(u, rng.sample(ITEMS[10:], 3)) for u in USERS]

    final_kl = {}
    for kl_coef in (0.0, 1.0):
        policy = build_policy(vocab, BackboneSettings(n_embd=32, n_layer=1, n_head=2), seed=0)
        settings = PPOSettings(iterations=10, batch_size=20, minibatch_size=10, epochs=4,
                               lr=3e-3, page_length=5, kl_coef=kl_coef)  # fmt: skip
        history: list[dict[str, float]] = []
        PPOTrainer(policy, vocab, share_of_target, settings, 32).train(requests, history.append)
        final_kl[kl_coef] = sum(h["kl_to_reference"] for h in history[-3:]) / 3
    assert final_kl[1.0] < 0.5 * final_kl[0.0], final_kl


def test_the_first_update_step_starts_at_ratio_one_even_with_dropout() -> None:
    vocab = build_vocabulary(USERS, ITEMS, ["c"])
    backbone = BackboneSettings(n_embd=32, n_layer=1, n_head=2, dropout=0.5)
    policy = build_policy(vocab, backbone, seed=0)
    settings = PPOSettings(batch_size=20, minibatch_size=20, epochs=1, page_length=5)
    trainer = PPOTrainer(policy, vocab, share_of_target, settings, hidden_size=32)
    rng = random.Random(0)
    rollout = trainer.rollout([(u, rng.sample(ITEMS[10:], 3)) for u in USERS])
    stats = trainer.update(rollout)  # one minibatch: its terms are measured before the step
    assert stats["clip_fraction"] == 0.0
    assert abs(stats["approx_kl"]) < 1e-6


def test_rollouts_page_none_of_the_items_a_user_rated_unless_too_few_would_be_left() -> None:
    vocab = build_vocabulary(USERS, ITEMS, ["c"])
    policy = build_policy(vocab, BackboneSettings(n_embd=32, n_layer=1, n_head=2), seed=0)
    rated = {u: set(random.Random(u).sample(ITEMS, 20)) for u in USERS}
    rated["u0"] = set(ITEMS[:36])  # 4 unrated items: a page of 5 keeps only the prompt's bans
    settings = PPOSettings(batch_size=20, page_length=5)
    requests = [(u, sorted(rated[u])[:3]) for u in USERS]
    trainer = PPOTrainer(policy, vocab, share_of_target, settings, 32, rated=rated)
    for _ in range(3):
        pages = dict(zip(USERS, trainer.rollout(requests).pages.pages, strict=True))
        assert all(not set(pages[u]) & rated[u] for u in USERS[1:])
        assert not set(pages["u0"]) & set(requests[0][1])
    unbanned = settings.model_copy(update={"ban_rated": False})
    off = PPOTrainer(policy, vocab, share_of_target, unbanned, 32, rated=rated)
    pages = off.rollout(requests).pages.pages
    assert any(set(page) & rated[u] for u, page in zip(USERS, pages, strict=True))
