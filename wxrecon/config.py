"""One Settings object, read from ``WXRECON_*`` environment variables and ``.env``."""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from wxrecon.domain.errors import WxreconError
from wxrecon.wechatpay.hosts import BACKUP_URL, PRIMARY_URL

DEFAULT_POLL_SCHEDULE = "5s,15s,1m,5m,30m,2h"
# Outcome delivery retries: the last step repeats until the attempt limit (about 4 days).
DEFAULT_OUTCOME_RETRY_SCHEDULE = "5s,30s,2m,10m,30m,1h,2h,4h,8h"
TASK_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:-")


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
    if value < 0 or not math.isfinite(value):  # "nan" and "inf" parse as floats
        raise ValueError(f"not a duration: {text!r}")
    return value


# The provider keeps an order re-enterable for 31 days: a longer window would re-enter an
# order the provider has forgotten, i.e. apply it twice.
PROVIDER_REENTRY_DAYS = 31
# A task's hard time limit never drops below this many seconds (see task_time_limits).
MIN_TASK_TIME_LIMIT = 10.0
LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")


class SettingsError(WxreconError, ValueError):
    """A setting is malformed or contradicts another; the message is one line naming it."""


def task_time_limits(claim_lease: float) -> tuple[float, float]:
    """(soft, hard) task time limits derived from the claim lease (the worker applies them)."""
    hard = max(MIN_TASK_TIME_LIMIT, claim_lease * 0.75)
    return hard * 0.8, hard


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="WXRECON_", env_file=".env", extra="ignore", frozen=True
    )

    # Storage and messaging
    database_url: str = "sqlite:///wxrecon.db"
    # A local Redis-protocol server: in production your Redis; on one machine with none, the
    # Procfile's `broker` entry runs the embedded one there (wxrecon.demo.broker).
    broker_url: str = "redis://127.0.0.1:6379/0"
    # Queues no wxrecon worker reads, watched for wxrecon tasks sent there by mistake (a
    # send_task without queue=): reported by `wxrecon stats` and wxrecon_stray_tasks.
    watch_queues: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["celery"])
    data_dir: Path = Path(".wxrecon")
    ratelimit_url: str | None = None  # default: the broker when it is Redis, else per process
    # bal_account_no at rest (store/sealed.py): "id:base64key,..." (first seals, all open),
    # and the separate key of the look-up hash (never rotated with the data keys)
    data_keys: SecretStr | None = None
    lookup_key: SecretStr | None = None

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
    # More merchant identities (wxrecon/callers.py: a TOML file of [callers.<name>] tables;
    # the settings above are the caller "default"), and which one each kind signs with
    # when an order names none.
    callers_file: Path | None = None
    reduction_caller: str = Field("default", min_length=1, max_length=32, pattern=r"^[a-z0-9_-]+$")
    bill_caller: str = Field("default", min_length=1, max_length=32, pattern=r"^[a-z0-9_-]+$")

    # HTTP
    http_connect_timeout: float = Field(3.0, gt=0)
    http_read_timeout: float = Field(10.0, gt=0)
    # One attempt's whole time (connect, send, the entire answer); None: connect + read.
    http_total_timeout: float | None = Field(None, gt=0)
    http_max_body: int = Field(1 << 20, ge=1024, le=64 << 20)  # an answer's bytes, at most
    http_retries: int = Field(3, ge=1, le=10)
    failover_cooldown: float = Field(60.0, ge=0)
    https_proxy: str | None = None  # egress proxy for provider calls, e.g. http://proxy:3128

    # Rate limiting (per endpoint and target merchant, shared by all workers)
    rate_limit_per_second: int = Field(100, ge=1)
    rate_limit_max_wait: float = Field(2.0, ge=0)
    # Seconds added to the one-second window, for requests that arrive closer together than
    # they were granted (wxrecon.ratelimit): one that arrives early costs a 429 and a retry.
    rate_limit_guard: float = Field(0.02, ge=0, le=0.5)
    # "merchant": a target merchant's reduction submits and queries share one budget
    rate_limit_scope: Literal["endpoint", "merchant"] = "endpoint"

    # Reconciliation
    sweep_interval: float = Field(2.0, gt=0)
    sweep_batch: int = Field(200, ge=1)
    claim_lease: float = Field(120.0, gt=0)
    # The beat leader lock's time to live: a standby beat sends sweeps at most this long
    # (plus a third of it) after the active beat died (wxrecon.beat).
    beat_lock_ttl: float = Field(30.0, ge=0.5, le=600)
    poll_schedule: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [parse_duration(s) for s in DEFAULT_POLL_SCHEDULE.split(",")]
    )
    poll_jitter: float = Field(0.1, ge=0, le=1)
    poll_max_attempts: int = Field(60, ge=1)
    # The provider re-enters a POST idempotently for 31 days; never trust a longer window.
    reentry_window_days: int = Field(31, ge=1, le=PROVIDER_REENTRY_DAYS)
    # Re-entry stops this long before the window ends (clock skew, a slow last attempt).
    reentry_margin: float = Field(3600.0, ge=0)
    # After a POST, a not-found answer proves nothing for this long.
    reentry_grace: float = Field(30.0, ge=0)
    poll_chunk: int = Field(50, ge=1, le=1000)  # claimed orders per poll message (MAX_CHUNK)

    # Ledger reconciliation (README, "Ledgers"): balance snapshots of ledgers with activity
    ledger_snapshot_interval: float = Field(900.0, gt=0, le=86400.0)
    ledger_activity_window: float = Field(7 * 86400.0, gt=0, le=400 * 86400.0)

    # Outcome delivery (README, "Outcome delivery"): either target, or both, or neither
    outcome_task: str | None = None  # a Celery task name, e.g. billing.on_wxrecon_outcome
    outcome_queue: str = "celery"  # the app's queue (a plain Celery app's default)
    outcome_broker_url: str | None = None  # the app's broker, if not ours
    webhook_allow_http: bool = False  # http:// beyond loopback (never in production)
    webhook_url: str | None = None  # validated after webhook_allow_http, which it reads
    webhook_secret: SecretStr | None = None
    webhook_timeout: float = Field(5.0, gt=0, le=60)
    outcome_retry_schedule: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [
            parse_duration(s) for s in DEFAULT_OUTCOME_RETRY_SCHEDULE.split(",")
        ]
    )
    outcome_max_attempts: int = Field(20, ge=1, le=1000)
    outcome_relay_interval: float = Field(1.0, gt=0)
    outcome_batch: int = Field(100, ge=1, le=1000)

    # Operations
    log_level: str = "INFO"
    log_json: bool = False
    metrics_port: int = Field(9108, ge=0, le=65535)

    @field_validator("platform_cert_paths", "watch_queues", mode="before")
    @classmethod
    def _split_paths(cls, value: object) -> object:
        if isinstance(value, str):
            return [p.strip() for p in value.split(",") if p.strip()]
        return value

    @field_validator(
        "sweep_interval",
        "claim_lease",
        "beat_lock_ttl",
        "failover_cooldown",
        "rate_limit_max_wait",
        "rate_limit_guard",
        "reentry_grace",
        "reentry_margin",
        "http_total_timeout",
        "ledger_snapshot_interval",
        "ledger_activity_window",
        mode="before",
    )
    @classmethod
    def _parse_duration(cls, value: object) -> object:
        if value == "":
            return None  # only http_total_timeout may be unset; the others then refuse None
        return parse_duration(value) if isinstance(value, str) else value

    @field_validator("poll_schedule", "outcome_retry_schedule", mode="before")
    @classmethod
    def _parse_schedule(cls, value: object) -> object:
        if isinstance(value, str):
            steps = [parse_duration(s) for s in value.split(",") if s.strip()]
            if not steps:
                raise ValueError("a schedule needs at least one step")
            return steps
        return value

    @field_validator("outcome_task", "outcome_queue", mode="after")
    @classmethod
    def _check_task_name(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not 0 < len(value) <= 200 or not set(value) <= TASK_NAME_CHARS:
            raise ValueError("must be 1-200 of A-Z a-z 0-9 _ . : -")
        return value

    @field_validator("webhook_url", mode="after")
    @classmethod
    def _check_webhook_url(cls, value: str | None, info: Any) -> str | None:
        if not value:
            return None
        from wxrecon.outbound.webhook import check_url

        return check_url(value, allow_http=bool(info.data.get("webhook_allow_http")))

    @field_validator("log_level", mode="after")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"{value!r} is not a log level (one of {', '.join(LOG_LEVELS)})")
        return level

    @model_validator(mode="after")
    def _check_consistent(self) -> Settings:
        _soft, hard = task_time_limits(self.claim_lease)
        if self.webhook_url and not (
            self.webhook_secret and len(self.webhook_secret.get_secret_value()) >= 16
        ):
            raise ValueError(
                "WXRECON_WEBHOOK_URL needs WXRECON_WEBHOOK_SECRET (at least 16 characters)"
            )
        if self.claim_lease <= hard:
            raise ValueError(
                f"WXRECON_CLAIM_LEASE ({self.claim_lease:g}s) must be longer than the task time "
                f"limit ({hard:g}s): a claim would expire while its task still runs"
            )
        return self

    @property
    def delivers_outcomes(self) -> bool:
        return bool(self.outcome_task or self.webhook_url)

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


# URLs a Redis client opens: the broker features that need Redis (the intake pump, the beat
# lock, the shared limiter, the stray-task look) check a URL against these.
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def settings_error(exc: ValidationError) -> SettingsError:
    """The first problem of a failed validation as one line naming the setting (the
    rejected value is left out: it may be a secret)."""
    first = exc.errors()[0]
    loc = first.get("loc") or ()
    message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    if loc:
        return SettingsError(f"WXRECON_{str(loc[0]).upper()}: {' '.join(message.split())}")
    return SettingsError(" ".join(message.split()))  # a cross-field rule names its settings


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment (and ``overrides``); SettingsError when invalid."""
    try:
        return Settings.model_validate(overrides)
    except ValidationError as exc:
        raise settings_error(exc) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings (cached); SettingsError (one line) when a setting is invalid."""
    return load_settings()
