"""``pagellm eval`` end to end on a generated interactions file, with a tiny configuration."""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from learner.interactions_file import InteractionsError, read_interactions
from learner.pipeline import LearnerSettings
from learner.settings import BackboneSettings
from streams.derive.split import split_user
from tests.test_ab_cli import PNG_MAGIC
from tests.test_cli import pagellm

TINY = {
    "backbone": {"n_embd": 32, "n_layer": 1, "n_head": 2, "n_positions": 48},
    "supervised": {"meta_epochs": 1, "finetune_epochs": 2, "meta_lr": 1e-3,
                   "finetune_lr": 1e-3, "batch_size": 16},
    "reward": {"epochs": 2, "lr": 1e-3, "batch_size": 16},
    "ppo": {"iterations": 2, "batch_size": 16, "minibatch_size": 8, "epochs": 1,
            "page_length": 5, "lr": 1e-4},
}  # fmt: skip


def write_interactions(path: Path, users: int = 60, items: int = 80, split: bool = False) -> None:
    """Users who like two of four categories; timestamps in order of rating."""
    rng = random.Random(7)
    with open(path, "w", newline="") as sink:
        writer = csv.writer(sink)
        writer.writerow(["user_id", "item_id", "rating", "timestamp", "category"]
                        + (["split"] if split else []))  # fmt: skip
        for u in range(users):
            liked = {u % 4, (u + 1) % 4}
            chosen = rng.sample(range(items), 25)
            for t, i in enumerate(chosen):
                rating = rng.choice([4, 5]) if i % 4 in liked else rng.choice([1, 2, 3])
                row = [f"u{u}", f"i{i}", rating, 1_700_000_000 + 3600 * t, f"c{i % 4}"]
                part = ["train", "val", "test"][(t >= 18) + (t >= 22)]
                writer.writerow(row + ([part] if split else []))


def test_eval_writes_metrics_recommendations_and_curves(tmp_path: Path) -> None:
    data, out = tmp_path / "ratings.csv", tmp_path / "eval"
    write_interactions(data)
    settings = tmp_path / "settings.json"
    settings.write_text(LearnerSettings.model_validate(TINY).model_dump_json())
    result = pagellm("eval", "--data", str(data), "--out", str(out), "--settings", str(settings),
                     "--prompt-length", "5", "--in-process")  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    interactions = read_interactions(data)
    for ablation in ("sft", "page", "item", "both"):
        metrics = json.loads((out / f"metrics_{ablation}.json").read_text())
        assert metrics["users"] == 60
        for name in ("recall@20", "recall@40", "ndcg@100", "was", "dpa", "ild"):
            assert 0.0 <= metrics[name] <= 1.0, (name, metrics[name])
        # PWKT is a Kendall tau over the pairs of a page's golden-list items: +1 all in golden
        # order, -1 all reversed (and 0 for a page with fewer than 2 golden items), averaged.
        assert -1.0 <= metrics["pwkt"] <= 1.0, metrics["pwkt"]
        with open(out / f"recommendations_{ablation}.csv") as source:
            rows = list(csv.DictReader(source))
        assert len(rows) == 60
        for row in rows:
            ranked = row["items"].split()
            assert len(ranked) == len(set(ranked)) <= 100
            assert all(i.startswith("i") for i in ranked)
    # The protocol's candidates exclude the user's train and validation items, and only those:
    # what the user rated after their boundary is not known, so it may be recommended.
    with open(out / "recommendations_both.csv") as source:
        rows = {r["user_id"]: r["items"].split() for r in csv.DictReader(source)}
    for user, ranked in rows.items():
        split = split_user(interactions.ratings[user])
        assert split is not None
        assert not set(ranked) & (set(split.train) | set(split.validation)), user
    accuracy = json.loads((out / "reward_accuracy.json").read_text())
    assert set(accuracy) <= {"np", "rk", "d", "rd"} and accuracy
    assert (out / "training_curves.png").read_bytes().startswith(PNG_MAGIC)
    assert (out / "run" / "policy_both" / "config.json").exists()


# What `pagellm eval` derives from its --data file, as its digest.
SNAPSHOT_DIGEST_OF_FILE = """
import sys
from pathlib import Path
from learner.interactions_file import read_interactions
from streams.derive.derived_state import DeriveConfig
from streams.derive.training_snapshot import build_training_snapshot, snapshot_digest
data = read_interactions(Path(sys.argv[1]))
config = DeriveConfig(prompt_length=5)
snapshot = build_training_snapshot(data.ratings, data.catalogue, config, data.given_splits)
print(snapshot_digest(snapshot))
"""


def test_a_file_gives_the_same_training_data_in_every_process(tmp_path: Path) -> None:
    # A stopped `pagellm eval` keeps its finished stages only if the data's digest is the one
    # its run recorded (prepare_run), so what a file derives to may not hang on the order of a
    # set, which moves with each process's hash seed.
    data = tmp_path / "ratings.csv"
    write_interactions(data, users=40)
    digests = {
        subprocess.run(
            [sys.executable, "-c", SNAPSHOT_DIGEST_OF_FILE, str(data)],
            env=os.environ | {"PYTHONHASHSEED": seed},
            capture_output=True,
            check=True,
            cwd=Path(__file__).parent.parent,
        ).stdout.strip()
        for seed in ("1", "2", "3")
    }
    assert len(digests) == 1 and len(digests.pop()) == 64


def test_a_given_split_column_is_used_as_given(tmp_path: Path) -> None:
    data = tmp_path / "split.csv"
    write_interactions(data, users=5, split=True)
    interactions = read_interactions(data)
    assert interactions.given_splits is not None
    split = interactions.given_splits["u0"]
    # rows 18-21 of each user are 'val', 22-24 'test'; only their positives are held out
    assert len(split.train) == 18
    assert set(split.test) <= {i for i, r in interactions.ratings["u0"].items() if r.rating > 3}


def test_bad_rows_are_refused_naming_the_line_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,item_id,rating,timestamp\nu1,i1,4,1700000000\nu1,i2,9,1700000001\n")
    with pytest.raises(InteractionsError, match=r"bad.csv:3: rating: Input should be less"):
        read_interactions(bad)
    result = pagellm("eval", "--data", str(bad), "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and b"bad.csv:3: rating" in result.stderr
    (tmp_path / "cols.csv").write_text("user,item\n")
    with pytest.raises(InteractionsError, match="missing column"):
        read_interactions(tmp_path / "cols.csv")


def test_ranking_by_successive_pages_fills_distinct_unseen_items_page_by_page(
    tmp_path: Path,
) -> None:
    import torch

    from learner.backbone import build_policy
    from learner.constrained_decoding import generate_pages
    from learner.offline_eval import recommend_by_pages
    from learner.vocabulary import build_vocabulary
    from streams.derive.derived_state import DeriveConfig
    from streams.derive.training_snapshot import build_training_snapshot

    torch.set_num_threads(1)
    write_interactions(tmp_path / "ratings.csv", users=12)
    data = read_interactions(tmp_path / "ratings.csv")
    snapshot = build_training_snapshot(data.ratings, data.catalogue, DeriveConfig(prompt_length=5))
    users = sorted(snapshot.test)
    vocab = build_vocabulary(users, sorted(snapshot.catalogue), ["c0", "c1", "c2", "c3"])
    policy = build_policy(vocab, BackboneSettings(n_embd=16, n_layer=1, n_head=2), seed=3)
    for for_validation in (False, True):
        lists = recommend_by_pages(
            policy, vocab, snapshot, users, k=4, n=30, batch_size=5, for_validation=for_validation
        )
        for user in users:
            seen = set(snapshot.train_ratings[user])
            if not for_validation:
                seen |= set(snapshot.validation[user])
            ranked = lists[user]
            assert len(ranked) == min(30, 80 - len(seen)) == len(set(ranked))
            assert not set(ranked) & seen
            # The first page is the policy's greedy page; the second, with the first banned.
            request = [(user, snapshot.histories[user])]
            first = generate_pages(policy, vocab, request, 4, greedy=True, also_banned=[seen])
            second = generate_pages(
                policy, vocab, request, 4, greedy=True, also_banned=[seen | set(first.pages[0])]
            )
            assert ranked[:8] == first.pages[0] + second.pages[0]
