"""Versions for serving tests and the serving benchmark: a policy and reward model of the
learner's own classes, saved as the learner saves them and published to the registry, but not
trained (serving's behaviour and speed do not depend on what the weights learned)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from transformers import GPT2Model

from learner.artifacts import save_policy, save_reward_model
from learner.backbone import build_policy
from learner.registry import ModelRegistry
from learner.reward_heads import RewardModel
from learner.settings import BackboneSettings
from learner.version_eval import POLICY, REFERENCE, REWARD, VOCABULARY
from learner.vocabulary import build_vocabulary
from schemas.model_registry import VersionRecord

SMALL = BackboneSettings(n_embd=16, n_layer=1, n_head=2, n_positions=64)


def publish_version(
    registry: ModelRegistry,
    users: Iterable[str],
    items: Iterable[str],
    categories: Iterable[str],
    backbone: BackboneSettings = SMALL,
    seed: int = 0,
    promote: bool = True,
) -> str:
    """Publish an untrained version over these users and items; production unless not
    ``promote``. Returns its name."""
    vocab = build_vocabulary(users, items, categories)
    policy = build_policy(vocab, backbone, seed)
    reward = RewardModel(GPT2Model(policy.config), backbone.n_embd)
    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        for name in (VOCABULARY, REFERENCE, REWARD, POLICY):
            (root / name).mkdir()
        vocab.save(root / VOCABULARY)
        save_policy(policy, root / REFERENCE)
        save_policy(policy, root / POLICY)
        save_reward_model(reward, root / REWARD)
        record = registry.publish(
            VersionRecord(
                version="",
                created_at=datetime.now(UTC),
                snapshot_id="untrained",
                stream_position={},
                parent=None,
                warm_start=False,
                settings={"backbone": backbone.model_dump()},
                metrics={},
            ),
            {name: root / name for name in (VOCABULARY, REFERENCE, REWARD, POLICY)},
        )
    if promote:
        registry.promote(record.version, reason="test", actor="test", force=True)
    return record.version
