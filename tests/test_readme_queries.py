"""The README's example analyst queries run against a store holding every event type and a
registry holding a promoted version and its retrain."""

from __future__ import annotations

import re
from pathlib import Path

from learner.registry import ModelRegistry, connect_with_registry
from learner.retrain_journal import RetrainJournal
from streams.store.event_store import EventStore
from tests.test_event_store import one_of_each
from tests.test_model_registry import artifacts, record

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_sql() -> list[str]:
    blocks = re.findall(r"```sql\n(.*?)```", README.read_text(), flags=re.S)
    return [q.strip() for block in blocks for q in block.split(";") if q.strip()]


def test_readme_queries_run_and_return_rows(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "store")
    store.init()
    store.write_batch(one_of_each(), "w1")
    registry = ModelRegistry.for_store(store.root)
    registry.publish(record(), artifacts(tmp_path / "run"))
    registry.promote("v1", "first")
    journal = RetrainJournal(registry, "test")
    journal.update(
        state="registered", version="v1", promoted=True, stream_position={"pagellm.events/0": 41}
    )
    con = connect_with_registry(store.root)
    queries = readme_sql()
    assert len(queries) == 5
    for query in queries:
        assert con.execute(query).fetchall(), query
    ctr = con.execute(queries[0]).fetchall()
    assert ctr == [("v1", 0.5)]  # one click over two impressed slots
    retrains = con.execute(queries[3]).fetchall()
    assert retrains == [(journal.record.retrain_id, "registered", "v1", True, 41)]
