"""The Celery layer: configuration for money, task names and JSON kwargs, thin tasks over the
domain, and a worker that refuses to start on an old schema."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from tests.fixtures_db import FakeProvider, reduction
from tests.services import SEALING_ENV
from wxrecon import metrics, runtime, tasks
from wxrecon.config import Settings
from wxrecon.domain.decisions import Policy
from wxrecon.domain.states import RState
from wxrecon.store.db import Database
from wxrecon.store.models import CompensationBill, SpecialReduction
from wxrecon.wechatpay import errors
from wxrecon.worker import (
    DUE_QUEUE,
    INTAKE_QUEUE,
    POLL_QUEUE,
    SWEEP_QUEUE,
    app,
    celery_config,
    time_limits,
)

GOOD = {
    "mchid": "1900000109",
    "bal_account_no": "6222000011112222",
    "out_request_no": "T1",
    "reduction_type": "FINANCIAL_PENALTY",
    "amount": 700,
}


# -- configuration -------------------------------------------------------------------------------


def test_money_safe_celery_configuration(tmp_path: Path) -> None:
    settings = Settings.model_validate(
        {"broker_url": "redis://127.0.0.1:6379/9", "data_dir": tmp_path, "claim_lease": 120}
    )
    conf = celery_config(settings)
    assert conf["task_serializer"] == "json" and conf["accept_content"] == ["json"]
    assert conf["task_acks_late"] is True and conf["task_reject_on_worker_lost"] is True
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["task_ignore_result"] is True and conf["result_backend"] is None
    soft, hard = time_limits(settings)
    visibility = conf["broker_transport_options"]["visibility_timeout"]
    assert conf["task_soft_time_limit"] == soft < hard == conf["task_time_limit"]
    assert hard < settings.claim_lease < visibility
    assert {q.name for q in conf["task_queues"]} == {
        INTAKE_QUEUE,
        POLL_QUEUE,
        DUE_QUEUE,
        SWEEP_QUEUE,
    }
    # Each queue has its own exchange and key, so no publish can land in both.
    assert {(q.name, q.exchange.name, q.routing_key) for q in conf["task_queues"]} == {
        (INTAKE_QUEUE, INTAKE_QUEUE, INTAKE_QUEUE),
        (POLL_QUEUE, POLL_QUEUE, POLL_QUEUE),
        (DUE_QUEUE, DUE_QUEUE, DUE_QUEUE),
        (SWEEP_QUEUE, SWEEP_QUEUE, SWEEP_QUEUE),
    }
    beat = conf["beat_schedule"]
    assert {e["task"] for e in beat.values()} == {
        "wxrecon.sweep_reductions",
        "wxrecon.sweep_bills",
        "wxrecon.snapshot_ledgers",
    }
    sweeps = [e for e in beat.values() if e["task"].startswith("wxrecon.sweep_")]
    assert all(e["schedule"] == settings.sweep_interval for e in sweeps)
    # The beat's tasks have a queue of their own: a bulk intake's chunks never hold them.
    assert {e["options"]["queue"] for e in beat.values()} == {SWEEP_QUEUE}
    [snapshots] = [e for e in beat.values() if e["task"] == "wxrecon.snapshot_ledgers"]
    assert snapshots["schedule"] == settings.ledger_snapshot_interval == 900.0
    assert snapshots["options"]["queue"] == SWEEP_QUEUE


def test_filesystem_broker_gets_its_folders(tmp_path: Path) -> None:
    conf = celery_config(
        Settings.model_validate({"broker_url": "filesystem://", "data_dir": tmp_path / "d"})
    )
    options = conf["broker_transport_options"]
    assert Path(options["data_folder_in"]).is_dir() and Path(options["data_folder_out"]).is_dir()


def test_public_task_names_and_routes() -> None:
    names = {n for n in app.tasks if n.startswith("wxrecon.")}
    assert names == {
        "wxrecon.submit_special_reduction",
        "wxrecon.track_compensation_bill",
        "wxrecon.poll_reduction",
        "wxrecon.poll_bill",
        "wxrecon.poll_reductions",
        "wxrecon.poll_bills",
        "wxrecon.sweep_reductions",
        "wxrecon.sweep_bills",
        "wxrecon.relay_outcomes",
        "wxrecon.snapshot_ledgers",
    }
    routes = app.conf.task_routes
    assert routes["wxrecon.relay_outcomes"]["queue"] == "wxrecon.outcomes"
    assert routes["wxrecon.submit_special_reduction"]["queue"] == INTAKE_QUEUE
    assert routes["wxrecon.track_compensation_bill"]["queue"] == INTAKE_QUEUE
    assert routes["wxrecon.poll_reduction"]["queue"] == POLL_QUEUE
    assert routes["wxrecon.sweep_reductions"]["queue"] == SWEEP_QUEUE
    # Only a database that does not answer is retried.
    assert getattr(tasks.submit_special_reduction, "autoretry_for", None) == tasks.DB_DOWN
    assert OperationalError in tasks.DB_DOWN
    # Intake never gives up on the database (a dropped intake is an order lost).
    for task in (tasks.submit_special_reduction, tasks.track_compensation_bill):
        assert task.max_retries is None and task.name in tasks.INTAKE_TASKS
    assert tasks.poll_reduction.max_retries == 30


def test_intake_whose_retry_cannot_be_published_is_requeued_not_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Database down and broker restarting: Celery's retry cannot publish and rejects the
    message without requeue, i.e. drops the order; an intake task puts it back instead."""
    from celery.exceptions import Reject
    from kombu.exceptions import OperationalError as BrokerDown

    def broker_down(*_: Any, **__: Any) -> None:
        raise BrokerDown("connection refused")

    for task in (tasks.submit_special_reduction, tasks.track_compensation_bill):
        monkeypatch.setattr(tasks.IntakeTask, "apply_async", broker_down)
        task.push_request(id="m-1", called_directly=False, retries=0, kwargs={}, args=[])
        try:
            with pytest.raises(Reject) as caught:
                task.retry(exc=OperationalError("SELECT 1", {}, Exception("db down")))
        finally:
            task.pop_request()
        assert caught.value.requeue is True, task.name
    # Other tasks keep Celery's rule (a poll's order is in the database; its lease brings it back).
    assert not isinstance(tasks.poll_reduction, tasks.IntakeTask)


# -- tasks over the domain -----------------------------------------------------------------------


def count(db: Database, model: Any = SpecialReduction) -> int:
    with db.read() as session:
        return int(session.execute(select(func.count()).select_from(model)).scalar_one())


def test_submit_task_writes_then_submits(installed: tuple[Database, FakeProvider]) -> None:
    db, provider = installed
    provider.submit_answers.append(reduction("T1", "PROCESSING"))
    result = tasks.submit_special_reduction.apply(kwargs=GOOD, task_id="m-1").get()
    assert result["created"] is True and result["state"] == RState.PROCESSING
    assert [r.out_request_no for r in provider.submits] == ["T1"]
    # The same call again (another message): the same order, nothing sent.
    again = tasks.submit_special_reduction.apply(kwargs=GOOD, task_id="m-2").get()
    assert again["id"] == result["id"] and again["created"] is False
    assert len(provider.submits) == 1 and count(db) == 1


def test_redelivered_intake_message_resumes_its_own_order(
    installed: tuple[Database, FakeProvider],
) -> None:
    db, provider = installed
    provider.submit_answers.append(RuntimeError("worker killed before sending"))
    with pytest.raises(RuntimeError):
        tasks.submit_special_reduction.apply(kwargs=GOOD, task_id="m-9", throw=True).get()
    assert count(db) == 1
    # The broker redelivers the same message (same task id): it still owns the claim, and
    # as the POST may have gone out, it queries before anything else.
    provider.query_answers.append(reduction("T1", "SUCCESS"))
    result = tasks.submit_special_reduction.apply(kwargs=GOOD, task_id="m-9").get()
    assert result["created"] is False and result["state"] == RState.SUCCESS
    assert len(provider.submits) == 1 and len(provider.queries) == 1
    # Another message for the same order does not own it.
    other = tasks.submit_special_reduction.apply(kwargs=GOOD, task_id="m-10").get()
    assert other["state"] == RState.SUCCESS and len(provider.queries) == 1


@pytest.mark.parametrize(
    "bad",
    [
        {**GOOD, "amount": "700"},
        {**GOOD, "amount": 7.5},
        {**GOOD, "mchid": None},
        {**GOOD, "reduction_type": "REFUND"},
        {k: v for k, v in GOOD.items() if k != "bal_account_no"},
        {**GOOD, "amount_fen": 700},
    ],
)
def test_invalid_task_input_is_refused_once_and_writes_nothing(
    installed: tuple[Database, FakeProvider], bad: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    db, provider = installed
    result = tasks.submit_special_reduction.apply(kwargs=bad).get()
    assert "error" in result and "\n" not in result["error"]
    assert count(db) == 0 and provider.submits == []
    refused = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 1
    assert "6222000011112222" not in caplog.text


def test_conflicting_task_is_refused(installed: tuple[Database, FakeProvider]) -> None:
    db, provider = installed
    provider.submit_answers.append(reduction("T1", "PROCESSING"))
    tasks.submit_special_reduction.apply(kwargs=GOOD).get()
    result = tasks.submit_special_reduction.apply(kwargs={**GOOD, "amount": 701}).get()
    assert "amount" in result["error"]
    with db.read() as session:
        assert session.execute(select(SpecialReduction.amount)).scalar_one() == 700


def test_bill_task_tracks_and_queries(installed: tuple[Database, FakeProvider]) -> None:
    from tests.fixtures_db import bill

    db, provider = installed
    provider.bill_answers.append(bill("BT1", "ACCEPTED"))
    result = tasks.track_compensation_bill.apply(kwargs={"out_bill_no": "BT1"}).get()
    assert result["state"] == "ACCEPTED" and count(db, CompensationBill) == 1
    bad = tasks.track_compensation_bill.apply(kwargs={"out_bill_no": "no spaces"}).get()
    assert "error" in bad and count(db, CompensationBill) == 1
    extra = tasks.track_compensation_bill.apply(kwargs={"out_bill_no": "BT2", "x": 1}).get()
    assert "unknown argument" in extra["error"] and count(db, CompensationBill) == 1


@pytest.mark.parametrize(("id_", "token"), [("1", "t"), (1, None), (True, "t"), (1, "")])
def test_poll_task_with_bad_arguments_is_dropped(
    installed: tuple[Database, FakeProvider], id_: Any, token: Any
) -> None:
    assert tasks.poll_reduction.apply(kwargs={"id": id_, "token": token}).get() is None


def test_sweep_task_claims_and_dispatches_polls(installed: tuple[Database, FakeProvider]) -> None:
    db, provider = installed
    provider.submit_answers.append(errors.OutcomeUnknown(errors.NetworkError("timeout")))
    tasks.submit_special_reduction.apply(kwargs=GOOD).get()
    with db.transaction() as session:  # make it due now
        row = session.execute(select(SpecialReduction)).scalar_one()
        row.next_poll_at = row.created_at
    provider.query_answers.append(reduction("T1", "SUCCESS"))
    app.conf.task_always_eager = True
    metrics.mark_sweep("reduction", 0.0)
    try:
        assert tasks.sweep_reductions.apply().get() == 1
    finally:
        app.conf.task_always_eager = False
    # the sweep stamped its kind's last-sweep gauge (the "sweeps not running" alert reads it)
    assert metrics.LAST_SWEEP.labels("reduction")._value.get() > 0
    with db.read() as session:
        assert session.execute(select(SpecialReduction.state)).scalar_one() == RState.SUCCESS


@pytest.mark.parametrize(
    ("ids", "token"),
    [([], "t"), ("1,2", "t"), ([1, "2"], "t"), ([True], "t"), ([1], ""), (list(range(1001)), "t")],
)
def test_poll_chunk_with_bad_arguments_is_dropped(
    installed: tuple[Database, FakeProvider], ids: Any, token: Any
) -> None:
    assert tasks.poll_reductions.apply(kwargs={"ids": ids, "token": token}).get() == 0


def test_a_booked_chunk_hands_back_without_booking_again(
    installed: tuple[Database, FakeProvider], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A booked group's orders that still find their grant taken go back due when it may be
    free (no limiter: not to the end of the line); any other chunk's are booked. Either way
    no turn is booked, nor a message due, more than a lease ahead."""
    given: list[Any] = []

    def hand_back(task: Any, token: str, limiter: Any = None, horizon: float = 0) -> Any:
        given.append((limiter, horizon))
        return lambda waiting, unsent, hold: []

    monkeypatch.setattr(tasks, "_hand_back", hand_back)
    for booked in (True, False):
        tasks.poll_reductions.apply(kwargs={"ids": [99], "token": "t", "booked": booked}).get()
    rt = runtime.get()
    assert given == [(None, rt.settings.claim_lease), (rt.limiter, rt.settings.claim_lease)]
    assert rt.limiter is not None


def test_dispatcher_chunks_by_size_and_token() -> None:
    from wxrecon.engine.sweep import Claim

    sent: list[dict[str, Any]] = []

    queues: set[str] = set()

    class FakeTask:
        def apply_async(self, *, kwargs: dict[str, Any], queue: str, **_: Any) -> None:
            sent.append(kwargs)
            queues.add(queue)

    dispatch = tasks._Dispatcher(FakeTask(), 3, producer=None)  # type: ignore[arg-type]
    for i in range(7):
        dispatch(Claim(i, "a"))
    dispatch(Claim(7, "b"))
    dispatch.flush()
    # A sweep's chunks go to a queue of their own, never behind a bulk import's polls.
    assert queues == {DUE_QUEUE}
    assert sent == [
        {"ids": [0, 1, 2], "token": "a"},
        {"ids": [3, 4, 5], "token": "a"},
        {"ids": [6], "token": "a"},
        {"ids": [7], "token": "b"},
    ]


def test_one_failing_order_does_not_stop_its_chunk(
    installed: tuple[Database, FakeProvider],
) -> None:
    db, provider = installed
    for no in ("C1", "C2"):
        provider.submit_answers.append(errors.OutcomeUnknown(errors.NetworkError("timeout")))
        tasks.submit_special_reduction.apply(kwargs={**GOOD, "out_request_no": no}).get()
    with db.transaction() as session:
        for row in session.execute(select(SpecialReduction)).scalars():
            row.next_poll_at = row.created_at
    provider.query_answers.extend([RuntimeError("db hiccup"), reduction("C2", "SUCCESS")])
    app.conf.task_always_eager = True
    try:
        assert tasks.sweep_reductions.apply().get() == 2
    finally:
        app.conf.task_always_eager = False
    with db.read() as session:
        states = dict(
            session.execute(select(SpecialReduction.out_request_no, SpecialReduction.state)).all()
        )
    assert states == {"C1": RState.SUBMITTED, "C2": RState.SUCCESS}


# -- the worker refuses an old schema ------------------------------------------------------------


def test_worker_refuses_to_start_without_schema(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WXRECON_")}
    env.update(
        {
            "WXRECON_DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}",
            "WXRECON_DATA_DIR": str(tmp_path / "data"),
            "WXRECON_BROKER_URL": "filesystem://",
            **SEALING_ENV,
        }
    )
    proc = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "wxrecon.worker", "worker", "-c", "1", "-P", "solo"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "wxrecon db upgrade" in proc.stdout + proc.stderr


def test_worker_refuses_to_start_without_sealing_keys(sqlite_url: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WXRECON_")}
    env.update(
        {
            "WXRECON_DATABASE_URL": sqlite_url,
            "WXRECON_DATA_DIR": str(tmp_path / "data"),
            "WXRECON_BROKER_URL": "filesystem://",
            "WXRECON_LOOKUP_KEY": SEALING_ENV["WXRECON_LOOKUP_KEY"],
        }
    )
    proc = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "wxrecon.worker", "worker", "-c", "1", "-P", "solo"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in output
    assert "refuses to start: WXRECON_DATA_KEYS and WXRECON_LOOKUP_KEY must both be set" in output
    assert SEALING_ENV["WXRECON_LOOKUP_KEY"] not in output


# -- the per-process runtime ---------------------------------------------------------------------


def test_runtime_client_is_rate_limited_and_observed(
    monkeypatch: pytest.MonkeyPatch, sim_dir: Any
) -> None:
    from wxrecon import metrics
    from wxrecon.wechatpay.client import Endpoint

    for key, value in sim_dir.client_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("WXRECON_RATE_LIMIT_PER_SECOND", "1")
    monkeypatch.setenv("WXRECON_RATE_LIMIT_MAX_WAIT", "0")
    monkeypatch.setenv("WXRECON_BROKER_URL", "filesystem://")  # an in-process bucket
    client = runtime.build_client(Settings())
    try:
        observer = client.observer  # type: ignore[attr-defined]
        assert observer.func is metrics.observe_provider_request
        assert observer.keywords == {"caller": "default"}
        hook = client.before_request  # type: ignore[attr-defined]
        hook(Endpoint.QUERY_REDUCTION, "1900000109")
        with pytest.raises(errors.Throttled):
            hook(Endpoint.QUERY_REDUCTION, "1900000109")
        hook(Endpoint.QUERY_REDUCTION, "1900000110")  # another target merchant, another bucket
    finally:
        client.close()  # type: ignore[attr-defined]


def test_runtime_is_dropped_in_a_forked_child(tmp_path: Path) -> None:
    settings = Settings.model_validate({"database_url": f"sqlite:///{tmp_path}/x.db"})
    runtime.install(runtime.Runtime(settings))
    try:
        pid = os.fork()
        if pid == 0:  # the child: no inherited pools or connections
            os._exit(0 if runtime._runtime is None else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert runtime._runtime is not None  # the parent keeps its own
    finally:
        runtime.install(None)


def test_durations_and_reentry_grace_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WXRECON_REENTRY_GRACE", "2m")
    monkeypatch.setenv("WXRECON_SWEEP_INTERVAL", "500ms")
    settings = Settings()
    assert settings.reentry_grace == 120.0
    assert settings.sweep_interval == 0.5
    assert Policy.of(settings).grace == 120.0
