"""Shared test set-up. Fixture modules live beside this file as ``fixtures_*.py``.

The suite runs in parallel: ``-n 2`` (scripts/test) with ``--dist loadfile
--no-loadscope-reorder`` (pyproject.toml). Whole files go to a worker, so a module-scoped run
shared by a module's tests (the demo's) happens once. Under xdist the modules that start many
processes are collected first, in the order below, so they start at once on separate workers
and overlap the many short tests instead of ending the run alone. (``--dist loadgroup`` would
be finer, but with pytest 9 and pytest-xdist 3.8 it ignores every ``xdist_group`` mark: xdist
renames ``item._nodeid``, which pytest 9 no longer reads.)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.services import SEALING_ENV, PrivateRedis, need_postgres, redis_database_url

os.environ.update(SEALING_ENV)  # sealing is always on: so it is in every test

pytest_plugins = [f"tests.{p.stem}" for p in sorted(Path(__file__).parent.glob("fixtures_*.py"))]

# Longest first. xdist gives each worker one file, then another whenever it has two tests or
# fewer left: scripts/test runs the chaos suite in a pytest of its own, so there the demo
# goes to one worker and the benchmark smoke then the e2e test to the other.
HEAVY = ["test_chaos.py", "test_demo.py", "test_benchmarks_smoke.py", "test_e2e_engine.py"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if hasattr(config, "workerinput"):  # an xdist worker; a serial run keeps file order

        def rank(item: pytest.Item) -> int:
            name = item.path.name
            return HEAVY.index(name) if name in HEAVY else len(HEAVY)

        items.sort(key=rank)  # stable: collection order within each rank


@pytest.fixture(scope="session")
def postgres_url() -> str:
    return need_postgres()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    """This session's Redis: a private ``redis-server`` (or ``WXRECON_TEST_REDIS_URL``)."""
    server = PrivateRedis(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: PrivateRedis) -> str:
    """Database 0 of this session's Redis, shared by the session (use key prefixes)."""
    return redis_database_url(redis_server.start(), 0)


@pytest.fixture
def redis_db(redis_server: PrivateRedis) -> Iterator[str]:
    """A database of this session's Redis that no other test uses, empty before and after."""
    url = redis_server.next_database()
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
        yield url
        client.flushdb()
    finally:
        client.close()
