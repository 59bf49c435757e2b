"""Real processes for the benchmarks and the chaos suite: a private Redis, a dedicated
PostgreSQL database, the simulator, Celery workers and beat, and /proc accounting.

Process supervision is the demo's :class:`wxrecon.demo.procs.Supervisor` (own process group
per child, always reaped); this module adds what the demo does not need: killing a child with
SIGKILL and restarting it, a Redis server we may restart, and CPU/RSS sampling.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis
from celery import Celery
from sqlalchemy.engine import make_url

from wxrecon.demo.env import free_port
from wxrecon.demo.procs import Child, Supervisor
from wxrecon.store.db import Database, normalize_url, upgrade
from wxrecon.worker import POLL_QUEUE

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def base_env() -> dict[str, str]:
    """This environment without any WXRECON_* setting (children get theirs explicitly)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WXRECON_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def wait_for(check: Callable[[], bool], timeout: float, what: str, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready within {timeout:.0f}s")
        time.sleep(every)


# -- children: stop, kill -9, restart ----------------------------------------------------------


def forget(sup: Supervisor, child: Child) -> None:
    with contextlib.suppress(ValueError):
        sup.children.remove(child)


def stop_child(sup: Supervisor, child: Child) -> None:
    """SIGTERM the child's group (SIGKILL after the supervisor's timeout) and forget it."""
    forget(sup, child)
    sup.stop(child)


def kill9(sup: Supervisor, child: Child) -> None:
    """SIGKILL the child's whole process group at once (a crashed host, not a shutdown)."""
    forget(sup, child)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        child.popen.wait(timeout=10)
    # Prefork children may outlive the parent by a moment; they are in the same group.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and group_pids(child.pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)
        time.sleep(0.05)
    child.log_file.close()


# -- Redis: a private server we may restart ----------------------------------------------------


@dataclass
class RedisServer:
    sup: Supervisor
    work: Path
    port: int = field(default_factory=free_port)
    child: Child | None = None
    starts: int = 0
    # appendonly: every write fsynced to an AOF file, so a restart keeps the queued messages.
    appendonly: bool = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.starts += 1
        self.work.mkdir(parents=True, exist_ok=True)
        argv = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "always",
            "--dir",
            str(self.work),
        ]
        self.child = self.sup.start(
            "redis", argv, env=base_env(), log_path=self.work / f"redis.{self.starts}.log"
        )
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
        try:
            wait_for(lambda: _pings(client), 20, f"redis-server on port {self.port}")
        finally:
            client.close()
        return self

    def restart(self, down_for: float = 0.5) -> None:
        """Kill the server and start it again (every queued message is lost unless
        ``appendonly``)."""
        if self.child is not None:
            kill9(self.sup, self.child)
        time.sleep(down_for)
        self.start()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


# -- PostgreSQL: a dedicated database ----------------------------------------------------------


def _conninfo(url: str, database: str | None = None) -> str:
    u = make_url(normalize_url(url))
    return (
        f"host={u.host or '127.0.0.1'} port={u.port or 5432} user={u.username or 'postgres'}"
        + (f" password={u.password}" if u.password else "")
        + f" dbname={database or u.database or 'postgres'}"
    )


def database_url(server_url: str, name: str) -> str:
    return (
        make_url(normalize_url(server_url)).set(database=name).render_as_string(hide_password=False)
    )


def pg_execute(server_url: str, *statements: str, database: str | None = None) -> list[Any]:
    """Run statements with autocommit; returns the rows of the last one that has any."""
    rows: list[Any] = []
    with psycopg.connect(_conninfo(server_url, database), autocommit=True) as conn:
        for sql in statements:
            cur = conn.execute(sql)
            if cur.description is not None:
                rows = cur.fetchall()
    return rows


def fresh_database(server_url: str, name: str, *, migrate: bool = True) -> str:
    """Drop and re-create database ``name`` on the server of ``server_url``; returns its URL."""
    pg_execute(
        server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", f"CREATE DATABASE {name}"
    )
    url = database_url(server_url, name)
    if migrate:
        upgrade(url)
    return url


def drop_database(server_url: str, name: str) -> None:
    pg_execute(server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def terminate_backends(server_url: str, name: str) -> int:
    """pg_terminate_backend every connection to database ``name``; returns how many."""
    rows = pg_execute(
        server_url,
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
        f"WHERE datname = '{name}' AND pid <> pg_backend_pid()",
    )
    return int(rows[0][0]) if rows else 0


# -- Celery: environment, workers, beat, a producer --------------------------------------------


def vacuum(db: Database) -> None:
    """Clear the dead rows the earlier phases left, and flush their dirty pages, before a
    phase that is compared with one run on a fresh database: otherwise autovacuum and the
    checkpointer would do it during that phase, on its two cores."""
    if db.is_postgresql:
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM (ANALYZE)")
            conn.exec_driver_sql("CHECKPOINT")


def engine_env(
    sim_env: dict[str, str], database: str, broker: str, data_dir: Path, **settings: str
) -> dict[str, str]:
    """The environment of a worker or beat: the simulator's client settings, the database,
    the broker and ``settings`` (names without the WXRECON_ prefix, e.g. CLAIM_LEASE="15")."""
    env = base_env()
    env.update(sim_env)
    env.update(
        {
            "WXRECON_DATABASE_URL": database,
            "WXRECON_BROKER_URL": broker,
            "WXRECON_DATA_DIR": str(data_dir),
        }
    )
    env.update({f"WXRECON_{k.upper()}": str(v) for k, v in settings.items()})
    return env


CELERY = [sys.executable, "-m", "celery", "-A", "wxrecon.worker"]


def start_worker(
    sup: Supervisor,
    name: str,
    env: dict[str, str],
    log_path: Path,
    *,
    concurrency: int = 2,
    queues: str | None = None,
) -> Child:
    child = sup.start(
        name,
        [
            *CELERY,
            "worker",
            *(["-Q", queues] if queues else []),
            "--pool",
            "prefork",
            "--concurrency",
            str(concurrency),
            "--hostname",
            f"{name}@%h",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel",
            "INFO",
        ],
        env=env,
        log_path=log_path,
    )
    return child


def worker_ready(child: Child) -> bool:
    try:
        return " ready." in child.log_path.read_text(errors="replace")
    except OSError:
        return False


def start_beat(sup: Supervisor, env: dict[str, str], log_path: Path, data_dir: Path) -> Child:
    data_dir.mkdir(parents=True, exist_ok=True)
    return sup.start(
        "beat",
        [
            *CELERY,
            "beat",
            "--loglevel",
            "INFO",
            "--schedule",
            str(data_dir / "celerybeat-schedule"),
        ],
        env=env,
        log_path=log_path,
    )


def producer(broker: str) -> tuple[Celery, Callable[[str, dict[str, Any]], None]]:
    """A Celery app that only sends (JSON, by name), and the ``enqueue`` of the intake helper."""
    app = Celery("wxrecon-harness", broker=broker)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        broker_transport_options={"max_retries": 3, "interval_start": 0, "interval_step": 0.5},
    )

    def enqueue(name: str, kwargs: dict[str, Any]) -> None:
        # As intake.default_enqueue: the helpers' polls go to wxrecon.poll (rows exist).
        app.send_task(name, kwargs=kwargs, queue=POLL_QUEUE, retry=False)

    return app, enqueue


# -- /proc accounting --------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # pid (comm) state ppid pgrp ...: comm may hold spaces, split after the last ')'
    return text.rsplit(")", 1)[-1].split()


def group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) members of process group ``pgid``."""
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields and len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            out.append(int(entry.name))
    return out


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU of ``pid`` (its own threads, not its children)."""
    fields = _stat_fields(pid)
    if not fields or len(fields) < 13:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_cpu() -> dict[str, float]:
    """Seconds of CPU the whole machine spent so far (``/proc/stat``): ``busy`` (all but idle
    and iowait), ``steal`` (taken by the hypervisor), and ``postgres`` (its server's
    processes now alive, whoever started them)."""
    try:
        first = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return {}
    jiffies = [int(x) for x in first[:8]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = jiffies
    busy = (user + nice + system + irq + softirq + steal) / CLK_TCK
    postgres = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                comm = (entry / "comm").read_text().strip()
            except OSError:
                continue
            if comm == "postgres":
                postgres += cpu_seconds(int(entry.name)) or 0.0
    return {"busy": busy, "steal": steal / CLK_TCK, "postgres": postgres}


def cpu_from_now(pids: Mapping[str, int]) -> Callable[[], dict[str, float]]:
    """The CPU seconds each named process (its own threads) spends from now on: call the
    result for them."""
    start = {k: cpu_seconds(pid) or 0.0 for k, pid in pids.items()}
    return lambda: {k: (cpu_seconds(pids[k]) or 0.0) - v for k, v in start.items()}


def memory(pid: int) -> tuple[int, int] | None:
    """(VmRSS, VmHWM) of ``pid`` in bytes."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            name, value = line.split(":", 1)
            values[name] = int(value.split()[0]) * 1024
    if "VmRSS" not in values:
        return None
    return values["VmRSS"], values.get("VmHWM", values["VmRSS"])


@dataclass
class Sample:
    at: float  # monotonic
    rss: int  # summed over the sampled processes
    cpu: float  # summed CPU seconds so far (processes that exited keep their last reading)


class ProcSampler:
    """Samples CPU and RSS of the process groups of some children every ``interval`` s."""

    def __init__(self, groups: Callable[[], Iterable[int]], interval: float = 0.5) -> None:
        self.groups = groups
        self.interval = interval
        self.samples: list[Sample] = []
        self.cpu_by_pid: dict[int, float] = {}
        self.hwm_by_pid: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="proc-sampler", daemon=True)

    def start(self) -> ProcSampler:
        self.sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> Sample:
        rss = 0
        for pgid in list(self.groups()):
            for pid in group_pids(pgid):
                cpu = cpu_seconds(pid)
                mem = memory(pid)
                if cpu is not None:
                    self.cpu_by_pid[pid] = cpu
                if mem is not None:
                    rss += mem[0]
                    self.hwm_by_pid[pid] = max(self.hwm_by_pid.get(pid, 0), mem[1])
        s = Sample(time.monotonic(), rss, sum(self.cpu_by_pid.values()))
        self.samples.append(s)
        return s

    @property
    def cpu(self) -> float:
        return sum(self.cpu_by_pid.values())

    @property
    def peak_rss(self) -> int:
        return max((s.rss for s in self.samples), default=0)

    def rss_at(self, moment: float) -> int:
        """The summed RSS of the first sample taken at or after ``moment`` (monotonic)."""
        for s in self.samples:
            if s.at >= moment:
                return s.rss
        return self.samples[-1].rss if self.samples else 0
