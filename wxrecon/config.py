"""One Settings object, read from ``WXRECON_*`` environment variables and ``.env``."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from wxrecon.wechatpay.client import BACKUP_URL, PRIMARY_URL

DEFAULT_POLL_SCHEDULE = "5s,15s,1m,5m,30m,2h"


def parse_duration(text: str) -> float:
    """``500ms``, ``5s``, ``1m``, ``2h``, ``1d`` or a bare number of seconds."""
    text = text.strip().lower()
    for suffix, factor in (("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600), ("d", 86400)):
        if text.endswith(suffix) and text[: -len(suffix)].replace(".", "", 1).isdigit():
            return float(text[: -len(suffix)]) * factor
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"not a duration: {text!r} (use e.g. 5s, 1m, 2h)") from None
    if value < 0:
        raise ValueError(f"not a duration: {text!r}")
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="WXRECON_", env_file=".env", extra="ignore", frozen=True
    )

    # Storage and messaging
    database_url: str = "sqlite:///wxrecon.db"
    # A local Redis-protocol server: in production your Redis; on one machine with none, the
    # Procfile's `broker` entry runs the embedded one there (wxrecon.demo.broker).
    broker_url: str = "redis://127.0.0.1:6379/0"
    data_dir: Path = Path(".wxrecon")
    ratelimit_url: str | None = None  # default: the broker when it is Redis, else per process

    # The provider
    wechatpay_base_url: str = PRIMARY_URL
    wechatpay_backup_url: str | None = BACKUP_URL
    mchid: str = ""
    mch_cert_serial: str = ""
    mch_private_key_path: Path | None = None
    mch_cert_path: Path | None = None
    wechatpay_public_key_id: str | None = None
    wechatpay_public_key_path: Path | None = None
    platform_cert_paths: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # HTTP
    http_connect_timeout: float = 3.0
    http_read_timeout: float = 10.0
    http_retries: int = Field(3, ge=1, le=10)
    failover_cooldown: float = 60.0
    https_proxy: str | None = None  # egress proxy for provider calls, e.g. http://proxy:3128

    # Rate limiting (per endpoint and target merchant, shared by all workers)
    rate_limit_per_second: int = Field(100, ge=1)
    rate_limit_max_wait: float = 2.0

    # Reconciliation
    sweep_interval: float = 2.0
    sweep_batch: int = Field(200, ge=1)
    claim_lease: float = 120.0
    poll_schedule: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [parse_duration(s) for s in DEFAULT_POLL_SCHEDULE.split(",")]
    )
    poll_jitter: float = Field(0.1, ge=0, le=1)
    poll_max_attempts: int = Field(60, ge=1)
    reentry_window_days: int = 31
    reentry_grace: float = 30.0  # after a POST, a not-found answer proves nothing for this long
    poll_chunk: int = Field(10, ge=1)  # claimed orders per poll message

    # Operations
    log_level: str = "INFO"
    log_json: bool = False
    metrics_port: int = 9108

    @field_validator("platform_cert_paths", mode="before")
    @classmethod
    def _split_paths(cls, value: object) -> object:
        if isinstance(value, str):
            return [p.strip() for p in value.split(",") if p.strip()]
        return value

    @field_validator(
        "sweep_interval",
        "claim_lease",
        "failover_cooldown",
        "rate_limit_max_wait",
        "reentry_grace",
        mode="before",
    )
    @classmethod
    def _parse_duration(cls, value: object) -> object:
        return parse_duration(value) if isinstance(value, str) else value

    @field_validator("poll_schedule", mode="before")
    @classmethod
    def _parse_schedule(cls, value: object) -> object:
        if isinstance(value, str):
            steps = [parse_duration(s) for s in value.split(",") if s.strip()]
            if not steps:
                raise ValueError("poll_schedule needs at least one step")
            return steps
        return value

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def effective_ratelimit_url(self) -> str | None:
        if self.ratelimit_url:
            return self.ratelimit_url
        if self.broker_url.startswith(("redis://", "rediss://")):
            return self.broker_url
        return None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
