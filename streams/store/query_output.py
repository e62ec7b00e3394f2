"""A query's result written for scripts: CSV with a header, or a JSON array of objects.

DuckDB renders the values (decimals exact, times in ISO form, blobs escaped) into a temporary
file, which is then copied to the caller's stream: a ``COPY ... TO '/dev/stdout'`` reopened a
redirected stdout truncated, so ``>> file`` lost what the file held. The query goes into
``COPY (...)`` on lines of its own and without its trailing semicolons, so a trailing comment
or semicolon is fine. JSON has no NaN or infinity: in JSON, a floating column's are null.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, Literal

import duckdb

from streams.store.sql_literals import sql_literal

ScriptFormat = Literal["csv", "json"]
_COPY_OPTIONS: dict[ScriptFormat, str] = {
    "csv": "(FORMAT csv, HEADER)",
    "json": "(FORMAT json, ARRAY true)",
}
_FLOATING = {"DOUBLE", "FLOAT"}


def without_trailing_semicolons(query: str) -> str:
    """``query`` up to its last token that is neither a comment nor a semicolon (DuckDB's
    tokenizer: a ';' inside a string or a comment is not cut)."""
    end = len(query)
    for position, kind in reversed(duckdb.tokenize(query)):
        semicolon = kind == duckdb.token_type.operator and query[position] == ";"
        if not (semicolon or kind == duckdb.token_type.comment):
            break
        end = position
    return query[:end]


def quoted_identifier(name: str) -> str:
    """The identifier ``name`` in double quotes, each one inside it doubled."""
    return '"' + name.replace('"', '""') + '"'


def json_select_list(columns: Sequence[str], types: Sequence[object]) -> str:
    """The result's columns, each floating one with NaN and infinities as null."""
    out = []
    for name, kind in zip(columns, types, strict=True):
        column = quoted_identifier(name)
        if str(kind) in _FLOATING:
            column = f"CASE WHEN isfinite({column}) THEN {column} END AS {column}"
        out.append(column)
    return ", ".join(out)


def write_result(
    con: duckdb.DuckDBPyConnection, query: str, fmt: ScriptFormat, sink: BinaryIO
) -> None:
    """Run ``query`` and write its rows to ``sink`` as ``fmt``; ValueError for a statement
    that returns no rows, duckdb.Error for one that fails."""
    body = without_trailing_semicolons(query)
    relation = con.sql(body)
    if relation is None:
        raise ValueError("not a query: only a statement that returns rows can be written")
    source = f"\n{body}\n"
    if fmt == "json":
        source = f"SELECT {json_select_list(relation.columns, relation.types)} FROM ({source})"
    with tempfile.TemporaryDirectory(prefix="pagellm-sql-") as tmp:
        path = Path(tmp) / f"result.{fmt}"
        con.execute(f"COPY ({source}) TO {sql_literal(path)} {_COPY_OPTIONS[fmt]}")
        with path.open("rb") as result:
            shutil.copyfileobj(result, sink)
