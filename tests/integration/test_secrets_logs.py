"""Secrets stay out of logs: the redaction table, Celery's own lines, and a real worker that
is sent positional, keyword, unregistered and invalid messages carrying a ledger number."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures_keys import KeySet
from wxrecon.config import Settings
from wxrecon.logs import WITHHELD, RedactionFilter, redact, safe_reprs
from wxrecon.store.db import upgrade
from wxrecon.worker import INTAKE_QUEUE, make_app

BAL = "6222021234567890123"
MASKED = "6222…0123"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"bal_account_no={BAL}&x=1", f"bal_account_no={MASKED}&x=1"),
        (f'{{"bal_account_no": "{BAL}", "a": 1}}', f'{{"bal_account_no": "{MASKED}", "a": 1}}'),
        (f"{{'bal_account_no': '{BAL}', 'a': 1}}", f"{{'bal_account_no': '{MASKED}', 'a': 1}}"),
        (f"bal_account_no: {BAL}", f"bal_account_no: {MASKED}"),
        # A quoted value runs to its closing quote: spaces and commas included.
        ('"bal_account_no": "6222 0212, 3456 7890"', '"bal_account_no": "6222…7890"'),
        ("'bal_account_no': '6222,0212,3456'", "'bal_account_no': '6222…3456'"),
        # A bare value runs on across commas followed by digits, not into the next field.
        ("bal_account_no=6222,0212,3456, mchid=1900", "bal_account_no=6222…3456, mchid=1900"),
        # An escaped quote inside the value does not end it.
        (f'"bal_account_no": "a\\"b{BAL}"', '"bal_account_no": "a\\"b…0123"'),
        # The pair inside a JSON string (a message body logged as a JSON field).
        (f'{{\\"bal_account_no\\": \\"{BAL}\\"}}', f'{{\\"bal_account_no\\": \\"{MASKED}\\"}}'),
        ("bal_account_no: does not decrypt", "bal_account_no: does not decrypt"),
        ("reduction R1 amount=100", "reduction R1 amount=100"),
    ],
)
def test_redaction_table(text: str, expected: str) -> None:
    assert redact(text) == expected


def _record(name: str, msg: str, args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord(name, logging.INFO, __file__, 1, msg, None, None)
    record.args = args  # type: ignore[assignment]
    record.__dict__.update(extra)
    return record


def test_celery_trace_context_withholds_argument_reprs() -> None:
    context = {
        "id": "t1",
        "name": "wxrecon.submit_special_reduction",
        "args": f"('1900000109', '{BAL}')",
        "kwargs": f"{{'bal_account_no': '{BAL}'}}",
        "eta": None,
    }
    record = _record(
        "celery.worker.strategy", "Task %(name)s[%(id)s] received", context, data=context
    )
    RedactionFilter().filter(record)
    data = record.__dict__["data"]
    assert data["args"] == data["kwargs"] == WITHHELD and BAL not in str(data)
    assert record.getMessage() == "Task wxrecon.submit_special_reduction[t1] received"


def test_celery_consumer_body_dump_is_withheld() -> None:
    record = _record(
        "celery.worker.consumer.consumer",
        "Received unregistered task of type %s.\nbody:\n%s\nheaders:\n%s",
        (KeyError("wxrecon.nope"), f"([{BAL!r}], {{}}, {{}})", {"argsrepr": repr([BAL])}),
    )
    RedactionFilter().filter(record)
    message = record.getMessage()
    assert "wxrecon.nope" in message and BAL not in message and WITHHELD in message


def test_safe_reprs() -> None:
    reprs = safe_reprs(["1900", BAL], {"bal_account_no": BAL, "amount": 1})
    assert reprs["argsrepr"] == "(2 positional withheld)"
    assert BAL not in reprs["kwargsrepr"] and MASKED in reprs["kwargsrepr"]
    assert safe_reprs((), None) == {"argsrepr": "()", "kwargsrepr": "{}"}


# -- a real worker ----------------------------------------------------------------------------


def _wait_for(path: Path, needles: list[str], proc: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + 60
    while True:
        text = path.read_text(errors="replace") if path.exists() else ""
        if all(n in text for n in needles):
            return text
        assert proc.poll() is None, f"worker exited\n{text[-3000:]}"
        assert time.monotonic() < deadline, f"missing {needles}\n{text[-3000:]}"
        time.sleep(0.2)


@pytest.mark.parametrize("json_lines", [True, False], ids=["json", "plain"])
def test_worker_logs_never_carry_the_ledger_number(
    tmp_path: Path, keys: KeySet, json_lines: bool, redis_db: str
) -> None:
    db_path = tmp_path / "w.db"
    upgrade(f"sqlite:///{db_path}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WXRECON_")}
    env.update(keys.env())
    env.update(
        {
            "WXRECON_DATABASE_URL": f"sqlite:///{db_path}",
            "WXRECON_DATA_DIR": str(tmp_path / "data"),
            # Redis, not filesystem://: kombu's filesystem transport can read a message file
            # before its sender finished writing it, and the worker then dies (issue 13).
            "WXRECON_BROKER_URL": redis_db,
            "WXRECON_LOG_LEVEL": "DEBUG",
            "WXRECON_LOG_JSON": "true" if json_lines else "false",
            "PYTHONUNBUFFERED": "1",
        }
    )
    settings = Settings.model_validate(
        {"broker_url": redis_db, "data_dir": env["WXRECON_DATA_DIR"]}
    )
    sender = make_app(settings)  # a business app on the same broker, with Celery's default reprs
    good = {
        "mchid": "1900000109",
        "bal_account_no": BAL,
        "out_request_no": "LOG1",
        "reduction_type": "NOT_A_TYPE",  # refused by validation: nothing reaches the provider
        "amount": 700,
    }

    def publish(body: object) -> None:
        with sender.producer_or_acquire() as producer:
            producer.publish(
                body, exchange=INTAKE_QUEUE, routing_key=INTAKE_QUEUE, serializer="json"
            )

    name = "wxrecon.submit_special_reduction"
    # Each message, and the line that shows the worker has handled it.
    messages = [
        (lambda: sender.send_task(name, args=list(good.values())), "positional arguments are"),
        (lambda: sender.send_task(name, kwargs=good), "reduction_type must be"),
        (lambda: sender.send_task(name, kwargs={**good, "x": BAL}), "unknown argument(s): x"),
        (
            lambda: sender.send_task("wxrecon.nope", args=[BAL], kwargs=good, queue=INTAKE_QUEUE),
            "unregistered task",
        ),
        # A hybrid-protocol message whose kwargs are not a mapping.
        (
            lambda: publish({"task": name, "id": "i1", "args": [BAL], "kwargs": f"b {BAL}"}),
            "invalid task message",
        ),
        (lambda: publish({"bal": BAL}), "unknown message"),  # no task at all
    ]
    log_path = tmp_path / "worker.log"
    command = [sys.executable, "-m", "celery", "-A", "wxrecon.worker", "worker", "-P", "solo"]
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            # Both queues: the intake pump reads wxrecon.intake and hands what is not an
            # intake (the unregistered and invalid messages) to Celery on wxrecon.poll.
            [*command, "--without-gossip", "--without-mingle", "-l", "DEBUG"],
            env=env,
            cwd=tmp_path,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_for(log_path, ["ready"], proc)
            for send, handled in messages:
                send()
                _wait_for(log_path, [handled], proc)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    text = log_path.read_text(errors="replace")
    assert BAL not in text, text
    assert "received" in text  # Celery's own lines were there, redacted
