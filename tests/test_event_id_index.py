"""The per-partition index of stored event ids, on hand-made digests."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest

from streams.ingest import event_id_index
from streams.ingest.event_id_index import EventIdIndex
from streams.store.event_ids import DIGEST, DIGEST_SQL, event_id_digest


def test_digest_is_md5_of_the_utf8_id_as_duckdb_computes_it() -> None:
    assert event_id_digest("a").hex() == "0cc175b9c0f1b6a831c399e269772661"  # RFC 1321
    in_sql = duckdb.sql(f"SELECT {DIGEST_SQL} FROM (SELECT 'é-1' AS event_id)").fetchall()
    assert in_sql == [(event_id_digest("é-1"),)]


def test_digests_that_end_in_nul_bytes_stay_distinct() -> None:
    # NumPy's S16 strips trailing NULs when an element is read out as bytes.
    ends_in_nul = b"\x01" * 15 + b"\x00"
    index = EventIdIndex(np.array([ends_in_nul], DIGEST))
    assert ends_in_nul in index
    assert b"\x01" * 15 + b"\x02" not in index
    assert b"\x01" * 14 + b"\x00\x00" not in index


def test_add_says_new_once_across_merges(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(event_id_index, "_MERGE_AT", 4)
    digests = [event_id_digest(f"e{k}") for k in range(30)]
    index = EventIdIndex(np.array(digests[:10], DIGEST))
    assert [index.add(d) for d in digests[5:15]] == [False] * 5 + [True] * 5
    assert [index.add(d) for d in digests] == [False] * 15 + [True] * 15
    assert len(index) == 30 and all(d in index for d in digests)


def test_a_discarded_id_is_new_again_wherever_it_was_held(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(event_id_index, "_MERGE_AT", 4)
    stored, recent, merged = (event_id_digest(f"e{k}") for k in range(3))
    index = EventIdIndex(np.array(sorted([stored]), DIGEST))
    index.add(recent)
    for digest in (stored, recent):
        index.discard(digest)
        assert digest not in index
    for k in range(3, 6):  # the fourth recent id merges them all into the sorted array
        index.add(event_id_digest(f"e{k}"))
    index.add(merged)
    index.discard(merged)
    index.discard(merged)  # not held: nothing to do
    assert merged not in index and len(index) == 3
    assert index.add(merged) and index.add(stored)


def test_add_all_marks_the_first_copy_within_a_batch_and_against_the_index(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(event_id_index, "_MERGE_AT", 2)
    a, b, c, held = (event_id_digest(f"e{k}") for k in range(4))
    index = EventIdIndex(np.array([held], DIGEST))
    # The batch's ids pass the merge threshold mid-way: a copy after it is still a copy.
    assert index.add_all([a, held, b, a, c, b, a]) == [True, False, True, False, True, False, False]
    assert index.add_all([c, event_id_digest("e9")]) == [False, True]
    assert index.add_all([]) == [] and len(index) == 5
