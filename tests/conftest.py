"""Shared test set-up. Fixture modules live beside this file as ``fixtures_*.py``.

The suite runs in parallel (``-n 2 --dist loadgroup``, see pyproject.toml). The tests that
start many processes are ordered first, longest first, so the long ones overlap the many short
ones instead of ending the run alone; a module whose tests share one expensive module-scoped
run (the demo) is one xdist group, so that run happens once.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.services import PrivateRedis, need_postgres, redis_database_url

pytest_plugins = [f"tests.{p.stem}" for p in sorted(Path(__file__).parent.glob("fixtures_*.py"))]

# Heavy modules, longest first (measured with --durations); everything else follows in
# collection order.
HEAVY = ["test_chaos.py", "test_demo.py", "test_e2e_engine.py", "test_benchmarks_smoke.py"]
ONE_WORKER = {"test_demo.py": "demo"}  # module-scoped runs shared by the module's tests


@pytest.hookimpl(tryfirst=True)  # before xdist reads the xdist_group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        group = ONE_WORKER.get(item.path.name)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
    if hasattr(config, "workerinput"):  # an xdist worker: a serial run keeps file order

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
