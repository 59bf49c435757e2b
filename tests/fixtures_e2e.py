"""Real processes for the end-to-end tests: started in their own sessions, always stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


class Processes:
    """Child processes in their own sessions; all of them are stopped, whatever happens."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def start(self, name: str, args: list[str], env: dict[str, str], cwd: Path) -> None:
        log = cwd / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                args, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.procs.append((name, proc, log))

    def children(self, name: str) -> list[int]:
        """Child pids of the process we started as ``name``: Celery's pool processes (a
        worker's intake pump is a child too, and not one of them)."""
        [pid] = [proc.pid for n, proc, _ in self.procs if n == name]
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) != pid:  # field 4 of /proc/PID/stat: the parent pid
                continue
            try:
                command = (stat.parent / "cmdline").read_bytes()
            except OSError:
                continue
            if b"wxrecon.intake_pump" not in command:
                found.append(int(stat.parent.name))
        return sorted(found)

    def check_alive(self) -> None:
        for name, proc, log in self.procs:
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode}:\n{tail(log)}")

    def kill9(self, name: str) -> None:
        """SIGKILL the whole process group of ``name`` (a worker with its pool and pump), as
        the OOM killer or a lost machine would; it is forgotten, so start it again."""
        [entry] = [e for e in self.procs if e[0] == name]
        os.killpg(entry[1].pid, signal.SIGKILL)
        entry[1].wait(10)
        self.procs.remove(entry)

    def stop(self) -> None:
        for _, proc, _ in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)  # the process group we created for it
        deadline = time.monotonic() + 15
        for _, proc, _ in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)

    def logs(self) -> str:
        return "\n".join(f"--- {name} ---\n{tail(log)}" for name, _, log in self.procs)


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@pytest.fixture
def processes() -> Iterator[Processes]:
    procs = Processes()
    try:
        yield procs
    finally:
        procs.stop()


@pytest.fixture
def broker_url(redis_db: str) -> str:
    return redis_db  # this test's own database on the session's private Redis
