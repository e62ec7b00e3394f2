"""Every look at an experiment, kept, so that its always-valid p only ever falls.

The mSPRT's guarantee is about the running minimum: the always-valid p at a look is the
smallest p of that look and every earlier one, so that once it crossed alpha it stays there.
A single report recomputes today's p from today's data, which can rise again; this log keeps
each look's own p per variant and metric (``STORE/experiments/looks/NAME.jsonl``, one JSON line
per report, appended and fsynced) and gives the report the running minimum.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path

from abtest.analysis import Report
from abtest.comparison import MetricResult


def look_key(result: MetricResult) -> str:
    return f"{result.variant}/{result.metric}"


def running_minimum(
    earlier: Iterable[Mapping[str, float]], current: Mapping[str, float]
) -> dict[str, float]:
    """p*_k = min(p_1, ..., p_k) per key, over the earlier looks' p and this look's."""
    lowest = dict(current)
    for look in earlier:
        for key, p in look.items():
            if key in lowest:
                lowest[key] = min(lowest[key], p)
    return lowest


class LookLog:
    """The looks taken at one experiment, in ``STORE/experiments/looks/NAME.jsonl``."""

    def __init__(self, store_dir: Path | str, experiment: str) -> None:
        self.path = Path(store_dir) / "experiments" / "looks" / f"{experiment}.jsonl"

    def looks_until(self, window_end: datetime) -> list[dict]:
        """The stored looks whose data ended no later than ``window_end``, oldest first."""
        if not self.path.exists():
            return []
        looks = [json.loads(line) for line in self.path.read_text().splitlines() if line]
        return [k for k in looks if datetime.fromisoformat(k["window_end"]) <= window_end]

    def record(self, report: Report, taken_at: datetime) -> Report:
        """Append this look; the report with each always-valid p as the running minimum.

        A report as of an earlier time (``ab report --now``) reads only the looks up to it.
        """
        current = {look_key(r): r.always_valid_p_this_look for r in report.results}
        earlier = [k["always_valid_p"] for k in self.looks_until(report.window_end)]
        lowest = running_minimum(earlier, current)
        line = {"taken_at": taken_at.isoformat(), "window_end": report.window_end.isoformat(),
                "always_valid_p": current}  # fmt: skip
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as sink:
            fcntl.flock(sink, fcntl.LOCK_EX)  # two reports at once append whole lines
            sink.write(json.dumps(line) + "\n")
            sink.flush()
            os.fsync(sink.fileno())
        results = [r.model_copy(update={"always_valid_p": lowest[look_key(r)]})
                   for r in report.results]  # fmt: skip
        return report.model_copy(update={"results": results, "looks": len(earlier) + 1})
