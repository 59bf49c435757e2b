"""A worker (re)started while the database is down waits for it instead of exiting (the chaos
suite restarts workers through a two-minute PostgreSQL outage); a wrong schema still refuses
at once."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from wxrecon.demo.env import free_port
from wxrecon.domain.errors import SchemaError
from wxrecon.store.db import DatabaseDown, check_schema
from wxrecon.worker import _wait_for_database


def test_a_database_that_does_not_answer_is_waited_for_then_refused() -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing"
    with pytest.raises(DatabaseDown):
        check_schema(url)
    calls: list[float] = []
    real = check_schema

    def counting(u: str) -> None:
        calls.append(time.monotonic())
        real(u)

    import wxrecon.store.db as dbmod

    original = dbmod.check_schema
    dbmod.check_schema = counting
    try:
        with pytest.raises(DatabaseDown):
            _wait_for_database(url, wait=2.0)
    finally:
        dbmod.check_schema = original
    assert len(calls) >= 2  # it asked again before giving up


def test_a_missing_schema_is_refused_without_waiting(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    done: list[BaseException] = []

    def run() -> None:
        try:
            _wait_for_database(url, wait=600.0)
        except SchemaError as exc:
            done.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(30)
    assert done and not isinstance(done[0], DatabaseDown), done
    assert "wxrecon db upgrade" in str(done[0])


def test_warm_shutdown_signals_the_intake_pump_at_close_and_waits_for_it_at_stop() -> None:
    """Celery closes every step before stopping any: the pump is told at close, so it winds
    down beside the pool; stop then only waits (honcho kills a worker 5 s after SIGTERM)."""
    import subprocess
    import sys
    from types import SimpleNamespace

    from wxrecon.worker import IntakePumpStep

    step = IntakePumpStep.__new__(IntakePumpStep)  # no worker blueprint needed for this
    step.watch = SimpleNamespace(cancel=lambda: None)
    code = "import signal,sys,time; signal.signal(15, lambda *a: sys.exit(3)); time.sleep(60)"
    step.proc = subprocess.Popen([sys.executable, "-c", code])
    proc = step.proc
    time.sleep(0.5)  # its handler is installed
    step.close(None)
    assert step.watch is None and step.proc is proc  # told, not waited for
    assert proc.wait(10) == 3  # SIGTERM, not a kill
    step.stop(None)
    assert step.proc is None


def test_a_pool_process_freezes_its_heap_before_the_fork_and_after_its_first_tasks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What is alive then stays alive: frozen, no later collection scans it (a full one of a
    warm pool process took 180-330 ms, long enough to bunch requests past the limiter)."""
    import gc
    import itertools

    from wxrecon import worker

    monkeypatch.setattr(worker, "_tasks_done", itertools.count(1))
    gc.unfreeze()
    try:
        worker._freeze_before_fork()
        assert gc.get_freeze_count() > 0
        frozen_at = []
        for task in range(1, 101):
            gc.unfreeze()
            worker._freeze_once_warm()
            if gc.get_freeze_count():
                frozen_at.append(task)
        assert frozen_at == [1, 10, 100]
    finally:
        gc.unfreeze()
