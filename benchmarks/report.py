"""The ratios of one benchmark run, their goals (issue 17), and the printed table."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

LIMIT = 100  # the provider's requests per second per target merchant and endpoint

GOALS = {
    "worker_cpu_vs_crypto_floor": ("≤", 3.0),
    "ratelimit_efficiency": ("≥", 0.95),
    "ratelimit_peak_vs_limit": ("≤", 1.0),
    "client_cost_vs_wechatpayv3": ("≤", 0.4),
    "throughput_vs_floor": ("≥", 0.85),
    "delivery_on_vs_off": ("≥", 0.9),
    "claim_large_vs_small": ("≤", 2.0),
    "rss_growth_pct": ("<", 10.0),
    "peak_requests_per_second": ("≤", float(LIMIT)),
}


def _div(a: float | None, d: float | None) -> float | None:
    return round(a / d, 3) if a is not None and d else None


def _speed(phase: dict[str, Any] | None) -> float | None:
    """The CPU ms of one request's cryptography sampled during ``phase``: how slow this
    shared machine ran then (crypto_floor.During)."""
    return (phase or {}).get("crypto_floor", {}).get("per_request_ms")


def _normalized(
    ratio: float | None, mine: dict[str, Any] | None, theirs: dict[str, Any] | None
) -> float | None:
    """``ratio`` (a rate of ``mine`` ÷ a rate of ``theirs``, phases minutes apart) corrected
    for the machine's speed in each: a phase run while the virtual machine was 20 % slower
    did 20 % less, whatever wxrecon did. Without both samples, the ratio as it is."""
    a, b = _speed(mine), _speed(theirs)
    return round(ratio * a / b, 3) if ratio is not None and a and b else ratio


def ratios(report: dict[str, Any]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    b = report.get("baselines")
    t = report.get("throughput")
    c = report.get("claim")
    limited = report.get("rate_limit")
    if b:
        mine = b["wxrecon"]["cpu_ms_per_request"]
        out["client_cost_vs_wechatpayv3"] = _div(mine, b["wechatpayv3"]["cpu_ms_per_request"])
        out["client_cost_vs_floor"] = _div(mine, b["floor"]["cpu_ms_per_request"])
        out["floor_cost_vs_wechatpayv3"] = _div(
            b["floor"]["cpu_ms_per_request"], b["wechatpayv3"]["cpu_ms_per_request"]
        )
        out["floor_urllib3_cost_vs_wechatpayv3"] = _div(
            b["floor_urllib3"]["cpu_ms_per_request"], b["wechatpayv3"]["cpu_ms_per_request"]
        )
        if t:
            raw = _div(t["requests_per_second"], b["floor"]["requests_per_second"])
            out["throughput_vs_floor"] = _normalized(raw, t, b)
            out["throughput_vs_floor_unnormalized"] = raw
    if c:
        out["claim_large_vs_small"] = _div(c["large"]["median_ms"], c["small"]["median_ms"])
    if t:
        floor = t.get("crypto_floor", {}).get("per_order_ms")
        out["worker_cpu_vs_crypto_floor"] = _div(t["cpu_ms_per_order"], floor)
        if limited and limited.get("cpu_ms_per_request") and t.get("requests"):
            # What a request costs while its grant is waited for, over one that never waits.
            out["ratelimit_cpu_per_request_vs_throughput"] = _div(
                limited["cpu_ms_per_request"], 1000 * t["worker_cpu_seconds"] / t["requests"]
            )
        sim = t.get("simulator_cpu_ms_per_order")
        out["simulator_cpu_ms_per_order"] = sim
        out["simulator_cpu_vs_worker_cpu"] = _div(sim, t["cpu_ms_per_order"])
        out["rss_growth_pct"] = t["rss"].get("growth_pct")
        peaks = [
            *t["peak_per_second"]["by_endpoint"].values(),
            *report.get("hot_merchant", {})
            .get("peak_per_second", {})
            .get("by_endpoint", {})
            .values(),
        ]
        out["peak_requests_per_second"] = float(max(peaks)) if peaks else None
    d, f = report.get("delivery_on"), report.get("delivery_off")
    if d and f:  # interleaved blocks on the same workers (delivery_phase): drift cancels
        out["delivery_on_vs_off"] = _div(d["orders_per_second"], f["orders_per_second"])
        blocks = [*f["blocks"], *d["blocks"]]
        out["delivery_blocks_fastest_vs_slowest"] = _div(max(blocks), min(blocks))
        if t:
            out["delivery_on_vs_throughput_phase"] = _div(
                d["orders_per_second"], t["orders_per_second"]
            )
    if limited:
        out["ratelimit_efficiency"] = limited["efficiency"]["min"]
        for endpoint, e in limited["efficiency"]["by_endpoint"].items():
            out[f"ratelimit_efficiency_{endpoint}"] = e["efficiency"]
        peaks = limited["peak_per_second"]["by_endpoint"].values()
        out["ratelimit_peak_vs_limit"] = _div(
            float(max(peaks)) if peaks else None, limited["efficiency"]["limit"]
        )
    return out


def goals(r: dict[str, float | None]) -> dict[str, dict[str, Any]]:
    out = {}
    for name, (op, target) in GOALS.items():
        value = r.get(name)
        met = None
        if value is not None:
            met = {"≤": value <= target, "≥": value >= target, "<": value < target}[op]
        out[name] = {"value": value, "goal": f"{op} {target:g}", "met": met}
    return out


def render(console: Console, report: dict[str, Any]) -> None:
    t = report.get("throughput")
    h = report.get("hot_merchant")
    b = report.get("baselines")
    c = report.get("claim")
    lim = report.get("rate_limit")
    table = Table(title="wxrecon benchmarks", title_justify="left", header_style="bold")
    table.add_column("figure")
    table.add_column("value", justify="right")
    if t:
        table.add_row("orders (throughput phase)", f"{t['final']:,}/{t['orders']:,} final")
        table.add_row("orders finalised per second", f"{t['orders_per_second']:.1f}")
        table.add_row("provider requests per second", f"{t['requests_per_second']:.1f}")
        table.add_row(
            "intake → final p50 / p99",
            f"{t['latency_ms']['p50'] / 1000:.2f} s / {t['latency_ms']['p99'] / 1000:.2f} s",
        )
        table.add_row("worker CPU per order", f"{t['cpu_ms_per_order']:.2f} ms")
        if "crypto_floor" in t:
            f = t["crypto_floor"]
            ops = f["operation_ms"]
            table.add_row(
                f"crypto floor per order ({f.get('when', 'same run')})",
                f"{f['per_order_ms']:.2f} ms ({f['requests_per_order']:.2f} requests; sign "
                f"{ops['sign']:.3f}, decrypt {ops['oaep_decrypt']:.3f} ms)",
            )
        if "crypto_floor_after" in t:
            table.add_row(
                "crypto floor per order (after the phase)",
                f"{t['crypto_floor_after']['per_order_ms']:.2f} ms",
            )
        if t.get("simulator_cpu_ms_per_order") is not None:
            table.add_row("simulator CPU per order", f"{t['simulator_cpu_ms_per_order']:.2f} ms")
        if "load_average" in t:
            table.add_row("load average (start, end)", ", ".join(map(str, t["load_average"])))
        table.add_row(
            "worker RSS peak / growth",
            f"{t['rss']['peak_mb']:.0f} MB / {t['rss']['growth_pct']:+.1f} %",
        )
        table.add_row(
            "peak requests/s of any merchant",
            str(max(t["peak_per_second"]["by_endpoint"].values(), default=0)),
        )
    if h:
        peaks = h["peak_per_second"]["by_endpoint"]
        table.add_row(
            "hot merchant: peak requests/s",
            ", ".join(f"{k} {v}" for k, v in sorted(peaks.items())),
        )
        table.add_row(
            "hot merchant: sustained requests/s",
            f"{h['requests_per_second']:.1f} (two endpoints)",
        )
    if lim:
        e = lim["efficiency"]
        for endpoint, v in sorted(e["by_endpoint"].items()):
            rates = [r for r in v["sustained_per_merchant"].values() if r is not None]
            table.add_row(
                f"limit {e['limit']}/s, {endpoint}: sustained per merchant",
                ", ".join(f"{r:.1f}" for r in rates) + f" (efficiency {v['efficiency']})",
            )
        table.add_row(
            f"limit {e['limit']}/s: peak in any second, 429s",
            ", ".join(f"{k} {v}" for k, v in sorted(lim["peak_per_second"]["by_endpoint"].items()))
            + f"; {lim['refused_429']}",
        )
        if "cpu_ms_per_request" in lim:
            table.add_row(
                f"limit {e['limit']}/s: worker CPU per provider request",
                f"{lim['cpu_ms_per_request']:.2f} ms",
            )
    d, f = report.get("delivery_on"), report.get("delivery_off")
    if d:
        table.add_row(
            "delivery on: orders/s (each block), delivered, all in after",
            f"{d['orders_per_second']:.1f} ({', '.join(f'{r:.0f}' for r in d['blocks'])}), "
            f"{d['delivered']:,}/{d['final']:,}, {d['all_delivered_after_last_final_s']} s",
        )
        if "cpu_ms_per_event" in d:
            table.add_row(
                "delivery on: CPU per event (relay, receiver)",
                ", ".join(f"{v:.2f} ms" for v in d["cpu_ms_per_event"].values()),
            )
    if f:
        table.add_row(
            "delivery off: orders/s (each block)",
            f"{f['orders_per_second']:.1f} ({', '.join(f'{r:.0f}' for r in f['blocks'])})",
        )
    for name, s in (("on", d), ("off", f)):
        spent = (s or {}).get("machine_cpu_ms_per_order")
        if spent:
            table.add_row(
                f"delivery {name}: machine CPU per order (busy, PostgreSQL, steal)",
                ", ".join(f"{spent.get(k, 0.0):.2f}" for k in ("busy", "postgres", "steal"))
                + " ms",
            )
    if b:
        for name in ("floor", "floor_urllib3", "wechatpayv3", "wxrecon"):
            r = b[name]
            table.add_row(
                f"client {name}: CPU per request, req/s",
                f"{r['cpu_ms_per_request']:.2f} ms, {r['requests_per_second']:.0f}"
                + (f" ({r['errors']} errors)" if r["errors"] else ""),
            )
    if c:
        for size in ("small", "large"):
            table.add_row(
                f"claim {c[size]['batch']} of {c[size]['rows']:,} rows (median)",
                f"{c[size]['median_ms']:.2f} ms",
            )
    console.print(table)
    g = Table(title="goals", title_justify="left", header_style="bold")
    for col in ("ratio", "value", "goal", "met"):
        g.add_column(col)
    for name, v in report.get("goals", {}).items():
        met = {True: "[green]yes[/]", False: "[red]no[/]", None: "-"}[v["met"]]
        g.add_row(name, "-" if v["value"] is None else f"{v['value']:g}", v["goal"], met)
    for name, v in report.get("ratios", {}).items():
        if name not in report.get("goals", {}):
            g.add_row(name, "-" if v is None else f"{v:g}", "", "")
    console.print(g)
