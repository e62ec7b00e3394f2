"""``make tune-quality``: the Ray Tune search of ``learner.hyperparameter_search`` on ml-100k.

Both datasets of ``bench-quality`` (dense: every rating; short: each user's 10 most recent;
the paper's protocol), validation items only; the objective is the geometric mean of the both
policy's validation NDCG@100 over the two. Budget: ``TUNE_BUDGET_S`` seconds (3600) and at most
``TUNE_SAMPLES`` trials (64), two at a time on this 2-core machine. The record (every trial's
settings and scores) is written to ``var/tune-quality/search.json``; the last line printed is
the JSON summary: the defaults' figures, the best trial's, and the settings it changes.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import torch

from learner.hyperparameter_search import OBJECTIVE, best_overrides, run_search
from tests.benchmarks.bench_quality import SHORT_HISTORY, load_ratings

OUT = Path("var/tune-quality")


def figures(trial: dict) -> dict:
    """A trial's validation NDCG@100: per policy, per dataset and their geometric means."""
    return {k: v for k, v in trial.items() if k.startswith("val_ndcg_")}


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    started = time.perf_counter()
    budget_s = float(os.environ.get("TUNE_BUDGET_S", 3600))
    samples = int(os.environ.get("TUNE_SAMPLES", 64))
    datasets = {"short": load_ratings(SHORT_HISTORY), "dense": load_ratings(None)}
    record = run_search(datasets, OUT, budget_s, samples)
    scored = [t for t in record["trials"] if OBJECTIVE in t]
    default = next((t for t in scored if t["settings"] == record["defaults"]), None)
    summary = {
        "trials": len(record["trials"]),
        "failed": sum("error" in t for t in record["trials"]),
        "unfinished_at_budget": sum("stopped" in t for t in record["trials"]),
        "defaults": default and figures(default),
        "best": figures(scored[0]) if scored else None,
        "best_changes": best_overrides(record),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(summary, default=str))


if __name__ == "__main__":
    main()
