"""Serving's settings, read from ``PAGELLM_SERVE_*`` environment variables (flags override)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServingSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PAGELLM_SERVE_", extra="ignore")

    host: str = Field("127.0.0.1", description="the HTTP API's address (loopback unless set)")
    port: int = Field(8000, ge=0, le=65535, description="the HTTP API's port (0: a free one)")
    max_body_bytes: int = Field(64 * 1024, ge=1024, description="larger request bodies get 413")
    body_timeout_s: float = Field(
        10.0,
        gt=0,
        description="a request body not received in full within this gets 408 (until then a "
        "client that stops sending holds one of a replica's request slots)",
    )
    max_batch_size: int = Field(16, ge=1, description="page requests generated in one batch")
    batch_wait_s: float = Field(
        0.002, ge=0, description="how long a batch waits for more requests once one arrived"
    )
    refresh_s: float = Field(
        1.0, gt=0, description="how often the registry and experiments are re-read"
    )
    context_refresh_s: float = Field(
        1.0, gt=0, description="how often new store files are read into the users' context"
    )
    recent_events: int = Field(
        20, ge=1, description="a user's latest events whose categories the fallback prefers"
    )
    spool_dir: Path | None = Field(
        None, description="where impressions wait for Kafka (default: STORE/serving/spool)"
    )
    spool_bound: int = Field(
        1_000_000, ge=1, description="impressions the spool holds at most; beyond, dropped"
    )
    replicas: int = Field(1, ge=1, description="replicas of the page deployment")
    run_dir: Path = Field(Path("var/serve"), description="the server's state and log files")
