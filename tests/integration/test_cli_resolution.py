"""``reduction|bill resolve / approve / withdraw / resolutions``: exit codes and one-line
errors, against the simulator (the fresh signed query) on a migrated SQLite database."""

from __future__ import annotations

import json

import pytest

from tests.fixtures_cli import Cli
from tests.fixtures_sim import sim_env
from tests.integration.test_resolution import EVIDENCE, bill_in_review, reduction_in_review
from wxrecon.simulator import Simulator


@pytest.fixture
def live(cli: Cli, simulator: Simulator) -> Cli:
    cli.setenv(**sim_env(simulator))
    return cli


def state(cli: Cli, kind: str, order_id: int) -> str:
    data = json.loads(cli.ok(kind, "show", str(order_id), "--json").stdout)
    return str(data["state"])


def test_input_is_refused_before_anything_is_asked(live: Cli) -> None:
    order_id = str(reduction_in_review(live.db, "CLIRES1"))
    line = live.fails("reduction", "resolve", order_id, "--state", "SUCCESS", code=2)
    assert "--evidence" in line
    line = live.fails(
        "reduction", "resolve", order_id, "--state", "SUCCESS", "--evidence", "short", code=2
    )
    assert line.startswith("error: evidence is required")
    line = live.fails(
        "reduction", "resolve", order_id, "--state", "CLOSED", "--evidence", EVIDENCE, code=2
    )
    assert "one of FAILED, SUCCESS" in line
    args = ("reduction", "resolve", order_id, "--state", "FAILED", "--evidence", EVIDENCE)
    assert "--yes" in live.fails(*args, "--json", code=2)
    assert "nothing proposed" in live.fails(*args, input="n\n", code=1)
    assert json.loads(live.ok("reduction", "resolutions", "--json").stdout)["resolutions"] == []


def test_an_order_not_in_review_is_refused(live: Cli) -> None:
    from tests.integration.test_resolution import request
    from wxrecon.engine.intake import intake_reduction

    with live.db.transaction() as session:
        order = intake_reduction(session, request("CLIRES2"))
    line = live.fails(
        "reduction", "resolve", str(order.order_id), "--state", "FAILED",
        "--evidence", EVIDENCE, "--yes", code=1,
    )  # fmt: skip
    assert "not NEEDS_REVIEW" in line
    assert "no reduction" in live.fails(
        "reduction", "resolve", "NOSUCH", "--state", "FAILED", "--evidence", EVIDENCE, code=1
    )


def test_resolve_then_approve_by_another(live: Cli) -> None:
    order_id = str(reduction_in_review(live.db, "CLIRES3", 2500))
    out = live.ok(
        "reduction", "resolve", order_id, "--state", "SUCCESS", "--evidence", EVIDENCE,
        "--actor", "alice", "--yes",
    ).stdout  # fmt: skip
    assert "pending" in out and "approve" in out
    assert state(live, "reduction", int(order_id)) == "NEEDS_REVIEW"
    [pending] = json.loads(live.ok("reduction", "resolutions", "--pending", "--json").stdout)[
        "resolutions"
    ]
    assert pending["proposed_by"] == "alice" and pending["amount"] == 2500

    line = live.fails("reduction", "approve", order_id, "--actor", "alice", "--yes", code=1)
    assert "a different person must approve" in line
    assert state(live, "reduction", int(order_id)) == "NEEDS_REVIEW"

    done = json.loads(
        live.ok("reduction", "approve", order_id, "--actor", "bob", "--yes", "--json").stdout
    )
    assert done["status"] == "approved" and done["order_state"] == "SUCCESS"
    assert state(live, "reduction", int(order_id)) == "SUCCESS"
    shown = live.ok("reduction", "show", order_id).stdout
    assert "approved by bob" in shown
    assert "no pending" in live.fails("reduction", "approve", order_id, "--actor", "c", "--yes")


def test_withdraw_and_bills(live: Cli, sim_admin) -> None:
    sim_admin.seed_bill("CLIBILL1", 300, final_after=10_000)
    order_id = str(bill_in_review(live.db, "CLIBILL1"))
    live.ok(
        "bill", "resolve", order_id, "--state", "CANCELLED", "--evidence", EVIDENCE,
        "--actor", "alice", "--yes",
    )  # fmt: skip
    out = live.ok("bill", "withdraw", order_id, "--actor", "alice", "--why", "mistake").stdout
    assert "withdrawn" in out
    assert "no pending" in live.fails("bill", "withdraw", order_id, code=1)
    live.ok(
        "bill", "resolve", order_id, "--state", "CLOSED", "--evidence", EVIDENCE,
        "--actor", "alice", "--yes",
    )  # fmt: skip
    live.ok("bill", "approve", order_id, "--actor", "bob", "--yes")
    assert state(live, "bill", int(order_id)) == "CLOSED"
    listed = live.ok("bill", "resolutions", order_id).stdout
    assert "approved" in listed and "withdrawn" in listed
    assert "--mchid" in live.fails("bill", "resolutions", "--mchid", "1900000001", code=2)
