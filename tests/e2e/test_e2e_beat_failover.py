"""Two real beats and a worker on one Redis broker: only the lock holder sends sweeps; SIGKILL
it and the standby's sweeps follow, and the worker runs them, within the lock's bound
(WXRECON_BEAT_LOCK_TTL + a third of it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from tests.fixtures_e2e import Processes
from tests.fixtures_sim import make_sim_dir
from wxrecon.beat import LOCK_KEY

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.timeout(180)]

TTL = 2.0
# Takeover bound plus room for a loaded machine to start a tick; not a speed assertion.
BOUND = TTL + TTL / 3 + 10.0
SENT = "Sending due task sweep-reductions"
RAN = "wxrecon.sweep_reductions["  # a worker line: then the task id, "succeeded"


def _wait(what: str, check, processes: Processes, seconds: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {seconds:g}s:\n{processes.logs()}")
        time.sleep(0.1)


def test_standby_beat_takes_over_when_the_active_one_is_killed(
    tmp_path: Path, broker_url: str, processes: Processes
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WXRECON_")}
    # the worker needs merchant keys to start; with no orders it never calls the provider
    env.update(make_sim_dir(tmp_path / "sim").client_env("http://127.0.0.1:9"))
    env.update(
        {
            "WXRECON_BROKER_URL": broker_url,
            "WXRECON_DATABASE_URL": f"sqlite:///{tmp_path / 'wxrecon.db'}",
            "WXRECON_DATA_DIR": str(tmp_path / "data"),
            "WXRECON_SWEEP_INTERVAL": "0.5",
            "WXRECON_BEAT_LOCK_TTL": f"{TTL}",
            "WXRECON_LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        }
    )
    r = redis.Redis.from_url(broker_url)
    wxrecon = [sys.executable, "-m", "wxrecon.cli"]
    subprocess.run([*wxrecon, "db", "upgrade"], env=env, check=True, timeout=120, cwd=tmp_path)
    worker = [sys.executable, "-m", "celery", "-A", "wxrecon.worker", "worker", "-P", "solo"]
    worker += ["-n", "failover@%h", "--without-gossip", "--without-mingle", "-l", "INFO"]
    processes.start("worker", worker, env, tmp_path)
    celery = [sys.executable, "-m", "celery", "-A", "wxrecon.worker", "beat", "-l", "INFO"]
    for name in ("a", "b"):  # each its own schedule file, as on two machines
        work = tmp_path / name
        work.mkdir()
        processes.start(name, [*celery, "--schedule", str(work / "schedule")], env, work)
        if name == "a":  # a first, so we know which one leads
            _wait("beat a holds the lock", lambda: _holder(r) is not None, processes)
    pids = {name: proc.pid for name, proc, _ in processes.procs}
    logs = {name: log for name, _, log in processes.procs}
    assert _holder(r) == pids["a"]
    _wait("beat b stands by", lambda: "beat: standby" in logs["b"].read_text(), processes)

    def swept() -> int:  # sweeps the worker ran
        lines = logs["worker"].read_text().splitlines()
        return sum(RAN in line and "succeeded" in line for line in lines)

    _wait("the worker runs sweeps", lambda: swept() >= 3, processes)
    processes.check_alive()
    assert SENT not in logs["b"].read_text()  # two beats, one sender

    os.killpg(pids["a"], signal.SIGKILL)  # no clean stop: its key must expire
    killed = time.monotonic()
    before = swept()
    _wait("b takes the lock", lambda: _holder(r) == pids["b"], processes, BOUND)
    _wait("sweeps go on", lambda: swept() >= before + 2, processes, BOUND)
    assert time.monotonic() - killed <= BOUND
    assert SENT in logs["b"].read_text()
    assert "beat: active" in logs["b"].read_text()


def _holder(r: redis.Redis) -> int | None:  # type: ignore[type-arg]
    value = r.get(LOCK_KEY)
    return int(value.decode().split(":")[1]) if value else None
