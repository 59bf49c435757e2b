"""Child processes of the demo: started in their own process groups, always reaped.

Each child (simulator, worker, beat) runs in a new session so that Celery's prefork children
belong to its group. Stopping sends SIGTERM to every group at once, waits for all of them
together (a short grace after Ctrl-C, a longer one after a normal end), then SIGKILLs what is
left. ``Supervisor`` is a context manager and also stops everything on SIGTERM/SIGHUP, so
neither Ctrl-C, an error nor a kill of the demo leaves a process behind; a second Ctrl-C
while it stops them is ignored rather than leaving them half-stopped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class ChildDied(RuntimeError):
    pass


INTERRUPT_GRACE = 1.0  # seconds the children get after Ctrl-C before SIGKILL (the demo only)


INTERRUPTS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Ctrl-C (and the SIGTERM or SIGHUP the supervisor turns into one) wait for the block
    to end, then interrupt: a database call torn by KeyboardInterrupt makes SQLAlchemy log a
    traceback as it closes a cursor on the connection it has just dropped. Keep the block
    to a few milliseconds of I/O."""
    try:
        caught: list[int] = []
        previous = {sig: signal.signal(sig, lambda n, _f: caught.append(n)) for sig in INTERRUPTS}
    except ValueError:  # not the main thread: no signal reaches this code
        yield
        return
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if caught:
        raise KeyboardInterrupt(f"signal {caught[0]}")


class Supervisor:
    def __init__(
        self, stop_timeout: float = 10.0, interrupt_grace: float = INTERRUPT_GRACE
    ) -> None:
        self.children: list[Child] = []
        self.stop_timeout = stop_timeout
        self.interrupt_grace = interrupt_grace
        self.stopped: list[str] = []  # names of the children stopped so far, in order
        self._old_handlers: dict[int, Any] = {}

    def __enter__(self) -> Supervisor:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            with contextlib.suppress(ValueError):  # not the main thread: nothing to install
                self._old_handlers[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        interrupted = exc_type is not None and issubclass(exc_type, KeyboardInterrupt)
        try:
            self.stop_all(self.interrupt_grace if interrupted else self.stop_timeout)
        finally:
            for sig, handler in self._old_handlers.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Unwind through the ``with`` block so every child is stopped.
        raise KeyboardInterrupt(f"signal {signum}")

    def start(
        self, name: str, argv: Sequence[str], *, env: Mapping[str, str], log_path: Path
    ) -> Child:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = log_path.open("ab")
        popen = subprocess.Popen(
            list(argv),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        child = Child(name, popen, log_path, log_file)
        self.children.append(child)
        return child

    def check(self) -> None:
        """Raise ChildDied if any child has exited."""
        for child in self.children:
            if not child.alive():
                tail = child.log_tail(3).replace("\n", " | ")
                raise ChildDied(f"{child.name} exited with code {child.popen.returncode}: {tail}")

    def stop(self, child: Child) -> None:
        _signal_group(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        while time.monotonic() < deadline and _group_alive(child.pid):
            child.popen.poll()
            time.sleep(0.05)
        if _group_alive(child.pid):
            _signal_group(child.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.popen.wait(timeout=5)
        child.log_file.close()

    def stop_all(self, grace: float | None = None) -> None:
        """SIGTERM every child's group at once, wait up to ``grace`` for all, SIGKILL the rest."""
        grace = self.stop_timeout if grace is None else grace
        children, self.children = self.children, []
        try:
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        except ValueError:  # not the main thread
            previous = None
        try:
            for child in reversed(children):  # beat and workers before their simulator
                _signal_group(child.pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and any(_group_alive(c.pid) for c in children):
                for child in children:
                    child.popen.poll()
                time.sleep(0.05)
            for child in children:
                if _group_alive(child.pid):
                    _signal_group(child.pid, signal.SIGKILL)
            for child in children:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.popen.wait(timeout=5)
                child.log_file.close()
                self.stopped.append(child.name)
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _has_live_member(pgid)


def _has_live_member(pgid: int) -> bool:
    """killpg(0) also succeeds for zombies; look for a member that is not one."""
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may contain spaces: split after the last ')'
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False
