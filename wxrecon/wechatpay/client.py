"""The APIv3 HTTP client: one pooled connection set per process, signed requests, verified
answers, bounded retries and failover to the backup domain.

The client knows nothing of the database. Every call either returns a verified, typed result
or raises an error from :mod:`wxrecon.wechatpay.errors`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import wxrecon
from wxrecon.wechatpay.answers import Answer, garbled_reply, read_reply
from wxrecon.wechatpay.errors import (
    GarbledResponse,
    NetworkError,
    OutcomeUnknown,
    Throttled,
    TransientError,
    WeChatPayError,
)
from wxrecon.wechatpay.failover import Failover
from wxrecon.wechatpay.hosts import BACKUP_URL, PRIMARY_URL
from wxrecon.wechatpay.keys import Credentials
from wxrecon.wechatpay.options import (
    BeforeRequest,
    Endpoint,
    ErrorObserver,
    Observer,
    RetryPolicy,
    Timeouts,
    retrying,
)
from wxrecon.wechatpay.resources import (
    ChannelBalance,
    CompensationBill,
    SpecialReduction,
    SpecialReductionRequest,
    check_bal_account_no,
    check_mchid,
    check_order_no,
)
from wxrecon.wechatpay.urls import check_url, query
from wxrecon.wechatpay.wire import MAX_BODY, Origin, PoolWire, Proxy, Wire, WireError

log = logging.getLogger(__name__)

USER_AGENT = f"wxrecon/{wxrecon.__version__} (Python {platform.python_version()})"

REDUCTION_PATH = "/v3/aggracct-bc/wb-channel/special-reduction"
BALANCE_PATH = "/v3/aggracct-bc/wb-channel/account/balance"
BILL_PATH = "/v3/platsolution/ecommerce/mch-transfer/compensate-bills/out-bill-no"


_DEFAULT_HEADERS = [
    (b"User-Agent", USER_AGENT.encode()),
    (b"Accept", b"application/json"),
]
_JSON = (b"Content-Type", b"application/json")


@dataclass
class _CallState:
    """What the attempts of one call have learnt so far."""

    maybe_sent: bool = False
    last_error: TransientError | None = None
    # The query parameters and body, built once (the attempts send the same bytes), after
    # the hook's ``ready``: what is encrypted costs an OAEP encryption, which a call the
    # rate limit puts back (NotYet) would waste.
    built: tuple[dict[str, str] | None, bytes] | None = None


R = TypeVar("R")
# A call's query parameters and body, built on its first attempt (see _CallState.built).
Build = Callable[[], tuple[dict[str, str] | None, bytes]]


class WeChatPayClient:
    """Thread-safe; create one per process (it re-opens its connection pool after a fork).

    ``wire`` replaces the production wire (tests: :class:`~wxrecon.wechatpay.testing.
    ScriptedWire`); ``transport`` (an httpx transport) is only for tests written against
    ``httpx.MockTransport``. ``max_body`` caps an answer's size, ``timeouts.total`` its time.
    """

    def __init__(
        self,
        credentials: Credentials,
        *,
        base_url: str = PRIMARY_URL,
        backup_url: str | None = BACKUP_URL,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        failover_cooldown: float = 60.0,
        before_request: BeforeRequest | None = None,
        observer: Observer | None = None,
        on_error: ErrorObserver | None = None,
        wire: Wire | None = None,
        transport: Any = None,
        max_connections: int = 20,
        max_body: int = MAX_BODY,
        proxy: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.credentials = credentials
        self.base_url = check_url(base_url, "base_url")
        self.backup_url = check_url(backup_url, "backup_url") if backup_url else None
        if self.backup_url == self.base_url:
            self.backup_url = None
        if max_body < 1:
            raise ValueError("max_body must be a positive number of bytes")
        self.retry = retry or RetryPolicy()
        self.failover_cooldown = failover_cooldown
        self.before_request = before_request
        self.observer = observer
        self.on_error = on_error
        self.timeouts = timeouts or Timeouts()
        self.max_body = max_body
        self._given_wire = wire
        self._given_transport = transport
        self._proxy = Proxy.parse(proxy) if proxy else None
        self._max_connections = max_connections
        self._lock = threading.Lock()
        self._failover = Failover(self.base_url, self.backup_url, failover_cooldown, clock)
        self._origins = {url: Origin.parse(url) for url in (self.base_url, self.backup_url) if url}
        self._pid = os.getpid()
        self._wire = self._new_wire()
        # Built once: tenacity keeps per-call state in thread-locals, so one object serves all.
        self._retrying = retrying(self.retry, sleep)

    def _new_wire(self) -> Wire:
        if self._given_wire is not None:
            return self._given_wire
        if self._given_transport is not None:
            from wxrecon.wechatpay.testing import TransportWire

            return TransportWire(self._given_transport)
        t = self.timeouts
        return PoolWire(
            connect=t.connect,
            read=t.read,
            deadline=t.deadline,
            max_body=self.max_body,
            max_connections=self._max_connections,
            keepalive_expiry=t.keepalive_expiry,
            proxy=self._proxy,
        )

    def close(self) -> None:
        self._wire.close()

    def __enter__(self) -> WeChatPayClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def using_backup(self) -> bool:
        """True while the primary domain is cooling down after a connection-level failure."""
        return self._failover.using_backup

    # -- the four endpoints ---------------------------------------------------------------

    def submit_special_reduction(self, request: SpecialReductionRequest) -> SpecialReduction:
        """POST a special reduction (or re-enter it: the same parameters are idempotent).

        In-call retries re-send the same body bytes with a fresh signature. Raises
        OutcomeUnknown when the POST may have landed but no verified answer came back; the
        caller must then query the order.
        """
        request = SpecialReductionRequest.create(  # also guards directly built requests
            mchid=request.mchid,
            bal_account_no=request.bal_account_no,
            out_request_no=request.out_request_no,
            reduction_type=request.reduction_type,
            amount=request.amount,
            reason=request.reason,
        )

        def build() -> tuple[None, bytes]:
            body = request.body(self.credentials.encrypt(request.bal_account_no))
            return None, json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()

        try:
            answer = self._call(
                Endpoint.SUBMIT_REDUCTION,
                request.mchid,
                "POST",
                REDUCTION_PATH,
                build=build,
                encrypted=True,
            )
        except TransientError as exc:
            raise OutcomeUnknown(exc) from None
        try:
            reduction = self._parse_reduction(
                answer, request.out_request_no, request.mchid, request.amount
            )
            return self._with_id(reduction, answer)
        except GarbledResponse as exc:  # signed, yet unreadable: we cannot tell what happened
            exc.status, exc.request_id = answer.status, answer.request_id
            raise OutcomeUnknown(exc) from None

    def query_special_reduction(
        self, out_request_no: str, *, mchid: str, bal_account_no: str
    ) -> SpecialReduction:
        check_order_no(out_request_no)
        check_mchid(mchid)
        check_bal_account_no(bal_account_no)
        answer = self._call(
            Endpoint.QUERY_REDUCTION,
            mchid,
            "GET",
            f"{REDUCTION_PATH}/{out_request_no}",
            build=self._ledger_params(mchid, bal_account_no),
            encrypted=True,
        )
        return self._parsed(lambda: self._parse_reduction(answer, out_request_no, mchid), answer)

    def query_balance(self, *, mchid: str, bal_account_no: str) -> ChannelBalance:
        check_mchid(mchid)
        check_bal_account_no(bal_account_no)
        answer = self._call(
            Endpoint.QUERY_BALANCE,
            mchid,
            "GET",
            BALANCE_PATH,
            build=self._ledger_params(mchid, bal_account_no),
            encrypted=True,
        )
        return self._parsed(lambda: ChannelBalance.parse(answer.data), answer)

    def query_compensation_bill(self, out_bill_no: str) -> CompensationBill:
        check_order_no(out_bill_no, "out_bill_no")
        answer = self._call(
            Endpoint.QUERY_BILL, self.credentials.mchid, "GET", f"{BILL_PATH}/{out_bill_no}"
        )
        # The query is signed as our platform merchant: an answer naming another sp_mchid is
        # about another platform's bill.
        mine = self.credentials.mchid
        return self._parsed(
            lambda: CompensationBill.parse(
                answer.data, expect_out_bill_no=out_bill_no, expect_sp_mchid=mine
            ),
            answer,
        )

    # -- plumbing -------------------------------------------------------------------------

    def _ledger_params(self, mchid: str, bal_account_no: str) -> Build:
        """A ledger query's parameters, its number encrypted on the first attempt."""
        return lambda: (
            {"mchid": mchid, "bal_account_no": self.credentials.encrypt(bal_account_no)},
            b"",
        )

    def _parse_reduction(
        self, answer: Answer, out_request_no: str, mchid: str, amount: int | None = None
    ) -> SpecialReduction:
        # bal_account_no stays sealed until read (see reading.Decrypted); the request id
        # goes in here, since dataclasses.replace would read, and so decrypt, every field.
        return SpecialReduction.parse(
            answer.data,
            expect_out_request_no=out_request_no,
            expect_mchid=mchid,
            expect_amount=amount,
            decrypt=self.credentials.decrypt,
            request_id=answer.request_id,
        )

    def _parsed(self, parse: Callable[[], R], answer: Answer) -> R:
        try:
            return self._with_id(parse(), answer)
        except GarbledResponse as exc:
            exc.status, exc.request_id = answer.status, answer.request_id
            raise

    @staticmethod
    def _with_id(result: R, answer: Answer) -> R:
        if getattr(result, "request_id", None) == answer.request_id:
            return result
        return dataclasses.replace(result, request_id=answer.request_id)  # type: ignore[type-var]

    def _call(
        self,
        endpoint: Endpoint,
        target_mchid: str,
        method: str,
        path: str,
        *,
        build: Build | None = None,
        encrypted: bool = False,
    ) -> Answer:
        """One call, with retries; ``build`` gives its query parameters and body."""
        state = _CallState()
        try:
            for attempt in self._retrying:
                with attempt:
                    return self._attempt(
                        endpoint, target_mchid, method, path, build, encrypted, state
                    )
        except Exception as exc:
            # The limiter refused (or the hook failed on) a *retry* of a POST that may already
            # have landed: that is an unknown outcome, not "nothing sent". Provider answers
            # (NotEnough after a 500, …) are real results and pass through.
            answered = isinstance(exc, WeChatPayError) and not isinstance(exc, Throttled)
            if method == "POST" and state.maybe_sent and state.last_error and not answered:
                if not isinstance(exc, Throttled):
                    log.error("request hook failed on a POST retry: %s", type(exc).__name__)
                raise state.last_error from None
            raise
        raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover

    def _current_wire(self) -> Wire:
        if self._pid != os.getpid():  # forked (Celery prefork): never share sockets
            with self._lock:
                if self._pid != os.getpid():
                    self._wire = self._new_wire()
                    self._pid = os.getpid()
        return self._wire

    def _attempt(
        self,
        endpoint: Endpoint,
        target_mchid: str,
        method: str,
        path: str,
        build: Build | None,
        encrypted: bool,
        state: _CallState,
    ) -> Answer:
        if state.built is None:
            ready = getattr(self.before_request, "ready", None)
            if ready is not None:
                ready(endpoint, target_mchid)
            state.built = build() if build is not None else (None, b"")
        # The grant last: the less between it and the send, the less a descheduled process
        # can bunch its requests past the limiter's guard.
        if self.before_request is not None:
            self.before_request(endpoint, target_mchid)
        params, content = state.built
        wire = self._current_wire()
        base = self._failover.pick()
        origin = self._origins[base]
        headers = list(_DEFAULT_HEADERS)
        if content:
            headers.append(_JSON)
        if encrypted:
            headers.append((b"Wechatpay-Serial", self.credentials.encrypt_serial.encode()))
        # Sign exactly what goes on the wire: the target is encoded here once and sent as is.
        # Each attempt gets a fresh timestamp, nonce and signature over the same bytes.
        target = origin.prefix + path + (query(params) if params else "")
        authorization = self.credentials.authorization(method, target, content)
        headers.append((b"Authorization", authorization.encode()))
        started = time.perf_counter()
        try:
            try:
                reply = wire.send(method, origin, target, headers, content)
            except WireError as exc:
                self._observe(endpoint, exc.name, started)
                if exc.connect_level:
                    self._failover.connect_failed(base, exc.name)
                if exc.garbled:
                    raise garbled_reply(exc, self.max_body) from None
                raise NetworkError(
                    f"{method} {path} failed: {exc.name}", maybe_sent=exc.sent
                ) from None
            self._observe(endpoint, str(reply.status), started)
            return read_reply(reply, self.credentials.verify_keys)
        except WeChatPayError as exc:
            self._observe_error(endpoint, exc)
            if isinstance(exc, TransientError):
                state.maybe_sent = state.maybe_sent or exc.maybe_sent
                exc.maybe_sent = state.maybe_sent  # once any attempt may have landed, it stays so
                state.last_error = exc
            raise

    def _observe_error(self, endpoint: Endpoint, exc: WeChatPayError) -> None:
        if self.on_error is not None:
            try:
                self.on_error(endpoint, exc.kind)
            except Exception:  # metrics must never break a payment call
                log.exception("error observer failed")

    def _observe(self, endpoint: Endpoint, outcome: str, started: float) -> None:
        if self.observer is not None:
            try:
                self.observer(endpoint, outcome, time.perf_counter() - started)
            except Exception:  # metrics must never break a payment call
                log.exception("request observer failed")
