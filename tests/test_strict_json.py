"""Request bodies read as JSON strictly, on hand-made bodies."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from schemas import parse_event
from schemas.strict_json import keys_given, parse_json_strictly
from serving.strict_json_routes import is_json_media_type


def test_valid_json_reads_as_json_loads_does() -> None:
    body = '{"user_id": "é1", "exclude": ["i1", "i2"], "nested": {"a": [1, {"b": null}]}}'
    assert parse_json_strictly(body.encode()) == json.loads(body)
    assert parse_json_strictly(b"\xef\xbb\xbf" + body.encode()) == json.loads(body)  # a BOM


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b'{"k": 200, "k": 3}', "the key 'k' appears twice in one object"),
        (b'{"a": [{"b": 1, "c": 2, "b": 1}]}', "the key 'b' appears twice in one object"),
        (b'{"user_id": "u\xff"}', "not UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b"{not json", "Expecting property name enclosed in double quotes"),
    ],
)
def test_what_json_loads_would_take_or_crash_on_is_invalid_json(body: bytes, why: str) -> None:
    with pytest.raises(json.JSONDecodeError) as refused:
        parse_json_strictly(body)
    assert refused.value.msg == why


def test_keys_given_counts_the_keys_of_nested_models_too() -> None:
    slots = [{"item_id": "i1", "position": 1}, {"item_id": "i2", "position": 2}]
    page = {"type": "impression", "event_id": "e", "user_id": "u", "session_id": "s",
            "ts": "2026-06-01T11:59:00+00:00", "request_id": "r", "model_version": "v1",
            "items": slots}  # fmt: skip
    event = parse_event(json.dumps(page), now=datetime(2026, 6, 1, 12, tzinfo=UTC))
    assert keys_given(event) == 8 + 2 * 2  # schema_version, experiment, variant not given


@pytest.mark.parametrize(
    ("content_type", "is_json"),
    [
        ("application/json", True),
        ("Application/JSON; charset=utf-8", True),
        ("application/merge-patch+json", True),
        ("text/plain", False),
        ("text/json+x", False),
        ("application/x-www-form-urlencoded", False),
        ("", False),
    ],
)
def test_only_json_media_types_are_taken_as_json(content_type: str, is_json: bool) -> None:
    assert is_json_media_type(content_type) is is_json
