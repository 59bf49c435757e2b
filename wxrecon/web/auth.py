"""Who is asking: a bearer token (the API) or a session cookie (the browser), its role, and
the cross-site checks on every state-changing request made with a cookie.

The cookie holds the token itself (HttpOnly, SameSite=Strict, Secure off loopback): a
revoked token ends its sessions at once, since every request looks the token up again.
CSRF defence is twofold for cookie requests: Sec-Fetch-Site / Origin must be same-origin,
and a double-submit token (cookie ``wxr_csrf`` = form field ``csrf`` or header
``X-CSRF-Token``) must match. A bearer header is never sent by a browser on its own, so
bearer requests need neither.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any

from fastapi import HTTPException, Request

from wxrecon.store import web_tokens
from wxrecon.store.web_tokens import Holder

SESSION = "wxr_session"
CSRF = "wxr_csrf"
# Each role can do what the one before it can: an approver may also retry and propose, which
# is why the engine (not the role) refuses an approval by the resolution's own proposer.
RANK = {"viewer": 0, "operator": 1, "approver": 2}
UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}


def new_csrf() -> str:
    return secrets.token_urlsafe(24)


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def same_origin(request: Request) -> bool:
    """The browser says the request came from our own pages (or says nothing, as old ones)."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is not None:
        host = request.headers.get("host", "")
        return origin.split("://", 1)[-1] == host
    return True


async def csrf_ok(request: Request) -> bool:
    cookie = request.cookies.get(CSRF, "")
    sent = request.headers.get("x-csrf-token", "")
    if not sent and request.headers.get("content-type", "").startswith(
        "application/x-www-form-urlencoded"
    ):
        form = await request.form()
        sent = str(form.get("csrf", ""))
    return bool(cookie) and hmac.compare_digest(cookie, sent)


async def holder_of(request: Request) -> Holder:
    """The request's token holder; 401 without a live token, 403 on a cross-site write."""
    db = request.app.state.runtime.db
    token = _bearer(request)
    via_cookie = token is None
    if via_cookie:
        token = request.cookies.get(SESSION)
    found = web_tokens.holder(db, token) if token else None
    if found is None:
        raise HTTPException(401, "a valid token is needed", {"WWW-Authenticate": "Bearer"})
    unsafe = via_cookie and request.method in UNSAFE
    if unsafe and (not same_origin(request) or not await csrf_ok(request)):
        raise HTTPException(403, "cross-site request refused")
    request.state.holder = found
    return found


def need(holder: Holder, role: str) -> None:
    if RANK.get(holder.role, -1) < RANK[role]:
        raise HTTPException(403, f"role {holder.role} may not do this (needs {role})")


def cookie_flags(request: Request) -> dict[str, Any]:
    """HttpOnly and SameSite=Strict always; Secure unless served on loopback (no TLS there)."""
    host = (request.url.hostname or "").lower()
    loopback = host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")
    return {"httponly": True, "samesite": "strict", "secure": not loopback, "path": "/"}
