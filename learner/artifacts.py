"""A training run's directory: every stage writes its output here, in formats others can open.

Layout (each stage's directory appears whole, by rename, only when the stage has finished, so a
stopped run resumes from the stages it has)::

    fingerprint.json      the settings and data digest the run is trained with
    vocabulary/           tokenizer and item map
    initial/              the policy before training (built, or a pretrained LM extended)
    meta/                 after meta pre-training                      + curve.json
    reference/            after golden-list fine-tuning (the sft policy) + curve.json
    reward/               body/ (transformers), heads.safetensors, accuracy.json + curve.json
    policy_<ablation>/    after PPO with that ablation's reward         + curve.json

A warm-started run (``stages.prepare_warm_run``) has no initial/ or meta/: its vocabulary and
parent/ are the parent version's vocabulary and reference, grown by the new tokens, and
fine-tuning continues from parent/ into reference/.

Models are saved with transformers' ``save_pretrained`` and the reward heads as safetensors:
nothing in a run (or a registered version) is loaded through pickle.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM

from learner.ablations import Ablation
from learner.backbone import hidden_size
from learner.reward_heads import RewardModel
from learner.training_loop import TrainingCurve
from learner.vocabulary import Vocabulary

CURVE = "curve.json"
ACCURACY = "accuracy.json"
HEADS = "heads.safetensors"


def policy_directory(ablation: Ablation) -> str:
    """Where an ablation's policy is: sft is the reference itself."""
    return "reference" if ablation == "sft" else f"policy_{ablation}"


@dataclass
class TrainedModels:
    vocab: Vocabulary
    reference: nn.Module
    reward_model: RewardModel
    policies: dict[Ablation, nn.Module]
    curves: dict[str, TrainingCurve] = field(default_factory=dict)
    reward_accuracy: dict[str, dict[str, float]] = field(default_factory=dict)


def save_policy(model: nn.Module, directory: Path) -> None:
    model.save_pretrained(str(directory))  # type: ignore[attr-defined]


def load_policy(directory: Path) -> nn.Module:
    return AutoModelForCausalLM.from_pretrained(str(directory)).eval()


def save_reward_model(model: RewardModel, directory: Path) -> None:
    model.body.save_pretrained(str(directory / "body"))  # type: ignore[attr-defined]
    heads = {
        f"{name}.{key}": tensor.contiguous()
        for name in ("page_head", "item_head")
        for key, tensor in getattr(model, name).state_dict().items()
    }
    save_file(heads, str(directory / HEADS))


def load_reward_model(directory: Path) -> RewardModel:
    body = AutoModel.from_pretrained(str(directory / "body"))
    model = RewardModel(body, hidden_size(body))
    heads = load_file(str(directory / HEADS))
    for name in ("page_head", "item_head"):
        head = getattr(model, name)
        head.load_state_dict({k.removeprefix(f"{name}."): v for k, v in heads.items()
                              if k.startswith(f"{name}.")})  # fmt: skip
    return model.eval()


def save_curve(curve: TrainingCurve, directory: Path) -> None:
    (directory / CURVE).write_text(json.dumps(curve.epochs))


def load_curve(directory: Path) -> TrainingCurve:
    return TrainingCurve(json.loads((directory / CURVE).read_text()))


def staging_directory(run_dir: Path, name: str) -> Path:
    """An empty directory for a stage to write ``name`` into before it is finished."""
    staging = run_dir / f".{name}.partial"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def finish_stage(run_dir: Path, name: str) -> Path:
    """Move the staged output into the run in one rename: a half-written stage never looks
    finished."""
    final = run_dir / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(run_dir / f".{name}.partial", final)
    return final


def load_models(run_dir: Path, ablations: list[Ablation]) -> TrainedModels:
    """The finished run in ``run_dir``, every model in eval mode."""
    needed = ("vocabulary", "reference", "reward", *map(policy_directory, ablations))
    missing = [name for name in dict.fromkeys(needed) if not (run_dir / name).is_dir()]
    if missing:
        raise FileNotFoundError(f"{run_dir} holds no finished run (missing: {', '.join(missing)})")
    stages = {"meta": "meta", "finetune": "reference", "reward": "reward"}
    stages |= {f"ppo_{a}": policy_directory(a) for a in ablations if a != "sft"}
    # A warm-started run has no meta stage.
    stages = {stage: name for stage, name in stages.items() if (run_dir / name / CURVE).exists()}
    return TrainedModels(
        vocab=Vocabulary.load(run_dir / "vocabulary"),
        reference=load_policy(run_dir / "reference"),
        reward_model=load_reward_model(run_dir / "reward"),
        policies={a: load_policy(run_dir / policy_directory(a)) for a in ablations},
        curves={stage: load_curve(run_dir / name) for stage, name in stages.items()},
        reward_accuracy=json.loads((run_dir / "reward" / ACCURACY).read_text()),
    )
