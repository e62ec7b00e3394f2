"""Saving and loading everything a training run produces, in formats others can open.

Layout of a run directory: ``vocabulary/`` (tokenizer + item map), ``reference/`` and
``policy_<ablation>/`` (transformers ``save_pretrained``), ``reward/body/`` plus
``reward/heads.pt`` (the two heads' weights), ``curves.json`` and ``reward_accuracy.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModel, AutoModelForCausalLM

from learner.ablations import ABLATIONS
from learner.pipeline import TrainedModels, hidden_size
from learner.reward_heads import RewardModel
from learner.training_loop import TrainingCurve
from learner.vocabulary import Vocabulary


def save_models(models: TrainedModels, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    models.vocab.save(directory / "vocabulary")
    models.reference.save_pretrained(str(directory / "reference"))
    for ablation, policy in models.policies.items():
        policy.save_pretrained(str(directory / f"policy_{ablation}"))
    models.reward_model.body.save_pretrained(str(directory / "reward" / "body"))
    heads = {
        "page_head": models.reward_model.page_head.state_dict(),
        "item_head": models.reward_model.item_head.state_dict(),
    }
    torch.save(heads, directory / "reward" / "heads.pt")
    curves = {stage: curve.epochs for stage, curve in models.curves.items()}
    (directory / "curves.json").write_text(json.dumps(curves))
    (directory / "reward_accuracy.json").write_text(json.dumps(models.reward_accuracy))
    return directory


def load_models(directory: Path) -> TrainedModels:
    """The run saved in ``directory``, every model in eval mode."""
    if not (directory / "vocabulary").exists():
        raise FileNotFoundError(f"{directory} holds no saved run (no vocabulary/)")
    vocab = Vocabulary.load(directory / "vocabulary")
    reference = AutoModelForCausalLM.from_pretrained(str(directory / "reference")).eval()
    policies = {
        ablation: AutoModelForCausalLM.from_pretrained(str(path)).eval()
        for ablation in ABLATIONS
        if (path := directory / f"policy_{ablation}").exists()
    }
    body = AutoModel.from_pretrained(str(directory / "reward" / "body"))
    reward_model = RewardModel(body, hidden_size(body))
    heads = torch.load(directory / "reward" / "heads.pt", weights_only=True)
    reward_model.page_head.load_state_dict(heads["page_head"])
    reward_model.item_head.load_state_dict(heads["item_head"])
    curves = {
        stage: TrainingCurve(epochs)
        for stage, epochs in json.loads((directory / "curves.json").read_text()).items()
    }
    accuracy = json.loads((directory / "reward_accuracy.json").read_text())
    return TrainedModels(vocab, reference, reward_model.eval(), policies, curves, accuracy)
