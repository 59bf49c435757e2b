"""How the provider checks a request: routing, headers, the Authorization signature and fields.

Every refusal is an ``ApiError`` with the provider's status and code:

- unknown path → 404 NOT_FOUND; known path, wrong method → 405 INVALID_REQUEST
- missing ``Accept`` / ``User-Agent``, POST without ``Content-Type: application/json``,
  missing ``Wechatpay-Serial`` on an aggracct endpoint → 400 INVALID_REQUEST
- Authorization missing, malformed, unknown mchid or serial, timestamp more than 300 s off,
  signature not matching the exact bytes received → 401 SIGN_ERROR with ``detail``
- ``Wechatpay-Serial`` naming no key of ours, bad JSON, bad fields, a ``bal_account_no`` that
  does not decrypt → 400 PARAM_ERROR with ``detail.field``
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote

from cryptography.hazmat.primitives.asymmetric import rsa

from wxrecon.simulator.material import ProviderKeys
from wxrecon.simulator.state import ApiError, ReductionParams
from wxrecon.wechatpay import keys, signing
from wxrecon.wechatpay.client import BALANCE_PATH, BILL_PATH, REDUCTION_PATH, Endpoint

ORDER_NO = re.compile(r"[0-9A-Za-z]{1,32}")
MCHID = re.compile(r"[0-9]{1,32}")
REDUCTION_TYPES = ("FINANCIAL_PENALTY", "JUDICIAL_DEDUCTION")
MAX_ENCRYPTED = 1024
MAX_REASON = 512
MAX_AMOUNT = 2**63 - 1
AGGRACCT = (Endpoint.SUBMIT_REDUCTION, Endpoint.QUERY_REDUCTION, Endpoint.QUERY_BALANCE)
_AUTH_MCHID = re.compile(r'mchid="([0-9]{1,32})"')


@dataclass(frozen=True)
class Route:
    endpoint: Endpoint
    path_param: str | None = None


def route(method: str, path: str) -> Route:
    """Map a raw request path to its endpoint (the path parameter is percent-decoded)."""
    if path == REDUCTION_PATH:
        found = Route(Endpoint.SUBMIT_REDUCTION)
        expected = "POST"
    elif path.startswith(REDUCTION_PATH + "/") and "/" not in path[len(REDUCTION_PATH) + 1 :]:
        found = Route(Endpoint.QUERY_REDUCTION, unquote(path[len(REDUCTION_PATH) + 1 :]))
        expected = "GET"
    elif path == BALANCE_PATH:
        found = Route(Endpoint.QUERY_BALANCE)
        expected = "GET"
    elif path.startswith(BILL_PATH + "/") and "/" not in path[len(BILL_PATH) + 1 :]:
        found = Route(Endpoint.QUERY_BILL, unquote(path[len(BILL_PATH) + 1 :]))
        expected = "GET"
    else:
        raise ApiError(404, "NOT_FOUND", "no such resource")
    if method != expected:
        raise ApiError(405, "INVALID_REQUEST", f"{method} is not allowed here; use {expected}")
    return found


def parse_query(raw: str) -> dict[str, str]:
    """Query parameters as the provider's servlet decodes them (``+`` is a space)."""
    out: dict[str, str] = {}
    for name, value in parse_qsl(raw, keep_blank_values=True):
        if name in out:
            raise ApiError(
                400,
                "PARAM_ERROR",
                f"query parameter {name} is repeated",
                {"field": name, "location": "query"},
            )
        out[name] = value
    return out


def parse_body(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(
            400,
            "PARAM_ERROR",
            "the request body is not valid JSON",
            {"location": "body", "issue": "invalid JSON"},
        ) from None


def target_mchid(rt: Route, query: str, body: bytes, authorization: str | None) -> str | None:
    """The merchant a request is about, found cheaply before any check (for the rate limit)."""
    if rt.endpoint is Endpoint.QUERY_BILL:
        m = _AUTH_MCHID.search(authorization or "")
        return m.group(1) if m else None
    if rt.endpoint is Endpoint.SUBMIT_REDUCTION:
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return None
        value = data.get("mchid") if isinstance(data, dict) else None
        return value if isinstance(value, str) and MCHID.fullmatch(value) else None
    for name, value in parse_qsl(query):
        if name == "mchid":
            return value if MCHID.fullmatch(value) else None
    return None


def _header_error(status: int, code: str, message: str, header: str) -> ApiError:
    return ApiError(status, code, message, {"location": "header", "field": header})


def check_http_headers(method: str, rt: Route, headers: Any) -> None:
    """The HTTP-level rules of APIv3 (``headers`` is case-insensitive)."""
    if not headers.get("User-Agent"):
        raise _header_error(
            400, "INVALID_REQUEST", "HTTP header User-Agent is required", "User-Agent"
        )
    accept = headers.get("Accept")
    if not accept:
        raise _header_error(400, "INVALID_REQUEST", "HTTP header Accept is required", "Accept")
    if not any(a in accept for a in ("application/json", "*/*", "application/*")):
        raise _header_error(400, "INVALID_REQUEST", "Accept must allow application/json", "Accept")
    if method == "POST":
        content_type = headers.get("Content-Type") or ""
        if not content_type.lower().startswith("application/json"):
            raise _header_error(
                400, "INVALID_REQUEST", "Content-Type must be application/json", "Content-Type"
            )


def _sign_error(message: str, issue: str, **extra: Any) -> ApiError:
    detail: dict[str, Any] = {"location": "header", "field": "Authorization", "issue": issue}
    detail.update(extra)
    return ApiError(401, "SIGN_ERROR", message, detail)


def verify_authorization(
    pk: ProviderKeys, method: str, raw_target: str, headers: Any, body: bytes, now: float
) -> signing.Authorization:
    """Check the Authorization header against the exact method, target and body received."""
    header = headers.get("Authorization")
    if not header:
        raise _sign_error("Authorization header is missing", "missing")
    try:
        auth = signing.parse_authorization(header)
    except signing.AuthorizationParseError as exc:
        raise _sign_error("Authorization header is malformed", str(exc)) from None
    merchant = pk.merchant(auth.mchid)
    if merchant is None:
        raise _sign_error("mchid in Authorization is not a known merchant", "unknown mchid")
    serial, public, _role = merchant
    if auth.serial_no.upper() != serial:
        raise _sign_error(
            "serial_no in Authorization is not a valid API certificate of this merchant",
            "unknown serial_no",
        )
    try:
        ts = int(auth.timestamp)
    except ValueError:
        raise _sign_error("timestamp in Authorization is not an integer", "bad timestamp") from None
    if abs(now - ts) > signing.MAX_CLOCK_SKEW:
        raise _sign_error(
            f"timestamp in Authorization is more than {signing.MAX_CLOCK_SKEW}s off the server's",
            "timestamp expired",
        )
    message = signing.request_message(method, raw_target, auth.timestamp, auth.nonce_str, body)
    if not signing.verify(public, message, auth.signature):
        raise _sign_error(
            "signature does not verify",
            "sign not match",
            sign_information={
                "method": method,
                "url": raw_target,
                "sign_message_length": len(message),
                "truncated_sign_message": message[:200].decode("utf-8", "replace"),
            },
        )
    return auth


# Who may call each endpoint (the pages' 支持商户): bills for a platform merchant, the
# reduction, its query and the balance for an ordinary one.
PLATFORM_ONLY = frozenset({Endpoint.QUERY_BILL})


def check_role(pk: ProviderKeys, endpoint: Endpoint, mchid: str) -> None:
    """403 NO_AUTH when the verified caller's role may not call ``endpoint``."""
    merchant = pk.merchant(mchid)
    role = merchant[2] if merchant is not None else "none"
    if role == "any":
        return
    wanted = "platform" if endpoint in PLATFORM_ONLY else "ordinary"
    if role != wanted:
        who = (
            "平台商户 (platform merchant)"
            if wanted == "platform"
            else "普通商户 (ordinary merchant)"
        )
        raise ApiError(403, "NO_AUTH", f"商户无权限: this API is for a {who} merchant")


def encryption_key(
    pk: ProviderKeys, rt: Route, headers: Any
) -> tuple[str, rsa.RSAPrivateKey] | None:
    """The provider key named by ``Wechatpay-Serial``; required on aggracct endpoints."""
    serial = headers.get("Wechatpay-Serial")
    if rt.endpoint not in AGGRACCT:
        return pk.private_key_for(serial)
    if not serial:
        raise _header_error(
            400, "INVALID_REQUEST", "HTTP header Wechatpay-Serial is required", "Wechatpay-Serial"
        )
    found = pk.private_key_for(serial)
    if found is None:
        raise _header_error(
            400,
            "PARAM_ERROR",
            "Wechatpay-Serial names neither the WeChat Pay public key nor a platform certificate",
            "Wechatpay-Serial",
        )
    return found


def _field_error(name: str, issue: str, location: str = "body") -> ApiError:
    return ApiError(
        400,
        "PARAM_ERROR",
        f"{name}: {issue}",
        {"field": name, "location": location, "issue": issue},
    )


def _text(
    data: dict[str, Any], name: str, pattern: re.Pattern[str], rule: str, location: str
) -> str:
    value = data.get(name)
    if value is None or value == "":
        raise _field_error(name, "is required", location)
    if not isinstance(value, str):
        raise _field_error(name, "must be a string", location)
    if not pattern.fullmatch(value):
        raise _field_error(name, f"must be {rule}", location)
    return value


def decrypt_bal_account_no(
    data: dict[str, Any], key: rsa.RSAPrivateKey, location: str = "body"
) -> str:
    value = data.get("bal_account_no")
    if value is None or value == "":
        raise _field_error("bal_account_no", "is required", location)
    if not isinstance(value, str):
        raise _field_error("bal_account_no", "must be a string", location)
    if len(value) > MAX_ENCRYPTED:
        raise _field_error("bal_account_no", f"is longer than {MAX_ENCRYPTED} characters", location)
    try:
        plaintext = keys.decrypt(key, value)
    except ValueError:
        raise _field_error(
            "bal_account_no",
            "does not decrypt with the key Wechatpay-Serial names (RSA-OAEP, base64)",
            location,
        ) from None
    if not plaintext or not plaintext.isprintable():
        raise _field_error("bal_account_no", "decrypts to an invalid account number", location)
    return plaintext


def submit_params(data: Any, key: rsa.RSAPrivateKey) -> ReductionParams:
    """Validate a submit body; raises 400 PARAM_ERROR naming the field."""
    if not isinstance(data, dict):
        raise ApiError(
            400,
            "PARAM_ERROR",
            "the request body must be a JSON object",
            {"location": "body", "issue": "not an object"},
        )
    mchid = _text(data, "mchid", MCHID, "1 to 32 digits", "body")
    out_request_no = _text(data, "out_request_no", ORDER_NO, "1 to 32 letters and digits", "body")
    rtype = data.get("reduction_type")
    if rtype is None or rtype == "":
        raise _field_error("reduction_type", "is required")
    if rtype not in REDUCTION_TYPES:
        raise _field_error("reduction_type", f"must be one of {', '.join(REDUCTION_TYPES)}")
    amount = data.get("amount")
    if amount is None:
        raise _field_error("amount", "is required")
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise _field_error("amount", "must be an integer number of fen")
    if not 0 < amount <= MAX_AMOUNT:
        raise _field_error("amount", "must be a positive number of fen")
    reason = data.get("reason")
    if reason is not None:
        if not isinstance(reason, str):
            raise _field_error("reason", "must be a string")
        if len(reason) > MAX_REASON:
            raise _field_error("reason", f"is longer than {MAX_REASON} characters")
    bal = decrypt_bal_account_no(data, key)
    return ReductionParams(
        mchid=mchid,
        bal_account_no=bal,
        out_request_no=out_request_no,
        reduction_type=rtype,
        amount=amount,
        reason=reason,
    )


def query_params(query: dict[str, str], key: rsa.RSAPrivateKey) -> tuple[str, str]:
    """``mchid`` and decrypted ``bal_account_no`` of a GET on an aggracct endpoint."""
    mchid = _text(query, "mchid", MCHID, "1 to 32 digits", "query")
    return mchid, decrypt_bal_account_no(query, key, "query")


def check_path_order_no(value: str | None, name: str) -> str:
    if not value or not ORDER_NO.fullmatch(value):
        raise _field_error(name, "must be 1 to 32 letters and digits", "path")
    return value
