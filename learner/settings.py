"""Every setting of a training run, with the paper's defaults, and where its stages run."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from learner.backbone import BackboneSettings
from learner.ppo import PPOSettings
from learner.reward_heads import RewardSettings
from learner.supervised import SupervisedSettings


class RaySettings(BaseModel):
    """Where the training stages run when they run as Ray Train jobs."""

    workers: int = Field(1, ge=1, description="data-parallel workers per stage, a CPU each")
    use_gpu: bool | None = Field(
        None, description="a GPU per worker; None: when the Ray cluster has one per worker"
    )
    address: str | None = Field(
        None, description="a Ray cluster to join; None: RAY_ADDRESS, else a local Ray for the run"
    )
    # Ray Train's controller polls its workers at this interval (Ray's default 2 s): a job's
    # start and end each waited for a poll, about 3 s of a 13 s job here, at 0.2 s.
    health_check_interval_s: float = Field(
        0.25, gt=0, description="how often Ray Train's controller polls its workers"
    )
    # A Ray Train job reached its worker 14-20 s after it started on an idle 2-core machine
    # (and 41 s beside serving): a controller, three or four helper actors and a worker, each
    # a new process importing torch, for stages that train in seconds.
    keep_warm: bool = Field(
        True,
        description="with one worker, keep it between jobs as a Ray actor (its imports done; it "
        "holds its CPU while the run or the retrain loop lives); false: a Ray Train job each",
    )


class LearnerSettings(BaseModel):
    """Every stage's settings (paper defaults), the backbone, and where the stages run."""

    backbone: BackboneSettings = Field(default_factory=BackboneSettings)
    supervised: SupervisedSettings = Field(default_factory=SupervisedSettings)
    reward: RewardSettings = Field(default_factory=RewardSettings)
    ppo: PPOSettings = Field(default_factory=PPOSettings)
    pretrained_dir: Path | None = Field(None, description="a local causal LM instead of a new one")
    validation_user_share: float = Field(0.1, ge=0, lt=1, description="users whose pairs validate")
    seed: int = 0
    ray: RaySettings = Field(default_factory=RaySettings)

    def training_fingerprint(self) -> dict[str, object]:
        """What a resumed run must share with the stages it keeps: all but where stages run."""
        return self.model_dump(mode="json", exclude={"ray"})
