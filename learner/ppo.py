"""Stage 4, PPO: the policy generates pages, the reward model scores them, the policy moves.

The MDP of section 4.5: a state is the prompt plus the page so far, an action the next token
(constrained to valid items, then [EOS]). Per token t the reward is the KL penalty
-beta (log pi(a_t) - log pi_ref(a_t)); the last token also gets the (normalised) page reward R.
Advantages are GAE with gamma = 1. Every term of the loss is named and logged (CleanRL style):

  policy_loss = mean max(-A ratio, -A clip(ratio, 1 - eps, 1 + eps)),  ratio = pi / pi_old
  value_loss  = 0.5 mean (V - G)^2
  loss        = policy_loss + value_coef * value_loss
"""

from __future__ import annotations

import copy
import logging
import random
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from learner.backbone import last_hidden_states, output_logits
from learner.constrained_decoding import GeneratedPages, generate_pages, page_logprobs, position_ids
from learner.data_parallel import IN_PROCESS, Shard
from learner.settings import PPOSettings
from learner.vocabulary import Vocabulary

log = logging.getLogger(__name__)

Request = tuple[str, Sequence[str]]
PageReward = Callable[[Sequence[Request], Sequence[Sequence[str]]], torch.Tensor]


class ValueHead(nn.Module):
    """V(state): a scalar from the policy's last hidden state at each position."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.value = nn.Linear(hidden_size, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.value(hidden).squeeze(-1)


class RunningMoments:
    """Mean and variance of every reward seen so far (Welford), to normalise rewards."""

    def __init__(self) -> None:
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, values: torch.Tensor) -> None:
        for x in values.tolist():
            self.count += 1
            delta = x - self.mean
            self.mean += delta / self.count
            self.m2 += delta * (x - self.mean)

    @property
    def std(self) -> float:
        return (self.m2 / (self.count - 1)) ** 0.5 if self.count > 1 else 1.0


def token_rewards(
    page_reward: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kl_coef: float
) -> torch.Tensor:
    """r_t = -beta (log pi(a_t) - log pi_ref(a_t)), plus R on the last token."""
    rewards = -kl_coef * (logprobs - ref_logprobs)
    rewards[:, -1] += page_reward
    return rewards


def generalized_advantages(
    rewards: torch.Tensor, values: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """A_t = sum_l (gamma lam)^l delta_{t+l}, delta_t = r_t + gamma V_{t+1} - V_t (V_T = 0);
    returns G_t = A_t + V_t."""
    advantages = torch.zeros_like(rewards)
    running = torch.zeros(rewards.shape[0])
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    return advantages, advantages + values


def clipped_policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, clip: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, clip fraction, approximate KL(old || new)) of the clipped surrogate."""
    log_ratio = logprobs - old_logprobs
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip, 1 + clip)
    loss = torch.max(unclipped, clipped).mean()
    clip_fraction = ((ratio - 1).abs() > clip).float().mean()
    approx_kl = ((ratio - 1) - log_ratio).mean()
    return loss, clip_fraction, approx_kl


@dataclass
class Rollout:
    pages: GeneratedPages
    old_logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    page_reward: torch.Tensor  # before normalisation


def forward_page(
    model: nn.Module, pages: GeneratedPages, vocab: Vocabulary, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log pi of each page token under the decoding masks, the last hidden state at each of
    those states, for the value head)."""
    hidden = last_hidden_states(
        model,
        input_ids=pages.input_ids,
        attention_mask=pages.attention_mask,
        position_ids=position_ids(pages.attention_mask),
    )
    start = pages.prompt_length - 1  # the state before the first page token
    states = hidden[:, start:-1, :]
    logits = output_logits(model, states)
    item_ids = torch.tensor(vocab.item_ids)
    logprobs = page_logprobs(
        logits, pages.page_ids, pages.bans, item_ids, k, vocab.tokenizer.eos_token_id
    )
    return logprobs, states


class PPOTrainer:
    """The policy, its frozen reference, a value head, and the loop that ties them.

    Under data parallelism each worker rolls out its share of the batch from its own requests
    and random stream, and the gradients of every minibatch are averaged over the workers.
    """

    def __init__(
        self,
        policy: nn.Module,
        vocab: Vocabulary,
        reward: PageReward,
        settings: PPOSettings,
        hidden_size: int,
        shard: Shard = IN_PROCESS,
        rated: Mapping[str, Collection[str]] | None = None,
    ) -> None:
        self.policy, self.vocab, self.reward, self.settings = policy, vocab, reward, settings
        self.shard = shard
        # A user who rated nearly the whole catalogue keeps only the prompt's bans.
        room = len(vocab.item_ids) - settings.page_length
        kept = rated if rated is not None and settings.ban_rated else {}
        self.rated = {user: items for user, items in kept.items() if len(items) <= room}
        self.reference = copy.deepcopy(policy).eval().requires_grad_(False)
        self.value_head = ValueHead(hidden_size)
        self.parameters = list(policy.parameters()) + list(self.value_head.parameters())
        self.optimizer = torch.optim.AdamW(self.parameters, lr=settings.lr)
        self.moments = RunningMoments()
        # Sampling draws on the policy's device: a CPU generator cannot drive CUDA sampling.
        device = next(policy.parameters()).device
        self.generator = torch.Generator(device).manual_seed(settings.seed + shard.rank)

    @torch.no_grad()
    def rollout(self, requests: Sequence[Request]) -> Rollout:
        s, k = self.settings, self.settings.page_length
        self.policy.eval()
        rated = [self.rated.get(user, ()) for user, _ in requests]
        pages = generate_pages(
            self.policy, self.vocab, requests, k, generator=self.generator, also_banned=rated
        )
        old_logprobs, hidden = forward_page(self.policy, pages, self.vocab, k)
        values = self.value_head(hidden)
        ref_logprobs, _ = forward_page(self.reference, pages, self.vocab, k)
        page_reward = self.reward(requests, pages.pages).float()
        scaled = page_reward
        if s.normalize_reward:
            self.moments.update(page_reward)
            scaled = (page_reward - self.moments.mean) / (self.moments.std + 1e-8)
        rewards = token_rewards(scaled, old_logprobs, ref_logprobs, s.kl_coef)
        advantages, returns = generalized_advantages(rewards, values, s.gamma, s.gae_lambda)
        return Rollout(pages, old_logprobs, ref_logprobs, advantages, returns, page_reward)

    def update(self, rollout: Rollout) -> dict[str, float]:
        """``epochs`` passes of minibatch PPO over one rollout; the mean of each logged term."""
        s, k = self.settings, self.settings.page_length
        # Dropout stays off (a pretrained backbone carries some): pi_old was computed without
        # it, so with it the ratio would differ from 1 before any step and clip at random.
        self.policy.eval()
        n = rollout.old_logprobs.shape[0]
        adv = rollout.advantages
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        sums: dict[str, float] = {}
        steps = 0
        order_rng = random.Random(s.seed)
        for _ in range(s.epochs):
            order = list(range(n))
            order_rng.shuffle(order)
            for start in range(0, n, s.minibatch_size):
                idx = torch.tensor(order[start : start + s.minibatch_size])
                mini = _select(rollout.pages, idx)
                logprobs, hidden = forward_page(self.policy, mini, self.vocab, k)
                values = self.value_head(hidden)
                policy_loss, clip_fraction, approx_kl = clipped_policy_loss(
                    logprobs, rollout.old_logprobs[idx], adv[idx], s.clip
                )
                value_loss = 0.5 * ((values - rollout.returns[idx]) ** 2).mean()
                loss = policy_loss + s.value_coef * value_loss
                self.optimizer.zero_grad()
                loss.backward()
                self.shard.average_gradients(self.parameters)
                nn.utils.clip_grad_norm_(self.parameters, s.max_grad_norm)
                self.optimizer.step()
                terms = {
                    "policy_loss": policy_loss,
                    "value_loss": value_loss,
                    "clip_fraction": clip_fraction,
                    "approx_kl": approx_kl,
                }
                for name, value in terms.items():
                    sums[name] = sums.get(name, 0.0) + float(value.detach())
                steps += 1
        return self.shard.mean({name: total / steps for name, total in sums.items()})

    def train(
        self, requests: Sequence[Request], on_iteration: Callable[[dict[str, float]], None]
    ) -> None:
        """``iterations`` rounds of rollout and update over batches drawn from ``requests``."""
        rng = random.Random(self.settings.seed + self.shard.rank)
        per_worker = min(self.shard.share_of(self.settings.batch_size), len(requests))
        for iteration in range(self.settings.iterations):
            rollout = self.rollout(rng.sample(list(requests), per_worker))
            stats = self.update(rollout)
            kl = rollout.old_logprobs - rollout.ref_logprobs
            stats |= self.shard.mean(
                {
                    "mean_reward": float(rollout.page_reward.mean()),
                    "kl_to_reference": float(kl.sum(1).mean()),  # per page, in nats
                }
            )
            stats["iteration"] = float(iteration)
            log.info("ppo %d: %s", iteration, {k: round(v, 4) for k, v in stats.items()})
            on_iteration(stats)


def _select(pages: GeneratedPages, idx: torch.Tensor) -> GeneratedPages:
    return GeneratedPages(
        pages.input_ids[idx],
        pages.attention_mask[idx],
        pages.prompt_length,
        pages.token_logprobs[idx],
        pages.bans[idx],
        [pages.pages[i] for i in idx.tolist()],
    )
