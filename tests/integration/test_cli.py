"""The operator CLI through Typer's runner: every command, its output, and its bad inputs
(non-zero exit, one line, nothing written, nothing enqueued)."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from tests.fixtures_cli import Cli
from wxrecon.cli.output import default_actor
from wxrecon.store.models import CompensationBill, Event, SpecialReduction
from wxrecon.store.reads import reduction_events

BAL = "6222020000123456789"
GOOD = {
    "--mchid": "1900000101",
    "--bal-account-no": BAL,
    "--out-request-no": "PEN0001",
    "--type": "FINANCIAL_PENALTY",
    "--amount": "1500",
}


def submit_args(**changes: str) -> list[str]:
    args = {**GOOD, **{f"--{k.replace('_', '-')}": v for k, v in changes.items()}}
    out = ["reduction", "submit"]
    for key, value in args.items():
        out += [key, value]
    return out


def add_reduction(cli: Cli, number: str, *, mchid: str = "1900000101", amount: int = 100) -> int:
    cli.ok(*submit_args(out_request_no=number, mchid=mchid, amount=str(amount)))
    with cli.db.read() as session:
        return session.execute(
            select(SpecialReduction.id).where(SpecialReduction.out_request_no == number)
        ).scalar_one()


def set_state(cli: Cli, model: type, order_id: int, state: str, **values: object) -> None:
    with cli.db.transaction() as session:
        session.execute(update(model).where(model.id == order_id).values(state=state, **values))


def events(cli: Cli, kind: str, order_id: int) -> list[Event]:
    with cli.db.read() as session:
        return list(
            session.execute(
                select(Event)
                .where(Event.kind == kind, Event.order_id == order_id)
                .order_by(Event.id)
            ).scalars()
        )


# -- db upgrade ---------------------------------------------------------------------------------


def test_db_upgrade_creates_then_reports_up_to_date(cli: Cli, tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    cli.setenv(WXRECON_DATABASE_URL=url)
    first = json.loads(cli.ok("db", "upgrade", "--json").stdout)
    assert first["from"] == [] and len(first["to"]) == 1
    again = cli.ok("db", "upgrade")
    assert "up to date" in again.stdout


def test_db_upgrade_bad_url_is_one_line(cli: Cli):
    cli.setenv(WXRECON_DATABASE_URL="nosuchdb://somewhere/x")
    line = cli.fails("db", "upgrade", code=1)
    assert line.startswith("error: db upgrade failed")


def test_commands_refuse_an_unmigrated_database(cli: Cli, tmp_path: Path):
    cli.setenv(WXRECON_DATABASE_URL=f"sqlite:///{tmp_path / 'empty.db'}")
    line = cli.fails("reduction", "list", code=1)
    assert "wxrecon db upgrade" in line


# -- reduction submit -----------------------------------------------------------------------------


def test_submit_writes_the_order_and_enqueues_once(cli: Cli):
    out = json.loads(cli.ok(*submit_args(), "--json").stdout)
    assert out["created"] is True and out["state"] == "RECEIVED"
    assert [name for name, _ in cli.sent] == ["wxrecon.poll_reduction"]
    assert cli.sent[0][1]["id"] == out["id"]
    with cli.db.read() as session:
        row = session.get(SpecialReduction, out["id"])
        assert (row.mchid, row.amount, row.reduction_type) == (
            "1900000101",
            1500,
            "FINANCIAL_PENALTY",
        )
        first = reduction_events(session, out["id"])[0]
        assert first.actor == default_actor()  # who handed it in
    with_actor = json.loads(
        cli.ok(*submit_args(out_request_no="ACT1"), "--actor", "ops:li", "--json").stdout
    )
    with cli.db.read() as session:
        assert reduction_events(session, with_actor["id"])[0].actor == "ops:li"
    del cli.sent[1:]
    # the same order again: the same row, nothing new enqueued
    again = json.loads(cli.ok(*submit_args(), "--json").stdout)
    assert again == {"id": out["id"], "created": False, "state": "RECEIVED"}
    assert len(cli.sent) == 1
    human = cli.ok(*submit_args())
    assert "already known" in human.stdout and BAL not in human.output


def test_submit_conflict_changes_nothing(cli: Cli):
    cli.ok(*submit_args())
    line = cli.fails(*submit_args(amount="1600"), code=1)
    assert "different amount" in line and BAL not in line
    with cli.db.read() as session:
        assert session.execute(select(SpecialReduction.amount)).scalar_one() == 1500
    assert len(cli.sent) == 1


@pytest.mark.parametrize(
    ("changes", "expect"),
    [
        ({"amount": "15.00"}, "--amount"),
        ({"amount": "-5"}, "--amount"),
        ({"amount": "0"}, "amount"),
        ({"amount": "1e3"}, "--amount"),
        ({"type": "PENALTY"}, "reduction_type"),
        ({"mchid": "19000abc"}, "mchid"),
        ({"out_request_no": "PEN-0001"}, "out_request_no"),
        ({"out_request_no": "X" * 33}, "out_request_no"),
        ({"bal_account_no": ""}, "bal_account_no"),
        ({"bal_account_no": "6222 0200"}, "bal_account_no"),
        ({"reason": "r" * 513}, "reason"),
        ({"reason": "bad\x07bell"}, "reason"),
    ],
)
def test_submit_bad_input_writes_and_sends_nothing(cli: Cli, changes, expect):
    line = cli.fails(*submit_args(**changes), code=2)
    assert expect in line
    assert "6222 0200" not in line and BAL not in line
    assert cli.count(SpecialReduction) == 0
    assert cli.count(Event) == 0
    assert cli.sent == []


def test_submit_wait_follows_the_order_to_a_final_state(cli: Cli):
    def provider_answers() -> None:  # what a worker would do, once the row exists
        while True:
            with cli.db.transaction() as session:
                hit = session.execute(update(SpecialReduction).values(state="SUCCESS"))
            if hit.rowcount:
                return
            time.sleep(0.05)

    answer = threading.Thread(target=provider_answers)
    answer.start()
    out = json.loads(cli.ok(*submit_args(), "--wait", "--timeout", "60", "--json").stdout)
    answer.join()
    assert out["state"] == "SUCCESS"
    human = cli.ok(*submit_args(), "--wait")
    assert "SUCCESS" in human.stdout


def test_submit_wait_gives_up_with_one_line(cli: Cli):
    line = cli.fails(*submit_args(), "--wait", "--timeout", "1", code=4)
    assert "still RECEIVED after 1s" in line and "do not submit it again" in line
    assert cli.count(SpecialReduction) == 1  # the order stays, and keeps being reconciled


def test_missing_option_is_one_line(cli: Cli):
    line = cli.fails("reduction", "submit", "--mchid", "1900000101", code=2)
    assert "Missing option" in line


def test_json_errors_are_one_json_line(cli: Cli):
    line = cli.fails(*submit_args(amount="abc"), "--json", code=2)
    assert "--amount" in json.loads(line)["error"]


# -- reduction show / list -------------------------------------------------------------------------


def test_show_masks_the_account_and_lists_events_with_request_ids(cli: Cli):
    order_id = add_reduction(cli, "PEN0001")
    with cli.db.transaction() as session:
        session.add(
            Event(
                kind="reduction",
                order_id=order_id,
                from_state="RECEIVED",
                to_state="SUBMITTED",
                reason="sending",
                request_id="REQ-0A1B2C",
            )
        )
    for ref in (str(order_id), "PEN0001"):
        human = cli.ok("reduction", "show", ref)
        assert BAL not in human.output
        assert "6222…6789" in human.stdout
        assert "REQ-0A1B2C" in human.stdout and "received" in human.stdout
    data = json.loads(cli.ok("reduction", "show", "PEN0001", "--json").stdout)
    assert data["bal_account_no"] == "6222…6789"
    assert [e["to_state"] for e in data["events"]] == ["RECEIVED", "SUBMITTED"]
    assert data["events"][1]["request_id"] == "REQ-0A1B2C"


@pytest.mark.parametrize("ref", ["NOPE1", "42", "²"])
def test_show_unknown_order(cli: Cli, ref: str):
    assert "no reduction" in cli.fails("reduction", "show", ref, code=1)


def test_list_filters_and_pages(cli: Cli):
    ids = [
        add_reduction(cli, f"PEN{i:04d}", mchid="1900000101" if i < 3 else "1900000102")
        for i in range(5)
    ]
    set_state(cli, SpecialReduction, ids[0], "NEEDS_REVIEW")
    page = json.loads(cli.ok("reduction", "list", "--limit", "2", "--page", "2", "--json").stdout)
    assert page["total"] == 5 and [o["id"] for o in page["orders"]] == [ids[2], ids[1]]
    by_state = json.loads(cli.ok("reduction", "list", "--state", "needs_review", "--json").stdout)
    assert [o["id"] for o in by_state["orders"]] == [ids[0]]
    by_mchid = json.loads(cli.ok("reduction", "list", "--mchid", "1900000102", "--json").stdout)
    assert sorted(o["id"] for o in by_mchid["orders"]) == ids[3:]
    assert all(o["bal_account_no"] == "6222…6789" for o in by_mchid["orders"])
    future = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    assert json.loads(cli.ok("reduction", "list", "--since", future, "--json").stdout)["total"] == 0
    assert json.loads(cli.ok("reduction", "list", "--since", "1h", "--json").stdout)["total"] == 5
    # stuck: in flight and unchanged for longer than 30 minutes
    old = datetime.now(UTC) - timedelta(hours=2)
    set_state(cli, SpecialReduction, ids[4], "PROCESSING", updated_at=old)
    set_state(cli, SpecialReduction, ids[3], "SUCCESS", updated_at=old)
    stuck = json.loads(cli.ok("reduction", "list", "--stuck", "30m", "--json").stdout)
    assert [o["id"] for o in stuck["orders"]] == [ids[4]]
    human = cli.ok("reduction", "list")
    assert "5 matching" in human.stdout and "PEN0004" in human.stdout


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--state", "DONE"], "--state"),
        (["--since", "last tuesday"], "--since"),
        (["--stuck", "forever"], "--stuck"),
        (["--page", "0"], "--page"),
        (["--limit", "abc"], "--limit"),
    ],
)
def test_list_bad_filters(cli: Cli, args, expect):
    assert expect in cli.fails("reduction", "list", *args, code=2)


# -- retry / requery -------------------------------------------------------------------------------


def test_retry_one_records_who_and_why(cli: Cli):
    order_id = add_reduction(cli, "PEN0001")
    set_state(cli, SpecialReduction, order_id, "NEEDS_REVIEW")
    out = json.loads(
        cli.ok(
            "reduction",
            "retry",
            str(order_id),
            "--yes",
            "--actor",
            "alice",
            "--why",
            "provider outage",
            "--json",
        ).stdout
    )
    assert out["retried"] == [order_id] and out["state"] == "RECEIVED"  # never sent before
    last = events(cli, "reduction", order_id)[-1]
    assert (last.from_state, last.to_state, last.actor) == ("NEEDS_REVIEW", "RECEIVED", "alice")
    assert "provider outage" in last.reason


def test_retry_records_the_os_user_by_default(cli: Cli):
    import getpass

    order_id = add_reduction(cli, "PEN0001")
    set_state(cli, SpecialReduction, order_id, "REJECTED")
    cli.ok("reduction", "retry", "PEN0001", "--yes", "--why", "fixed NO_AUTH")
    last = events(cli, "reduction", order_id)[-1]
    assert last.actor == getpass.getuser() and last.from_state == "REJECTED"


def test_retry_asks_and_a_no_changes_nothing(cli: Cli):
    order_id = add_reduction(cli, "PEN0001")
    set_state(cli, SpecialReduction, order_id, "NEEDS_REVIEW")
    line = cli.fails("reduction", "retry", "PEN0001", "--why", "x", input="n\n", code=1)
    assert "nothing retried" in line
    with cli.db.read() as session:
        assert session.get(SpecialReduction, order_id).state == "NEEDS_REVIEW"
    cli.ok("reduction", "retry", "PEN0001", "--why", "x", input="y\n")
    with cli.db.read() as session:
        assert session.get(SpecialReduction, order_id).state == "RECEIVED"


def test_retry_a_final_order_needs_force(cli: Cli):
    order_id = add_reduction(cli, "PEN0001")
    set_state(cli, SpecialReduction, order_id, "SUCCESS", submitted_at=datetime.now(UTC))
    assert "force" in cli.fails("reduction", "retry", str(order_id), "--yes", code=1)
    out = json.loads(
        cli.ok("reduction", "retry", str(order_id), "--yes", "--force", "--json").stdout
    )
    assert out["state"] == "SUBMITTED"  # sent before: queried first, never re-applied blindly


def test_bulk_retry_by_state_and_merchant(cli: Cli):
    a = [add_reduction(cli, f"PENA{i}", mchid="1900000101") for i in range(3)]
    b = add_reduction(cli, "PENB0", mchid="1900000102")
    for order_id in (*a, b):
        set_state(cli, SpecialReduction, order_id, "NEEDS_REVIEW")
    out = json.loads(
        cli.ok(
            "reduction",
            "retry",
            "--state",
            "NEEDS_REVIEW",
            "--mchid",
            "1900000101",
            "--yes",
            "--why",
            "bulk",
            "--json",
        ).stdout
    )
    assert sorted(out["retried"]) == sorted(a) and out["skipped"] == {}
    with cli.db.read() as session:
        assert session.get(SpecialReduction, b).state == "NEEDS_REVIEW"
    human = cli.ok("reduction", "retry", "--state", "NEEDS_REVIEW", "--yes", "--why", "rest")
    assert "retried 1" in human.stdout


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["reduction", "retry"], 2),
        (["reduction", "retry", "1", "--state", "NEEDS_REVIEW"], 2),
        (["reduction", "retry", "--state", "LOST", "--yes"], 2),
        (["reduction", "retry", "1", "--yes", "--json", "--mchid", "1"], 1),
        (["reduction", "retry", "--state", "NEEDS_REVIEW", "--json"], 2),
    ],
)
def test_retry_bad_input(cli: Cli, args, code):
    add_reduction(cli, "PEN0001")
    cli.fails(*args, code=code)


def test_requery_in_flight_only(cli: Cli):
    order_id = add_reduction(cli, "PEN0001")
    set_state(cli, SpecialReduction, order_id, "PROCESSING")
    out = json.loads(
        cli.ok("reduction", "requery", str(order_id), "--actor", "bob", "--json").stdout
    )
    assert out == {"id": order_id, "state": "PROCESSING", "requeried": True}
    last = events(cli, "reduction", order_id)[-1]
    assert last.actor == "bob" and "re-query" in last.reason
    set_state(cli, SpecialReduction, order_id, "FAILED")
    assert "not in flight" in cli.fails("reduction", "requery", str(order_id), code=1)


# -- bills -----------------------------------------------------------------------------------------


def test_bill_track_show_list_retry(cli: Cli):
    out = json.loads(cli.ok("bill", "track", "BILL0001", "--json").stdout)
    assert out["created"] is True and out["state"] == "TRACKING"
    assert cli.sent == [("wxrecon.poll_bill", {"id": out["id"], "token": cli.sent[0][1]["token"]})]
    again = json.loads(cli.ok("bill", "track", "BILL0001", "--json").stdout)
    assert again["created"] is False and len(cli.sent) == 1
    shown = json.loads(cli.ok("bill", "show", "BILL0001", "--json").stdout)
    assert shown["out_bill_no"] == "BILL0001" and shown["events"][0]["to_state"] == "TRACKING"
    assert "BILL0001" in cli.ok("bill", "list").stdout
    set_state(cli, CompensationBill, out["id"], "NEEDS_REVIEW")
    retried = json.loads(
        cli.ok("bill", "retry", "--state", "NEEDS_REVIEW", "--yes", "--why", "w", "--json").stdout
    )
    assert retried["retried"] == [out["id"]]
    assert cli.ok("bill", "requery", "BILL0001").exit_code == 0


@pytest.mark.parametrize(
    "args",
    [
        ["bill", "track", "BILL-0001"],
        ["bill", "track", "B" * 33],
        ["bill", "list", "--mchid", "1900000101"],
        ["bill", "list", "--state", "PROCESSING"],
    ],
)
def test_bill_bad_input(cli: Cli, args):
    cli.fails(*args, code=2)
    assert cli.count(CompensationBill) == 0 and cli.sent == []


# -- stats -----------------------------------------------------------------------------------------


def test_stats_counts_and_oldest_overdue(cli: Cli):
    ids = [
        add_reduction(cli, f"PEN{i}", mchid=m)
        for i, m in enumerate(["1900000101", "1900000101", "1900000102"])
    ]
    set_state(cli, SpecialReduction, ids[0], "SUCCESS", next_poll_at=None)
    overdue = datetime.now(UTC) - timedelta(minutes=10)
    set_state(cli, SpecialReduction, ids[2], "PROCESSING", next_poll_at=overdue)
    with cli.db.transaction() as session:
        session.add(
            Event(
                kind="reduction",
                order_id=ids[0],
                from_state="PROCESSING",
                to_state="SUCCESS",
                reason="query: SUCCESS",
            )
        )
    data = json.loads(cli.ok("stats", "--json").stdout)
    assert data["reductions"] == {"SUCCESS": 1, "RECEIVED": 1, "PROCESSING": 1}
    assert data["by_merchant"]["1900000101"] == {"SUCCESS": 1, "RECEIVED": 1}
    assert data["oldest_overdue"]["id"] == ids[2]
    assert data["oldest_overdue"]["overdue_seconds"] >= 600
    assert data["finalised_last_hour"] == {"reduction": 1}
    human = cli.ok("stats")
    assert "oldest overdue" in human.stdout and "PEN2" in human.stdout


def test_stats_watch_refreshes_until_interrupted(cli: Cli, monkeypatch: pytest.MonkeyPatch):
    from wxrecon.cli import stats as cli_stats

    add_reduction(cli, "PEN0")
    sleeps: list[float] = []

    def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 1:
            add_reduction(cli, "PEN1")  # the next frame must show it
            return
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_stats.time, "sleep", fake_sleep)
    result = cli.ok("stats", "--watch", "--interval", "0.5")
    assert sleeps == [0.5, 0.5]
    assert "RECEIVED" in result.stdout and "│ 2 " in result.stdout


# -- import ----------------------------------------------------------------------------------------


HEADER = "mchid,bal_account_no,out_request_no,reduction_type,amount,reason\n"


def test_import_good_file(cli: Cli, tmp_path: Path):
    f = tmp_path / "in.csv"
    f.write_text(
        HEADER
        + f"1900000101,{BAL},IMP1,FINANCIAL_PENALTY,100,late\n"
        + f"1900000101,{BAL},IMP2,JUDICIAL_DEDUCTION,200,\n"
    )
    out = json.loads(cli.ok("import", str(f), "--json").stdout)
    assert out == {"created": 2, "existing": 0, "refused": []}
    assert cli.count(SpecialReduction) == 2
    # one message for the batch's new orders (poll_chunk of them each), not one per row
    assert [name for name, _ in cli.sent] == ["wxrecon.poll_reductions"]
    assert len(cli.sent[0][1]["ids"]) == 2
    assert json.loads(cli.ok("import", str(f), "--json").stdout)["existing"] == 2


def test_import_bad_row_is_reported_by_line_and_not_written(cli: Cli, tmp_path: Path):
    f = tmp_path / "in.csv"
    f.write_text(
        HEADER
        + f"1900000101,{BAL},IMP1,FINANCIAL_PENALTY,100,ok\n"
        + f"1900000101,{BAL},IMP2,FINANCIAL_PENALTY,12.50,bad amount\n"
        + f"1900000101,{BAL},IMP3,FINANCIAL_PENALTY,300,ok\n"
    )
    line = cli.fails("import", str(f), code=1)
    assert "line 3" in line and "amount" in line and BAL not in line
    with cli.db.read() as session:
        numbers = set(session.execute(select(SpecialReduction.out_request_no)).scalars())
    assert numbers == {"IMP1", "IMP3"}


@pytest.mark.parametrize(
    ("content", "expect"),
    [
        ("mchid,out_request_no,amount\n1,A,1\n", "missing bal_account_no"),
        (HEADER.replace("reason", "memo") + "1,2,3,4,5,6\n", "unknown memo"),
        ("", "empty file"),
    ],
)
def test_import_bad_header_writes_nothing(cli: Cli, tmp_path: Path, content, expect):
    f = tmp_path / "in.csv"
    f.write_text(content)
    assert expect in cli.fails("import", str(f), code=2)
    assert cli.count(SpecialReduction) == 0


def test_import_missing_file(cli: Cli, tmp_path: Path):
    assert "no such file" in cli.fails("import", str(tmp_path / "nope.csv"), code=2)


# -- balance (against the simulator) ---------------------------------------------------------------


def test_balance_live_query(cli: Cli, simulator, sim_admin):
    from tests.fixtures_sim import SIM_BAL_ACCOUNT_NO, SIM_BALANCE, SIM_MCHID, sim_env

    cli.setenv(**sim_env(simulator))
    human = cli.ok("balance", "--mchid", SIM_MCHID, "--bal-account-no", SIM_BAL_ACCOUNT_NO)
    yuan, fen = divmod(SIM_BALANCE, 100)
    assert f"¥{yuan:,}.{fen:02d}" in human.stdout
    assert SIM_BAL_ACCOUNT_NO not in human.output
    data = json.loads(
        cli.ok(
            "balance", "--mchid", SIM_MCHID, "--bal-account-no", SIM_BAL_ACCOUNT_NO, "--json"
        ).stdout
    )
    assert data["balance"] == SIM_BALANCE and data["in_transit_reduction_exist"] is False
    assert data["request_id"]
    assert "mchid" in cli.fails("balance", "--mchid", "abc", "--bal-account-no", "1", code=2)
    assert sim_admin.stats()["requests"].get("query_balance", {}).get("200") == 2


def test_balance_without_credentials_is_one_line(cli: Cli):
    line = cli.fails("balance", "--mchid", "1900000101", "--bal-account-no", BAL, code=1)
    assert "WXRECON_" in line and BAL not in line


# -- metrics ---------------------------------------------------------------------------------------


def test_metrics_once_includes_database_gauges(cli: Cli):
    add_reduction(cli, "PEN0001")
    text = cli.ok("metrics", "--once").stdout
    assert 'wxrecon_orders{kind="reduction",state="RECEIVED"} 1.0' in text
    assert "wxrecon_database_up 1.0" in text


def test_version():
    from typer.testing import CliRunner

    from wxrecon import __version__
    from wxrecon.cli import app

    assert CliRunner().invoke(app, ["--version"]).stdout.strip() == f"wxrecon {__version__}"
