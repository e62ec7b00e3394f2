"""Values written into SQL that cannot take parameters (view definitions), quoted safely.

DuckDB refuses prepared parameters in ``CREATE VIEW``, yet views must name the store's files;
a store folder whose path holds a quote would otherwise end the literal early.
"""

from __future__ import annotations

from pathlib import Path


def sql_literal(value: str | Path) -> str:
    """'value' with each ' doubled, as SQL spells a quote inside a string."""
    return "'" + str(value).replace("'", "''") + "'"
