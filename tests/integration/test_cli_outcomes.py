"""``wxrecon outcomes``: list (the pull contract), show, redeliver, and their refusals."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from tests.fixtures_cli import Cli
from wxrecon.domain import outcomes
from wxrecon.store import outbox
from wxrecon.store.models import Outcome

T0 = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)


def add(cli: Cli, order_id: int, version: int, at: datetime = T0) -> str:
    event = dict.fromkeys(outcomes.FIELDS)
    event.update(
        event_id=outcomes.event_id("reduction", order_id, version),
        type="reduction.succeeded",
        kind="reduction",
        order_id=order_id,
        state="SUCCESS",
        out_request_no=f"R{order_id}",
        occurred_at=at.isoformat(),
    )
    with cli.db.begin() as conn:
        conn.execute(Outcome.__table__.insert(), outcomes.outbox_row(event, at))
    return str(event["event_id"])


def kill(cli: Cli, event_id: str) -> None:
    with cli.db.begin() as conn:
        conn.execute(
            Outcome.__table__.update()
            .where(Outcome.event_id == event_id)
            .values(delivery="dead", attempts=20, last_error="webhook: HTTP 500")
        )


def test_list_json_is_the_versioned_pull_contract(cli: Cli) -> None:
    first = add(cli, 1, 4)
    second = add(cli, 2, 3, T0 + timedelta(hours=1))
    doc = json.loads(cli.ok("outcomes", "list", "--json").stdout)
    assert doc["version"] == 1 and doc["next_after"] is None
    assert [o["event"]["event_id"] for o in doc["outcomes"]] == [first, second]
    assert doc["outcomes"][0]["delivery"] == "pending"
    page = json.loads(cli.ok("outcomes", "list", "--json", "--limit", "1").stdout)
    assert len(page["outcomes"]) == 1
    rest = json.loads(
        cli.ok("outcomes", "list", "--json", "--after", str(page["next_after"])).stdout
    )
    assert [o["event"]["event_id"] for o in rest["outcomes"]] == [second]
    since = (T0 + timedelta(minutes=30)).isoformat()
    late = json.loads(cli.ok("outcomes", "list", "--json", "--since", since).stdout)
    assert [o["event"]["event_id"] for o in late["outcomes"]] == [second]
    kill(cli, first)
    dead = json.loads(cli.ok("outcomes", "list", "--state", "dead", "--json").stdout)
    assert [o["event"]["event_id"] for o in dead["outcomes"]] == [first]
    assert "reduction.succeeded" in cli.ok("outcomes", "list").stdout


def test_the_pull_view_has_the_documented_columns(cli: Cli) -> None:
    add(cli, 1, 4)
    with cli.db.connect() as conn:
        row = conn.exec_driver_sql("SELECT * FROM wxrecon_outcomes_v1").mappings().one()
    assert list(row) == [
        "seq",
        "event_id",
        "type",
        "kind",
        "order_id",
        "order_no",
        "state",
        "occurred_at",
        "payload",
        "delivery",
        "delivered_at",
    ]


def test_show_by_id_or_event_id(cli: Cli) -> None:
    event_id = add(cli, 1, 4)
    by_event = json.loads(cli.ok("outcomes", "show", event_id, "--json").stdout)
    by_id = json.loads(cli.ok("outcomes", "show", str(by_event["id"]), "--json").stdout)
    assert by_event == by_id and by_id["event"]["out_request_no"] == "R1"
    assert "R1" in cli.ok("outcomes", "show", event_id).stdout
    assert "no outcome wxr.nope" in cli.fails("outcomes", "show", "wxr.nope", code=1)


def test_redeliver_one_or_the_dead(cli: Cli) -> None:
    a, b, c = add(cli, 1, 4), add(cli, 2, 4, T0 + timedelta(hours=2)), add(cli, 3, 4)
    for e in (a, b):
        kill(cli, e)
    since = (T0 + timedelta(hours=1)).isoformat()
    doc = json.loads(cli.ok("outcomes", "redeliver", "--dead", "--since", since, "--json").stdout)
    assert len(doc["redelivered"]) == 1
    assert outbox.find(cli.db, b)["delivery"] == "pending"
    assert outbox.find(cli.db, a)["delivery"] == "dead"
    cli.ok("outcomes", "redeliver", a)
    row = outbox.find(cli.db, a)
    assert (row["delivery"], row["attempts"], row["last_error"]) == ("pending", 0, None)
    assert outbox.find(cli.db, c)["attempts"] == 0


def test_refusals(cli: Cli) -> None:
    assert "--state" in cli.fails("outcomes", "list", "--state", "lost", code=2)
    assert "not both" in cli.fails("outcomes", "redeliver", code=2)
    assert "not both" in cli.fails("outcomes", "redeliver", "1", "--dead", code=2)
    assert "--since goes with --dead" in cli.fails(
        "outcomes", "redeliver", "1", "--since", "2h", code=2
    )
    assert "--since" in cli.fails("outcomes", "list", "--since", "yesterday-ish", code=2)


def deliver(cli: Cli, event_id: str, at: datetime) -> None:
    with cli.db.begin() as conn:
        conn.execute(
            Outcome.__table__.update()
            .where(Outcome.event_id == event_id)
            .values(delivery="delivered", delivered_at=at)
        )


def test_prune_deletes_only_old_delivered_events_in_batches(cli: Cli) -> None:
    now = datetime.now(UTC)
    old = [add(cli, i, 1) for i in range(1, 6)]
    for event_id in old:
        deliver(cli, event_id, now - timedelta(days=40))
    recent = add(cli, 10, 1)
    deliver(cli, recent, now - timedelta(days=2))
    pending, dead = add(cli, 11, 1), add(cli, 12, 1)  # occurred long ago, still owed
    kill(cli, dead)
    assert "at least 86400" in cli.fails("outcomes", "prune", "--delivered-before", "2h")
    assert cli.run("outcomes", "prune", "--delivered-before", "30d", input="n\n").exit_code
    assert cli.count(Outcome) == 8  # declined: nothing deleted
    doc = json.loads(
        cli.ok("outcomes", "prune", "--delivered-before", "30d", "--batch", "2", "--json").stdout
    )
    assert doc["pruned"] == 5 and doc["interrupted"] is False
    left = {
        o["event"]["event_id"]
        for o in json.loads(cli.ok("outcomes", "list", "--json").stdout)["outcomes"]
    }
    assert left == {recent, pending, dead}
    shown = cli.ok("outcomes", "prune", "--delivered-before", "1d", "--yes").stdout
    assert "1 delivered outcome event(s) deleted" in shown  # the one delivered 2 days ago
    assert cli.count(Outcome) == 2  # the pending and the dead one are never pruned
    assert outbox.prune(cli.db, delivered_before=now, batch=10) == 0
