"""``wxrecon sim init|serve`` (also ``python -m wxrecon.simulator init|serve``)."""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from wxrecon.config import parse_duration
from wxrecon.simulator.faults import FaultRule, FaultSpecError
from wxrecon.simulator.material import (
    DEFAULT_MCHID,
    DEFAULT_PORT,
    DEFAULT_SP_MCHID,
    LedgerSeed,
    SimDirError,
    init_dir,
)
from wxrecon.simulator.state import BusinessConfig

app = typer.Typer(
    help="A faithful local simulator of the four WeChat Pay APIv3 endpoints, with faults.",
    no_args_is_help=True,
    add_completion=False,
)


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {' '.join(message.splitlines())}", err=True)
    return typer.Exit(2)


def _duration(text: str, option: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise _fail(f"{option}: {exc}") from None


@app.command()
def init(
    directory: Annotated[
        Path, typer.Argument(help="Directory to create (keys, certificates, client.env).")
    ],
    ledger: Annotated[
        list[str] | None,
        typer.Option(
            "--ledger", help="Seed a quota ledger: MCHID:BAL_ACCOUNT_NO:BALANCE (fen). Repeatable."
        ),
    ] = None,
    cert_mode: Annotated[
        bool,
        typer.Option(
            "--cert-mode", help="The merchant uses platform certificates, not the public key."
        ),
    ] = False,
    port: Annotated[
        int, typer.Option(help="Port written into client.env and used by serve.")
    ] = DEFAULT_PORT,
    mchid: Annotated[
        str, typer.Option(help="The ordinary merchant's mchid (reductions, balances).")
    ] = DEFAULT_MCHID,
    sp_mchid: Annotated[
        str,
        typer.Option(help="The platform merchant's mchid (bill queries; its own keys)."),
    ] = DEFAULT_SP_MCHID,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing simulator directory.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Create keys, certificates, an optional ledger seed and DIR/client.env."""
    try:
        seeds = [LedgerSeed.parse(spec) for spec in ledger or []]
        sim = init_dir(
            directory,
            mchid=mchid,
            sp_mchid=sp_mchid,
            port=port,
            cert_mode=cert_mode,
            ledgers=seeds,
            force=force,
        )
    except SimDirError as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:
        raise _fail(f"{directory}: {exc.strerror}") from None
    summary = {
        "dir": str(sim.path),
        "mchid": sim.mchid,
        "mch_cert_serial": sim.mch_cert_serial,
        "sp_mchid": sim.sp_mchid,
        "sp_cert_serial": sim.sp_cert_serial,
        "wechatpay_public_key_id": sim.wechatpay_public_key_id,
        "platform_cert_serial": sim.platform_cert_serial,
        "cert_mode": sim.cert_mode,
        "base_url": sim.base_url,
        "ledgers": len(seeds),
        "client_env": str(sim.file("client.env")),
    }
    if as_json:
        typer.echo(json.dumps(summary))
        return
    typer.echo(f"simulator directory {sim.path}")
    typer.echo(f"  ordinary merchant {sim.mchid}, API certificate serial {sim.mch_cert_serial}")
    typer.echo(f"  platform merchant {sim.sp_mchid}, API certificate serial {sim.sp_cert_serial}")
    mode = (
        f"platform certificate {sim.platform_cert_serial}"
        if cert_mode
        else f"public key {sim.wechatpay_public_key_id}"
    )
    typer.echo(f"  WeChat Pay signs with the {mode}")
    typer.echo(f"  {len(seeds)} ledger(s) seeded")
    typer.echo(f"  client settings: {sim.file('client.env')}")
    typer.echo(f"next: wxrecon sim serve --dir {sim.path}")


@app.command()
def serve(
    directory: Annotated[Path, typer.Option("--dir", help="A directory made by `sim init`.")],
    host: Annotated[str | None, typer.Option(help="Address to bind (default: loopback).")] = None,
    port: Annotated[
        int | None, typer.Option(help="Port (default: the one given to init; 0 picks a free one).")
    ] = None,
    state: Annotated[
        Path | None,
        typer.Option("--state", help="Keep ledgers, orders and bills in FILE across restarts."),
    ] = None,
    settle_delay: Annotated[
        str, typer.Option(help="PROCESSING lasts a random time in MIN:MAX (e.g. 1s:5s, 200ms).")
    ] = "1s:5s",
    fail_rate: Annotated[
        float, typer.Option(help="Odds that a settling reduction FAILS (not for balance).")
    ] = 0.0,
    fail_reason: Annotated[
        str, typer.Option(help="fail_reason of those failures.")
    ] = "TIME_OUT_CLOSED",
    bill_confirm_after: Annotated[
        str, typer.Option(help="Bills: ACCEPTED → WAIT_USER_CONFIRM after.")
    ] = "2s",
    bill_final_after: Annotated[
        str, typer.Option(help="Bills: final state after acceptance.")
    ] = "5s",
    rate_limit: Annotated[
        int, typer.Option(help="Requests/s per target mchid per endpoint (0: none).")
    ] = 100,
    idle_timeout: Annotated[
        str, typer.Option(help="Close idle keep-alive connections after.")
    ] = "8s",
    fault: Annotated[
        list[str] | None,
        typer.Option(
            "--fault",
            help="KIND=PROB|1/N@ENDPOINT#TIMES (all but KIND optional), repeatable; see README.",
        ),
    ] = None,
    docs_literal: Annotated[
        bool,
        typer.Option(
            "--docs-literal",
            help="Shape every 2xx answer like the pages' examples (placeholders, optional "
            "fields left out or empty, *_UNKNOWN on in-flight answers, WXVALUE receivers).",
        ),
    ] = False,
    latency: Annotated[str, typer.Option(help="Delay added by a latency fault.")] = "200ms",
    hang: Annotated[str, typer.Option(help="How long a hang fault holds a connection.")] = "60s",
    seed: Annotated[
        int | None, typer.Option(help="Random seed (settle delays, fault draws).")
    ] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG logs every request.")] = "INFO",
) -> None:
    """Serve the four endpoints and the admin API until interrupted."""
    from wxrecon.simulator.server import Simulator

    lo_text, _, hi_text = settle_delay.partition(":")
    lo = _duration(lo_text, "--settle-delay")
    hi = _duration(hi_text, "--settle-delay") if hi_text else lo
    config = BusinessConfig(
        settle_delay_min=lo,
        settle_delay_max=hi,
        fail_rate=fail_rate,
        fail_reason=fail_reason,
        bill_confirm_after=_duration(bill_confirm_after, "--bill-confirm-after"),
        bill_final_after=_duration(bill_final_after, "--bill-final-after"),
    )
    try:
        config.validate()
        rules = [FaultRule.parse(spec) for spec in fault or []]
    except (ValueError, FaultSpecError) as exc:
        raise _fail(str(exc)) from None
    if rate_limit < 0:
        raise _fail("--rate-limit must not be negative")
    logging.basicConfig(
        level=getattr(logging, log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stdout,
    )
    try:
        sim = Simulator(
            directory,
            config=config,
            faults=rules,
            rate_limit=rate_limit,
            idle_timeout=_duration(idle_timeout, "--idle-timeout"),
            latency=_duration(latency, "--latency"),
            hang=_duration(hang, "--hang"),
            state_file=state,
            seed=seed,
            host=host,
            port=port,
            docs_literal=docs_literal,
        )
        sim.bind()
    except SimDirError as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:
        raise _fail(f"cannot listen: {exc.strerror}") from None
    if sim.url != sim.dir.base_url:
        sim.dir.write_client_env(sim.url)  # clients reading client.env find this very server

    def _stop(signum: int, frame: FrameType | None) -> None:
        sim.stopping.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    sim.start()
    active = ", ".join(f"{r.kind}={r.probability}@{r.endpoint}" for r in rules) or "none"
    mode = "; docs-literal answers" if docs_literal else ""
    print(
        f"wxrecon simulator listening on {sim.url} (mchid {sim.dir.mchid}; faults: {active}{mode})",
        flush=True,
    )
    try:
        sim.wait()
    finally:
        sim.stop()
        print("wxrecon simulator stopped", flush=True)
