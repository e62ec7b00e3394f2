"""What a record's Kafka key must be: the id its events are ordered by.

Kafka orders records within a partition, and the producer picks the partition from the key.
An event keyed by something other than its user id (or keyless: spread round-robin) can land
in another partition than the user's other events and overtake them; a catalogue item keyed
by something other than its item id escapes the compaction that keeps its latest version.
Such records are refused with the reason, like any invalid event.
"""

from __future__ import annotations

_SHOWN_KEY_CHARS = 64


def key_problem(key: bytes | None, expected: str, field: str) -> str | None:
    """Why ``key`` is not the UTF-8 of ``expected`` (the record's ``field``), or None."""
    if key is None:
        return f"key: missing; key each record by its {field} ({expected!r}) to keep it in order"
    if key == expected.encode():
        return None
    shown = key[:_SHOWN_KEY_CHARS].decode(errors="replace")
    return f"key: {shown!r} is not the record's {field} {expected!r}"
