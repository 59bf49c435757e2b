"""The demo's live table, rendered as a newcomer's 80-column terminal shows it."""

from __future__ import annotations

from rich.console import Console

from wxrecon.cli.output import fen
from wxrecon.demo import mix, view


def tracked_orders() -> list[view.Tracked]:
    plan = mix.plan(40, "ABCD1234")
    states = ["SUCCESS", "FAILED", "PROCESSING", "NEEDS_REVIEW", "SUBMITTED", "REJECTED"]
    items = [
        view.Tracked(
            "reduction",
            r.out_request_no,
            r.category,
            r.mchid,
            r.amount,
            state=states[i % len(states)],
            attempts=12,
            first_seen=0.0,
            detail="ReadTimeout: the provider did not answer within 3s",
        )
        for i, r in enumerate(plan.reductions[:12])
    ]
    bill_states = ["WAIT_USER_CONFIRM", "CANCELLED", "ACCEPTED", "CANCELING", "CLOSED", "SUCCESS"]
    items += [
        view.Tracked(
            "bill", b.out_bill_no, mix.BILL, "-", b.amount, state=s, first_seen=0.0, attempts=3
        )
        for b, s in zip(plan.bills[:6], bill_states, strict=True)
    ]
    # the widest amount the table promises to show whole
    items.append(
        view.Tracked("reduction", "DEMOABCD1234R00099", mix.NORMAL, "1900000101", 9_999_999)
    )
    return items


def render(width: int, items: list[view.Tracked]) -> str:
    console = Console(width=width, record=True, force_terminal=False, color_system=None)
    console.print(
        view.live_view(
            items,
            run_id="ABCD1234",
            sim_url="http://127.0.0.1:45678",
            phase="checking against the provider's ground truth",
            elapsed=152.0,
            faults_fired={"apply_then_500": 3, "system_error": 7, "malformed_json": 1},
            outcomes=(12, 15, 2),
            width=width,
            now=150.0,
        )
    )
    return console.export_text()


def test_every_state_and_amount_is_whole_at_80_columns():
    items = tracked_orders()
    text = render(80, items)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "…" not in "".join(line for line in lines if line.startswith(("R0", "B0")))
    rows = {line.split()[0]: line for line in lines if line.startswith(("R0", "B0"))}
    assert len(rows) == 18  # SHOWN_ROWS
    for t in items:
        number = view.short_number(t.number, "ABCD1234")
        if number in rows:
            # the full state name and the full amount, as their own words on the row
            assert f" {t.state} " in f"{rows[number]} ", rows[number]
            assert f" {fen(t.amount)} " in f" {rows[number]} ", rows[number]
    assert "¥99,999.99" in text
    assert "WAIT_USER_CONFIRM" in text and "NEEDS_REVIEW" in text
    assert "… and 1 more" in text
    # The demo's webhook receiver's count, on one line that fits.
    final = sum(t.final for t in items)
    told = [line for line in lines if "outcomes received" in line]
    assert len(told) == 1 and f"12/{final} final orders told, 15 events" in told[0], told
    assert "2 duplicates dropped" in told[0]


def test_a_wider_terminal_also_shows_the_detail():
    items = tracked_orders()
    assert "ReadTimeout" not in render(80, items)
    wide = render(120, items)
    assert "ReadTimeout: the provider" in wide
    assert max(len(line) for line in wide.splitlines()) <= 120


def test_the_order_number_drops_only_the_run_id():
    assert view.short_number("DEMOABCD1234R00007", "ABCD1234") == "R00007"
    assert view.short_number("PEN20260101A", "ABCD1234") == "PEN20260101A"
