"""Fast wire-format rating events for the volume tests (no model construction per event)."""

from __future__ import annotations

from collections.abc import Iterator


def rating_records(users: int, per_user: int) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) of ``users * per_user`` ratings with event ids ``<user>-<seq>`` in order."""
    for seq in range(per_user):
        for u in range(users):
            user = f"u{u}"
            yield (
                user.encode(),
                (
                    f'{{"type":"rating","event_id":"{user}-{seq}","user_id":"{user}",'
                    f'"session_id":"s{u}","ts":"2026-01-01T00:00:{seq % 60:02d}+00:00",'
                    f'"item_id":"i{(u * 7 + seq) % 997}","rating":{1 + (u + seq) % 5}}}'
                ).encode(),
            )
