"""The README's example analyst queries run against a store holding every event type."""

from __future__ import annotations

import re
from pathlib import Path

from streams.event_store import EventStore
from streams.store_views import connect_store
from tests.test_event_store import one_of_each

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_sql() -> list[str]:
    blocks = re.findall(r"```sql\n(.*?)```", README.read_text(), flags=re.S)
    return [q.strip() for block in blocks for q in block.split(";") if q.strip()]


def test_readme_queries_run_and_return_rows(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "store")
    store.init()
    store.write_batch(one_of_each(), "w1")
    con = connect_store(store.root)
    queries = readme_sql()
    assert len(queries) == 3
    for query in queries:
        assert con.execute(query).fetchall(), query
    ctr = con.execute(queries[0]).fetchall()
    assert ctr == [("v1", 0.5)]  # one click over two impressed slots
