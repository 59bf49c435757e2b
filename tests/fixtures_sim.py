"""Simulator fixtures for every test that talks to the (simulated) provider.

Stable interface, used beyond the simulator's own tests:

- ``sim_dir``: a fresh simulator directory in ``tmp_path`` (keys made once per session), with
  one seeded ledger ``SIM_MCHID`` / ``SIM_BAL_ACCOUNT_NO`` holding ``SIM_BALANCE`` fen.
- ``simulator``: a ``Simulator`` serving that directory in-process on an ephemeral port, with
  fresh state and short timings (``FAST``: reductions settle in 50–150 ms, bills move every
  100 ms); stopped after the test.
- ``sim_admin``: an ``AdminClient`` for it (ledgers, bills, reductions, faults, stats).
- ``sim_client``: a ``WeChatPayClient`` for it with the merchant's credentials, a 1 s read
  timeout and 2 attempts with no waiting between them.
- ``make_sim_client(sim, ...)``: the same, with your own timeouts/retries/mode.
- ``sim_env(sim_or_process)``: the ``WXRECON_*`` settings (a dict) of a client for a running
  in-process or subprocess simulator, for child processes (workers, CLI runs).
- ``start_sim_process(sim_dir, ...)``: ``python -m wxrecon.simulator serve`` as a child
  process (``wxrecon.simulator.start_subprocess``); stop it with ``.stop()``.
- ``sim_reduction(out_request_no, amount)``: a valid request against the seeded ledger;
  ``wait_settled(client, out_request_no)`` polls until it is final; ``wait_for`` polls anything.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.services import SEALING_ENV
from wxrecon.simulator import (
    AdminClient,
    BusinessConfig,
    KeyMaterial,
    LedgerSeed,
    SimDir,
    Simulator,
    SimulatorProcess,
    init_dir,
    start_subprocess,
)
from wxrecon.simulator.layout import SEALING_JSON
from wxrecon.wechatpay.client import RetryPolicy, Timeouts, WeChatPayClient
from wxrecon.wechatpay.resources import SpecialReduction, SpecialReductionRequest

T = TypeVar("T")

SIM_MCHID = "1900000001"
SIM_BAL_ACCOUNT_NO = "6222000011112222"
SIM_BALANCE = 1_000_000

FAST: dict[str, Any] = {
    "settle_delay_min": 0.05,
    "settle_delay_max": 0.15,
    "bill_confirm_after": 0.1,
    "bill_final_after": 0.2,
}


SIM_SP_MCHID = "1900000009"


@cache
def sim_material(mchid: str = SIM_MCHID) -> KeyMaterial:
    """Keys and certificates, generated once per session (per mchid)."""
    return KeyMaterial.generate(mchid)


def make_sim_dir(
    path: Path,
    *,
    cert_mode: bool = False,
    ledgers: list[LedgerSeed] | None = None,
    mchid: str = SIM_MCHID,
    roles: bool = False,
) -> SimDir:
    """``roles``: an ordinary and a platform merchant, as ``sim init`` makes; else one merchant
    allowed everything (the single-identity tests)."""
    seeds = ledgers if ledgers is not None else [LedgerSeed(mchid, SIM_BAL_ACCOUNT_NO, SIM_BALANCE)]
    sim = init_dir(
        path,
        mchid=mchid,
        cert_mode=cert_mode,
        ledgers=seeds,
        material=sim_material(mchid),
        sp_mchid=SIM_SP_MCHID if roles else None,
        sp_material=sp_material() if roles else None,
    )
    # The suite's sealing keys, so child processes configured from client.env and this
    # process (conftest) seal and open with the same ones.
    sim.file(SEALING_JSON).write_text(json.dumps(SEALING_ENV))
    sim.write_client_env()
    return sim


@cache
def sp_material() -> tuple[bytes, bytes]:
    """The platform merchant's key and certificate, generated once per session."""
    return KeyMaterial.merchant(SIM_SP_MCHID)


def start_simulator(directory: SimDir, **kw: Any) -> Simulator:
    """An in-process simulator on an ephemeral port with ``FAST`` timings (override by ``kw``)."""
    config = kw.pop("config", None) or BusinessConfig(**FAST)
    kw.setdefault("hang", 5.0)
    kw.setdefault("latency", 0.05)
    return Simulator(directory, config=config, port=0, **kw).start()


def make_sim_client(
    sim: Simulator | SimulatorProcess,
    *,
    cert_mode: bool | None = None,
    attempts: int = 2,
    read_timeout: float = 1.0,
    **kw: Any,
) -> WeChatPayClient:
    """A client with the simulator's merchant credentials (``cert_mode``: platform certs only)."""
    assert sim.url, "the simulator is not running"
    return WeChatPayClient(
        sim.dir.credentials(cert_mode=cert_mode),
        base_url=sim.url,
        backup_url=None,
        timeouts=Timeouts(connect=1.0, read=read_timeout),
        retry=RetryPolicy(attempts=attempts, initial_wait=0, max_wait=0),
        **kw,
    )


def sim_env(sim: Simulator | SimulatorProcess) -> dict[str, str]:
    """``WXRECON_*`` settings for a client of this running simulator."""
    return sim.client_env()


def start_sim_process(directory: SimDir, *args: str, **kw: Any) -> SimulatorProcess:
    """The simulator as a child process on a free port; extra CLI ``args`` (e.g. ``--fault``)."""
    base = [
        "--settle-delay",
        "50ms:150ms",
        "--bill-confirm-after",
        "100ms",
        "--bill-final-after",
        "200ms",
    ]
    return start_subprocess(directory, args=[*base, *args], **kw)


def wait_for(probe: Callable[[], T], done: Callable[[T], bool], limit: float = 10.0) -> T:
    """Poll until ``done``; the limit only guards against a hang, it is not what is tested."""
    deadline = time.monotonic() + limit
    while True:
        value = probe()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.02)


def sim_reduction(out_request_no: str, amount: int = 100, **kw: Any) -> SpecialReductionRequest:
    """A valid special reduction on the seeded ledger (override any field by keyword)."""
    fields: dict[str, Any] = {
        "mchid": SIM_MCHID,
        "bal_account_no": SIM_BAL_ACCOUNT_NO,
        "out_request_no": out_request_no,
        "reduction_type": "FINANCIAL_PENALTY",
        "amount": amount,
        "reason": "case 2026-001",
    }
    fields.update(kw)
    return SpecialReductionRequest.create(**fields)


def wait_settled(
    client: WeChatPayClient,
    out_request_no: str,
    *,
    bal_account_no: str = SIM_BAL_ACCOUNT_NO,
    mchid: str = SIM_MCHID,
) -> SpecialReduction:
    """Query until the reduction is final (or 10 s passed) and return the last answer."""
    return wait_for(
        lambda: client.query_special_reduction(
            out_request_no, mchid=mchid, bal_account_no=bal_account_no
        ),
        lambda r: r.state.final,
    )


@pytest.fixture
def sim_dir(tmp_path: Path) -> SimDir:
    return make_sim_dir(tmp_path / "sim")


@pytest.fixture
def simulator(sim_dir: SimDir) -> Iterator[Simulator]:
    sim = start_simulator(sim_dir)
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture
def sim_admin(simulator: Simulator) -> Iterator[AdminClient]:
    with simulator.admin() as admin:
        yield admin


@pytest.fixture
def sim_client(simulator: Simulator) -> Iterator[WeChatPayClient]:
    client = make_sim_client(simulator)
    try:
        yield client
    finally:
        client.close()
