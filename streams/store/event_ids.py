"""How the store keys event ids: 16 bytes of MD5, the same in Python and in DuckDB's SQL.

A fixed-width digest lets a worker hold every stored id of a partition in a NumPy array
(``streams.ingest.event_id_index``) and rebuild it from the files in one query. Two distinct
ids collide with probability about n^2 / 2^129: nil for any real store.
"""

from __future__ import annotations

import hashlib

import numpy as np

DIGEST = np.dtype("S16")
DIGEST_SQL = "unhex(md5(event_id))"


def event_id_digest(event_id: str) -> bytes:
    """md5(utf8(event_id)): equal to DuckDB's ``unhex(md5(event_id))`` (``DIGEST_SQL``)."""
    return hashlib.md5(event_id.encode(), usedforsecurity=False).digest()
