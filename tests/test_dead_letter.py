"""Dead-letter records at the size limit, and sends that fail: nothing stops the partition."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime

from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from streams.ingest.dead_letter import (
    SENT,
    DeadLetter,
    Reject,
    dead_letter_all,
    dead_letter_record,
    read_dead_letter_headers,
)
from streams.store.ledger_schema import LedgerBatch, SourceRecord

SOURCE = SourceRecord("events", 3, 17, b"u1", datetime.now(UTC))
LIMIT = 1_000_000


def test_a_record_that_fits_goes_whole_and_one_that_does_not_as_a_reference() -> None:
    small = dead_letter_record(SOURCE, b"{oops", "event: Invalid JSON", LIMIT)
    assert (small.value, small.outcome) == (b"{oops", SENT)
    assert read_dead_letter_headers(small.headers) == {
        "pagellm-reject-reason": "event: Invalid JSON",
        "pagellm-source": "events/3/17",
    }
    # The broker takes values up to about 1,048,588 bytes: such a value is over the limit.
    raw = b"x" * 1_040_000
    big = dead_letter_record(SOURCE, raw, "event: Invalid JSON", LIMIT)
    assert big.value is None and big.key == b"u1"
    headers = read_dead_letter_headers(big.headers)
    assert headers["pagellm-raw-bytes"] == "1040000"
    assert headers["pagellm-raw-sha256"] == hashlib.sha256(raw).hexdigest()
    assert big.outcome.startswith("sent as a reference: ")
    assert DefaultRecordBatchBuilder.estimate_size_in_bytes(big.key, None, big.headers) < LIMIT


def test_the_size_limit_counts_key_and_headers() -> None:
    headers = dead_letter_record(SOURCE, b"", "r", LIMIT).headers

    def size(n: int) -> int:
        return DefaultRecordBatchBuilder.estimate_size_in_bytes(SOURCE.key, b"y" * n, headers)

    largest = LIMIT - size(0)  # then shrink by the few bytes the longer length fields take
    while size(largest) > LIMIT:
        largest -= 1
    assert LIMIT - size(0) - largest <= 4
    assert dead_letter_record(SOURCE, b"y" * largest, "r", LIMIT).value == b"y" * largest
    assert dead_letter_record(SOURCE, b"y" * (largest + 1), "r", LIMIT).value is None


def test_a_null_value_stays_null() -> None:
    letter = dead_letter_record(SOURCE, None, "value: null", LIMIT)
    assert (letter.value, letter.outcome) == (None, SENT)


def rejected_batch(n: int) -> tuple[LedgerBatch, list[Reject]]:
    batch = LedgerBatch()
    rejects = []
    for offset in range(n):
        source = SourceRecord("events", 0, offset, b"u1", None)
        rejects.append(Reject(source, b"bad", "r", batch.add_rejected(b"bad", "r", source)))
    return batch, rejects


def test_sends_that_fail_or_hang_are_noted_and_the_rest_go_on() -> None:
    batch, rejects = rejected_batch(3)
    sent: list[int] = []

    async def send(letter: DeadLetter) -> None:
        offset = int(read_dead_letter_headers(letter.headers)["pagellm-source"].split("/")[2])
        if offset == 0:
            raise MessageSizeTooLargeError("the broker refused it")
        if offset == 1:
            await asyncio.sleep(60)
        sent.append(offset)

    failed = asyncio.run(dead_letter_all(batch, rejects, send, max_bytes=LIMIT, timeout_s=0.2))
    assert failed == 2 and sent == [2]
    notes = batch.to_table().column("dead_letter").to_pylist()
    assert notes[0].startswith("not sent (MessageSizeTooLargeError")
    assert notes[1].startswith("not sent (TimeoutError")
    assert notes[2] == SENT
    assert all("kept here only" in n for n in notes[:2])
