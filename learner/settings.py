"""Every setting of a training run, with the paper's defaults, and where its stages run; and
the retrain loop's. Nothing here imports torch: commands that only read settings stay fast."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from learner.ablations import Ablation
from learner.promotion_gates import GateSettings


class BackboneSettings(BaseModel):
    """Size of the default decoder (the paper: 768, 12 layers, 12 heads, 1024 positions)."""

    n_embd: int = Field(128, ge=8)
    n_layer: int = Field(2, ge=1)
    n_head: int = Field(4, ge=1)
    n_positions: int = Field(64, ge=8, description="longest prompt + page, in tokens")
    dropout: float = Field(0.0, ge=0, lt=1)


class SupervisedSettings(BaseModel):
    """The paper's defaults (section 5.1.4), but for meta pre-training's rate, epochs and
    order-free windows, the fine-tuning learning rate and the page-set loss."""

    # Meta pre-training departs from the paper's 3 epochs at 5e-5: with order-free windows the
    # data hold more to learn, and validation picks the epoch (README, "Order-free windows").
    meta_epochs: int = Field(10, ge=0, description="at most; see meta_patience")
    meta_lr: float = Field(2e-4, gt=0, description="4 x the paper's 5e-5")
    meta_shuffled_windows: int = Field(
        4,
        ge=0,
        description="order-free windows per user in meta pre-training (a random page of the "
        "user's training positives predicted from the others, beside the next-page windows); "
        "not in the paper. Short MovieLens histories, validation NDCG@100 of sft: 0.0721 "
        "without, 0.0940 with 4, 0.0936 with 16",
    )
    meta_patience: int | None = Field(
        2,
        ge=1,
        description="epochs without a better validation NDCG@100 before meta pre-training "
        "stops (the best epoch's weights are kept); None: every epoch, the last kept",
    )
    finetune_epochs: int = Field(10, ge=0, description="at most; see finetune_patience")
    finetune_lr: float = Field(
        2e-4,
        gt=0,
        description="10 x the paper's 2e-5, which suits a pretrained GPT-2: this small decoder "
        "learns from scratch, and where fine-tuning runs (short histories; on dense the warm-up "
        "wins) validation NDCG@100 rose 4% for sft and 12% for both (README)",
    )
    finetune_patience: int | None = Field(
        2,
        ge=1,
        description="epochs without a better validation NDCG@100 before fine-tuning stops (the "
        "best epoch's weights are kept); None: every epoch, the last kept",
    )
    batch_size: int = Field(32, ge=1)
    rating_loss_weight: float = Field(1.0, ge=0, description="w of L_rating in meta training")
    page_set_weight: float = Field(
        1.0,
        ge=0,
        description="weight of the page-set loss (the first slot learns every item of the next "
        "page) beside the next-token loss, in meta pre-training and fine-tuning; not in the "
        "paper. Validation NDCG@100 of sft (README): dense 0.2590 at 0, 0.2712 at 1, 0.2654 at 3",
    )
    seed: int = 0


class RewardSettings(BaseModel):
    """The paper's defaults: 5 epochs, lr 1e-5, batch 64, early stopping on validation."""

    epochs: int = Field(5, ge=1)
    lr: float = Field(1e-5, gt=0)
    batch_size: int = Field(64, ge=1)
    patience: int = Field(2, ge=1, description="epochs without a better validation loss to stop")
    seed: int = 0


class PPOSettings(BaseModel):
    """The paper's defaults (section 5.1.4): clip 0.2, lr 1e-5, batch 64, KL 0.1, 5 epochs."""

    iterations: int = Field(20, ge=1, description="rollout batches")
    batch_size: int = Field(64, ge=1, description="pages generated per iteration, all workers")
    minibatch_size: int = Field(16, ge=1)
    epochs: int = Field(5, ge=1, description="passes over each rollout batch")
    lr: float = Field(1e-5, gt=0)
    clip: float = Field(0.2, gt=0)
    kl_coef: float = Field(0.1, ge=0, description="beta of the per-token KL penalty")
    gamma: float = Field(1.0, gt=0, le=1)
    gae_lambda: float = Field(0.95, ge=0, le=1)
    value_coef: float = Field(0.5, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    normalize_reward: bool = True
    page_length: int = Field(10, ge=1, description="K")
    ban_rated: bool = Field(
        True,
        description="rollout pages hold none of the items the user rated in training, not only"
        " the prompt's: a recommender never shows them, so the policy should not learn to",
    )
    seed: int = 0


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

    @property
    def warm_worker(self) -> bool:
        """Stages run on one kept worker, not as Ray Train jobs."""
        return self.workers == 1 and self.keep_warm


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


class RetrainSettings(BaseSettings):
    """When the loop retrains, what it trains, and what a candidate must pass
    (``PAGELLM_RETRAIN_*``; nested with ``__``, e.g. ``PAGELLM_RETRAIN_GATES__MAX_KL``)."""

    model_config = SettingsConfigDict(
        env_prefix="PAGELLM_RETRAIN_", env_nested_delimiter="__", extra="ignore"
    )

    interval_s: float = Field(
        3600.0, ge=0, description="retrain when the last one started this long ago (0: never)"
    )
    min_new_pairs: int = Field(
        1000, ge=0, description="retrain when this many preference pairs are new (0: never)"
    )
    poll_s: float = Field(10.0, gt=0, description="how often the loop checks its triggers")
    full: bool = Field(False, description="every retrain trains every stage (no warm start)")
    ablation: Ablation = Field("both", description="which policy a version serves")
    history: int = Field(10, ge=1, description="retrains `retrain status` lists")
    gates: GateSettings = Field(default_factory=GateSettings)
