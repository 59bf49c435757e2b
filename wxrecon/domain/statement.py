"""The daily statement as data: pure aggregation of what the store read for one day.

Per target merchant and ledger: the reductions that reached a final state during the day
(counts and exact integer-fen sums by state, from the events table's transitions), what is
in flight and in review now (review with its age), and the day's snapshots and
discrepancies. The day is a calendar day in one named zone (the provider's times are
+08:00, so Asia/Shanghai by default); the statement says which.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

Key = tuple[str, str]  # (mchid, ledger label)


def day_bounds(day: date, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """[start, end) of ``day`` in ``zone`` (a DST day is 23 or 25 hours long)."""
    start = datetime.combine(day, time(0), tzinfo=zone)
    end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=zone)
    return start, end


def build(
    *,
    day: date,
    zone: ZoneInfo,
    finals: Iterable[Mapping[str, Any]],
    in_flight: Iterable[Mapping[str, Any]],
    review: Iterable[Mapping[str, Any]],
    snapshots: Iterable[Mapping[str, Any]],
    discrepancies: Iterable[Mapping[str, Any]],
    label: Callable[[str], str],
    now: datetime,
) -> dict[str, Any]:
    """The statement document. ``label`` turns an order's ledger (its keyed hash) into the
    ledger's label; snapshots and discrepancies come labelled (``ledger`` key) already."""
    ledgers: dict[Key, dict[str, Any]] = defaultdict(_empty)
    for f in finals:
        by = ledgers[(f["mchid"], label(f["ledger"]))]["final"]
        entry = by.setdefault(f["state"], {"count": 0, "amount": 0})
        entry["count"] += 1
        entry["amount"] += int(f["amount"])
    for o in in_flight:
        entry = ledgers[(o["mchid"], label(o["ledger"]))]["in_flight"]
        entry["count"] += 1
        entry["amount"] += int(o["amount"])
    for o in review:
        ledgers[(o["mchid"], label(o["ledger"]))]["needs_review"].append(
            {
                "order_id": o["order_id"],
                "out_request_no": o["out_request_no"],
                "amount": int(o["amount"]),
                "age_seconds": int((now - o["updated_at"]).total_seconds()),
            }
        )
    for s in snapshots:
        ledgers[(s["mchid"], s["ledger"])]["snapshots"].append(
            {
                "id": s["id"],
                "balance": s["balance"],
                "in_transit": s["in_transit"],
                "taken_at": s["taken_at"].astimezone(zone).isoformat(),
            }
        )
    for d in discrepancies:
        ledgers[(d["mchid"], d["ledger"])]["discrepancies"].append(
            {
                "id": d["id"],
                "kind": d["kind"],
                "amount": int(d["amount"]),
                "window_start": d["window_start"].astimezone(zone).isoformat(),
                "window_end": d["window_end"].astimezone(zone).isoformat(),
                "order_ids": list(d["order_ids"]),
            }
        )
    start, end = day_bounds(day, zone)
    return {
        "date": day.isoformat(),
        "timezone": zone.key,
        "start": start.isoformat(),
        "end": end.isoformat(),
        "generated_at": now.astimezone(zone).isoformat(),
        "ledgers": [
            {"mchid": mchid, "ledger": ledger, **ledgers[(mchid, ledger)]}
            for mchid, ledger in sorted(ledgers)
        ],
    }


def _empty() -> dict[str, Any]:
    return {
        "final": {},
        "in_flight": {"count": 0, "amount": 0},
        "needs_review": [],
        "snapshots": [],
        "discrepancies": [],
    }


def rows(doc: Mapping[str, Any]) -> list[list[Any]]:
    """The statement flat (the table and CSV): one line per ledger and figure."""
    out: list[list[Any]] = []
    for item in doc["ledgers"]:
        head = [item["mchid"], item["ledger"]]
        for state, entry in sorted(item["final"].items()):
            out.append([*head, f"final {state}", entry["count"], entry["amount"], ""])
        flight = item["in_flight"]
        out.append([*head, "in flight", flight["count"], flight["amount"], ""])
        for r in item["needs_review"]:
            age = f"age {r['age_seconds']}s"
            out.append([*head, "NEEDS_REVIEW", 1, r["amount"], f"{r['out_request_no']} {age}"])
        snaps = item["snapshots"]
        if snaps:
            span = f"{snaps[0]['balance']} -> {snaps[-1]['balance']}"
            out.append([*head, "snapshots", len(snaps), "", f"balance {span}"])
        for d in item["discrepancies"]:
            window = f"{d['window_start']} .. {d['window_end']}"
            out.append([*head, d["kind"], 1, d["amount"], window])
    return out


COLUMNS = ["mchid", "ledger", "figure", "count", "amount_fen", "detail"]
