"""The APIv3 HTTP client: one pooled connection set per process, signed requests, verified
answers, bounded retries and failover to the backup domain.

The client knows nothing of the database. Every call either returns a verified, typed result
or raises an error from :mod:`wxrecon.wechatpay.errors`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

import httpx
import tenacity

import wxrecon
from wxrecon.wechatpay import signing
from wxrecon.wechatpay.errors import (
    GarbledResponse,
    NetworkError,
    OutcomeUnknown,
    ProviderBusy,
    TransientError,
    UnverifiedResponse,
    WeChatPayError,
    classify,
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

log = logging.getLogger(__name__)

PRIMARY_URL = "https://api.mch.weixin.qq.com"
BACKUP_URL = "https://api2.mch.weixin.qq.com"
USER_AGENT = f"wxrecon/{wxrecon.__version__} (+httpx/{httpx.__version__})"

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

_CONNECT_LEVEL = (httpx.ConnectError, httpx.ConnectTimeout)
_NOT_SENT = (*_CONNECT_LEVEL, httpx.PoolTimeout, httpx.UnsupportedProtocol)


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


R = TypeVar("R")


class WeChatPayClient:
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
        transport: httpx.BaseTransport | None = None,
        max_connections: int = 20,
    ) -> None:
        self.credentials = credentials
        self.base_url = base_url.rstrip("/")
        self.backup_url = backup_url.rstrip("/") if backup_url else None
        self.retry = retry or RetryPolicy()
        self.failover_cooldown = failover_cooldown
        self.before_request = before_request
        self.observer = observer
        t = timeouts or Timeouts()
        self._http = httpx.Client(
            timeout=httpx.Timeout(t.read, connect=t.connect),
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
                keepalive_expiry=t.keepalive_expiry,
            ),
            transport=transport,
            headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
        )
        self._lock = threading.Lock()
        self._primary_down_until = 0.0

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> WeChatPayClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the four endpoints ---------------------------------------------------------------

    def submit_special_reduction(self, request: SpecialReductionRequest) -> SpecialReduction:
        """POST a special reduction (or re-enter it: the same parameters are idempotent).

        Raises OutcomeUnknown when the POST may have landed but no verified answer came back;
        the caller must then query the order.
        """
        body = request.body(self.credentials.encrypt(request.bal_account_no))
        content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        try:
            answer = self._call(
                Endpoint.SUBMIT_REDUCTION, request.mchid, "POST", REDUCTION_PATH,
                content=content, encrypted=True,
            )
        except TransientError as exc:
            raise OutcomeUnknown(exc) from exc
        try:
            return self._with_id(self._parse_reduction(answer, request.out_request_no), answer)
        except GarbledResponse as exc:  # signed, yet unreadable: we cannot tell what happened
            raise OutcomeUnknown(exc) from exc

    def query_special_reduction(
        self, out_request_no: str, *, mchid: str, bal_account_no: str
    ) -> SpecialReduction:
        check_order_no(out_request_no)
        check_mchid(mchid)
        check_bal_account_no(bal_account_no)
        params = {"mchid": mchid, "bal_account_no": self.credentials.encrypt(bal_account_no)}
        answer = self._call(
            Endpoint.QUERY_REDUCTION, mchid, "GET", f"{REDUCTION_PATH}/{out_request_no}",
            params=params, encrypted=True,
        )
        return self._with_id(self._parse_reduction(answer, out_request_no), answer)

    def query_balance(self, *, mchid: str, bal_account_no: str) -> ChannelBalance:
        check_mchid(mchid)
        check_bal_account_no(bal_account_no)
        params = {"mchid": mchid, "bal_account_no": self.credentials.encrypt(bal_account_no)}
        answer = self._call(
            Endpoint.QUERY_BALANCE, mchid, "GET", BALANCE_PATH, params=params, encrypted=True
        )
        return self._with_id(ChannelBalance.parse(answer.data), answer)

    def query_compensation_bill(self, out_bill_no: str) -> CompensationBill:
        check_order_no(out_bill_no, "out_bill_no")
        answer = self._call(
            Endpoint.QUERY_BILL, self.credentials.mchid, "GET", f"{BILL_PATH}/{out_bill_no}"
        )
        return self._with_id(CompensationBill.parse(answer.data, expect_out_bill_no=out_bill_no), answer)

    # -- plumbing -------------------------------------------------------------------------

    def _parse_reduction(self, answer: Answer, out_request_no: str) -> SpecialReduction:
        return SpecialReduction.parse(
            answer.data, expect_out_request_no=out_request_no, decrypt=self.credentials.decrypt
        )

    @staticmethod
    def _with_id(result: R, answer: Answer) -> R:
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
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(max(1, self.retry.attempts)),
            wait=tenacity.wait_random_exponential(
                multiplier=self.retry.initial_wait, max=self.retry.max_wait
            ),
            retry=tenacity.retry_if_exception_type(TransientError),
            reraise=True,
        )
        return retrying(
            self._attempt, endpoint, target_mchid, method, path, params, content, encrypted
        )

    def _pick_base(self) -> str:
        if self.backup_url and time.monotonic() < self._primary_down_until:
            return self.backup_url
        return self.base_url

    def _attempt(
        self,
        endpoint: Endpoint,
        target_mchid: str,
        method: str,
        path: str,
        params: dict[str, str] | None,
        content: bytes,
        encrypted: bool,
    ) -> Answer:
        if self.before_request is not None:
            self.before_request(endpoint, target_mchid)
        base = self._pick_base()
        headers = {}
        if content:
            headers["Content-Type"] = "application/json"
        if encrypted:
            headers["Wechatpay-Serial"] = self.credentials.encrypt_serial
        request = self._http.build_request(
            method, base + path, params=params, content=content or None, headers=headers
        )
        # Sign exactly what goes on the wire: the request's own raw path and body bytes.
        request.headers["Authorization"] = self.credentials.authorization(
            method, request.url.raw_path.decode("ascii"), request.content
        )
        started = time.perf_counter()
        try:
            response = self._http.send(request)
        except httpx.HTTPError as exc:
            self._observe(endpoint, type(exc).__name__, started)
            if base == self.base_url and self.backup_url and isinstance(exc, _CONNECT_LEVEL):
                with self._lock:
                    self._primary_down_until = time.monotonic() + self.failover_cooldown
                log.warning("primary %s unreachable (%s); using backup", base, type(exc).__name__)
            raise NetworkError(
                f"{method} {path.split('?')[0]} failed: {type(exc).__name__}",
                maybe_sent=not isinstance(exc, _NOT_SENT),
            ) from None
        self._observe(endpoint, str(response.status_code), started)
        return self._answer(response)

    def _observe(self, endpoint: Endpoint, outcome: str, started: float) -> None:
        if self.observer is not None:
            self.observer(endpoint, outcome, time.perf_counter() - started)

    def _answer(self, response: httpx.Response) -> Answer:
        request_id = response.headers.get("Request-ID")
        status = response.status_code
        body = response.content
        if 200 <= status < 300 and status != 202:
            try:
                signing.check_response_signature(
                    response.headers, body, self.credentials.verify_keys
                )
            except signing.VerificationError as exc:
                raise UnverifiedResponse(str(exc), status=status, request_id=request_id) from None
            try:
                data = json.loads(body) if body else {}
            except ValueError:
                raise GarbledResponse(
                    "response body is not JSON", status=status, request_id=request_id
                ) from None
            return Answer(status, data, request_id)
        code, message, detail = _error_body(body)
        error: WeChatPayError = classify(status, code, message, detail, request_id)
        if status == 202 and not isinstance(error, ProviderBusy):  # pragma: no cover - classify
            error = ProviderBusy("accepted, not done", status=status, request_id=request_id)
        raise error


def _error_body(body: bytes) -> tuple[str | None, str, Any]:
    """The ``code``, ``message`` and ``detail`` of an error answer, tolerating garbage."""
    try:
        data = json.loads(body) if body else None
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return None, "error answer without a JSON body", None
    code = data.get("code")
    message = data.get("message")
    return (
        code if isinstance(code, str) and code else None,
        message.replace("\n", " ")[:500] if isinstance(message, str) else "",
        data.get("detail"),
    )
