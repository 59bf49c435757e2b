"""Shared test set-up. Fixture modules live beside this file as ``fixtures_*.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.services import need_postgres, need_redis

pytest_plugins = [f"tests.{p.stem}" for p in sorted(Path(__file__).parent.glob("fixtures_*.py"))]


@pytest.fixture(scope="session")
def postgres_url() -> str:
    return need_postgres()


@pytest.fixture(scope="session")
def redis_url() -> str:
    return need_redis()
