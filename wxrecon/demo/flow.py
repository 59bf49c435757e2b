"""The ``wxrecon demo`` flow: start the rig (:class:`wxrecon.demo.run.Demo`), hand in the
slow orders while the provider settles slowly, then the rest and the bills, wait until all
are final and told to the webhook receiver, and judge them against the simulator's ground
truth."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from rich.live import Live

from wxrecon.demo import mix
from wxrecon.demo import verdict as verdicts
from wxrecon.demo.hooks import Hooks
from wxrecon.demo.procs import Supervisor
from wxrecon.demo.run import FAST_SETTLE, SLOW_SETTLE, Demo
from wxrecon.demo.view import Tracked


def _track(demo: Demo) -> None:
    for r in demo.plan.reductions:
        demo.tracked[("reduction", r.out_request_no)] = Tracked(
            "reduction", r.out_request_no, r.category, r.mchid, r.amount
        )
    for b in demo.plan.bills:
        demo.tracked[("bill", b.out_bill_no)] = Tracked(
            "bill", b.out_bill_no, mix.BILL, "-", b.amount
        )


def _enqueue_slow(
    demo: Demo, db: Any, admin: Any, slow: list[Any], tick: Any, deadline: float
) -> None:
    """Slow orders are submitted while the provider settles slowly; then it speeds up."""
    demo.phase = "enqueueing slow orders"
    admin.set_config(settle_delay_min=SLOW_SETTLE[0], settle_delay_max=SLOW_SETTLE[1])
    demo.enqueue(db, slow)
    wanted = {r.out_request_no for r in slow}
    seen_by = min(time.monotonic() + 20, deadline)
    while time.monotonic() < seen_by:
        tick()
        if wanted <= {r["out_request_no"] for r in admin.reductions()}:
            break
        time.sleep(0.3)
    admin.set_config(settle_delay_min=FAST_SETTLE[0], settle_delay_max=FAST_SETTLE[1])


def run(demo: Demo, sup: Supervisor) -> dict[str, Any]:
    from wxrecon.store import db as dbmod

    console = demo.out.console
    demo.phase = "starting the broker"
    demo.hooks = Hooks().start()
    demo.start_broker(sup)
    admin = demo.start_simulator(sup)
    settings = demo.adopt_settings()
    demo.phase = "db upgrade"
    dbmod.upgrade(settings.database_url)
    from wxrecon.store.sealed import keyring

    db = dbmod.Database(settings.database_url, keyring=keyring(settings))  # the sim's keys
    demo.start_workers(sup)
    _track(demo)
    slow = [r for r in demo.plan.reductions if r.category == mix.SLOW_SETTLE]
    rest = [r for r in demo.plan.reductions if r.category != mix.SLOW_SETTLE]
    deadline = time.monotonic() + demo.timeout

    live = (
        Live(demo.render(), console=console, refresh_per_second=4, transient=False)
        if (demo.live)
        else None
    )

    def tick() -> None:
        sup.check()
        demo.refresh(db)
        with contextlib.suppress(Exception):  # the view only; the verdict asks again
            demo.faults_fired = {r["kind"]: r["fired"] for r in admin.faults() if r.get("fired")}
        if live is not None:
            live.update(demo.render())

    try:
        if live is not None:
            live.start()
        # Slow orders are submitted while the provider settles slowly; then it speeds up.
        if slow:
            _enqueue_slow(demo, db, admin, slow, tick, deadline)
        demo.phase = "enqueueing"
        demo.enqueue(db, rest)
        demo.enqueue_bills(db, admin)
        demo.phase = "reconciling"
        while time.monotonic() < deadline:
            tick()
            if demo.all_final() or demo.stuck():
                break
            time.sleep(0.4)
        demo.phase = "waiting for the outcomes to arrive"
        told_by = min(time.monotonic() + 30, deadline + 30)
        while demo.undelivered() and time.monotonic() < told_by:
            tick()
            time.sleep(0.3)
        tick()
        demo.phase = "checking against the provider's ground truth"
        if live is not None:
            live.update(demo.render())
    finally:
        if live is not None:
            live.stop()
    result = verdicts.verdict(demo.tracked.values(), admin)
    left = [t for t in demo.tracked.values() if not t.final]
    if left:
        result.problems.insert(
            0,
            f"{len(left)} order(s) not final after {demo.timeout:g}s (e.g. {left[0].number} "
            f"{left[0].state})",
        )
    untold = demo.undelivered()
    if untold:
        result.problems.append(
            f"{len(untold)} final order(s) never told to the webhook receiver (e.g. "
            f"{untold[0].number} {untold[0].state})"
        )
    summary = verdicts.summary(demo, result, admin, time.monotonic() - demo.started)
    told = demo.outcomes()
    if told is not None:
        summary["outcomes"] = {
            "final_orders_told": told[0],
            "events_received": told[1],
            "duplicates": told[2],
        }
    if demo.hooks is not None:
        demo.hooks.close()
    admin.close()
    db.dispose()
    return summary
