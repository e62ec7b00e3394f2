"""Dataset import: each format on small generated files, bad rows reported with line numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from streams.ingest.dataset_import import BadRow, DatasetReader, ImportedRating, parse_timestamp
from streams.settings import StreamSettings
from streams.store.store_views import connect_store
from tests.conftest import read_topic, wait_for
from tests.test_cli import cluster_flags, pagellm


def split_rows(reader: DatasetReader) -> tuple[list[ImportedRating], list[BadRow]]:
    rows = list(reader.ratings())
    return (
        [r for r in rows if isinstance(r, ImportedRating)],
        [r for r in rows if isinstance(r, BadRow)],
    )


def write_csv(path: Path) -> Path:
    path.write_text(
        "user_id,item_id,rating,timestamp,category,price,title\n"
        "u1,i1,5,1700000000,toys,9.99,Ball\n"
        "u1,i2,4.0,2023-11-14T22:13:20+00:00,books,,\n"
        "u2,i1,6,1700000000,toys,9.99,Ball\n"
        "u2,i3,3,yesterday,games,1,Dice\n"
        "u3,,4,1700000000,toys,,\n"
    )
    return path


def test_generic_csv_with_bad_rows(tmp_path: Path) -> None:
    good, bad = split_rows(DatasetReader("generic", write_csv(tmp_path / "r.csv")))
    assert [(r.line, r.event.user_id, r.event.item_id, r.event.rating) for r in good] == [
        (2, "u1", "i1", 5),
        (3, "u1", "i2", 4),
    ]
    assert good[0].event.ts == parse_timestamp(1_700_000_000) == good[1].event.ts
    assert [(b.line, b.reason.split(" ")[0]) for b in bad] == [
        (4, "rating"),
        (5, "Invalid"),
        (6, "item_id:"),
    ]
    assert str(bad[0]).startswith("r.csv:4: rating 6 is not an integer from 1 to 5")


def test_generic_csv_catalogue_and_a_missing_column(tmp_path: Path) -> None:
    reader = DatasetReader("generic", write_csv(tmp_path / "r.csv"))
    split_rows(reader)
    assert {i: (c.category, str(c.price)) for i, c in reader.catalogue.items()} == {
        "i1": ("toys", "9.9900"),
        "i2": ("books", "None"),
    }
    (tmp_path / "bad.csv").write_text("user,item_id,rating\n")
    with pytest.raises(ValueError, match="the header lacks user_id, timestamp"):
        list(DatasetReader("generic", tmp_path / "bad.csv").ratings())


def test_generic_parquet(tmp_path: Path) -> None:
    table = pa.table(
        {
            "user_id": ["u1", "u2"],
            "item_id": ["a", "b"],
            "rating": [5, 0],
            "timestamp": [1_700_000_000, 1_700_000_001],
        }
    )
    pq.write_table(table, tmp_path / "r.parquet")
    good, bad = split_rows(DatasetReader("generic", tmp_path / "r.parquet"))
    assert [(r.line, r.event.item_id) for r in good] == [(1, "a")]
    assert [b.line for b in bad] == [2]


def test_movielens_layout(tmp_path: Path) -> None:
    flags = lambda *on: "|".join("1" if g in on else "0" for g in range(19))  # noqa: E731
    (tmp_path / "u.item").write_bytes(
        f"1|Caf\xe9 (1995)|01-Jan-1995||url|{flags(3, 5)}\n2|Blank|||url|{flags()}\n".encode(
            "latin-1"
        )
    )
    (tmp_path / "u.data").write_text("196\t1\t3\t881250949\n22\t2\n7\t2\t5\t881250950\n")
    reader = DatasetReader("movielens", tmp_path)
    good, bad = split_rows(reader)
    assert [(r.event.user_id, r.event.item_id, r.event.rating) for r in good] == [
        ("196", "1", 3),
        ("7", "2", 5),
    ]
    assert [(b.line, b.reason) for b in bad] == [(2, "expected 4 tab-separated fields, got 2")]
    assert reader.catalogue["1"].category == "Animation"  # the first flagged genre
    assert reader.catalogue["1"].title == "Caf\xe9 (1995)"
    assert reader.catalogue["2"].category == "unknown"


def test_amazon_2018_and_2023_lines_with_metadata(tmp_path: Path) -> None:
    reviews = tmp_path / "reviews.jsonl"
    reviews.write_text(
        "\n".join(
            [
                json.dumps(
                    {
                        "reviewerID": "A1",
                        "asin": "B01",
                        "overall": 5.0,
                        "unixReviewTime": 1_400_000_000,
                    }
                ),
                json.dumps(
                    {
                        "user_id": "AG2",
                        "parent_asin": "B02",
                        "asin": "X",
                        "rating": 4.0,
                        "timestamp": 1_600_000_000_123,
                    }
                ),
                "{broken",
                json.dumps({"user_id": "AG3", "asin": "B03", "rating": 2.5, "timestamp": 1}),
                json.dumps({"user_id": "AG4", "rating": 4, "timestamp": 1}),
            ]
        )
        + "\n"
    )
    meta = tmp_path / "meta.jsonl"
    meta.write_text(
        json.dumps(
            {"parent_asin": "B02", "main_category": "Toys", "price": "12.50", "title": "Kite"}
        )
        + "\n"
        + json.dumps({"asin": "B01", "categories": ["Books", "Kids"]})
        + "\n"
    )
    reader = DatasetReader("amazon", reviews, meta)
    good, bad = split_rows(reader)
    assert [(r.event.user_id, r.event.item_id, r.event.rating) for r in good] == [
        ("A1", "B01", 5),
        ("AG2", "B02", 4),
    ]
    assert good[1].event.ts.year == 2020
    assert [b.line for b in bad] == [3, 4, 5]
    assert "missing field 'asin'" in bad[2].reason
    assert (reader.catalogue["B02"].category, str(reader.catalogue["B02"].price)) == (
        "Toys",
        "12.5000",
    )
    assert reader.catalogue["B01"].category == "Books"


@pytest.mark.kafka
def test_import_replays_through_kafka_into_the_store(
    settings: StreamSettings, workers: Callable, tmp_path: Path
) -> None:
    result = pagellm(
        "import",
        str(write_csv(tmp_path / "r.csv")),
        *cluster_flags(settings),
    )
    err = result.stderr.decode()
    assert result.returncode == 0, err
    assert "bad row r.csv:4" in err and "imported 2 ratings" in err and "3 bad rows" in err
    workers()
    con = connect_store(settings.store_dir)
    wait_for(
        lambda: con.execute("SELECT count(*) FROM ratings").fetchone()[0] == 2,
        60,
        "2 imported ratings in the store",
    )
    assert sorted(con.execute("SELECT user_id, item_id, rating FROM ratings").fetchall()) == [
        ("u1", "i1", 5),
        ("u1", "i2", 4),
    ]
    wait_for(
        lambda: con.execute("SELECT count(*) FROM catalogue").fetchone()[0] == 2,
        60,
        "2 catalogue items in the store",
    )
    assert sorted(con.execute("SELECT item_id, category FROM catalogue").fetchall()) == [
        ("i1", "toys"),
        ("i2", "books"),
    ]
    items = read_topic(settings, settings.catalogue_topic, 2)
    assert sorted(json.loads(r.value)["category"] for r in items) == ["books", "toys"]


@pytest.mark.kafka
def test_imported_ratings_become_live_golden_lists(
    settings: StreamSettings, workers: Callable, tmp_path: Path
) -> None:
    rows = ["user_id,item_id,rating,timestamp,category"]
    # Each user rates 60 of 100 items (two thirds of them 5, the rest 2), in 4 categories.
    rows += [
        f"u{u},i{n + 20 * u},{5 if (u + n) % 3 else 2},{1_700_000_000 + n},c{(n + 20 * u) % 4}"
        for u in range(3)
        for n in range(60)
    ]
    (tmp_path / "r.csv").write_text("\n".join(rows) + "\n")
    result = pagellm(
        "import",
        str(tmp_path / "r.csv"),
        *cluster_flags(settings),
    )
    assert result.returncode == 0, result.stderr.decode()
    workers()
    derive = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pagellm",
            "derive",
            "--store",
            str(settings.store_dir),
            "--interval",
            "0.2",
        ],
        cwd=Path(__file__).resolve().parent.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def lists() -> list:
            try:
                con = connect_store(settings.store_dir)
                return con.execute(
                    "SELECT user_id, items FROM golden_lists WHERE len(items) = 10 ORDER BY user_id"
                ).fetchall()
            except duckdb.Error:  # the derive worker has not seeded its tables yet
                return []

        got = wait_for(lambda: len(lists()) == 3 and lists(), 90, "3 users' golden lists")
    finally:
        derive.terminate()
        derive.wait(10)
    con = connect_store(settings.store_dir)
    for _, items in got:
        cats = [int(i[1:]) % 4 for i in items]
        assert max(cats.count(c) for c in set(cats)) <= 4  # lambda = 0.4 of 10 slots
    assert con.execute("SELECT count(DISTINCT family) FROM preference_pairs").fetchone() == (4,)
