"""Configuration of the event backbone, read from ``PAGELLM_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class StreamSettings(BaseSettings):
    """Where the broker and the store are, and how ingestion batches."""

    model_config = SettingsConfigDict(env_prefix="PAGELLM_", extra="ignore")

    kafka_bootstrap: str = Field(
        "127.0.0.1:9092",
        description="bootstrap servers; set it to use an existing cluster instead of a local one",
    )
    events_topic: str = "pagellm.events"
    dead_letter_topic: str = "pagellm.events.dlq"
    catalogue_topic: str = Field(
        "pagellm.catalogue", description="catalogue items keyed by item id (compacted)"
    )
    partitions: int = Field(4, ge=1, description="partitions of each topic when created")
    replication_factor: int = Field(
        1, ge=1, description="replicas of each topic's partitions when created (3 in production)"
    )
    min_insync_replicas: int | None = Field(
        None,
        ge=1,
        description="replicas that must hold a write before acks=all succeeds, set on each "
        "topic when created (None: the broker's, 1 by default; 2 with 3 replicas in production)",
    )
    store_dir: Path = Field(Path("var/store"), description="root of the event store's files")
    consumer_group: str = Field("pagellm-ingest", description="the ingest workers' group id")
    batch_max_events: int = Field(
        20_000, ge=1, description="a micro-batch is written when it holds this many events"
    )
    batch_max_wait_s: float = Field(
        0.5,
        gt=0,
        description="...or once its oldest event is this old, from its produce time (freshness)",
    )
    session_timeout_s: float = Field(
        10.0, ge=6, description="a worker silent this long is dropped and its partitions move"
    )
    event_loop: Literal["uvloop", "asyncio"] = Field(
        "uvloop", description="the worker's asyncio event loop (uvloop is faster)"
    )
    fetch_max_wait_ms: int = Field(
        100, ge=1, description="longest a fetch may wait for data (bounds freshness)"
    )
    fetch_max_bytes_per_partition: int = Field(
        8 * 1024 * 1024, ge=1024, description="largest fetch from one partition per request"
    )
    dead_letter_max_bytes: int = Field(
        1_000_000,
        ge=10_000,
        description="largest dead-letter record (value, key and headers); a rejected record "
        "beyond it is dead-lettered as a reference (size, SHA-256), its bytes kept in the store",
    )
    dead_letter_timeout_s: float = Field(
        30.0, gt=0, description="a dead-letter send slower than this is given up, and noted"
    )
    max_clock_skew_s: float = Field(
        300.0, ge=0, description="events stamped further in the future than this are rejected"
    )
    compact_min_age_s: float = Field(
        300.0, ge=0, description="the compactor merges fresh ledger files at least this old"
    )
    compact_retention_s: float = Field(
        3600.0,
        ge=0,
        description="merged files are deleted this long after the compactor stopped reading "
        "them: longer than any query or a follower's pause (older views then refuse to run)",
    )
    compact_target_mb: int = Field(
        256, ge=1, description="a compacted file of an event date grows by merges up to this"
    )
    compact_max_files: int = Field(
        20_000, ge=1, description="fresh files of a dataset merged per round (one DuckDB COPY)"
    )

    @model_validator(mode="after")
    def _writable(self) -> StreamSettings:
        if self.min_insync_replicas is not None and (
            self.min_insync_replicas > self.replication_factor
        ):
            raise ValueError(
                f"min_insync_replicas: {self.min_insync_replicas} is more than the replication "
                f"factor {self.replication_factor}, so no acks=all write could ever succeed"
            )
        return self
