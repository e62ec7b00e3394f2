"""Every artifact of a run survives a save/load round trip and behaves the same after it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from learner.artifacts import load_models, save_models
from learner.interactions_file import read_interactions
from learner.offline_eval import first_slot_scores
from learner.pipeline import LearnerSettings, train_all
from learner.reward_heads import page_batch
from streams.derived_state import DeriveConfig
from streams.training_snapshot import build_training_snapshot
from tests.test_offline_eval import TINY, write_interactions

torch.set_num_threads(1)


def test_a_trained_run_round_trips(tmp_path: Path) -> None:
    write_interactions(tmp_path / "ratings.csv", users=30)
    data = read_interactions(tmp_path / "ratings.csv")
    snapshot = build_training_snapshot(
        data.ratings, data.catalogue, DeriveConfig(prompt_length=5), data.given_splits
    )
    models = train_all(snapshot, LearnerSettings.model_validate(TINY), ["sft", "both"])
    loaded = load_models(save_models(models, tmp_path / "run"))

    requests = [(u, snapshot.prompts[u].items) for u in sorted(snapshot.prompts)[:8]]
    for ablation in ("sft", "both"):
        before = first_slot_scores(models.policies[ablation], models.vocab, requests)
        after = first_slot_scores(loaded.policies[ablation], loaded.vocab, requests)
        assert torch.allclose(before, after, atol=1e-5)
    pages = [list(snapshot.golden[u].items) or ["i1"] for u, _ in requests]
    models.reward_model.eval()
    with torch.no_grad():
        expected = models.reward_model(page_batch(models.vocab, requests, pages))
        got = loaded.reward_model(page_batch(loaded.vocab, requests, pages))
    for a, b in zip(expected, got, strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    assert loaded.vocab.item_ids == models.vocab.item_ids
    assert loaded.curves["finetune"].epochs == models.curves["finetune"].epochs
    assert loaded.reward_accuracy == models.reward_accuracy
    with pytest.raises(FileNotFoundError, match="holds no saved run"):
        load_models(tmp_path)
