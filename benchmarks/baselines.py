"""Client cost per request: the bare floor, wechatpayv3 ``Core.request`` and wxrecon's client,
each doing the same special-reduction queries against the same running simulator.

Each runs in this process with ``threads`` threads over one client; the CPU time of the
process (``time.process_time``, all threads) around the loop is the client's cost, since the
simulator runs in another process. Every answer must be a verified 200: a run that saw
anything else reports it, and its figures are not comparable.
"""

from __future__ import annotations

import argparse
import base64
import json
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from rich.console import Console

from benchmarks import crypto_floor
from wxrecon.simulator import SimDir
from wxrecon.wechatpay.client import REDUCTION_PATH, RetryPolicy, Timeouts, WeChatPayClient

# The provider mandates OAEP with SHA-1 for encrypted fields.
_OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)  # noqa: S303


@dataclass(frozen=True)
class Query:
    mchid: str
    bal_account_no: str
    out_request_no: str


@dataclass
class LoopResult:
    name: str
    requests: int
    errors: int
    wall_seconds: float
    cpu_seconds: float

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.wall_seconds if self.wall_seconds else 0.0

    @property
    def cpu_ms_per_request(self) -> float:
        return 1000 * self.cpu_seconds / self.requests if self.requests else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "wall_seconds": round(self.wall_seconds, 3),
            "cpu_seconds": round(self.cpu_seconds, 3),
            "requests_per_second": round(self.requests_per_second, 1),
            "cpu_ms_per_request": round(self.cpu_ms_per_request, 3),
        }


def run_loop(
    name: str, call: Callable[[Query], bool], queries: Sequence[Query], threads: int
) -> LoopResult:
    """``call`` each query once (spread over ``threads``); it returns False on a bad answer."""
    errors = 0
    lock = threading.Lock()
    chunks = [list(queries[i::threads]) for i in range(threads)]

    def work(chunk: list[Query]) -> None:
        nonlocal errors
        bad = 0
        for q in chunk:
            try:
                ok = call(q)
            except Exception:
                ok = False
            bad += not ok
        with lock:
            errors += bad

    for q in queries[: min(len(queries), 2 * threads)]:  # warm the pool and the key caches
        call(q)
    workers = [threading.Thread(target=work, args=(c,)) for c in chunks]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return LoopResult(
        name, len(queries), errors, time.perf_counter() - wall0, time.process_time() - cpu0
    )


# -- (a) the bare floor: sign, send on a pooled connection, verify -----------------------------


class BareFloor:
    """The least a correct client must do for one query, with cryptography and httpx."""

    def __init__(self, sim_dir: SimDir, base_url: str) -> None:
        creds = sim_dir.credentials()
        self.mchid = creds.mchid
        self.serial = creds.cert_serial
        self.key = creds.private_key
        self.key_id = creds.encrypt_serial
        self.public = creds.encrypt_key
        self.verify_keys = dict(creds.verify_keys)
        self.base = base_url
        self.http = httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=32))

    def close(self) -> None:
        self.http.close()

    def signed(self, q: Query) -> tuple[str, dict[str, str]]:
        """The URL and headers of one query: encrypt, percent-encode once, sign."""
        encrypted = base64.b64encode(self.public.encrypt(q.bal_account_no.encode(), _OAEP))
        path = (
            f"{REDUCTION_PATH}/{q.out_request_no}?mchid={q.mchid}"
            f"&bal_account_no={quote(encrypted.decode(), safe='')}"
        )
        ts, nonce = str(int(time.time())), secrets.token_hex(16)
        message = f"GET\n{path}\n{ts}\n{nonce}\n\n".encode()
        signature = base64.b64encode(self.key.sign(message, padding.PKCS1v15(), hashes.SHA256()))
        return self.base + path, {
            "Authorization": f'WECHATPAY2-SHA256-RSA2048 mchid="{self.mchid}",'
            f'nonce_str="{nonce}",signature="{signature.decode()}",timestamp="{ts}",'
            f'serial_no="{self.serial}"',
            "Accept": "application/json",
            "User-Agent": "wxrecon-bench-floor",
            "Wechatpay-Serial": self.key_id,
        }

    def verified(self, status: int, h: Any, body: bytes) -> bool:
        """Only a 200 whose signature verifies counts (raises on a bad signature)."""
        if status != 200:
            return False
        signed = f"{h['Wechatpay-Timestamp']}\n{h['Wechatpay-Nonce']}\n".encode() + body + b"\n"
        self.verify_keys[h["Wechatpay-Serial"]].verify(
            base64.b64decode(h["Wechatpay-Signature"]), signed, padding.PKCS1v15(), hashes.SHA256()
        )
        return True

    def __call__(self, q: Query) -> bool:
        url, headers = self.signed(q)
        r = self.http.get(url, headers=headers)
        return self.verified(r.status_code, r.headers, r.content)


class BareFloorUrllib3(BareFloor):
    """The same floor on urllib3 (no httpx): how much of a request is the HTTP library."""

    def __init__(self, sim_dir: SimDir, base_url: str) -> None:
        import urllib3

        super().__init__(sim_dir, base_url)
        self.http.close()
        self.pool = urllib3.PoolManager(maxsize=32, timeout=10, retries=False)

    def close(self) -> None:
        self.pool.clear()

    def __call__(self, q: Query) -> bool:
        url, headers = self.signed(q)
        r = self.pool.request("GET", url, headers=headers)
        return self.verified(r.status, r.headers, r.data)


# -- (b) wechatpayv3 Core.request ---------------------------------------------------------------


class WeChatPayV3:
    """The same query through wechatpayv3 (a benchmark-only dependency)."""

    def __init__(self, sim_dir: SimDir, base_url: str) -> None:
        from wechatpayv3 import core, utils

        self._encrypt = utils.rsa_encrypt
        self.core = core.Core(
            mchid=sim_dir.mchid,
            cert_serial_no=sim_dir.mch_cert_serial,
            private_key=Path(sim_dir.file("apiclient_key.pem")).read_text(),
            apiv3_key="0" * 32,
            public_key=Path(sim_dir.file("wechatpay_pub_key.pem")).read_text(),
            public_key_id=sim_dir.wechatpay_public_key_id,
            timeout=10,
        )
        self.core._gate_way = base_url  # its gateway is fixed to the provider's domain

    def close(self) -> None:
        pass

    def __call__(self, q: Query) -> bool:
        encrypted = self._encrypt(q.bal_account_no, self.core._public_key)
        path = (
            f"{REDUCTION_PATH}/{q.out_request_no}?mchid={q.mchid}"
            f"&bal_account_no={quote(encrypted, safe='')}"
        )
        code, text = self.core.request(path, cipher_data=True)
        return bool(code == 200 and json.loads(text)["out_request_no"] == q.out_request_no)


# -- (c) wxrecon's client -----------------------------------------------------------------------


class WxreconClient:
    """wxrecon's client as the engine uses it: validated, verified, parsed, decrypted."""

    def __init__(self, sim_dir: SimDir, base_url: str) -> None:
        self.client = WeChatPayClient(
            sim_dir.credentials(),
            base_url=base_url,
            backup_url=None,
            timeouts=Timeouts(connect=3, read=10),
            retry=RetryPolicy(attempts=1),
            max_connections=32,
        )

    def close(self) -> None:
        self.client.close()

    def __call__(self, q: Query) -> bool:
        result = self.client.query_special_reduction(
            q.out_request_no, mchid=q.mchid, bal_account_no=q.bal_account_no
        )
        return result.out_request_no == q.out_request_no


CLIENTS: dict[str, Callable[[SimDir, str], Any]] = {
    "floor": BareFloor,
    "floor_urllib3": BareFloorUrllib3,
    "wechatpayv3": WeChatPayV3,
    "wxrecon": WxreconClient,
}


def compare(
    sim_dir: SimDir, base_url: str, queries: Sequence[Query], threads: int, rounds: int = 3
) -> dict[str, LoopResult]:
    """Each client over the same queries, interleaved for ``rounds`` rounds (so a burst of the
    machine's other load hits them alike); each keeps its median round by CPU per request."""
    runs: dict[str, list[LoopResult]] = {name: [] for name in CLIENTS}
    for _ in range(rounds):
        for name, make in CLIENTS.items():
            client = make(sim_dir, base_url)
            try:
                runs[name].append(run_loop(name, client, queries, threads))
            finally:
                client.close()
    return {
        name: sorted(found, key=lambda r: r.cpu_ms_per_request)[len(found) // 2]
        for name, found in runs.items()
    }


def phase(
    args: argparse.Namespace,
    sim_dir: SimDir,
    base_url: str,
    admin: Any,
    queries: Sequence[Query],
    console: Console,
) -> dict[str, Any]:
    """``compare`` over ``--baseline-requests`` of ``queries`` (repeated as needed), the
    simulator's rate limit off and the crypto floor sampled meanwhile."""
    threads = args.baseline_threads or args.workers * args.concurrency
    asked = (list(queries) * (1 + args.baseline_requests // max(1, len(queries))))[
        : args.baseline_requests
    ]
    console.print(f"[bold]client baselines[/]: {len(asked):,} queries each, {threads} threads")
    limit = admin.config()["rate_limit"]
    admin.set_config(rate_limit=0)  # the baselines have no shared limiter
    during = crypto_floor.During(sim_dir).start()
    try:
        found = compare(sim_dir, base_url, asked, threads, args.baseline_rounds)
    finally:
        admin.set_config(rate_limit=limit)
        sampled = during.stop()
    out: dict[str, Any] = {k: v.to_json() for k, v in found.items()}
    if sampled:
        out["crypto_floor"] = sampled.to_json()
    out["threads"] = threads
    out["rounds"] = args.baseline_rounds
    return out
