"""``make bench-cuda``: the learner's CUDA path beside its CPU path, on the same synthetic data.

What a Ray Train worker with a GPU does (``learner.ray_jobs``: torch's default device set to
the worker's GPU, then the stages), here in one process without Ray: every stage of the
``both`` ablation (meta pre-training, golden-list fine-tuning, reward model, PPO) trained once on
the CPU and once on the GPU, then a greedy page generated for every user by the CPU-trained
policy on each device. Per device: each stage's seconds, validation NDCG@100 of the PPO policy
it trained, and pages per second (in batches of ``--batch`` users); ``same_pages_share`` is the
share of users whose page is the same on both devices (one model: only float rounding between
the devices' kernels can tell them apart). Without a GPU only the CPU half runs and the figures
that need both are null.

Data: ``--users`` users who each rate 25 of ``--items`` items in four categories (every third
item bad for everyone, the rest good in the two categories a user likes, else 3): enough
structure to learn, made here so that nothing is read or downloaded. The last line printed is
the JSON summary.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import torch

from learner.artifacts import load_policy, policy_directory
from learner.constrained_decoding import generate_pages
from learner.offline_eval import validation_ndcg
from learner.settings import LearnerSettings
from learner.stages import prepare_run, run_in_process, stages_for
from learner.vocabulary import Vocabulary
from schemas import CatalogueItem
from schemas.training_data import EffectiveRating
from streams.derive.derived_state import DeriveConfig
from streams.derive.training_snapshot import TrainingSnapshot, build_training_snapshot

log = logging.getLogger("bench_cuda")

T0 = datetime(2026, 1, 1, tzinfo=UTC)
ABLATION = "both"


def synthetic_snapshot(users: int, items: int, seed: int = 7) -> TrainingSnapshot:
    """Each user rates 25 items: every third item 1-2, items of the user's two liked
    categories 4-5, the rest 3."""
    rng = random.Random(seed)
    catalogue = {
        f"i{i}": CatalogueItem(item_id=f"i{i}", category=f"c{i % 4}", price=Decimal(i))
        for i in range(items)
    }
    ratings: dict[str, dict[str, EffectiveRating]] = {}
    for u in range(users):
        liked = {u % 4, (u + 1) % 4}
        ratings[f"u{u}"] = {
            f"i{i}": EffectiveRating(
                user_id=f"u{u}",
                item_id=f"i{i}",
                rating=rng.choice([1, 2])
                if i % 3 == 0
                else rng.choice([4, 5])
                if i % 4 in liked
                else 3,
                ts=T0 + timedelta(minutes=t),
                explicit=True,
            )
            for t, i in enumerate(rng.sample(range(items), 25))
        }
    return build_training_snapshot(ratings, catalogue, DeriveConfig())


def synchronize(device: str) -> None:
    """Wait for the device's queued kernels, so that a timer reads their work too."""
    if device == "cuda":
        torch.cuda.synchronize()


def train_on(
    device: str, snapshot: TrainingSnapshot, settings: LearnerSettings, run_dir: Path
) -> dict[str, float]:
    """Every stage of the ablation, trained with ``device`` as torch's default device, as a GPU
    worker trains; the seconds of each."""
    prepare_run(run_dir, snapshot, settings, None)
    with torch.device(device):
        seconds = run_in_process(
            stages_for([ABLATION]), run_dir, snapshot, settings, lambda title: None
        )
    synchronize(device)
    return seconds


def load_on(device: str, run_dir: Path) -> tuple[torch.nn.Module, Vocabulary]:
    """The run's PPO policy and vocabulary, the policy on ``device``."""
    with torch.device(device):
        policy = load_policy(run_dir / policy_directory(ABLATION))
    placed = next(policy.parameters()).device.type
    if placed != device:  # the figures would be another device's
        raise RuntimeError(f"the policy loaded on {placed}, not {device}")
    return policy, Vocabulary.load(run_dir / "vocabulary")


def page_rate(
    device: str, run_dir: Path, snapshot: TrainingSnapshot, batch: int, k: int
) -> tuple[float, list[list[str]]]:
    """(pages per second, the pages): a greedy page for every user from the run's policy on
    ``device``."""
    policy, vocab = load_on(device, run_dir)
    requests = sorted(snapshot.histories.items())
    with torch.device(device):
        generate_pages(policy, vocab, requests[:batch], k, greedy=True)  # warm-up: kernels, caches
        synchronize(device)
        started = time.perf_counter()
        pages: list[list[str]] = []
        for first in range(0, len(requests), batch):
            pages += generate_pages(
                policy, vocab, requests[first : first + batch], k, greedy=True
            ).pages
        synchronize(device)
        elapsed = time.perf_counter() - started
    return len(requests) / elapsed, pages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=400)
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--batch", type=int, default=64, help="users per page-generation batch")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    # CUDA first: a failure there shows before the CPU half has spent its minutes.
    devices = ["cuda", "cpu"] if torch.cuda.is_available() else ["cpu"]
    settings = LearnerSettings()
    snapshot = synthetic_snapshot(args.users, args.items)
    k = settings.ppo.page_length
    figures: dict[str, dict[str, object]] = {}
    pages: dict[str, list[list[str]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for device in devices:
            run_dir = Path(tmp) / device
            seconds = train_on(device, snapshot, settings, run_dir)
            log.info("%s: stages %s", device, {s: round(v, 1) for s, v in seconds.items()})
            policy, vocab = load_on(device, run_dir)
            with torch.device(device):
                ndcg = validation_ndcg(policy, vocab, snapshot)
            figures[device] = {
                "stage_s": {s: round(v, 2) for s, v in seconds.items()},
                "train_s": round(sum(seconds.values()), 2),
                "val_ndcg": round(ndcg, 4),
            }
        # Both devices decode the CPU-trained policy: the same model, so the same greedy pages
        # up to float rounding between the devices' kernels.
        for device in devices:
            rate, pages[device] = page_rate(device, Path(tmp) / "cpu", snapshot, args.batch, k)
            log.info("%s: %.1f pages/s", device, rate)
            figures[device]["pages_per_s"] = round(rate, 1)
    both = len(figures) == 2
    gpu = torch.cuda.get_device_name() if both else None
    summary = {
        "gpu": gpu,
        "torch": torch.__version__,
        "users": args.users,
        "items": args.items,
        "cpu_threads": args.threads,
        "batch": args.batch,
        **figures,
        "train_speedup": round(figures["cpu"]["train_s"] / figures["cuda"]["train_s"], 2)
        if both
        else None,
        "pages_speedup": round(figures["cuda"]["pages_per_s"] / figures["cpu"]["pages_per_s"], 2)
        if both
        else None,
        "same_pages_share": (
            round(
                sum(a == b for a, b in zip(pages["cpu"], pages["cuda"], strict=True))
                / len(pages["cpu"]),
                3,
            )
            if both
            else None
        ),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
