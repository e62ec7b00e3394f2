"""Every artifact of a run survives a save/load round trip and behaves the same after it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from learner.artifacts import (
    load_curve,
    load_models,
    load_policy,
    load_reward_model,
    save_curve,
    save_policy,
    save_reward_model,
)
from learner.backbone import build_policy, hidden_size
from learner.offline_eval import first_slot_scores
from learner.reward_heads import RewardModel, page_batch
from learner.settings import BackboneSettings
from learner.training_loop import TrainingCurve
from learner.vocabulary import Vocabulary, build_vocabulary

torch.set_num_threads(1)
SMALL = BackboneSettings(n_embd=32, n_layer=1, n_head=2, n_positions=32)


def test_policy_reward_model_vocabulary_and_curve_round_trip(tmp_path: Path) -> None:
    vocab = build_vocabulary([f"u{n}" for n in range(4)], [f"i{n}" for n in range(12)], ["c0"])
    policy = build_policy(vocab, SMALL, seed=3)
    reward = RewardModel(build_policy(vocab, SMALL, seed=4).base_model, hidden_size(policy))
    curve = TrainingCurve({"finetune_nll": [3.2, 2.1]})
    for name in ("vocabulary", "policy", "reward"):
        (tmp_path / name).mkdir()
    vocab.save(tmp_path / "vocabulary")
    save_policy(policy, tmp_path / "policy")
    save_reward_model(reward, tmp_path / "reward")
    save_curve(curve, tmp_path / "policy")

    loaded_vocab = Vocabulary.load(tmp_path / "vocabulary")
    assert loaded_vocab.item_ids == vocab.item_ids and loaded_vocab.items == vocab.items
    requests = [("u0", ["i1", "i2"]), ("u3", ["i5"])]
    policy.eval()
    before = first_slot_scores(policy, vocab, requests)
    after = first_slot_scores(load_policy(tmp_path / "policy"), loaded_vocab, requests)
    assert torch.allclose(before, after, atol=1e-5)
    pages = [["i3", "i4"], ["i7", "i8"]]
    loaded = load_reward_model(tmp_path / "reward")
    reward.eval()
    with torch.no_grad():
        expected = reward(page_batch(vocab, requests, pages))
        got = loaded(page_batch(loaded_vocab, requests, pages))
    for a, b in zip(expected, got, strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    assert load_curve(tmp_path / "policy").epochs == curve.epochs
    # Nothing is stored through pickle: safetensors, JSON and the tokenizer's own files only.
    suffixes = {p.suffix for p in tmp_path.rglob("*") if p.is_file()}
    assert suffixes <= {".safetensors", ".json", ".jinja", ""}, suffixes


def test_a_run_without_its_stages_is_refused_naming_them(tmp_path: Path) -> None:
    (tmp_path / "vocabulary").mkdir()
    with pytest.raises(FileNotFoundError, match="missing: reference, reward, policy_both"):
        load_models(tmp_path, ["sft", "both"])
