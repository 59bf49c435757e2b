"""One request in, one ``Reply`` out: the simulated provider without the HTTP plumbing.

``Provider.handle`` applies, in order: routing, the rate limit and pre-answer faults, the
request checks of :mod:`.protocol`, the business rules of :mod:`.state`, then the
after-effect faults, and signs every 2xx with the key the request's ``Wechatpay-Serial``
names (the merchant's default key when it names none).
"""

from __future__ import annotations

import base64
import json
import logging
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from wxrecon.simulator import docs_literal, protocol
from wxrecon.simulator.faults import (
    APPLY_THEN_KINDS,
    PRE_KINDS,
    SHAPE_KINDS,
    SIGNED_KINDS,
    FaultKind,
    FaultPlan,
    FaultRule,
)
from wxrecon.simulator.material import ProviderKeys
from wxrecon.simulator.state import ApiError, Books
from wxrecon.simulator.traffic import Traffic
from wxrecon.wechatpay import keys, signing
from wxrecon.wechatpay.client import Endpoint

log = logging.getLogger("wxrecon.simulator")

STALE_BY = 600  # seconds a stale_timestamp answer is back-dated (the limit is 300)
CIPHERTEXTS = 4096  # ledgers whose answer ciphertext is kept


def _json(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


def new_request_id() -> str:
    return secrets.token_hex(16).upper()


@dataclass
class Reply:
    """What to do with the connection: answer ``status``/``body``, or ``reset``/``hang``."""

    status: int = 200
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    action: str | None = None  # None (answer), "reset" or "hang"
    delay: float = 0.0  # seconds to wait before acting
    hang_seconds: float = 0.0
    endpoint: str = "unknown"

    @property
    def outcome(self) -> str:
        return self.action or str(self.status)


@dataclass
class Timing:
    latency: float = 0.2  # default added latency of a latency fault
    hang: float = 60.0  # default length of a hang (ends early when the client hangs up)


class Provider:
    def __init__(
        self,
        provider_keys: ProviderKeys,
        books: Books,
        faults: FaultPlan,
        traffic: Traffic,
        timing: Timing | None = None,
        *,
        shape_seed: int | None = None,
    ) -> None:
        self.keys = provider_keys
        self.books = books
        self.faults = faults
        self.traffic = traffic
        self.timing = timing or Timing()
        self._shape_rng = random.Random(shape_seed)  # docs_literal reshaping draws
        self.docs_literal = False  # the mode: every 2xx answer in its docs-literal form
        # The provider's notion of now (rate windows, settlement, signature age); tests may pin it.
        self.clock: Callable[[], float] = time.time
        # plaintext -> (the key it was encrypted for, its ciphertext): see _for_merchant
        self._ciphertexts: dict[str, tuple[rsa.RSAPublicKey, str]] = {}

    # -- the request ----------------------------------------------------------------------

    def handle(self, method: str, raw_target: str, headers: Any, body: bytes) -> Reply:
        now = self.clock()
        request_id = new_request_id()
        path, _, query = raw_target.partition("?")
        try:
            rt = protocol.route(method, path)
        except ApiError as exc:
            return self._error(exc, request_id, "unknown")
        ep = rt.endpoint.value
        target = protocol.target_mchid(rt, query, body, headers.get("Authorization"))
        admitted = self.traffic.arrive(ep, target, now) if target else True

        delay = 0.0
        for rule in self.faults.draw(ep, PRE_KINDS):
            self.traffic.fault(rule.kind.value)
            if rule.kind is FaultKind.LATENCY:
                delay += self._seconds(rule, self.timing.latency)
                continue
            reply = self._fault_reply(rule, request_id, ep)
            reply.delay += delay
            return reply
        if not admitted:
            reply = self._error(
                ApiError(
                    429, "FREQUENCY_LIMITED", "too many requests for this merchant; slow down"
                ),
                request_id,
                ep,
            )
            reply.delay = delay
            return reply

        reached_business = False
        signer: tuple[str, rsa.RSAPrivateKey] | None = None
        try:
            protocol.check_http_headers(method, rt, headers)
            auth = protocol.verify_authorization(self.keys, method, raw_target, headers, body, now)
            protocol.check_role(self.keys, rt.endpoint, auth.mchid)
            named = protocol.encryption_key(self.keys, rt, headers)
            signer = named or self.keys.default_signer()
            reached_business = True
            data = self._shaped(
                rt.endpoint, self._business(rt, query, body, signer[1], now, auth.mchid)
            )
            reply = Reply(200, _json(data), endpoint=ep)
        except ApiError as exc:
            reply = self._error(exc, request_id, ep)
        reply.delay = delay

        if reached_business:
            for rule in self.faults.draw(ep, APPLY_THEN_KINDS):
                self.traffic.fault(rule.kind.value)
                late = self._fault_reply(rule, request_id, ep)
                late.delay = delay
                return late
        if reply.status == 200 and signer is not None:
            fault = None
            for rule in self.faults.draw(ep, SIGNED_KINDS):
                self.traffic.fault(rule.kind.value)
                fault = rule.kind
            self._sign(reply, signer, request_id, fault)
        return reply

    def _business(
        self,
        rt: protocol.Route,
        query: str,
        body: bytes,
        key: rsa.RSAPrivateKey,
        now: float,
        caller: str,
    ) -> Any:
        if rt.endpoint is Endpoint.SUBMIT_REDUCTION:
            params = protocol.submit_params(protocol.parse_body(body), key)
            view = self.books.submit(now, params)
            return view.answer(self._for_merchant(params.bal_account_no), query=False)
        if rt.endpoint is Endpoint.QUERY_REDUCTION:
            out_request_no = protocol.check_path_order_no(rt.path_param, "out_request_no")
            mchid, bal = protocol.query_params(protocol.parse_query(query), key)
            view = self.books.query(now, mchid, bal, out_request_no)
            return view.answer(self._for_merchant(bal), query=True)
        if rt.endpoint is Endpoint.QUERY_BALANCE:
            mchid, bal = protocol.query_params(protocol.parse_query(query), key)
            return self.books.balance(now, mchid, bal)
        out_bill_no = protocol.check_path_order_no(rt.path_param, "out_bill_no")
        # Only the calling merchant's bills are visible: the caller is the verified mchid.
        return self.books.bill(now, caller, out_bill_no)

    def _shaped(self, endpoint: Endpoint, data: Any) -> Any:
        """The true answer, or its docs-literal form in that mode or when a rule fires."""
        fired = self.faults.draw(endpoint.value, SHAPE_KINDS)
        for rule in fired:
            self.traffic.fault(rule.kind.value)
        if self.docs_literal or fired:
            return docs_literal.shape(endpoint, data, self._shape_rng)
        return data

    def _for_merchant(self, plaintext: str) -> str:
        """Encrypted response fields use the calling merchant's certificate key. A ledger's
        ciphertext is made once and kept: the client decrypts (and so checks) it in every
        answer all the same, and OAEP's fresh randomness per answer protects nothing here."""
        key = self.keys.merchant_public
        cached = self._ciphertexts.get(plaintext)
        if cached is not None and cached[0] is key:
            return cached[1]
        encrypted = keys.encrypt(key, plaintext)
        if len(self._ciphertexts) >= CIPHERTEXTS:
            self._ciphertexts.clear()
        self._ciphertexts[plaintext] = (key, encrypted)
        return encrypted

    # -- answers --------------------------------------------------------------------------

    @staticmethod
    def _seconds(rule: FaultRule, default: float) -> float:
        return default if rule.seconds is None else float(rule.seconds)

    def _fault_reply(self, rule: FaultRule, request_id: str, ep: str) -> Reply:
        kind = rule.kind
        if kind in (FaultKind.RESET, FaultKind.APPLY_THEN_RESET):
            return Reply(action="reset", endpoint=ep)
        if kind in (FaultKind.HANG, FaultKind.APPLY_THEN_HANG):
            return Reply(
                action="hang", hang_seconds=self._seconds(rule, self.timing.hang), endpoint=ep
            )
        if kind is FaultKind.RATE_LIMITED:
            return self._error(
                ApiError(429, "FREQUENCY_LIMITED", "frequency limited, retry later"), request_id, ep
            )
        return self._error(
            ApiError(500, "SYSTEM_ERROR", "system error, retry later"), request_id, ep
        )

    @staticmethod
    def _error(exc: ApiError, request_id: str, ep: str) -> Reply:
        return Reply(
            exc.status,
            _json(exc.body()),
            [("Content-Type", "application/json; charset=utf-8"), ("Request-ID", request_id)],
            endpoint=ep,
        )

    @staticmethod
    def _sign(
        reply: Reply,
        signer: tuple[str, rsa.RSAPrivateKey],
        request_id: str,
        fault: FaultKind | None,
    ) -> None:
        serial, key = signer
        body = reply.body
        if fault is FaultKind.MALFORMED_JSON:
            body = reply.body = body[: max(1, len(body) // 2)]
        ts = int(time.time()) - (STALE_BY if fault is FaultKind.STALE_TIMESTAMP else 0)
        nonce = signing.new_nonce()
        signature = signing.sign(key, signing.response_message(ts, nonce, body))
        if fault is FaultKind.BAD_SIGNATURE:
            raw = bytearray(base64.b64decode(signature))
            raw[len(raw) // 2] ^= 0x01
            signature = base64.b64encode(bytes(raw)).decode("ascii")
        elif fault is FaultKind.SIGNTEST:
            signature = signing.SIGNTEST_PREFIX + signature
        reply.headers = [
            ("Content-Type", "application/json; charset=utf-8"),
            ("Request-ID", request_id),
            ("Wechatpay-Nonce", nonce),
            ("Wechatpay-Signature", signature),
            ("Wechatpay-Timestamp", str(ts)),
            ("Wechatpay-Serial", serial),
            ("Wechatpay-Signature-Type", "WECHATPAY2-SHA256-RSA2048"),
        ]
