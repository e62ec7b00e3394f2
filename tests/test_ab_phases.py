"""Reallocation: each allocation phase analysed against its own weights, combined without bias."""

from __future__ import annotations

import io
from datetime import timedelta

import numpy as np
import pytest
from rich.console import Console

from abtest.analysis import analyze
from abtest.estimators import Estimate, stratified_estimate
from abtest.experiment import Phase
from abtest.metrics import MetricName
from abtest.metrics_sql import VariantData, query_variant_data
from abtest.registry import ExperimentRegistry
from abtest.report_table import report_table
from abtest.srm import SRM_ALPHA, phased_sample_ratio_p_value, sample_ratio_p_value
from streams.store.event_store import EventStore
from streams.store.ledger_schema import LedgerBatch, SourceRecord
from streams.store.store_views import connect_store
from tests.ab_simulation import START, aggregate, draw_users, two_variant_experiment
from tests.test_ab_metrics_sql import D, H, click, impression, purchase

ALPHA = 0.05
RESHUFFLE = START + timedelta(days=3)
END = START + timedelta(days=7)


def test_stratified_estimate_by_hand() -> None:
    # pi = (0.25, 0.75): x = 0.25 * 2 + 0.75 * 4 = 3.5, Var = 0.0625 * 1 + 0.5625 * 2 = 1.1875.
    combined = stratified_estimate([Estimate(2, 1, 10), Estimate(4, 2, 30)], [100, 300])
    assert combined.value == pytest.approx(3.5)
    assert combined.variance == pytest.approx(1.1875)
    assert combined.df == pytest.approx(1.1875**2 / (0.0625**2 / 10 + 1.125**2 / 30))
    single = Estimate(2, 1, 10)
    assert stratified_estimate([single], [7]) == single


def test_phases_add_their_chi_squares() -> None:
    # Phase 1: 60/40 against 1:1, chi^2 = 4; phase 2: 30/90 against 1:3, chi^2 = 0; df = 2.
    p = phased_sample_ratio_p_value([[60, 40], [30, 90]], [[1, 1], [1, 3]])
    assert p == pytest.approx(np.exp(-4 / 2))  # chi^2 with 2 df: P(X > x) = exp(-x / 2)
    assert phased_sample_ratio_p_value([[60, 40], [0, 0]], [[1, 1], [1, 3]]) == pytest.approx(
        sample_ratio_p_value([60, 40], [1, 1])
    )


def test_reweight_starts_a_phase_and_a_moved_user_counts_where_they_started(tmp_path) -> None:
    registry = ExperimentRegistry(tmp_path / "store")
    registry.create(two_variant_experiment("exp", START, end=END, pre_period_days=0), now=START)
    moved_at = START + 2 * D
    changed = registry.reweight("exp", {"control": 1, "treatment": 3}, now=moved_at)
    assert changed.phases == (
        Phase(start=START, weights={"control": 1, "treatment": 1}),
        Phase(start=moved_at, weights={"control": 1, "treatment": 3}),
    )
    events = [
        # m1: control in phase 1, moved to the treatment by the reweight. Its click before the
        # reweight counts; its purchase after it belongs to a phase it was not exposed in.
        impression("m1", "s1", START + H, "control"),
        click("m1", "s1", START + 2 * H),
        impression("m1", "s2", START + 3 * D, "treatment"),
        purchase("m1", "s2", START + 4 * D, 1, "30"),
        # n1: first seen after the reweight, in the treatment: phase 2, its purchase counts.
        impression("n1", "s3", START + 3 * D, "treatment"),
        purchase("n1", "s3", START + 4 * D, 1, "20"),
        # a1: two variants within phase 1: a logging fault, left out.
        impression("a1", "s4", START + H, "control"),
        impression("a1", "s4", START + 2 * H, "treatment"),
    ]
    store = EventStore(tmp_path / "store")
    store.init()
    batch = LedgerBatch()
    for offset, event in enumerate(events):
        batch.add_accepted(event, SourceRecord("t", 0, offset, event.user_id.encode(), START))
    store.write_batch(batch, "w1")
    data = query_variant_data(connect_store(store.root), changed, now=END + D)
    assert len(data.phases) == 2 and data.ambiguous_users == 1
    first, second = data.phases
    assert set(first) == {"control"} and set(second) == {"treatment"}
    assert (first["control"]["n"], first["control"]["sum_clicks"]) == (1, 1)
    assert first["control"]["sum_gmv"] == 0
    assert (second["treatment"]["n"], second["treatment"]["sum_gmv"]) == (1, 20)
    report = analyze(changed, data, END)
    assert [p.users for p in report.phases] == [
        {"control": 1, "treatment": 0},
        {"control": 0, "treatment": 1},
    ]
    assert [p.expected_share["treatment"] for p in report.phases] == [0.5, 0.75]
    assert report.expected_share == {
        "control": 0.375,
        "treatment": 0.625,
    }  # (1 x 1/2 + 1 x 1/4) / 2
    console = Console(file=io.StringIO(), width=200)
    console.print(report_table(report))
    assert "phase 2, 2026-11-03 00:00 to 2026-11-08 00:00: control 0" in console.file.getvalue()


def reweighted_a_a(rng: np.random.Generator, users: int = 2000) -> tuple[VariantData, VariantData]:
    """An A/A experiment reweighted from 1:1 to 1:3 while GMV and CTR trend upwards: the data
    per phase, and the same data pooled as if there had been one phase."""
    phases = []
    for weights, trend in (((1, 1), 1.0), ((1, 3), 1.5)):
        in_treatment = rng.binomial(users, weights[1] / sum(weights))
        rows = {}
        for name, n in (("control", users - in_treatment), ("treatment", in_treatment)):
            columns = draw_users(rng, (n,))
            columns["gmv"] = columns["gmv"] * trend
            columns["clicks"] = np.minimum(columns["impressions"], columns["clicks"] * trend)
            rows[name] = aggregate(columns)
        phases.append(rows)
    pooled = {v: {k: phases[0][v][k] + phases[1][v][k] for k in phases[0][v]} for v in phases[0]}
    return VariantData(tuple(phases), 0, {}), VariantData((pooled,), 0, {})


def test_a_reweighted_a_a_experiment_keeps_its_error_rates() -> None:
    # 4,000 A/A experiments reweighted mid-way during a trend. Per phase: false positives at
    # alpha (se of the rate 0.0034, so [0.04, 0.06] is +-2.9 se) and SRM alarms at 0.001.
    # Pooled as one phase, the trend and the unequal shares make a "lift" and an SRM alarm.
    rng = np.random.default_rng(21)
    phased = two_variant_experiment(pre_period_days=14).model_copy(
        update={"phases": (Phase(start=START, weights={"control": 1, "treatment": 1}),
                           Phase(start=RESHUFFLE, weights={"control": 1, "treatment": 3}))}
    )  # fmt: skip
    pooled = two_variant_experiment(pre_period_days=14)
    runs = 4000
    rejected = dict.fromkeys(MetricName, 0)
    pooled_rejected = dict.fromkeys(MetricName, 0)
    alarms = pooled_alarms = 0
    for run in range(runs):
        by_phase, as_one = reweighted_a_a(rng)
        report = analyze(phased, by_phase, END)
        alarms += report.srm_flagged
        for r in report.results:
            rejected[r.metric] += r.p_value < ALPHA
        if run < 200:
            naive = analyze(pooled, as_one, END)
            for r in naive.results:
                pooled_rejected[r.metric] += r.p_value < ALPHA
            pooled_alarms += sample_ratio_p_value(list(naive.users.values()), [1, 3]) < SRM_ALPHA
    for metric, count in rejected.items():
        assert 0.04 <= count / runs <= 0.06, f"{metric}: false-positive rate {count / runs:.4f}"
    assert alarms <= 12, alarms  # 4 expected; P(Poisson(4) > 12) < 0.001
    # Pooled: CTR "lifts" in 70% of the A/A runs, GMV in 22%; the SRM check alarms in all.
    assert pooled_rejected[MetricName.CTR] / 200 > 0.5
    assert pooled_rejected[MetricName.GMV_PER_USER] / 200 > 0.15
    assert pooled_alarms / 200 > 0.9


def test_a_phase_without_users_in_a_variant_is_left_out_and_says_so() -> None:
    # Just after a reweight the new phase may hold one variant's users only: no comparison in
    # it, so the result is phase 1's alone.
    rng = np.random.default_rng(5)
    first = {v: aggregate(draw_users(rng, (500,))) for v in ("control", "treatment")}
    second = {"treatment": aggregate(draw_users(rng, (10,)))}
    phased = two_variant_experiment().model_copy(
        update={"phases": (Phase(start=START, weights={"control": 1, "treatment": 1}),
                           Phase(start=RESHUFFLE, weights={"control": 1, "treatment": 3}))}
    )  # fmt: skip
    both = analyze(phased, VariantData((first, second), 0, {}), END)
    alone = analyze(two_variant_experiment(), VariantData((first,), 0, {}), END)
    for r, only in zip(both.results, alone.results, strict=True):
        assert r.notes == ["phase 2: control has 0 users, so that phase is left out"]
        assert (r.lift, r.lift_ci, r.p_value) == (only.lift, only.lift_ci, only.p_value)
