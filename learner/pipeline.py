"""The method end to end, in process: vocabulary, warm-up, reward model, PPO per ablation.

Ablations (one setting): ``sft`` is the fine-tuned reference policy without any reward;
``page``, ``item`` and ``both`` run PPO with R_c, R_f or R_c + R_f.
"""

from __future__ import annotations

import copy
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from pydantic import BaseModel, Field
from torch import nn

from learner.ablations import ABLATIONS, HEADS_OF, Ablation, RewardHeads
from learner.backbone import BackboneSettings, build_policy, extend_pretrained
from learner.ppo import PPOSettings, PPOTrainer
from learner.reward_heads import (
    LabelledPair,
    RewardModel,
    RewardSettings,
    combined_reward,
    page_batch,
    pair_accuracies,
    train_reward_model,
)
from learner.supervised import (
    RatingHead,
    SupervisedSettings,
    finetune_on_golden_lists,
    meta_pretrain,
)
from learner.token_sequences import golden_example, meta_examples, rating_examples
from learner.training_loop import TrainingCurve
from learner.vocabulary import Vocabulary, build_vocabulary
from streams.training_snapshot import TrainingSnapshot

log = logging.getLogger(__name__)


class LearnerSettings(BaseModel):
    """Every stage's settings (paper defaults), the backbone, and the ablations to train."""

    backbone: BackboneSettings = Field(default_factory=BackboneSettings)
    supervised: SupervisedSettings = Field(default_factory=SupervisedSettings)
    reward: RewardSettings = Field(default_factory=RewardSettings)
    ppo: PPOSettings = Field(default_factory=PPOSettings)
    pretrained_dir: Path | None = Field(None, description="a local causal LM instead of a new one")
    validation_user_share: float = Field(0.1, ge=0, lt=1, description="users whose pairs validate")
    seed: int = 0


@dataclass
class TrainedModels:
    vocab: Vocabulary
    reference: nn.Module
    reward_model: RewardModel
    policies: dict[Ablation, nn.Module]
    curves: dict[str, TrainingCurve] = field(default_factory=dict)
    reward_accuracy: dict[str, dict[str, float]] = field(default_factory=dict)


def hidden_size(model: nn.Module) -> int:
    config = model.config  # type: ignore[attr-defined]
    return int(getattr(config, "n_embd", None) or config.hidden_size)


def snapshot_vocabulary_inputs(
    snapshot: TrainingSnapshot,
) -> tuple[list[str], list[str], list[str]]:
    users = sorted(snapshot.prompts)
    items = sorted(snapshot.catalogue)
    return users, items, sorted({c.category for c in snapshot.catalogue.values()})


def labelled_pairs(snapshot: TrainingSnapshot) -> list[LabelledPair]:
    return [
        LabelledPair(p.user_id, snapshot.prompts[p.user_id].items, p.family, p.chosen, p.rejected)
        for family_pairs in snapshot.pairs.values()
        for p in family_pairs
    ]


def reward_function(
    model: RewardModel, vocab: Vocabulary, heads: RewardHeads
) -> Callable[[Sequence[tuple[str, Sequence[str]]], Sequence[Sequence[str]]], torch.Tensor]:
    @torch.no_grad()
    def reward(requests, pages) -> torch.Tensor:
        model.eval()
        page, item = model(page_batch(vocab, requests, pages))
        return combined_reward(page, item, heads)

    return reward


def train_all(
    snapshot: TrainingSnapshot,
    settings: LearnerSettings,
    ablations: Sequence[Ablation] = ABLATIONS,
    on_stage: Callable[[str], Callable[[int], None] | None] = lambda stage: None,
) -> TrainedModels:
    """Every stage on ``snapshot``; the PPO stages only for the ablations asked.

    ``on_stage(name)`` announces a stage and may return a callback that is called after each of
    its steps with the stage's expected number of steps (for a progress bar).
    """
    torch.manual_seed(settings.seed)
    users, items, categories = snapshot_vocabulary_inputs(snapshot)
    if settings.pretrained_dir is not None:
        policy, vocab = extend_pretrained(
            settings.pretrained_dir, users, items, categories, settings.seed
        )
    else:
        vocab = build_vocabulary(users, items, categories)
        policy = build_policy(vocab, settings.backbone, settings.seed)
    width = hidden_size(policy)
    pad = vocab.tokenizer.pad_token_id
    curves: dict[str, TrainingCurve] = {}
    histories = {u: list(p.items) for u, p in snapshot.prompts.items()}
    category_of = {i: c.category for i, c in snapshot.catalogue.items()}

    ratings = [(u, i, r) for u, rs in snapshot.train_ratings.items() for i, r in rs.items()]
    curves["meta"] = TrainingCurve(on_step=on_stage("meta pre-training"))
    meta_pretrain(
        policy,
        RatingHead(width),
        meta_examples(vocab, category_of, histories),
        rating_examples(vocab, ratings),
        settings.supervised,
        curves["meta"],
        pad,
    )

    golden = [
        golden_example(vocab, u, histories[u], g.items)
        for u, g in sorted(snapshot.golden.items())
        if g.items
    ]
    curves["finetune"] = TrainingCurve(on_step=on_stage("golden-list fine-tuning"))
    finetune_on_golden_lists(policy, golden, settings.supervised, curves["finetune"], pad)
    reference = copy.deepcopy(policy).eval().requires_grad_(False)

    pairs = labelled_pairs(snapshot)
    rng = random.Random(settings.seed)
    validation_users = set(rng.sample(users, int(len(users) * settings.validation_user_share)))
    train_pairs = [p for p in pairs if p.user not in validation_users]
    validation_pairs = [p for p in pairs if p.user in validation_users]
    reward_model = RewardModel(copy.deepcopy(reference.base_model).requires_grad_(True), width)
    curves["reward"] = TrainingCurve(on_step=on_stage("reward model"))
    train_reward_model(
        reward_model, vocab, train_pairs, validation_pairs, settings.reward, curves["reward"]
    )
    accuracy = pair_accuracies(reward_model, vocab, validation_pairs) if validation_pairs else {}

    policies: dict[Ablation, nn.Module] = {}
    requests = [(u, histories[u]) for u in users]
    for ablation in ablations:
        if ablation == "sft":
            policies["sft"] = reference
            continue
        trainer = PPOTrainer(
            copy.deepcopy(reference).requires_grad_(True),
            vocab,
            reward_function(reward_model, vocab, HEADS_OF[ablation]),
            settings.ppo,
            width,
        )
        curve = curves[f"ppo_{ablation}"] = TrainingCurve(on_step=on_stage(f"PPO ({ablation})"))

        def record(stats: dict[str, float], curve: TrainingCurve = curve) -> None:
            for name, value in stats.items():
                if name != "iteration":
                    curve.add(name, value)
            if curve.on_step is not None:
                curve.on_step(settings.ppo.iterations)

        trainer.train(requests, record)
        policies[ablation] = trainer.policy.eval()
    return TrainedModels(vocab, reference, reward_model, policies, curves, accuracy)
