"""``pagellm ab plan``: the sample-size formula by hand, and the plan of a real store."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from scipy import stats

from abtest.power import days_needed, power_of, users_needed
from abtest.registry import ExperimentRegistry
from streams.store.event_store import EventStore
from streams.store.store_views import connect_store
from tests.test_ab_cli import bulk_load, create
from tests.test_cli import pagellm


def test_users_needed_by_hand() -> None:
    # cv = 0.3, d = 0.0383, 50/50: N = 0.09 (1.0383^2 / 0.5 + 2) (1.95996 + 0.84162)^2 / 0.0383^2.
    z = stats.norm.ppf(0.975) + stats.norm.ppf(0.8)
    n = 0.09 * (1.0383**2 / 0.5 + 1 / 0.5) * z**2 / 0.0383**2
    assert n == pytest.approx(2001.4, abs=0.1)
    assert users_needed(0.09, 0.0383, 0.05, 0.8, {"c": 1, "t": 1}) == {"c": 1001, "t": 1001}
    # 90/10: the small treatment dominates, N = 0.09 (1.0383^2 / 0.9 + 1 / 0.1) z^2 / d^2.
    n = 0.09 * (1.0383**2 / 0.9 + 1 / 0.1) * z**2 / 0.0383**2
    assert users_needed(0.09, 0.0383, 0.05, 0.8, {"c": 9, "t": 1}) == {
        "c": math.ceil(0.9 * n),
        "t": math.ceil(0.1 * n),
    }
    assert power_of(0.09, 0.0383, 1001, 1001, 0.05) == pytest.approx(0.8, abs=0.001)
    with pytest.raises(ValueError, match="lift"):
        users_needed(0.09, 0.0, 0.05, 0.8, {"c": 1, "t": 1})


def test_days_needed_by_hand() -> None:
    reach = [100, 150, 180]  # distinct users active over the last 1, 2, 3 days
    assert days_needed(reach, 150, 1.0) == 2
    # Beyond the history at its last day's 30 new users a day: 3 + (240 - 180) / 30.
    assert days_needed(reach, 240, 1.0) == pytest.approx(5)
    # Half the layer: 90 users in 3 days, then 15 a day: 3 + (240 - 90) / 15.
    assert days_needed(reach, 240, 0.5) == pytest.approx(13)
    assert days_needed([100, 100], 240, 1.0) is None


@pytest.fixture
def shop(tmp_path: Path) -> tuple[Path, datetime]:
    """A store with 20,000 users of synthetic traffic over 22 days, and its last event time."""
    store = EventStore(tmp_path / "store")
    store.init()
    assert create(store.root, "history")[0] == 0
    bulk_load(store.root, "history", users=20_000)
    end = ExperimentRegistry(store.root).get("history").end
    return store.root, end


def independent_history(store: Path, since: datetime, until: datetime) -> tuple[int, float, float]:
    """Users with an impression in the window, and the mean and sd of their GMV in it."""
    return (
        connect_store(store)
        .execute(
            """WITH active AS (SELECT DISTINCT user_id FROM impressions WHERE ts >= $s AND ts < $u),
                spend AS (SELECT user_id, sum(gmv) AS g FROM purchases
                          WHERE ts >= $s AND ts < $u GROUP BY user_id)
           SELECT count(*), avg(coalesce(g, 0)), stddev_samp(coalesce(g, 0))
           FROM active LEFT JOIN spend USING (user_id)""",
            {"s": since, "u": until},
        )
        .fetchall()[0]
    )


def test_plan_of_a_store_matches_an_independent_count(shop: tuple[Path, datetime]) -> None:
    store, end = shop
    result = pagellm(
        "ab", "plan", "--store", str(store), "--metric", "gmv_per_user", "--lift", "0.3",
        "--weights", "50,50", "--now", end.isoformat(), "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    plan = json.loads(result.stdout)
    users, mean, sd = independent_history(store, end - timedelta(days=14), end)
    assert plan["history_users"] == users
    assert plan["baseline"] == pytest.approx(mean, rel=1e-9)
    assert plan["per_user_sd"] == pytest.approx(sd, rel=1e-9)
    expected = users_needed((sd / mean) ** 2, 0.3, 0.05, 0.8, {"control": 1, "treatment": 1})
    assert plan["users_per_variant"] == expected
    # The days: the fewest whole days back from `end` whose active users are enough.
    reach = (
        connect_store(store)
        .execute(
            """SELECT list(n ORDER BY k) FROM (
               SELECT k, count(*) FILTER (WHERE last >= $u - to_days(k::INTEGER)) AS n
               FROM (SELECT user_id, max(ts) AS last FROM impressions
                     WHERE ts >= $u - INTERVAL 14 DAY AND ts < $u GROUP BY user_id),
                    range(1, 15) t(k)
               GROUP BY k)""",
            {"u": end},
        )
        .fetchall()[0][0]
    )
    needed = sum(expected.values())
    assert reach[-1] >= needed, "the fixture must hold enough users for a plan within 14 days"
    assert plan["days"] == next(k for k, r in enumerate(reach, 1) if r >= needed)
    assert plan["days_within_history"] is True

    small = pagellm("ab", "plan", "--store", str(store), "--lift", "0.01",
                    "--now", end.isoformat())  # fmt: skip
    assert small.returncode == 0, small.stderr.decode()
    # The shop has 20,000 users, all seen within the history: no new ones to reach 1,500,000.
    never = (
        "never at the recent traffic: its last day reached no user its first 13 had not "
        "(the reach stopped at 20,000)"
    )
    assert never in " ".join(small.stdout.decode().split())
    assert f"Users needed: control {users_needed_text(store, end)}" in small.stdout.decode()


def users_needed_text(store: Path, end: datetime) -> str:
    _, mean, sd = independent_history(store, end - timedelta(days=14), end)
    return f"{users_needed((sd / mean) ** 2, 0.01, 0.05, 0.8, {'c': 1, 't': 1})['c']:,}"


def test_plan_errors_name_the_field(shop: tuple[Path, datetime]) -> None:
    store, end = shop
    common = ["ab", "plan", "--store", str(store)]
    long_ago = (end - timedelta(days=400)).isoformat()
    empty = pagellm(*common, "--lift", "0.05", "--now", long_ago)
    assert empty.returncode == 2
    assert "history: the store's last 14 days have 0 users" in empty.stderr.decode()
    # nan, inf and 1e300 crashed with a traceback (the power formulas overflowed).
    for lift in ("0", "nan", "inf", "1e300", "-1"):
        refused = pagellm(*common, "--lift", lift)
        assert refused.returncode == 2 and "cannot be planned for" in refused.stderr.decode()
    alpha = pagellm(*common, "--lift", "0.05", "--alpha", "1")  # "power 100%" before
    assert alpha.returncode == 2 and "alpha: 1.0 is not below 0.5" in alpha.stderr.decode()
    weights = pagellm(*common, "--lift", "0.05", "--weights", "100")
    assert weights.returncode == 2 and "--weights" in weights.stderr.decode()
    uneven = pagellm(*common, "--lift", "0.05", "--weights", "1e-300,1")  # 300-digit counts
    assert uneven.returncode == 2 and "control would get none" in uneven.stderr.decode()
    power = pagellm(*common, "--lift", "0.05", "--power", "1")
    assert power.returncode == 2 and "power: 1 would need" in power.stderr.decode()
