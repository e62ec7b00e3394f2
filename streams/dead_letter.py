"""Dead-letter records: the rejected record's raw bytes, with why and where it came from."""

from __future__ import annotations

from streams.ledger import SourceRecord

REASON_HEADER = "pagellm-reject-reason"
SOURCE_HEADER = "pagellm-source"


def dead_letter_headers(source: SourceRecord, reason: str) -> list[tuple[str, bytes]]:
    """Kafka headers of a dead-letter record: the reason and ``topic/partition/offset``."""
    return [
        (REASON_HEADER, reason.encode()),
        (SOURCE_HEADER, f"{source.topic}/{source.partition}/{source.offset}".encode()),
    ]


def read_dead_letter_headers(headers: list[tuple[str, bytes]]) -> dict[str, str]:
    """Decode the headers written by ``dead_letter_headers``."""
    return {k: v.decode() for k, v in headers if k in (REASON_HEADER, SOURCE_HEADER)}
