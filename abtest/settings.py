"""Platform-wide A/B settings, read from ``PAGELLM_AB_*`` environment variables.

What belongs to one experiment (alpha, metrics, the pre-period) is in its configuration
(``abtest.experiment``); these hold for every experiment of the store.
"""

from __future__ import annotations

import duckdb
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class AbSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PAGELLM_AB_", extra="ignore")

    memory_limit: str | None = Field(
        None,
        pattern=r"^\d+(\.\d+)?\s*(K|M|G|T)i?B$",
        description="DuckDB's memory cap for a report and a rollup round, e.g. '4GB' (default: "
        "DuckDB's own, 80% of RAM); beyond it DuckDB spills to disk, which costs time",
    )
    bucket_cooldown_days: float = Field(
        14.0,
        ge=0,
        description="days the layer buckets of a stopped or ended experiment rest before another "
        "experiment may take them, so its users do not carry its effect into the next one",
    )
    rollup_max_age_s: float = Field(
        900.0,
        ge=0,
        description="a report reads an experiment's user rollup (`pagellm ab rollup`) when its "
        "last round was at most this long ago, with the window ending at that round; else the "
        "raw events, up to now",
    )


def cap_memory(con: duckdb.DuckDBPyConnection, limit: str | None) -> None:
    """Cap DuckDB's memory on ``con`` at ``limit`` (``AbSettings.memory_limit``; None: leave
    DuckDB's own)."""
    if limit:
        con.execute("SET memory_limit = $limit", {"limit": limit})
