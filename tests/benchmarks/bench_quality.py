"""``make bench-quality``: the method against classic peers on MovieLens 100k, two datasets.

Data: ``../shared/data/ml-100k`` (read in place, never copied), as two datasets:

* **dense**: every rating;
* **short**: each user's 10 most recent ratings only (by time, then item id), the shape of
  typical e-commerce histories.

Each under the paper's protocol (``streams.derive.split``): positives r > 3; per user the last
10% of positives is test, the 10% before it validation, training what was rated before the
first validation positive. Everyone is scored on the same test items with the same candidates
(all items but the user's train and validation items):

* popularity: items by their count of training positives;
* EASE (Steck 2019): B = I - P diag(1/diag P), P = (X^T X + lambda I)^-1, X the binary training
  positives; lambda chosen on the validation items from a grid;
* ALS from the ``implicit`` library (when it is installed), factors chosen on validation;
* the four ablations of the method with the default ``LearnerSettings`` (``pagellm eval``'s),
  each stage a Ray Train job as ``pagellm eval`` runs it. Each policy ranks its top 100 two
  ways, by its first-slot log-probability and as successive greedy pages; the better of the
  two on validation gives its test lists (``ranking``).

Every model is also scored on the validation items (``val_ndcg@100``: what changes to the method
are compared on), and per pair family the shortcut probe's accuracy is printed beside the
reward model's (``probe_acc``, ``reward_acc``), and the probe fitted on each feature alone
(``probe_acc_by_feature``: which feature gives a family away). Per dataset, the trained run,
``training_curves.png``, each model's test lists (``recs/MODEL.csv``: user_id, item_id, rank) and
the split (``split.csv``: user_id, item_id, split) stay in ``var/bench-quality/DATASET/`` for
anyone to re-score. The last line printed is the JSON summary.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from learner.ablations import ABLATIONS
from learner.offline_eval import (
    excluded_items,
    plot_training_curves,
    recommend,
    recommend_by_pages,
    relevance_metrics,
)
from learner.pipeline import train_all
from learner.ray_jobs import RayStageRunner
from learner.settings import LearnerSettings
from learner.shortcut_probe import probe_by_feature, shortcut_probe
from learner.stages import validation_users
from learner.vocabulary import Vocabulary
from schemas import CatalogueItem
from schemas.training_data import EffectiveRating
from streams.derive.derived_state import DeriveConfig
from streams.derive.training_snapshot import TrainingSnapshot, build_training_snapshot
from streams.ingest.dataset_import import DatasetReader, ImportedRating

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "ml-100k"
EASE_GRID = (50.0, 100.0, 200.0, 500.0, 1000.0)
ALS_GRID = (32.0, 64.0, 128.0)
OUT = Path("var/bench-quality")  # the trained run and its training curves, kept for reading
console = Console(stderr=True, soft_wrap=True)


# How a policy ranks the top 100: by its first-slot log-probability, or as successive greedy
# pages (``learner.offline_eval``); validation picks, per policy.
RANKINGS = ("first_slot", "pages")
SHORT_HISTORY = 10  # ratings per user kept in the short dataset


def most_recent(ratings: dict[str, EffectiveRating], n: int | None) -> dict[str, EffectiveRating]:
    """The user's n latest ratings by (ts, item id); all of them when n is None."""
    if n is None:
        return ratings
    latest = sorted(ratings.values(), key=lambda r: (r.ts, r.item_id))[-n:]
    return {r.item_id: r for r in latest}


def load_ratings(
    history: int | None,
) -> tuple[dict[str, dict[str, EffectiveRating]], dict[str, CatalogueItem]]:
    """ml-100k's ratings, each user's cut to their ``history`` latest, and its catalogue."""
    reader = DatasetReader("movielens", DATA)
    ratings: dict[str, dict[str, EffectiveRating]] = {}
    for row in reader.ratings():
        if isinstance(row, ImportedRating):
            e = row.event
            ratings.setdefault(e.user_id, {})[e.item_id] = EffectiveRating(
                user_id=e.user_id, item_id=e.item_id, rating=e.rating, ts=e.ts, explicit=True
            )
    kept = {user: most_recent(r, history) for user, r in ratings.items()}
    return kept, reader.catalogue


def load_snapshot(history: int | None) -> TrainingSnapshot:
    """ml-100k under the protocol, each user's ratings cut to their ``history`` latest."""
    return build_training_snapshot(*load_ratings(history), DeriveConfig())


def interaction_matrix(snapshot: TrainingSnapshot) -> tuple[np.ndarray, list[str], list[str]]:
    """X (users x items): 1 for each training positive (r > 3)."""
    users = sorted(snapshot.test)
    items = sorted(snapshot.catalogue)
    col = {i: n for n, i in enumerate(items)}
    x = np.zeros((len(users), len(items)), dtype=np.float32)
    for row, user in enumerate(users):
        for item, rating in snapshot.train_ratings[user].items():
            if rating > 3:
                x[row, col[item]] = 1.0
    return x, users, items


def excluded(snapshot: TrainingSnapshot, with_validation: bool) -> dict[str, set[str]]:
    """Per user, the items no list may hold (the policies' rule: ``excluded_items``)."""
    return {u: excluded_items(snapshot, u, not with_validation) for u in snapshot.test}


def top_n(
    scores: np.ndarray,
    users: list[str],
    items: list[str],
    banned: dict[str, set[str]],
    n: int = 100,
) -> dict[str, list[str]]:
    """Best n items per user, the banned ones excluded."""
    col = {i: k for k, i in enumerate(items)}
    out = {}
    for row, user in enumerate(users):
        s = scores[row].astype(np.float64).copy()
        s[[col[i] for i in banned[user] if i in col]] = -np.inf
        best = np.argsort(-s, kind="stable")[:n]
        out[user] = [items[k] for k in best if np.isfinite(s[k])]
    return out


def ease_scores(x: np.ndarray, lam: float) -> np.ndarray:
    """X B with B = I - P diag(1/diag P), P = (X^T X + lambda I)^-1."""
    gram = x.T @ x + lam * np.eye(x.shape[1], dtype=np.float32)
    p = np.linalg.inv(gram)
    b = -p / np.diag(p)
    np.fill_diagonal(b, 0.0)
    return x @ b


def als_scores(x: np.ndarray, factors: float) -> np.ndarray | None:
    try:
        from implicit.als import AlternatingLeastSquares
        from scipy.sparse import csr_matrix
    except ImportError:
        return None
    model = AlternatingLeastSquares(
        factors=int(factors), regularization=0.05, iterations=15, random_state=0
    )
    model.fit(csr_matrix(x), show_progress=False)
    return np.asarray(model.user_factors) @ np.asarray(model.item_factors).T


def tuned(
    name: str,
    grid: tuple[float, ...],
    score: Callable[[np.ndarray, float], np.ndarray | None],
    snapshot: TrainingSnapshot,
    x: np.ndarray,
    users: list[str],
    items: list[str],
) -> tuple[float | None, dict[str, list[str]] | None, float | None]:
    """The grid value with the best validation NDCG@100, its test lists and that NDCG."""
    best = None
    for value in grid:
        scores = score(x, value)
        if scores is None:
            return None, None, None
        # Validation: lists scored on the validation items (train excluded, test unseen).
        val_recs = top_n(scores, users, items, excluded(snapshot, with_validation=False))
        val = relevance_metrics(val_recs, snapshot.validation)["ndcg@100"]
        console.print(f"{name} {value}: validation NDCG@100 {val:.4f}")
        if best is None or val > best[0]:
            best = (val, value, scores)
    val, value, scores = best  # type: ignore[misc]
    test_recs = top_n(scores, users, items, excluded(snapshot, with_validation=True))
    return value, test_recs, val


def write_rescoring_files(
    snapshot: TrainingSnapshot, recommendations: dict[str, dict[str, list[str]]], out: Path
) -> None:
    """What anyone needs to re-score the run: per model ``recs/MODEL.csv`` (user_id, item_id,
    rank from 1) and ``split.csv`` (user_id, item_id, split: the positives held out as val or
    test, every training rating as train)."""
    (out / "recs").mkdir(parents=True, exist_ok=True)
    for model, lists in recommendations.items():
        with open(out / "recs" / f"{model}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["user_id", "item_id", "rank"])
            for user, items in sorted(lists.items()):
                writer.writerows((user, item, rank) for rank, item in enumerate(items, 1))
    with open(out / "split.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["user_id", "item_id", "split"])
        for user in sorted(snapshot.test):
            writer.writerows((user, i, "train") for i in sorted(snapshot.train_ratings[user]))
            writer.writerows((user, i, "val") for i in snapshot.validation[user])
            writer.writerows((user, i, "test") for i in snapshot.test[user])


def policy_lists(
    by: str,
    policy: torch.nn.Module,
    vocab: Vocabulary,
    snapshot: TrainingSnapshot,
    users: list[str],
    k: int,
    for_validation: bool = False,
) -> dict[str, list[str]]:
    """A policy's top 100 per user, ranked ``by`` one of ``RANKINGS``."""
    if by == "pages":
        return recommend_by_pages(policy, vocab, snapshot, users, k, for_validation=for_validation)
    return recommend(policy, vocab, snapshot, users, for_validation=for_validation)


def bench_dataset(name: str, snapshot: TrainingSnapshot, out: Path) -> dict:
    """Every model trained and scored on one dataset: its part of the JSON summary."""
    started = time.perf_counter()
    x, users, items = interaction_matrix(snapshot)
    console.print(
        f"{name}: {len(users)} users, {len(items)} items, {int(x.sum())} training positives"
    )
    popularity = np.tile(x.sum(axis=0), (len(users), 1))
    recommendations = {
        "popularity": top_n(popularity, users, items, excluded(snapshot, with_validation=True))
    }
    # Validation NDCG@100 of every model: what changes to the method are judged on, so that
    # the test split is read once per run, for the final figures.
    pop_val = top_n(popularity, users, items, excluded(snapshot, with_validation=False))
    validation = {"popularity": relevance_metrics(pop_val, snapshot.validation)["ndcg@100"]}
    lam, recommendations["ease"], validation["ease"] = tuned(
        "ease", EASE_GRID, ease_scores, snapshot, x, users, items
    )
    factors, als, als_val = tuned("als", ALS_GRID, als_scores, snapshot, x, users, items)
    if als is not None:
        recommendations["als"], validation["als"] = als, als_val
    else:
        console.print("implicit is not installed: ALS left out (pip install implicit)")

    def stage(title: str) -> None:
        console.print(f"[{name} {time.perf_counter() - started:.0f} s] {title}", markup=False)

    settings = LearnerSettings()
    probe = shortcut_probe(snapshot, validation_users(snapshot, settings))
    console.print(f"{name} shortcut probe (list features only): {probe}")
    probe_alone = probe_by_feature(snapshot, validation_users(snapshot, settings))
    console.print(f"{name} shortcut probe, one feature at a time: {probe_alone}")
    with RayStageRunner(settings.ray) as runner:
        models = train_all(snapshot, settings, out / "run", ABLATIONS, runner, stage)
    plot_training_curves(models.curves, out / "training_curves.png")
    rankings: dict[str, dict[str, float]] = {}
    for ablation in ABLATIONS:
        policy, k = models.policies[ablation], settings.ppo.page_length
        # Each ranking on validation; the better one alone is scored on test.
        rankings[ablation] = {
            by: relevance_metrics(
                policy_lists(by, policy, models.vocab, snapshot, users, k, for_validation=True),
                snapshot.validation,
            )["ndcg@100"]
            for by in RANKINGS
        }
        best = max(RANKINGS, key=rankings[ablation].__getitem__)
        validation[ablation] = rankings[ablation][best]
        recommendations[ablation] = policy_lists(best, policy, models.vocab, snapshot, users, k)
    results = {m: relevance_metrics(r, snapshot.test) for m, r in recommendations.items()}
    write_rescoring_files(snapshot, recommendations, out)
    summary = {
        metric: {model: round(r[metric], 4) for model, r in results.items()}
        for metric in ("ndcg@100", "recall@20", "recall@40")
    }
    return summary | {
        "val_ndcg@100": {model: round(v, 4) for model, v in validation.items()},
        # The policies' two rankings on validation; the test lists use the better one.
        "val_ndcg@100_by_ranking": {
            a: {by: round(v, 4) for by, v in r.items()} for a, r in rankings.items()
        },
        "ranking": {a: max(RANKINGS, key=r.__getitem__) for a, r in rankings.items()},
        "reward_acc": {f: round(a["both"], 4) for f, a in models.reward_accuracy.items()},
        # What the same validation pairs give to trivial list features alone (0.5: nothing).
        "probe_acc": {f: round(a, 4) for f, a in probe.items()},
        "probe_acc_by_feature": {
            feature: {f: round(a, 4) for f, a in accuracy.items()}
            for feature, accuracy in probe_alone.items()
        },
        # Share of the test users given a full list of 100.
        "coverage": {
            model: round(sum(len(r) == 100 for r in lists.values()) / len(users), 4)
            for model, lists in recommendations.items()
        },
        "users": len(users),
        "training_positives": int(x.sum()),
        "ease_lambda": lam,
        "als_factors": factors,
        "wall_s": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    started = time.perf_counter()
    if OUT.exists():
        shutil.rmtree(OUT)  # a fresh run every time: the timing covers every stage
    summary: dict = {}
    for name, history in (("dense", None), ("short", SHORT_HISTORY)):
        summary[name] = bench_dataset(name, load_snapshot(history), OUT / name)
    for name in ("dense", "short"):
        ndcg = summary[name]["ndcg@100"]
        best_peer = max(ndcg[p] for p in ("popularity", "ease", "als") if p in ndcg)
        summary[f"both_vs_best_peer_{name}"] = round(ndcg["both"] / best_peer, 4)
        summary[f"both_vs_sft_{name}"] = round(ndcg["both"] / ndcg["sft"], 4)
    summary["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
