"""Query results for scripts: what is cut from a query before it goes into COPY."""

from __future__ import annotations

import pytest

from streams.store.query_output import json_select_list, without_trailing_semicolons


@pytest.mark.parametrize(
    ("query", "body"),
    [
        ("SELECT 1", "SELECT 1"),
        ("SELECT 1;;  ", "SELECT 1"),
        ("SELECT 1 AS x; -- a note", "SELECT 1 AS x"),
        ("SELECT ';' AS x -- ends in ;", "SELECT ';' AS x "),
        ("SELECT 1 /* ; */ ;", "SELECT 1 "),
    ],
)
def test_trailing_semicolons_and_comments_are_cut_and_nothing_else(query: str, body: str) -> None:
    assert without_trailing_semicolons(query) == body


def test_only_floating_columns_map_nan_to_null_and_names_stay_quoted() -> None:
    assert json_select_list(['a"b', "n"], ["DOUBLE", "DECIMAL(18,4)"]) == (
        'CASE WHEN isfinite("a""b") THEN "a""b" END AS "a""b", "n"'
    )
