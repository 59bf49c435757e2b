"""Shared test set-up. Fixture modules live beside this file as ``fixtures_*.py``.

The suite runs in parallel: ``-n 4`` (scripts/test) with ``--dist loadfile
--no-loadscope-reorder`` (pyproject.toml), scheduled by ``Scheduling`` below: whole files go
to a worker, except the end-to-end files in ``SPLIT``, whose tests go out one by one (a class
stays together: the demo's ``TestOneRun`` shares one run). Under xdist the longest tests are
collected first, in the order of ``HEAVY``, so they start at once on separate workers and
overlap the many short tests instead of ending the run alone. (``--dist loadgroup`` would
do the splitting with marks, but with pytest 9 and pytest-xdist 3.8 it ignores every
``xdist_group`` mark: xdist renames ``item._nodeid``, which pytest 9 no longer reads.)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.services import SEALING_ENV, PrivateRedis, need_postgres, redis_database_url

os.environ.update(SEALING_ENV)  # sealing is always on: so it is in every test

pytest_plugins = [f"tests.{p.stem}" for p in sorted(Path(__file__).parent.glob("fixtures_*.py"))]

# Longest first (seconds measured on 2 cores in brackets), as node id prefixes. scripts/test
# runs the chaos suite in a pytest of its own; here it is first for a run that includes it.
HEAVY = [
    "tests/e2e/test_chaos.py",
    "tests/e2e/test_demo.py::test_the_demo_passes_several_times_in_a_row",  # (71) three demos
    "tests/e2e/test_e2e_engine.py",  # (40)
    "tests/e2e/test_demo.py::TestOneRun",  # (35)
    "tests/e2e/test_demo.py::test_the_same_demo_runs_on_redis_and_postgresql",  # (23)
    "tests/e2e/test_benchmarks_smoke.py",  # (22)
    "tests/e2e/test_demo_procfile.py",  # (15)
    "tests/e2e/test_e2e_outcomes.py",  # (14)
    "tests/web/test_browser.py",  # (9)
    "tests/e2e/",  # the other demos and end-to-end tests (4-8 each)
    "tests/integration/test_ratelimit.py",  # (8)
    "tests/integration/test_secrets_logs.py",  # (7)
]

# Files whose tests are scheduled one by one: each starts processes of its own and shares
# nothing with the others but what a class holds. Not the chaos suite: its tests share
# module-scoped runs.
SPLIT = {"tests/e2e/test_demo.py", "tests/e2e/test_demo_procfile.py"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if hasattr(config, "workerinput"):  # an xdist worker; a serial run keeps file order

        def rank(item: pytest.Item) -> int:
            nodeid = item.nodeid
            return next((i for i, p in enumerate(HEAVY) if nodeid.startswith(p)), len(HEAVY))

        items.sort(key=rank)  # stable: collection order within each rank


def work_unit(nodeid: str) -> str:
    """What goes to one worker together: the file, or in ``SPLIT`` the test (parameters
    together) or its class."""
    path, _, rest = nodeid.partition("::")
    if path not in SPLIT or not rest:
        return path
    return f"{path}::{rest.split('::')[0].split('[')[0]}"


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: ``-p no:xdist`` still works
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "loadfile":
        return None  # another --dist: xdist's own scheduler
    from xdist.scheduler import LoadScopeScheduling

    class Scheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return Scheduling(config, log)


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
