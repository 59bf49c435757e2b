"""Where the test services live, and the rule for when they are absent.

A test that needs PostgreSQL or Redis skips only when the service truly does not answer, and
fails instead when ``WXRECON_REQUIRE_SERVICES=1`` (CI sets it), so CI never goes green on a
silently skipped suite.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

import pytest

POSTGRES_URL = os.environ.get(
    "WXRECON_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("WXRECON_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def services_required() -> bool:
    return os.environ.get("WXRECON_REQUIRE_SERVICES", "") in ("1", "true", "yes")


def _answers(url: str, default_port: int) -> bool:
    parsed = urlparse(url.replace("postgresql+psycopg", "postgresql"))
    try:
        with socket.create_connection(
            (parsed.hostname or "127.0.0.1", parsed.port or default_port), 1
        ):
            return True
    except OSError:
        return False


def need(name: str, url: str, default_port: int) -> str:
    if _answers(url, default_port):
        return url
    message = f"{name} does not answer at {url}"
    if services_required():
        pytest.fail(f"{message} and WXRECON_REQUIRE_SERVICES is set")
    pytest.skip(message)


def need_postgres() -> str:
    return need("PostgreSQL", POSTGRES_URL, 5432)


def need_redis() -> str:
    return need("Redis", REDIS_URL, 6379)
