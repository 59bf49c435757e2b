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
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import tenacity

import wxrecon
from wxrecon.wechatpay import signing
from wxrecon.wechatpay.errors import (
    GarbledResponse,
    NetworkError,
    OutcomeUnknown,
    ProviderBusy,
    Throttled,
    TransientError,
    UnverifiedResponse,
    WeChatPayError,
    classify,
    one_line,
)
from wxrecon.wechatpay.keys import Credentials
from wxrecon.wechatpay.resources import (
    ChannelBalance,
    CompensationBill,
    SpecialReduction,
    SpecialReductionRequest,
    check_bal_account_no,
    check_mchid,
    check_order_no,
)
from wxrecon.wechatpay.wire import HttpxWire, Origin, PoolWire, Reply, Wire, WireError

log = logging.getLogger(__name__)

PRIMARY_URL = "https://api.mch.weixin.qq.com"
BACKUP_URL = "https://api2.mch.weixin.qq.com"
USER_AGENT = f"wxrecon/{wxrecon.__version__} (Python {platform.python_version()})"

REDUCTION_PATH = "/v3/aggracct-bc/wb-channel/special-reduction"
BALANCE_PATH = "/v3/aggracct-bc/wb-channel/account/balance"
BILL_PATH = "/v3/platsolution/ecommerce/mch-transfer/compensate-bills/out-bill-no"


class Endpoint(StrEnum):
    """Rate-limit and metrics label for each call."""

    SUBMIT_REDUCTION = "submit_reduction"
    QUERY_REDUCTION = "query_reduction"
    QUERY_BALANCE = "query_balance"
    QUERY_BILL = "query_bill"


# Called before every attempt with (endpoint, target mchid); may block, or raise Throttled.
BeforeRequest = Callable[[Endpoint, str], None]
# Called after every attempt with (endpoint, outcome label, seconds).
Observer = Callable[[Endpoint, str, float], None]
# Called for every failed attempt, retried or not, with (endpoint, error kind).
ErrorObserver = Callable[[Endpoint, str], None]

_DEFAULT_HEADERS = [
    (b"User-Agent", USER_AGENT.encode()),
    (b"Accept", b"application/json"),
]
_JSON = (b"Content-Type", b"application/json")
_ERROR_CODE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


@dataclass(frozen=True)
class RetryPolicy:
    """In-call retries for transient failures; the engine's own backoff takes over after."""

    attempts: int = 3
    initial_wait: float = 0.2
    max_wait: float = 2.0


@dataclass(frozen=True)
class Timeouts:
    connect: float = 3.0
    read: float = 10.0
    # The provider drops idle keep-alive connections after 8 s; retire ours before that.
    keepalive_expiry: float = 5.0


@dataclass
class Answer:
    status: int
    data: Any
    request_id: str | None


@dataclass
class _CallState:
    """What the attempts of one call have learnt so far."""

    maybe_sent: bool = False
    last_error: TransientError | None = None


R = TypeVar("R")


class WeChatPayClient:
    """Thread-safe; create one per process (it re-opens its connection pool after a fork)."""

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
        transport: httpx.BaseTransport | None = None,
        max_connections: int = 20,
        proxy: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.credentials = credentials
        self.base_url = _check_url(base_url, "base_url")
        self.backup_url = _check_url(backup_url, "backup_url") if backup_url else None
        if self.backup_url == self.base_url:
            self.backup_url = None
        self.retry = retry or RetryPolicy()
        self.failover_cooldown = failover_cooldown
        self.before_request = before_request
        self.observer = observer
        self.on_error = on_error
        self.timeouts = timeouts or Timeouts()
        self._given_transport = transport
        self._proxy = proxy
        self._max_connections = max_connections
        self._clock = clock
        self._lock = threading.Lock()
        self._primary_down_until = 0.0
        self._origins = {url: Origin.parse(url) for url in (self.base_url, self.backup_url) if url}
        self._pid = os.getpid()
        self._wire = self._new_wire()
        # Built once: tenacity keeps per-call state in thread-locals, so one object serves all.
        self._retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(max(1, self.retry.attempts)),
            wait=tenacity.wait_random_exponential(
                multiplier=self.retry.initial_wait, max=self.retry.max_wait
            ),
            retry=tenacity.retry_if_exception_type(TransientError),
            before_sleep=_log_retry,
            sleep=sleep,
            reraise=True,
        )

    def _new_wire(self) -> Wire:
        """Pooled http.client connections, unless a transport or a proxy is given: those go
        through httpx (see :mod:`wxrecon.wechatpay.wire`)."""
        t = self.timeouts
        if self._given_transport is None and self._proxy is None:
            return PoolWire(
                connect=t.connect,
                read=t.read,
                max_connections=self._max_connections,
                keepalive_expiry=t.keepalive_expiry,
            )
        transport = self._given_transport or httpx.HTTPTransport(
            limits=httpx.Limits(
                max_connections=self._max_connections,
                max_keepalive_connections=self._max_connections,
                keepalive_expiry=t.keepalive_expiry,
            ),
            proxy=self._proxy,
        )
        return HttpxWire(transport, connect=t.connect, read=t.read)

    def close(self) -> None:
        self._wire.close()

    def __enter__(self) -> WeChatPayClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def using_backup(self) -> bool:
        """True while the primary domain is cooling down after a connection-level failure."""
        return self.backup_url is not None and self._clock() < self._primary_down_until

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
        body = request.body(self.credentials.encrypt(request.bal_account_no))
        content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        try:
            answer = self._call(
                Endpoint.SUBMIT_REDUCTION,
                request.mchid,
                "POST",
                REDUCTION_PATH,
                content=content,
                encrypted=True,
            )
        except TransientError as exc:
            raise OutcomeUnknown(exc) from None
        try:
            return self._with_id(self._parse_reduction(answer, request.out_request_no), answer)
        except GarbledResponse as exc:  # signed, yet unreadable: we cannot tell what happened
            exc.status, exc.request_id = answer.status, answer.request_id
            raise OutcomeUnknown(exc) from None

    def query_special_reduction(
        self, out_request_no: str, *, mchid: str, bal_account_no: str
    ) -> SpecialReduction:
        check_order_no(out_request_no)
        check_mchid(mchid)
        check_bal_account_no(bal_account_no)
        params = {"mchid": mchid, "bal_account_no": self.credentials.encrypt(bal_account_no)}
        answer = self._call(
            Endpoint.QUERY_REDUCTION,
            mchid,
            "GET",
            f"{REDUCTION_PATH}/{out_request_no}",
            params=params,
            encrypted=True,
        )
        return self._parsed(lambda: self._parse_reduction(answer, out_request_no), answer)

    def query_balance(self, *, mchid: str, bal_account_no: str) -> ChannelBalance:
        check_mchid(mchid)
        check_bal_account_no(bal_account_no)
        params = {"mchid": mchid, "bal_account_no": self.credentials.encrypt(bal_account_no)}
        answer = self._call(
            Endpoint.QUERY_BALANCE, mchid, "GET", BALANCE_PATH, params=params, encrypted=True
        )
        return self._parsed(lambda: ChannelBalance.parse(answer.data), answer)

    def query_compensation_bill(self, out_bill_no: str) -> CompensationBill:
        check_order_no(out_bill_no, "out_bill_no")
        answer = self._call(
            Endpoint.QUERY_BILL, self.credentials.mchid, "GET", f"{BILL_PATH}/{out_bill_no}"
        )
        return self._parsed(
            lambda: CompensationBill.parse(answer.data, expect_out_bill_no=out_bill_no), answer
        )

    # -- plumbing -------------------------------------------------------------------------

    def _parse_reduction(self, answer: Answer, out_request_no: str) -> SpecialReduction:
        # bal_account_no stays sealed until read (see resources._Decrypted); the request id
        # goes in here, since dataclasses.replace would read, and so decrypt, every field.
        return SpecialReduction.parse(
            answer.data,
            expect_out_request_no=out_request_no,
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
        params: dict[str, str] | None = None,
        content: bytes = b"",
        encrypted: bool = False,
    ) -> Answer:
        state = _CallState()
        try:
            for attempt in self._retrying:
                with attempt:
                    return self._attempt(
                        endpoint, target_mchid, method, path, params, content, encrypted, state
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

    def _pick_base(self) -> str:
        if self.backup_url is not None and self._clock() < self._primary_down_until:
            return self.backup_url
        return self.base_url

    def _connect_failed(self, base: str, exc: WireError) -> None:
        if self.backup_url is None:
            return
        with self._lock:
            if base == self.base_url:
                self._primary_down_until = self._clock() + self.failover_cooldown
                log.warning(
                    "primary %s unreachable (%s); using backup %s for %.0fs",
                    base,
                    type(exc).__name__,
                    self.backup_url,
                    self.failover_cooldown,
                )
            elif self._primary_down_until:
                # The backup is failing too: give the primary its chance again at once.
                self._primary_down_until = 0.0
                log.warning("backup %s unreachable (%s); back to primary", base, exc.name)

    def _attempt(
        self,
        endpoint: Endpoint,
        target_mchid: str,
        method: str,
        path: str,
        params: dict[str, str] | None,
        content: bytes,
        encrypted: bool,
        state: _CallState,
    ) -> Answer:
        if self.before_request is not None:
            self.before_request(endpoint, target_mchid)
        wire = self._current_wire()
        base = self._pick_base()
        origin = self._origins[base]
        headers = list(_DEFAULT_HEADERS)
        if content:
            headers.append(_JSON)
        if encrypted:
            headers.append((b"Wechatpay-Serial", self.credentials.encrypt_serial.encode()))
        # Sign exactly what goes on the wire: the target is encoded here once and sent as is.
        # Each attempt gets a fresh timestamp, nonce and signature over the same bytes.
        target = origin.prefix + path + (_query(params) if params else "")
        authorization = self.credentials.authorization(method, target, content)
        headers.append((b"Authorization", authorization.encode()))
        started = time.perf_counter()
        try:
            try:
                reply = wire.send(method, origin, target, headers, content)
            except WireError as exc:
                self._observe(endpoint, exc.name, started)
                if exc.connect_level:
                    self._connect_failed(base, exc)
                raise NetworkError(
                    f"{method} {path} failed: {exc.name}", maybe_sent=exc.sent
                ) from None
            self._observe(endpoint, str(reply.status), started)
            return self._answer(reply)
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

    def _answer(self, reply: Reply) -> Answer:
        request_id = reply.headers.get("Request-ID")
        status, body = reply.status, reply.body
        if 200 <= status < 300 and status != 202:
            try:
                signing.check_response_signature(reply.headers, body, self.credentials.verify_keys)
            except signing.VerificationError as exc:
                raise UnverifiedResponse(str(exc), status=status, request_id=request_id) from None
            try:
                data = json.loads(body) if body else {}
            except (ValueError, RecursionError):
                raise GarbledResponse(
                    "response body is not JSON", status=status, request_id=request_id
                ) from None
            return Answer(status, data, request_id)
        code, message, detail = _error_body(body)
        error: WeChatPayError = classify(status, code, message, detail, request_id)
        if status == 202 and not isinstance(error, ProviderBusy):  # pragma: no cover - classify
            error = ProviderBusy("accepted, not done", status=status, request_id=request_id)
        raise error


def _check_url(url: str, name: str) -> str:
    url = url.rstrip("/")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        raise ValueError(f"{name} is not a URL") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"{name} must be an http(s) URL with a host")
    return url


# What quote(value, safe="") gives for base64 text (the ciphertext) without its per-character
# Python loop: only + / = need escaping there.
_BASE64_TEXT = re.compile(r"[A-Za-z0-9+/=_.~-]*")


def _quote(value: str) -> str:
    if _BASE64_TEXT.fullmatch(value):
        return value.replace("+", "%2B").replace("/", "%2F").replace("=", "%3D")
    return quote(value, safe="")


def _query(params: dict[str, str]) -> str:
    """``?k=v&…`` with every value percent-encoded (RFC 3986 unreserved characters kept)."""
    return "?" + "&".join(f"{k}={_quote(v)}" for k, v in params.items())


def _log_retry(retry_state: tenacity.RetryCallState) -> None:
    outcome = retry_state.outcome
    error = outcome.exception() if outcome is not None else None
    log.info(
        "attempt %d failed (%s); retrying in %.2fs",
        retry_state.attempt_number,
        error,
        retry_state.upcoming_sleep,
    )


def _error_body(body: bytes) -> tuple[str | None, str, Any]:
    """The ``code``, ``message`` and ``detail`` of an error answer, tolerating garbage."""
    try:
        data = json.loads(body) if body else None
    except (ValueError, RecursionError):
        data = None
    if not isinstance(data, dict):
        return None, "error answer without a JSON body", None
    code = data.get("code")
    message = data.get("message")
    return (
        code if isinstance(code, str) and _ERROR_CODE.fullmatch(code) else None,
        one_line(message)[:500] if isinstance(message, str) else "",
        data.get("detail"),
    )
