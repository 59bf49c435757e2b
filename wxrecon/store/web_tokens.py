"""Web console tokens: created (shown once), looked up by their SHA-256, listed, revoked.

A token is 32 random bytes (``secrets``), so a plain SHA-256 is enough to make the stored
value useless to a reader of the database: there is nothing to brute-force that a slow KDF
(bcrypt, argon2) would protect, and a fast hash keeps every request's lookup cheap.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from wxrecon.store.db import Database
from wxrecon.store.models import WebToken, utcnow

ROLES = ("viewer", "operator", "approver")
PREFIX = "wxr_"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


class TokenProblem(ValueError):
    """A token command's input was refused (one line, never the token)."""


@dataclass(frozen=True)
class Holder:
    """Who a valid token belongs to."""

    id: int
    name: str
    role: str


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create(db: Database, name: str, role: str, *, now: datetime | None = None) -> str:
    """A new token for ``name``; returns the token itself (the only time it exists)."""
    if not NAME.match(name):
        raise TokenProblem("a token name is 1-64 of letters, digits, _ . @ - (a letter first)")
    if role not in ROLES:
        raise TokenProblem(f"role must be one of {', '.join(ROLES)}")
    token = PREFIX + secrets.token_urlsafe(32)
    try:
        with db.transaction() as s:
            s.add(
                WebToken(name=name, role=role, token_hash=digest(token), created_at=now or utcnow())
            )
    except IntegrityError:
        raise TokenProblem(f"a token named {name!r} exists already") from None
    return token


def holder(db: Database, token: str) -> Holder | None:
    """The live (unrevoked) token's holder, or None."""
    if not token.startswith(PREFIX) or len(token) > 100:
        return None
    with db.read() as s:
        row = s.execute(
            select(WebToken).where(
                WebToken.token_hash == digest(token), WebToken.revoked_at.is_(None)
            )
        ).scalar_one_or_none()
        return Holder(row.id, row.name, row.role) if row is not None else None


def listing(db: Database) -> list[dict[str, object]]:
    with db.read() as s:
        rows = s.execute(select(WebToken).order_by(WebToken.id)).scalars()
        return [
            {
                "name": r.name,
                "role": r.role,
                "created_at": r.created_at.isoformat(),
                "revoked_at": r.revoked_at.isoformat() if r.revoked_at else None,
            }
            for r in rows
        ]


def revoke(db: Database, name: str, *, now: datetime | None = None) -> None:
    with db.transaction() as s:
        done = s.execute(  # type: ignore[attr-defined]
            update(WebToken)
            .where(WebToken.name == name, WebToken.revoked_at.is_(None))
            .values(revoked_at=now or utcnow())
        ).rowcount
    if not done:
        raise TokenProblem(f"no live token named {name!r}")
