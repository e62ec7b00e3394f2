"""``make bench-eval-scale``: ``pagellm eval --ablations sft,both`` on an e-commerce-shaped file.

The file is generated (seeded, so every run reads the same one): 25,000 users, 12,000 items in
40 categories, 200,000 interactions.

* Items' popularity is long-tailed: item k (of a random order) has weight 1 / (k + 10)^1.1.
* Interactions per user follow a lognormal with median 6 and mean 8 (at least 1); the counts
  are then trimmed or topped up so they sum to 200,000.
* Each user has a favourite category. Half of their items are drawn from it, the rest from the
  whole catalogue, both by popularity and without repeats.
* Ratings: 5, 4, 3, 2, 1 with probabilities 0.35, 0.30, 0.17, 0.10, 0.08 (positives r > 3 are
  about 65%). Timestamps are spread over 180 days in drawing order.

The command runs as a user would run it, in a subprocess. Its peak RSS is the largest sum, over
samples every 0.5 s, of the RSS of the command and every process under it (Ray's workers
included); the peak of the summed PSS is printed beside it (a shared page counted once, split
between the processes that map it: what the tree occupies), and the largest processes at the
RSS peak (``at_rss_peak``). ``stage_s`` holds the seconds of each training stage, read from
the run's ``stage_seconds.json``. The last line printed is the JSON summary; targets:
wall_s <= 5400, peak_rss_mb <= 8192.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

USERS, ITEMS, INTERACTIONS, CATEGORIES = 25_000, 12_000, 200_000, 40
RATING_P = {5: 0.35, 4: 0.30, 3: 0.17, 2: 0.10, 1: 0.08}
DAYS = 180
OUT = Path("var/bench-eval-scale")


def interactions_per_user(users: int, total: int, rng: np.random.Generator) -> np.ndarray:
    """Lognormal counts (median 6, mean 8, at least 1) adjusted to sum to ``total``."""
    sigma = np.sqrt(2 * np.log(8 / 6))  # mean = median * exp(sigma^2 / 2)
    counts = np.maximum(1, np.rint(rng.lognormal(np.log(6), sigma, users))).astype(np.int64)
    counts = np.minimum(counts, ITEMS // 4)
    while (excess := int(counts.sum()) - total) != 0:
        # Trim from, or add to, random users until the total is exact (never below 1).
        picks = rng.choice(users, size=abs(excess), replace=True)
        np.add.at(counts, picks, -1 if excess > 0 else 1)
        counts = np.maximum(counts, 1)
    return counts


def draw_items(counts: np.ndarray, rng: np.random.Generator) -> tuple[list[list[int]], np.ndarray]:
    """Per user, their distinct items (half from a favourite category, by popularity), and each
    item's category. Every item is drawn at least once: an item the draws missed replaces a
    random user's last draw (counts stay as they are)."""
    weight = 1.0 / (np.arange(ITEMS) + 10.0) ** 1.1
    popularity = np.empty(ITEMS)
    popularity[rng.permutation(ITEMS)] = weight / weight.sum()
    category = rng.integers(0, CATEGORIES, ITEMS)
    members = [np.flatnonzero(category == c) for c in range(CATEGORIES)]
    favourite = rng.integers(0, CATEGORIES, len(counts))
    chosen: list[list[int]] = []
    for user, n in enumerate(counts.tolist()):
        own = members[favourite[user]]
        n_own = min(n // 2, len(own))
        mine = [
            int(i)
            for i in rng.choice(
                own, n_own, replace=False, p=popularity[own] / popularity[own].sum()
            )
        ]
        while len(mine) < n:
            for item in rng.choice(ITEMS, n - len(mine), p=popularity).tolist():
                if item not in mine and len(mine) < n:
                    mine.append(item)
        chosen.append(mine)
    times_drawn = Counter(i for mine in chosen for i in mine)
    for item in range(ITEMS):
        if times_drawn[item]:
            continue
        while True:  # a user whose last item someone else also has, so it is not lost
            mine = chosen[int(rng.integers(len(chosen)))]
            if times_drawn[mine[-1]] > 1 and item not in mine:
                break
        times_drawn[mine[-1]] -= 1
        mine[-1] = item
        times_drawn[item] = 1
    return chosen, category


def write_interactions(path: Path, seed: int = 0) -> dict[str, int]:
    """The benchmark's interactions file at ``path``; its users, items and rows."""
    rng = np.random.default_rng(seed)
    counts = interactions_per_user(USERS, INTERACTIONS, rng)
    chosen, category = draw_items(counts, rng)
    stars, stars_p = np.array(list(RATING_P)), np.array(list(RATING_P.values()))
    start = 1_700_000_000
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["user_id", "item_id", "rating", "timestamp", "category"])
        for user, mine in enumerate(chosen):
            rng.shuffle(mine)
            times = np.sort(rng.integers(start, start + DAYS * 86_400, len(mine)))
            ratings = rng.choice(stars, size=len(mine), p=stars_p)
            for item, ts, rating in zip(mine, times.tolist(), ratings.tolist(), strict=True):
                writer.writerow([f"u{user}", f"i{item}", rating, ts, f"c{category[item]}"])
    items = len({i for mine in chosen for i in mine})
    return {"users": len(chosen), "items": items, "interactions": int(sum(map(len, chosen)))}


def process_tree(root: int) -> list[int]:
    """``root`` and every process under it (Linux: read from /proc)."""
    parent = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                # Fields after the command name (which may hold spaces): state, ppid, ...
                stat = (entry / "stat").read_text()
                parent[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue  # it ended between the listing and the reading
    tree, frontier = [root], [root]
    while frontier:
        frontier = [p for p, pp in parent.items() if pp in frontier and p not in tree]
        tree += frontier
    return tree


def memory_mb(pid: int) -> tuple[str, float, float]:
    """(name, RSS, PSS) of a process in MB. RSS counts every shared page (libraries, Ray's
    shared objects) in full in each process that maps it; PSS counts a shared page's share."""
    name = Path(f"/proc/{pid}/comm").read_text().strip()
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value, *_ = line.split()
        fields[key.rstrip(":")] = int(value) / 1024
    return name, fields.get("Rss", 0.0), fields.get("Pss", 0.0)


def tree_memory(root: int) -> list[tuple[str, float, float]]:
    """(name, RSS MB, PSS MB) of each process of ``root``'s tree."""
    found = []
    for pid in process_tree(root):
        try:
            found.append(memory_mb(pid))
        except (OSError, ValueError):
            continue
    return found


@dataclass
class MemoryPeak:
    """The peaks of a process tree's summed RSS and summed PSS (MB), and its largest
    processes when the RSS peaked."""

    rss_mb: float = 0.0
    pss_mb: float = 0.0
    at_rss_peak: list[dict[str, object]] = field(default_factory=list)

    def add(self, tree: list[tuple[str, float, float]]) -> None:
        rss, pss = sum(t[1] for t in tree), sum(t[2] for t in tree)
        if rss > self.rss_mb:
            top = sorted(tree, key=lambda t: -t[1])[:8]
            self.rss_mb = rss
            self.at_rss_peak = [
                {"process": n, "rss_mb": round(r), "pss_mb": round(q)} for n, r, q in top
            ]
        self.pss_mb = max(self.pss_mb, pss)


def run_measured(command: list[str]) -> tuple[int, float, MemoryPeak]:
    """(exit code, wall seconds, peak memory sampled every 0.5 s) of ``command``."""
    started = time.perf_counter()
    child = subprocess.Popen(command)
    peak = MemoryPeak()
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            peak.add(tree_memory(child.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    code = child.wait()
    done.set()
    sampler.join()
    return code, time.perf_counter() - started, peak


def main() -> None:
    data = OUT / "interactions.csv"
    shape = write_interactions(data)
    print(f"generated {data}: {shape}", file=sys.stderr)
    pagellm = str(Path(sys.executable).with_name("pagellm"))
    command = [
        pagellm,
        "eval",
        "--data",
        str(data),
        "--out",
        str(OUT / "eval"),
        "--ablations",
        "sft,both",
        "--fresh",
        *sys.argv[1:],
    ]
    code, wall, memory = run_measured(command)
    seconds_file = OUT / "eval" / "run" / "stage_seconds.json"
    stage_s = json.loads(seconds_file.read_text()) if seconds_file.exists() else {}
    summary = shape | {
        "exit_code": code,
        "wall_s": round(wall, 1),
        "peak_rss_mb": round(memory.rss_mb, 1),
        "peak_pss_mb": round(memory.pss_mb, 1),
        "at_rss_peak": memory.at_rss_peak,
        "stage_s": {k: round(v, 1) for k, v in stage_s.items()},
        "cpus": os.cpu_count(),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
