"""Routing by caller: defaults per kind, an explicit caller, an unknown one refused before
anything is written (task, Python helper, CLI, CSV), and an order's caller kept for good."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from tests.fixtures_cli import Cli
from tests.fixtures_db import FakeProvider, bill, reduction
from wxrecon import config, intake, runtime, tasks
from wxrecon.config import Settings
from wxrecon.domain.kinds import REDUCTION
from wxrecon.engine import operator
from wxrecon.engine.sweep import claim_due
from wxrecon.store.db import Database
from wxrecon.store.models import CompensationBill, SpecialReduction
from wxrecon.wechatpay import errors
from wxrecon.wechatpay.errors import InvalidRequest

GOOD = {
    "mchid": "1900000109",
    "bal_account_no": "6222000011112222",
    "out_request_no": "C1",
    "reduction_type": "FINANCIAL_PENALTY",
    "amount": 700,
}
PROFILE = (
    'mchid = "{mchid}"\ncert_serial = "AB12"\nprivate_key_path = "/k.pem"\n'
    'wechatpay_public_key_id = "PUB_KEY_ID_0114232019112100000000000000"\n'
    'wechatpay_public_key_path = "/p.pem"\n'
)


def callers_file(tmp_path: Path) -> Path:
    path = tmp_path / "callers.toml"
    path.write_text(
        "[callers.platform]\n"
        + PROFILE.format(mchid="1900000009")
        + "[callers.group2]\n"
        + PROFILE.format(mchid="1900000002")
    )
    return path


@pytest.fixture
def routed(db: Database, tmp_path: Path) -> Iterator[tuple[Database, dict[str, FakeProvider]]]:
    """The runtime with three callers, each its own fake provider; bills default to
    ``platform``, reductions to ``default``."""
    settings = Settings.model_validate(
        {
            "database_url": db.url,
            "data_dir": tmp_path,
            "poll_schedule": [1.0],
            "poll_jitter": 0,
            "reentry_grace": 0,
            "callers_file": callers_file(tmp_path),
            "bill_caller": "platform",
        }
    )
    providers = {name: FakeProvider() for name in ("default", "platform", "group2")}
    runtime.install(runtime.Runtime(settings, _db=db, _clients=dict(providers)))
    try:
        yield db, providers
    finally:
        runtime.install(None)


def count(db: Database, model: Any) -> int:
    with db.read() as session:
        return int(session.execute(select(func.count()).select_from(model)).scalar_one())


def caller_of(db: Database, model: Any) -> list[str]:
    with db.read() as session:
        return list(session.execute(select(model.caller)).scalars())


def test_defaults_per_kind(routed: tuple[Database, dict[str, FakeProvider]]) -> None:
    db, providers = routed
    providers["default"].submit_answers.append(reduction("C1", "SUCCESS"))
    providers["platform"].bill_answers.append(bill("B1", "ACCEPTED"))
    assert tasks.submit_special_reduction.apply(kwargs=GOOD).get()["state"] == "SUCCESS"
    assert tasks.track_compensation_bill.apply(kwargs={"out_bill_no": "B1"}).get()["created"]
    assert [r.out_request_no for r in providers["default"].submits] == ["C1"]
    assert providers["platform"].bill_queries == ["B1"]
    assert providers["default"].bill_queries == [] and providers["platform"].submits == []
    assert caller_of(db, SpecialReduction) == ["default"]
    assert caller_of(db, CompensationBill) == ["platform"]


def test_explicit_caller(routed: tuple[Database, dict[str, FakeProvider]]) -> None:
    db, providers = routed
    providers["group2"].submit_answers.append(reduction("C1", "PROCESSING"))
    providers["default"].bill_answers.append(bill("B2", "ACCEPTED"))
    tasks.submit_special_reduction.apply(kwargs={**GOOD, "caller": "group2"}).get()
    tasks.track_compensation_bill.apply(kwargs={"out_bill_no": "B2", "caller": "default"}).get()
    assert [r.out_request_no for r in providers["group2"].submits] == ["C1"]
    assert providers["default"].bill_queries == ["B2"]
    assert caller_of(db, SpecialReduction) == ["group2"]
    assert caller_of(db, CompensationBill) == ["default"]


@pytest.mark.parametrize("caller", ["nobody", "Bad Name", 7, "x" * 40])
def test_unknown_caller_is_refused_by_the_tasks_before_any_write(
    routed: tuple[Database, dict[str, FakeProvider]], caller: Any
) -> None:
    db, providers = routed
    refused = tasks.submit_special_reduction.apply(kwargs={**GOOD, "caller": caller}).get()
    assert "caller" in refused["error"]
    refused = tasks.track_compensation_bill.apply(
        kwargs={"out_bill_no": "B3", "caller": caller}
    ).get()
    assert "caller" in refused["error"]
    assert count(db, SpecialReduction) == 0 and count(db, CompensationBill) == 0
    assert all(not p.submits and not p.bill_queries for p in providers.values())


def test_unknown_caller_is_refused_by_the_python_helpers(
    routed: tuple[Database, dict[str, FakeProvider]], monkeypatch: pytest.MonkeyPatch
) -> None:
    db, _ = routed
    monkeypatch.setattr(intake, "get_settings", lambda: runtime.get().settings)
    sent: list[Any] = []
    with db.transaction() as session:
        with pytest.raises(InvalidRequest, match="unknown caller 'nobody'"):
            intake.submit_reduction(session, **GOOD, caller="nobody", enqueue=sent.append)
        with pytest.raises(InvalidRequest, match="unknown caller"):
            intake.submit_reductions(session, [GOOD], caller="nobody", enqueue=sent.append)
        with pytest.raises(InvalidRequest, match="unknown caller"):
            intake.track_bill(session, "B4", caller="nobody", enqueue=sent.append)
    assert count(db, SpecialReduction) == 0 and count(db, CompensationBill) == 0 and not sent
    with db.transaction() as session:
        intake.submit_reduction(session, **GOOD, caller="group2", enqueue=lambda *a: None)
        intake.track_bill(session, "B4", enqueue=lambda *a: None)
    assert caller_of(db, SpecialReduction) == ["group2"]
    assert caller_of(db, CompensationBill) == ["platform"]


def test_an_orders_caller_never_changes(
    routed: tuple[Database, dict[str, FakeProvider]],
) -> None:
    """Its re-entries and queries, an operator's retry and a redelivery with another
    caller all keep the caller it was taken in with."""
    db, providers = routed
    group2 = providers["group2"]
    group2.submit_answers.append(errors.OutcomeUnknown(errors.NetworkError("timeout")))
    first = tasks.submit_special_reduction.apply(kwargs={**GOOD, "caller": "group2"}).get()
    # The same order again under another caller is another order's parameters: refused.
    again = tasks.submit_special_reduction.apply(kwargs={**GOOD, "caller": "default"}).get()
    assert "caller" in again["error"]
    # The query after the lost POST finds nothing; past the grace the POST is re-entered.
    group2.query_answers.append(errors.NotFound("no such order", code="RESOURCE_NOT_EXISTS"))
    group2.submit_answers.append(reduction("C1", "SUCCESS"))
    operator.requery(db, REDUCTION, first["id"], actor="op")
    rec = runtime.get().reconciler()
    for claim in claim_due(db, REDUCTION, limit=10, lease=60):
        rec.process(REDUCTION, claim.id, claim.token)
    assert len(group2.submits) == 2 and len(group2.queries) == 1
    # An operator retry of a final order: queried again by the same caller.
    group2.query_answers.append(reduction("C1", "SUCCESS"))
    operator.retry(db, REDUCTION, first["id"], actor="op", why="check", force=True)
    for claim in claim_due(db, REDUCTION, limit=10, lease=60):
        rec.process(REDUCTION, claim.id, claim.token)
    assert len(group2.queries) == 2
    assert not providers["default"].submits and not providers["default"].queries
    assert caller_of(db, SpecialReduction) == ["group2"]


@pytest.fixture
def callers_cli(cli: Cli, tmp_path: Path) -> Cli:
    cli.setenv(WXRECON_CALLERS_FILE=str(callers_file(tmp_path)), WXRECON_BILL_CALLER="platform")
    return cli


SUBMIT = [
    "reduction",
    "submit",
    "--mchid",
    "1900000101",
    "--bal-account-no",
    "6222020000123456789",
    "--out-request-no",
    "CLI1",
    "--type",
    "FINANCIAL_PENALTY",
    "--amount",
    "1500",
]


def test_cli_caller_option_and_unknown_caller(callers_cli: Cli) -> None:
    cli = callers_cli
    line = cli.fails(*SUBMIT, "--caller", "nobody")
    assert "unknown caller 'nobody'" in line
    assert "unknown caller" in cli.fails("bill", "track", "B5", "--caller", "nobody")
    assert cli.count(SpecialReduction) == 0 and cli.count(CompensationBill) == 0
    cli.ok(*SUBMIT, "--caller", "group2")
    cli.ok("bill", "track", "B5")
    shown = json.loads(cli.ok("reduction", "show", "CLI1", "--json").stdout)
    assert shown["caller"] == "group2"
    assert json.loads(cli.ok("bill", "show", "B5", "--json").stdout)["caller"] == "platform"
    listed = json.loads(cli.ok("reduction", "list", "--caller", "group2", "--json").stdout)
    assert [o["out_request_no"] for o in listed["orders"]] == ["CLI1"]
    none = json.loads(cli.ok("reduction", "list", "--caller", "default", "--json").stdout)
    assert none["total"] == 0
    assert "CALLER" in cli.fails("reduction", "list", "--caller", "Bad Name", code=2).upper()
    stats = json.loads(cli.ok("stats", "--json").stdout)
    assert stats["by_caller"] == {"group2": {"reduction": 1}, "platform": {"bill": 1}}


def test_csv_caller_column(callers_cli: Cli, tmp_path: Path) -> None:
    cli = callers_cli
    f = tmp_path / "in.csv"
    bal = "6222020000123456789"
    f.write_text(
        "mchid,bal_account_no,out_request_no,reduction_type,amount,caller\n"
        f"1900000101,{bal},CSV1,FINANCIAL_PENALTY,100,group2\n"
        f"1900000101,{bal},CSV2,FINANCIAL_PENALTY,100,nobody\n"
        f"1900000101,{bal},CSV3,FINANCIAL_PENALTY,100,\n"
    )
    line = cli.fails("import", str(f), code=1)
    assert "line 3" in line and "unknown caller" in line
    with cli.db.read() as session:
        stmt = select(SpecialReduction.out_request_no, SpecialReduction.caller)
        rows = {number: caller for number, caller in session.execute(stmt)}
    assert rows == {"CSV1": "group2", "CSV3": "default"}
    config.get_settings.cache_clear()


def test_cli_provider_calls_refuse_an_unknown_caller_before_loading_keys(
    callers_cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wxrecon.cli import provider as cli_provider

    def never(*_: object, **__: object) -> None:
        raise AssertionError("an unknown caller must not build a client")

    monkeypatch.setattr(cli_provider, "build_client", never)
    line = callers_cli.fails("api", "query-bill", "B1", "--caller", "nobody", code=2)
    assert "unknown caller 'nobody'" in line
