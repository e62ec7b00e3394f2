"""Dead-letter records: the rejected record's raw bytes, with why and where it came from.

Whatever the events topic accepted must be dead-lettered, or the partition stops at it. A record
near the broker's size limit no longer fits once the headers are added (nor under the
producer's request limit), so it goes as a reference: no value, and headers giving its size and
SHA-256; its raw bytes are in the store's ``rejected_events`` either way. A null value stays
null. ``dead_letter`` in the store says which of these each rejected record got, or why it
could not be sent at all (then the store's copy is the only one, and ingestion goes on).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from aiokafka.record.default_records import DefaultRecordBatchBuilder

from streams.store.ledger_schema import LedgerBatch, SourceRecord

log = logging.getLogger(__name__)

REASON_HEADER = "pagellm-reject-reason"
SOURCE_HEADER = "pagellm-source"
SIZE_HEADER = "pagellm-raw-bytes"
SHA256_HEADER = "pagellm-raw-sha256"
OMITTED_HEADER = "pagellm-raw-omitted"
_HEADERS = (REASON_HEADER, SOURCE_HEADER, SIZE_HEADER, SHA256_HEADER, OMITTED_HEADER)

SENT = "sent"


def dead_letter_headers(source: SourceRecord, reason: str) -> list[tuple[str, bytes]]:
    """Kafka headers of a dead-letter record: the reason and ``topic/partition/offset``."""
    return [
        (REASON_HEADER, reason.encode()),
        (SOURCE_HEADER, f"{source.topic}/{source.partition}/{source.offset}".encode()),
    ]


def read_dead_letter_headers(headers: list[tuple[str, bytes]]) -> dict[str, str]:
    """Decode the headers written by ``dead_letter_record``."""
    return {k: v.decode() for k, v in headers if k in _HEADERS}


@dataclass(frozen=True)
class Reject:
    """A rejected record, and its row in the batch (where its dead-letter fate is noted)."""

    source: SourceRecord
    raw: bytes | None
    reason: str
    row: int


@dataclass(frozen=True)
class DeadLetter:
    """A dead-letter record to send, and what the store notes of it (``dead_letter``)."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    outcome: str


def dead_letter_record(
    source: SourceRecord, raw: bytes | None, reason: str, max_bytes: int
) -> DeadLetter:
    """The record as it is when it fits ``max_bytes`` serialized, else a reference to it."""
    headers = dead_letter_headers(source, reason)
    size = DefaultRecordBatchBuilder.estimate_size_in_bytes(source.key, raw, headers)
    if raw is None or size <= max_bytes:
        return DeadLetter(source.key, raw, headers, SENT)
    headers += [
        (SIZE_HEADER, str(len(raw)).encode()),
        (SHA256_HEADER, hashlib.sha256(raw).hexdigest().encode()),
        (OMITTED_HEADER, b"over the dead-letter size limit; kept in the store's rejected_events"),
    ]
    outcome = f"sent as a reference: {size} bytes with headers, over the {max_bytes}-byte limit"
    return DeadLetter(source.key, None, headers, outcome)


async def dead_letter_all(
    batch: LedgerBatch,
    rejects: Sequence[Reject],
    send: Callable[[DeadLetter], Awaitable[None]],
    *,
    max_bytes: int,
    timeout_s: float,
) -> int:
    """Send every reject, noting in its row what became of it; returns how many failed.

    Never raises: whatever fails here, the store keeps the raw bytes, and the partition goes on.
    """

    async def one(reject: Reject) -> bool:
        letter = dead_letter_record(reject.source, reject.raw, reject.reason, max_bytes)
        try:
            await asyncio.wait_for(send(letter), timeout_s)
        except Exception as exc:  # whatever failed, the record is parked in the store
            why = f"not sent ({type(exc).__name__}: {exc}); the raw bytes are kept here only"
            batch.note_dead_letter(reject.row, why)
            log.error("dead letter of %s not sent: %s", reject.source, exc)
            return False
        batch.note_dead_letter(reject.row, letter.outcome)
        return True

    sent = await asyncio.gather(*(one(r) for r in rejects))
    return sent.count(False)
