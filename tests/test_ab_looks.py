"""The always-valid p as a running minimum over the looks an experiment's reports took."""

from __future__ import annotations

from datetime import timedelta

import numpy as np

from abtest.analysis import Report, analyze
from abtest.looks import LookLog, running_minimum
from abtest.metrics import MetricName
from tests.ab_simulation import START, draw_users, two_variant_experiment, variant_data

ALPHA = 0.05
LOOKS, STEP = 20, 100


def test_running_minimum_by_hand() -> None:
    earlier = [{"t/ctr": 0.4, "t/gmv": 0.9}, {"t/ctr": 0.2, "t/gmv": 1.0, "gone/ctr": 0.01}]
    assert running_minimum(earlier, {"t/ctr": 0.3, "t/gmv": 0.95}) == {"t/ctr": 0.2, "t/gmv": 0.9}
    assert running_minimum([], {"t/ctr": 0.3}) == {"t/ctr": 0.3}


def looks_of_one_run(tmp_path, name: str, seed: int, tau: float) -> list[Report]:
    """20 reports of one A/A experiment as its users arrive, each recorded in the look log."""
    rng = np.random.default_rng(seed)
    users = [draw_users(rng, (LOOKS * STEP,)) for _ in range(2)]
    experiment = two_variant_experiment(name, sequential_tau=tau, min_users_per_variant=50)
    log = LookLog(tmp_path, name)
    reports = []
    for k in range(1, LOOKS + 1):
        seen = [{c: v[: k * STEP] for c, v in u.items()} for u in users]
        at = START + timedelta(hours=k)
        reports.append(log.record(analyze(experiment, variant_data(*seen), at), taken_at=at))
    return reports


def series(reports: list[Report], field: str) -> dict[MetricName, list[float]]:
    out: dict[MetricName, list[float]] = {}
    for report in reports:
        for r in report.results:
            out.setdefault(r.metric, []).append(getattr(r, field))
    return out


def test_the_stored_always_valid_p_never_rises_between_looks(tmp_path) -> None:
    reports = looks_of_one_run(tmp_path, "one", seed=3, tau=0.1)
    assert [r.looks for r in reports] == list(range(1, LOOKS + 1))
    stored, own = series(reports, "always_valid_p"), series(reports, "always_valid_p_this_look")
    rose = 0
    for metric in stored:
        assert stored[metric] == list(np.minimum.accumulate(own[metric])), metric
        rose += sum(b > a for a, b in zip(own[metric], own[metric][1:], strict=False))
    assert rose > 0, "no look's own p rose: the run does not exercise the running minimum"
    lines = (tmp_path / "experiments" / "looks" / "one.jsonl").read_text().splitlines()
    assert len(lines) == LOOKS


def test_a_report_as_of_an_earlier_time_reads_only_the_looks_before_it(tmp_path) -> None:
    reports = looks_of_one_run(tmp_path, "asof", seed=4, tau=0.1)
    first = reports[0]
    again = LookLog(tmp_path, "asof").record(first, taken_at=START + timedelta(days=1))
    assert again.looks == 2  # the first look and itself, none of the 19 after it
    for r in again.results:
        assert r.always_valid_p == r.always_valid_p_this_look


def test_peeking_at_the_stored_always_valid_p_keeps_the_error_rate(tmp_path) -> None:
    # 150 A/A experiments, 20 looks each: a run is a false positive if its stored p ever fell
    # below alpha, i.e. if the last stored p is below alpha (it never rises).
    runs = 150
    false_positives = dict.fromkeys(MetricName, 0)
    for run in range(runs):
        last = looks_of_one_run(tmp_path, f"aa-{run}", seed=100 + run, tau=0.1)[-1]
        for r in last.results:
            false_positives[r.metric] += r.always_valid_p < ALPHA
    for metric, count in false_positives.items():
        assert count / runs <= ALPHA, (metric, count)
