"""Read ratings datasets as rows for replay through Kafka; bad rows are reported, not fatal.

Formats:

* ``generic``: CSV (with a header) or Parquet with ``user_id, item_id, rating, timestamp`` and
  optionally ``category, price, title``; ``timestamp`` is Unix seconds or ISO-8601.
* ``movielens``: the MovieLens 100k directory (``u.data`` ratings, ``u.item`` movies). An item's
  category is its first genre flag in ``u.item``'s order (``unknown`` when none is set): the
  golden-list cap needs one category per item.
* ``amazon``: Amazon review JSON lines, either the 2018 fields (``reviewerID, asin, overall,
  unixReviewTime``) or the 2023 ones (``user_id, parent_asin`` or ``asin, rating, timestamp``
  in milliseconds). Categories come from an optional metadata JSON-lines file (``asin`` or
  ``parent_asin``; ``main_category`` or the first of ``categories``/``category``; ``price``;
  ``title``).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Literal

import pyarrow.parquet as pq
from pydantic import ValidationError

from schemas import CatalogueItem, Rating
from schemas.events import describe_validation_error

Format = Literal["generic", "movielens", "amazon"]
FORMATS: tuple[Format, ...] = ("generic", "movielens", "amazon")
MOVIELENS_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)


@dataclass(frozen=True)
class BadRow:
    source: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.reason}"


@dataclass(frozen=True)
class ImportedRating:
    line: int
    event: Rating


def parse_timestamp(value: object, *, milliseconds: bool = False) -> datetime:
    """Unix seconds (or milliseconds) or an ISO-8601 string, as an aware UTC datetime."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value / 1000 if milliseconds else value, UTC)
    text = str(value).strip()
    if text.lstrip("-").replace(".", "", 1).isdigit():
        number = float(text)
        return datetime.fromtimestamp(number / 1000 if milliseconds else number, UTC)
    stamp = datetime.fromisoformat(text)
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def parse_rating(value: object) -> int:
    """An integer 1-5; 4.0 is accepted as 4, 4.5 is not."""
    try:
        number = float(str(value).strip())
    except ValueError:
        raise ValueError(f"rating {value!r} is not a number") from None
    if not number.is_integer() or not 1 <= number <= 5:
        raise ValueError(f"rating {value} is not an integer from 1 to 5")
    return int(number)


def rating_event(dataset: str, user: object, item: object, rating: object, ts: datetime) -> Rating:
    """The rating as a feedback event; its id is stable, so a re-import is recognisable."""
    user_id, item_id = str(user).strip(), str(item).strip()
    return Rating(
        type="rating",
        event_id=f"import-{dataset}-{user_id}-{item_id}-{int(ts.timestamp())}",
        user_id=user_id,
        session_id=f"import-{dataset}-{user_id}",
        ts=ts,
        item_id=item_id,
        rating=parse_rating(rating),
    )


def _catalogue_item(item: object, category: object, price: object, title: object) -> CatalogueItem:
    price_value = None
    if price not in (None, ""):
        try:
            price_value = Decimal(str(price).strip().lstrip("$")).quantize(Decimal("0.0001"))
        except InvalidOperation:
            price_value = None  # free-text prices ("$1.99 - $5") carry no single price
    return CatalogueItem(
        item_id=str(item).strip(),
        category=str(category).strip() or "unknown",
        title=str(title or "")[:1000],
        price=price_value,
    )


class DatasetReader:
    """Rows of one dataset: ``ratings()`` yields events or bad rows; ``catalogue`` its items."""

    def __init__(self, fmt: Format, path: Path, meta: Path | None = None) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
        self.fmt, self.path, self.meta = fmt, Path(path), meta
        self.catalogue: dict[str, CatalogueItem] = {}

    def ratings(self) -> Iterator[ImportedRating | BadRow]:
        if self.fmt == "generic":
            yield from self._generic()
        elif self.fmt == "movielens":
            yield from self._movielens()
        else:
            yield from self._amazon()

    def _row(self, line: int, build: Callable[[], Rating]) -> ImportedRating | BadRow:
        try:
            event = build()
        except ValidationError as exc:
            return BadRow(self.path.name, line, describe_validation_error(exc))
        except KeyError as exc:
            return BadRow(self.path.name, line, f"missing field {exc}")
        except (ValueError, TypeError, OverflowError) as exc:
            return BadRow(self.path.name, line, str(exc).splitlines()[0] or type(exc).__name__)
        return ImportedRating(line, event)

    def _generic_rows(self) -> Iterator[tuple[int, dict[str, object]]]:
        """(line number, row); a CSV's header is line 1, a Parquet file's first row is 1."""
        if self.path.suffix == ".parquet":
            yield from enumerate(pq.read_table(self.path).to_pylist(), start=1)
            return
        required = ("user_id", "item_id", "rating", "timestamp")
        with open(self.path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{self.path}: the header lacks {', '.join(missing)}")
            yield from enumerate(reader, start=2)

    def _generic(self) -> Iterator[ImportedRating | BadRow]:
        name = self.path.stem
        for line, row in self._generic_rows():
            result = self._row(
                line,
                lambda row=row: rating_event(
                    name,
                    row["user_id"],
                    row["item_id"],
                    row["rating"],
                    parse_timestamp(row["timestamp"]),
                ),
            )
            if isinstance(result, ImportedRating) and row.get("category"):
                item = result.event.item_id
                self.catalogue.setdefault(
                    item, _catalogue_item(item, row["category"], row.get("price"), row.get("title"))
                )
            yield result

    def _movielens(self) -> Iterator[ImportedRating | BadRow]:
        items = self.path / "u.item"
        with open(items, encoding="latin-1") as handle:
            for line in handle:
                fields = line.rstrip("\n").split("|")
                if len(fields) < 5 + len(MOVIELENS_GENRES):
                    continue
                flags = fields[5 : 5 + len(MOVIELENS_GENRES)]
                genre = next(
                    (g for g, f in zip(MOVIELENS_GENRES, flags, strict=True) if f == "1"), "unknown"
                )
                self.catalogue[fields[0]] = _catalogue_item(fields[0], genre, None, fields[1])
        with open(self.path / "u.data", encoding="utf-8") as handle:
            for line_no, line in enumerate(handle, start=1):
                parts = line.split()

                def build(parts: list[str] = parts) -> Rating:
                    if len(parts) != 4:
                        raise ValueError(f"expected 4 tab-separated fields, got {len(parts)}")
                    user, item, rating, ts = parts
                    return rating_event("ml100k", user, item, rating, parse_timestamp(ts))

                yield self._row(line_no, build)

    def _amazon(self) -> Iterator[ImportedRating | BadRow]:
        if self.meta is not None:
            with open(self.meta, encoding="utf-8") as handle:
                for line in handle:
                    try:
                        doc = json.loads(line)
                    except ValueError:
                        continue
                    item = doc.get("parent_asin") or doc.get("asin")
                    categories = doc.get("categories") or doc.get("category") or []
                    category = doc.get("main_category") or (categories[0] if categories else "")
                    if isinstance(category, list):
                        category = category[0] if category else ""
                    if item:
                        self.catalogue[str(item)] = _catalogue_item(
                            item, category, doc.get("price"), doc.get("title")
                        )
        with open(self.path, encoding="utf-8") as handle:
            for line_no, line in enumerate(handle, start=1):

                def build(line: str = line) -> Rating:
                    doc = json.loads(line)
                    if not isinstance(doc, dict):
                        raise ValueError("not a JSON object")
                    if "reviewerID" in doc:
                        return rating_event(
                            "amazon",
                            doc["reviewerID"],
                            doc["asin"],
                            doc["overall"],
                            parse_timestamp(doc["unixReviewTime"]),
                        )
                    item = doc.get("parent_asin") or doc["asin"]
                    return rating_event(
                        "amazon",
                        doc["user_id"],
                        item,
                        doc["rating"],
                        parse_timestamp(doc["timestamp"], milliseconds=True),
                    )

                yield self._row(line_no, build)
