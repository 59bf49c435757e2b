"""Where the test services live, the names a run uses on them, and the rule for when they are
absent.

Every name a run creates on a shared server carries ``RUN_ID`` (xdist worker, pid and random
hex), so two runs on one machine or one server (a developer's and CI's, two worktrees) never
touch each other's data.

- PostgreSQL: the server of ``WXRECON_TEST_POSTGRES_URL`` (default 127.0.0.1:5432, user
  postgres). Each database is named ``unique_name(prefix)`` and dropped by its fixture.
- Redis: Redis has only 16 numbered databases, too few to be unique per run, so each session
  (each xdist worker) starts its own ``redis-server`` on a free loopback port, with no
  persistence, and stops it at the end; tests take distinct database numbers on it
  (``redis_db``). When ``WXRECON_TEST_REDIS_URL`` is set, that server is used instead, as is:
  the caller then owns the isolation (one run per server). Without either, a Redis test skips.

A test that needs a service skips only when the service truly is not there, and fails instead
when ``WXRECON_REQUIRE_SERVICES=1`` (CI sets it), so CI never goes green on a silently skipped
suite.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import shutil
import socket
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pytest

POSTGRES_URL = os.environ.get(
    "WXRECON_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
EXTERNAL_REDIS_URL = os.environ.get("WXRECON_TEST_REDIS_URL")
REDIS_DATABASES = 16  # redis-server's default ``databases``

# The whole suite runs with ledger numbers sealed at rest: the process environment (conftest),
# the CLI fixture and every child process get these test-only keys.
SEALING_ENV = {
    "WXRECON_DATA_KEYS": "test1:" + base64.b64encode(bytes(range(100, 132))).decode(),
    "WXRECON_LOOKUP_KEY": base64.b64encode(bytes(range(132, 164))).decode(),
}

WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")
# Each xdist worker is its own process and imports this module itself: one id per session.
RUN_ID = f"{WORKER}_{os.getpid()}_{secrets.token_hex(3)}"


def unique_name(prefix: str) -> str:
    """A database name no other run or test uses: ``prefix``, the run id and random hex
    (lower case, digits and ``_`` only, well under PostgreSQL's 63 characters)."""
    return f"{prefix}_{RUN_ID}_{uuid.uuid4().hex[:6]}".lower()


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


def absent(message: str) -> None:
    if services_required():
        pytest.fail(f"{message} and WXRECON_REQUIRE_SERVICES is set")
    pytest.skip(message)


def need(name: str, url: str, default_port: int) -> str:
    if not _answers(url, default_port):
        absent(f"{name} does not answer at {url}")
    return url


def need_postgres() -> str:
    return need("PostgreSQL", POSTGRES_URL, 5432)


def redis_database_url(server_url: str, number: int) -> str:
    """The URL of database ``number`` on the server of ``server_url``."""
    return f"{server_url.rstrip('/').rsplit('/', 1)[0]}/{number}"


class PrivateRedis:
    """This session's own ``redis-server`` (started on first use, stopped at session end)."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.url: str | None = None
        self._sup = None
        self._next = 1  # database 0 is the session-wide ``redis_url``

    def start(self) -> str:
        if self.url is not None:
            return self.url
        if EXTERNAL_REDIS_URL:
            self.url = need("Redis", EXTERNAL_REDIS_URL, 6379)
            return self.url
        if shutil.which("redis-server") is None:
            absent("redis-server is not on the PATH (or set WXRECON_TEST_REDIS_URL)")
        from benchmarks.harness import RedisServer  # celery and psycopg: only when needed
        from wxrecon.demo.procs import Supervisor

        self._sup = Supervisor()
        try:
            server = RedisServer(self._sup, self.work).start()
        except TimeoutError:  # the free port was taken in between: once more, on another
            server = RedisServer(self._sup, self.work).start()
        self.url = server.url
        return self.url

    def next_database(self) -> str:
        """A database number no other test of this session used (cycling after 15)."""
        number = self._next
        self._next = self._next % (REDIS_DATABASES - 1) + 1
        return redis_database_url(self.start(), number)

    def stop(self) -> None:
        if self._sup is not None:
            self._sup.stop_all()


class PrivatePostgres:
    """A PostgreSQL cluster of its own (initdb in a temporary directory, a free loopback port),
    for a test that stops and starts the server: stopping the machine's shared server would
    break every other run using it. Run as the current user, or as ``postgres`` when that is
    root (initdb refuses root). ``stop()`` is a crash (immediate shutdown); ``start()`` again
    recovers. ``close()`` stops it and removes the directory."""

    def __init__(self) -> None:
        import glob
        import tempfile

        from wxrecon.demo.env import free_port

        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        bindir = Path(found[-1]).parent if found else None
        if bindir is None and shutil.which("initdb") is not None:
            bindir = Path(shutil.which("initdb") or "").parent
        if bindir is None:
            absent("initdb is not installed (/usr/lib/postgresql/*/bin)")
        self.bin = bindir or Path()
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="wxrecon-pg-"))
        self.data = self.dir / "data"
        self._as: list[str] = []
        if os.geteuid() == 0:
            import pwd

            user = pwd.getpwnam("postgres")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        )

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        import subprocess

        done = subprocess.run(
            [*self._as, str(self.bin / tool), *args], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")

    def start(self) -> PrivatePostgres:
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c full_page_writes=off -c max_connections=200"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            f"{self.dir}/pg.log",
            "-w",
            "-t",
            "60",
            "start",
        )
        return self

    def stop(self) -> None:
        """A crash: every connection dropped, nothing written on the way down."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):  # already stopped
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)
