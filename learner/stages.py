"""The training stages, each a function from the run directory to one new output in it.

meta -> finetune (the reference) -> reward -> ppo_<ablation> for each ablation with a reward.
A warm start replaces meta pre-training with its parent's reference, which fine-tuning continues.
A stage reads what earlier stages wrote, trains its share under data parallelism, and the first
worker writes the output into the directory it is given. The same function runs in process
(tests, ``--in-process``) and inside every Ray Train worker (``learner.ray_jobs``).

Seeds: every stage starts from ``seed`` (so new heads are the same on every worker), then
reseeds with ``seed + rank`` for its own randomness (dropout, sampling). A run with fixed
settings is repeatable, and one worker reproduces the in-process run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from learner.ablations import ABLATIONS, HEADS_OF, Ablation, RewardHeads
from learner.artifacts import (
    ACCURACY,
    finish_stage,
    load_policy,
    load_reward_model,
    policy_directory,
    save_curve,
    save_policy,
    save_reward_model,
    staging_directory,
)
from learner.backbone import add_embedding_rows, build_policy, extend_pretrained, hidden_size
from learner.data_parallel import IN_PROCESS, Shard
from learner.offline_eval import validation_ndcg
from learner.ppo import PageReward, PPOTrainer
from learner.reward_heads import (
    LabelledPair,
    RewardModel,
    combined_reward,
    page_batch,
    pair_accuracies,
    train_reward_model,
)
from learner.settings import LearnerSettings
from learner.supervised import RatingHead, finetune_on_golden_lists, meta_pretrain
from learner.token_sequences import golden_example, meta_examples, rating_examples
from learner.training_loop import TrainingCurve
from learner.vocabulary import Vocabulary, build_vocabulary, grow_vocabulary
from streams.derive.training_snapshot import TrainingSnapshot, snapshot_digest

log = logging.getLogger(__name__)

PARENT = "parent"  # a warm start's parent reference, grown by the snapshot's new tokens

STAGE_TITLES = {
    "meta": "meta pre-training",
    "finetune": "golden-list fine-tuning",
    "reward": "reward model",
} | {f"ppo_{a}": f"PPO ({a})" for a in ABLATIONS if a != "sft"}


# on_stage(title) announces a stage as it starts and may return a callback called after each of
# its steps with the stage's expected number of steps (for a progress bar).
StageProgress = Callable[[str], Callable[[int], None] | None]


class RunMismatch(ValueError):
    """The run directory holds stages trained with other settings or data."""


def stages_for(ablations: Sequence[Ablation], warm: bool = False) -> list[str]:
    """The stages a run needs for ``ablations``, in order; a warm start fine-tunes its parent's
    reference, so it needs no meta pre-training."""
    supervised = ["finetune"] if warm else ["meta", "finetune"]
    return [*supervised, "reward", *(f"ppo_{a}" for a in ablations if a != "sft")]


def output_of(stage: str) -> str:
    """The run directory's entry a stage writes."""
    if stage.startswith("ppo_"):
        return policy_directory(stage.removeprefix("ppo_"))  # type: ignore[arg-type]
    return {"meta": "meta", "finetune": "reference", "reward": "reward"}[stage]


@dataclass
class StageContext:
    run_dir: Path
    snapshot: TrainingSnapshot
    settings: LearnerSettings
    shard: Shard
    on_step: Callable[[int], None] | None = None

    @property
    def vocab(self) -> Vocabulary:
        return Vocabulary.load(self.run_dir / "vocabulary")

    @property
    def prompts(self) -> dict[str, list[str]]:
        """The prompts of the golden lists (short histories have shorter ones)."""
        return {u: list(p.items) for u, p in self.snapshot.prompts.items()}

    @property
    def histories(self) -> dict[str, list[str]]:
        """What a page request for each user is conditioned on: their last L positives."""
        return {u: list(h) for u, h in self.snapshot.histories.items()}

    def reseed_for_this_worker(self) -> None:
        torch.manual_seed(self.settings.seed + self.shard.rank)


def _flat(value: object, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for key, inner in value.items():
            out |= _flat(inner, f"{prefix}{key}.")
        return out
    return {prefix.rstrip("."): value}


def check_fingerprint(run_dir: Path, fingerprint: dict[str, object]) -> None:
    """Record what the run is trained with, or refuse a run directory trained otherwise."""
    path = run_dir / "fingerprint.json"
    if not path.exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(fingerprint, indent=2, sort_keys=True))
        return
    before, now = _flat(json.loads(path.read_text())), _flat(fingerprint)
    changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
    if changed:
        details = "; ".join(f"{k}: {before.get(k)!r} then, {now.get(k)!r} now" for k in changed)
        raise RunMismatch(
            f"{run_dir} holds a run trained with other settings or data ({details}); "
            "use another output directory, or start afresh"
        )


def snapshot_tokens(snapshot: TrainingSnapshot) -> tuple[list[str], list[str], list[str]]:
    """(users, items, categories) the vocabulary needs: every split user, every catalogue item
    and every item a user rated (an event may name an item before its catalogue record)."""
    items = set(snapshot.catalogue)
    for ratings in snapshot.train_ratings.values():
        items.update(ratings)
    for held_out in (snapshot.validation, snapshot.test):
        for user_items in held_out.values():
            items.update(user_items)
    categories = {c.category for c in snapshot.catalogue.values()}
    return sorted(snapshot.prompts), sorted(items), sorted(categories)


def prepare_warm_run(run_dir: Path, parent: Path, snapshot: TrainingSnapshot, seed: int) -> None:
    """The parent's vocabulary grown by the snapshot's new users, items and categories, and its
    reference policy with a new N(0, var) embedding row per new token (old rows untouched), as
    the run's ``PARENT``: where its fine-tuning starts."""
    if (run_dir / PARENT).is_dir():
        return
    vocab = Vocabulary.load(parent / "vocabulary")
    before = vocab.size
    grown = grow_vocabulary(vocab, *snapshot_tokens(snapshot))
    reference = load_policy(parent / "reference")
    add_embedding_rows(reference, before, grown.size, seed)
    log.info("warm start from %s: %d new tokens", parent, grown.size - before)
    grown.save(staging_directory(run_dir, "vocabulary"))
    finish_stage(run_dir, "vocabulary")
    save_policy(reference, staging_directory(run_dir, PARENT))
    finish_stage(run_dir, PARENT)


def prepare_run(
    run_dir: Path,
    snapshot: TrainingSnapshot,
    settings: LearnerSettings,
    warm_from: Path | None = None,
) -> None:
    """The fingerprint, the vocabulary and the untrained policy, or with ``warm_from`` (a
    version's model directory) the parent's grown vocabulary and reference (once per run)."""
    fingerprint: dict[str, object] = {
        "settings": settings.training_fingerprint(),
        "data": snapshot_digest(snapshot),
    }
    if warm_from is not None:
        fingerprint["warm_from"] = str(warm_from.resolve())
    check_fingerprint(run_dir, fingerprint)
    if warm_from is not None:
        prepare_warm_run(run_dir, warm_from, snapshot, settings.seed)
        return
    if (run_dir / "initial").is_dir():
        return
    torch.manual_seed(settings.seed)
    users, items, categories = snapshot_tokens(snapshot)
    if settings.pretrained_dir is not None:
        policy, vocab = extend_pretrained(
            settings.pretrained_dir, users, items, categories, settings.seed
        )
    else:
        vocab = build_vocabulary(users, items, categories)
        policy = build_policy(vocab, settings.backbone, settings.seed)
    vocab.save(staging_directory(run_dir, "vocabulary"))
    finish_stage(run_dir, "vocabulary")
    save_policy(policy, staging_directory(run_dir, "initial"))
    finish_stage(run_dir, "initial")


def validation_scorer(
    vocab: Vocabulary, snapshot: TrainingSnapshot
) -> Callable[[nn.Module], float] | None:
    """The supervised stages' early-stopping score: validation NDCG@100 of the first slot; None
    when the snapshot holds no validation items, so that every epoch trains and the last is
    kept (a constant score would keep the first and stop)."""
    if not any(snapshot.validation.values()):
        return None
    return lambda model: validation_ndcg(model, vocab, snapshot)


def meta_stage(ctx: StageContext, out: Path) -> None:
    vocab, snapshot = ctx.vocab, ctx.snapshot
    policy = load_policy(ctx.run_dir / "initial")
    head = RatingHead(hidden_size(policy))
    ctx.reseed_for_this_worker()
    category_of = {i: c.category for i, c in snapshot.catalogue.items()}
    ratings = [(u, i, r) for u, rs in snapshot.train_ratings.items() for i, r in rs.items()]
    curve = TrainingCurve(on_step=ctx.on_step)
    meta_pretrain(
        policy,
        head,
        meta_examples(
            vocab,
            category_of,
            snapshot.train_sequences,
            max((len(h) for h in snapshot.histories.values()), default=0),
            ctx.settings.ppo.page_length,
            ctx.settings.supervised.meta_shuffled_windows,
            ctx.settings.supervised.seed,
        ),
        rating_examples(vocab, ratings),
        ctx.settings.supervised,
        curve,
        vocab.tokenizer.pad_token_id,
        ctx.shard,
        validation_scorer(vocab, snapshot),
    )
    if ctx.shard.is_first:
        save_policy(policy, out)
        save_curve(curve, out)


def finetune_start(run_dir: Path) -> Path:
    """A warm start's parent reference, else the run's meta pre-trained policy."""
    return run_dir / PARENT if (run_dir / PARENT).is_dir() else run_dir / "meta"


def finetune_stage(ctx: StageContext, out: Path) -> None:
    vocab, prompts = ctx.vocab, ctx.prompts
    # New clicks become golden lists: fine-tuning is how they reach the policy itself (a warm
    # start that kept its parent's reference unchanged served the same pages after a retrain).
    # Fine-tuning keeps its starting weights when no epoch beats them on validation.
    policy = load_policy(finetune_start(ctx.run_dir))
    ctx.reseed_for_this_worker()
    golden = [
        golden_example(vocab, u, prompts[u], g.items)
        for u, g in sorted(ctx.snapshot.golden.items())
        if g.items
    ]
    curve = TrainingCurve(on_step=ctx.on_step)
    finetune_on_golden_lists(
        policy,
        golden,
        ctx.settings.supervised,
        curve,
        vocab.tokenizer.pad_token_id,
        ctx.shard,
        validation_scorer(vocab, ctx.snapshot),
    )
    if ctx.shard.is_first:
        save_policy(policy, out)
        save_curve(curve, out)


def labelled_pairs(snapshot: TrainingSnapshot) -> list[LabelledPair]:
    return [
        LabelledPair(p.user_id, snapshot.prompts[p.user_id].items, p.family, p.chosen, p.rejected)
        for family_pairs in snapshot.pairs.values()
        for p in family_pairs
    ]


def unit_hash(key: str) -> float:
    """u = first 8 hex digits of sha256(key) / 16^8, uniform on [0, 1)."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 16**8


def validation_users(snapshot: TrainingSnapshot, settings: LearnerSettings) -> set[str]:
    """The users whose pairs validate the reward model: u(seed:user) < share. A hash, not a
    sample, so a user is held out in every snapshot: a later version's gate scores pairs that
    no earlier version was trained on."""
    share, seed = settings.validation_user_share, settings.seed
    return {u for u in snapshot.prompts if unit_hash(f"{seed}:{u}") < share}


def reward_stage(ctx: StageContext, out: Path) -> None:
    vocab = ctx.vocab
    body = load_policy(ctx.run_dir / "reference").base_model.train()
    model = RewardModel(body, hidden_size(body))
    ctx.reseed_for_this_worker()
    held_out = validation_users(ctx.snapshot, ctx.settings)
    pairs = labelled_pairs(ctx.snapshot)
    train = [p for p in pairs if p.user not in held_out]
    validation = [p for p in pairs if p.user in held_out]
    curve = TrainingCurve(on_step=ctx.on_step)
    train_reward_model(model, vocab, train, validation, ctx.settings.reward, curve, ctx.shard)
    if ctx.shard.is_first:
        accuracy = pair_accuracies(model, vocab, validation) if validation else {}
        save_reward_model(model, out)
        save_curve(curve, out)
        (out / ACCURACY).write_text(json.dumps(accuracy))


def reward_function(model: RewardModel, vocab: Vocabulary, heads: RewardHeads) -> PageReward:
    @torch.no_grad()
    def reward(requests, pages) -> torch.Tensor:  # type: ignore[no-untyped-def]
        model.eval()
        page, item = model(page_batch(vocab, requests, pages))
        return combined_reward(page, item, heads)

    return reward


def ppo_stage(ctx: StageContext, out: Path, ablation: Ablation) -> None:
    vocab, settings = ctx.vocab, ctx.settings
    policy = load_policy(ctx.run_dir / "reference").requires_grad_(True)
    reward = reward_function(load_reward_model(ctx.run_dir / "reward"), vocab, HEADS_OF[ablation])
    rated = {u: set(ratings) for u, ratings in ctx.snapshot.train_ratings.items()}
    trainer = PPOTrainer(
        policy, vocab, reward, settings.ppo, hidden_size(policy), ctx.shard, rated=rated
    )
    ctx.reseed_for_this_worker()
    curve = TrainingCurve(on_step=ctx.on_step)

    def record(stats: dict[str, float]) -> None:
        for name, value in stats.items():
            if name != "iteration":
                curve.add(name, value)
        if curve.on_step is not None:
            curve.on_step(settings.ppo.iterations)

    histories = ctx.histories
    trainer.train([(u, histories[u]) for u in sorted(histories)], record)
    if ctx.shard.is_first:
        save_policy(trainer.policy, out)
        save_curve(curve, out)


def run_stage(stage: str, ctx: StageContext, out: Path) -> None:
    """Train ``stage``; the first worker writes its output into ``out``."""
    if stage not in STAGE_TITLES:
        raise ValueError(f"stage: unknown {stage!r}; the stages are {list(STAGE_TITLES)}")
    torch.manual_seed(ctx.settings.seed)
    if stage == "meta":
        meta_stage(ctx, out)
    elif stage == "finetune":
        finetune_stage(ctx, out)
    elif stage == "reward":
        reward_stage(ctx, out)
    else:
        ppo_stage(ctx, out, stage.removeprefix("ppo_"))  # type: ignore[arg-type]


def run_in_process(
    stages: Sequence[str],
    run_dir: Path,
    snapshot: TrainingSnapshot,
    settings: LearnerSettings,
    on_stage: StageProgress,
) -> dict[str, float]:
    """The stages in this process, each moved into the run when it has finished; their seconds."""
    seconds = {}
    for stage in stages:
        started = time.monotonic()
        name = output_of(stage)
        ctx = StageContext(run_dir, snapshot, settings, IN_PROCESS, on_stage(STAGE_TITLES[stage]))
        run_stage(stage, ctx, staging_directory(run_dir, name))
        finish_stage(run_dir, name)
        seconds[stage] = time.monotonic() - started
    return seconds
