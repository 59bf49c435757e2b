"""``wxrecon ledger list|show|check`` and ``wxrecon report daily``: the statement's sums are
recomputed from the events table."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from tests.fixtures_cli import Cli
from tests.integration.test_ledger_engine import KEYS, LEDGER, MCHID, Balances, add_reduction
from wxrecon.engine import ledger as engine
from wxrecon.store.models import Event, LedgerSnapshot, SpecialReduction
from wxrecon.store.sealed import Keyring

SHANGHAI = ZoneInfo("Asia/Shanghai")
DAY_START = datetime(2026, 1, 5, tzinfo=SHANGHAI)  # 2026-01-04 16:00 UTC


@pytest.fixture
def keyed(cli: Cli) -> Keyring:
    return KEYS  # the suite's keys, which the cli fixture carries


def order(cli: Cli, no: str, amount: int, state: str, moves: list[tuple[str, datetime]]) -> int:
    """A reduction now in ``state``, with one event per (to_state, at)."""
    order_id = add_reduction(
        cli.db, no, amount, state, updated_at=moves[-1][1] if moves else datetime.now(UTC)
    )
    with cli.db.transaction() as s:
        previous = "RECEIVED"
        for to, at in moves:
            s.add(
                Event(
                    kind="reduction",
                    order_id=order_id,
                    from_state=previous,
                    to_state=to,
                    reason="test",
                    at=at,
                )
            )
            previous = to
    return order_id


def test_report_daily_sums_tie_to_the_events(cli: Cli, keyed: Keyring) -> None:
    inside = DAY_START + timedelta(hours=10)
    order(cli, "S1", 300, "SUCCESS", [("PROCESSING", inside), ("SUCCESS", inside)])
    order(cli, "S2", 1_250, "SUCCESS", [("SUCCESS", DAY_START)])  # 00:00 +08:00: in
    last = DAY_START + timedelta(days=1) - timedelta(seconds=1)
    order(cli, "F1", 700, "FAILED", [("FAILED", last)])  # 23:59:59 +08:00: in
    order(cli, "X1", 900, "SUCCESS", [("SUCCESS", DAY_START - timedelta(seconds=1))])  # out
    order(cli, "X2", 800, "SUCCESS", [("SUCCESS", DAY_START + timedelta(days=1))])  # out
    order(cli, "P1", 40, "PROCESSING", [("PROCESSING", inside)])
    review_at = datetime.now(UTC) - timedelta(hours=2)
    order(cli, "N1", 55, "NEEDS_REVIEW", [("NEEDS_REVIEW", review_at)])

    doc = json.loads(cli.ok("report", "daily", "--date", "2026-01-05", "--format", "json").stdout)
    assert (doc["timezone"], doc["start"]) == ("Asia/Shanghai", "2026-01-05T00:00:00+08:00")
    [item] = doc["ledgers"]
    assert item["mchid"] == MCHID and item["ledger"] == keyed.lookup_hash(LEDGER)[:12]

    # Recomputed from the events table, independently of the report's query.
    start, end = DAY_START.astimezone(UTC), (DAY_START + timedelta(days=1)).astimezone(UTC)
    with cli.db.read() as s:
        moved = s.execute(
            select(Event.order_id, Event.to_state, SpecialReduction.amount)
            .join(SpecialReduction, SpecialReduction.id == Event.order_id)
            .where(Event.to_state.in_(["SUCCESS", "FAILED", "REJECTED"]))
        ).all()
        ats = {e.id: e.at for e in s.execute(select(Event)).scalars()}
    assert ats  # the events are there
    expected: dict[str, dict[str, int]] = {}
    with cli.db.read() as s:
        for e in s.execute(select(Event)).scalars():
            if e.to_state in ("SUCCESS", "FAILED", "REJECTED") and start <= e.at < end:
                amount = next(a for oid, st, a in moved if oid == e.order_id and st == e.to_state)
                entry = expected.setdefault(e.to_state, {"count": 0, "amount": 0})
                entry["count"] += 1
                entry["amount"] += amount
    assert (
        item["final"]
        == expected
        == {
            "SUCCESS": {"count": 2, "amount": 1_550},
            "FAILED": {"count": 1, "amount": 700},
        }
    )
    assert item["in_flight"] == {"count": 1, "amount": 40}
    [review] = item["needs_review"]
    assert review["out_request_no"] == "N1" and 7_100 < review["age_seconds"] < 14_400

    table = cli.ok("report", "daily", "--date", "2026-01-05").stdout
    assert "Asia/Shanghai" in table and LEDGER not in table
    text = cli.ok("report", "daily", "--date", "2026-01-05", "--format", "csv").stdout
    assert text.startswith("# date 2026-01-05, zone Asia/Shanghai")
    lines = list(csv.reader(io.StringIO(text.split("\n", 1)[1])))
    assert lines[0] == ["mchid", "ledger", "figure", "count", "amount_fen", "detail"]
    assert [MCHID, item["ledger"], "final SUCCESS", "2", "1550", ""] in lines
    # In UTC the day is another one: X2 (2026-01-05 16:00 UTC) is in, S2 is out.
    utc = json.loads(
        cli.ok("report", "daily", "--date", "2026-01-05", "--tz", "UTC", "--format", "json").stdout
    )
    assert utc["ledgers"][0]["final"]["SUCCESS"] == {"count": 2, "amount": 1_100}


@pytest.mark.parametrize(
    "args",
    [
        ["--date", "2026-13-01"],
        ["--date", "yesterday"],
        ["--date", "2026-01-05", "--tz", "Mars/Olympus"],
        ["--date", "2026-01-05", "--tz", "../../etc/passwd"],
        ["--date", "2026-01-05", "--format", "xml"],
    ],
)
def test_report_daily_refuses_bad_input_in_one_line(cli: Cli, args: list[str]) -> None:
    result = cli.run("report", "daily", *args)
    assert result.exit_code == 2, result.output


def test_ledger_list_show_check(cli: Cli, keyed: Keyring) -> None:
    order(cli, "P1", 40, "PROCESSING", [("PROCESSING", datetime.now(UTC))])
    client = Balances().then(10_000).then(9_700).then(10_200)
    since = cli.db.now() - timedelta(hours=1)
    for _ in range(3):
        engine.snapshot(cli.db, client, keyed, engine.ledgers_to_snapshot(cli.db, keyed, since))
    label = keyed.lookup_hash(LEDGER)[:12]
    listed = json.loads(cli.ok("ledger", "list", "--json").stdout)["ledgers"]
    assert [
        (x["ledger"], x["snapshots"], x["balance"], x["unexplained_debit_fen"]) for x in listed
    ] == [(label, 3, 10_200, 300)]
    shown = json.loads(cli.ok("ledger", "show", label[:6], "--mchid", MCHID, "--json").stdout)
    assert [s["balance"] for s in shown["snapshots"]] == [10_000, 9_700, 10_200]
    assert [s["point"] for s in shown["snapshots"]] == [True, True, True]
    assert [(d["kind"], d["amount"]) for d in shown["discrepancies"]] == [
        ("unexplained_debit", 300),
        ("unexplained_credit", 500),
    ]
    checked = json.loads(cli.ok("ledger", "check", label, "--mchid", MCHID, "--json").stdout)
    assert [c["difference"] for c in checked["checks"]] == [-300, 500]
    for args in (["ledger", "list"], ["ledger", "show", label, "--mchid", MCHID]):
        assert LEDGER not in cli.ok(*args).stdout
    assert "no snapshots" in cli.fails("ledger", "show", "abcd", "--mchid", MCHID)
    assert "hex" in cli.fails("ledger", "show", "zz", "--mchid", MCHID)


def test_ledger_snapshot_without_keys_is_one_line(cli: Cli) -> None:
    cli.monkeypatch.delenv("WXRECON_DATA_KEYS")
    cli.setenv()
    assert "WXRECON_DATA_KEYS" in cli.fails("ledger", "snapshot")
    assert cli.count(LedgerSnapshot) == 0
