"""SQLAlchemy 2.0 typed models: special reductions, compensation bills, events.

Times are stored in UTC (``timestamptz`` on PostgreSQL, naive UTC text on SQLite) and always
come back as aware UTC datetimes. Amounts are integer fen. ``bal_account_no`` is stored
sealed (AES-256-GCM bound to its row, ``store/sealed.py``): every re-entry must send it again,
so it is opened in memory only; ``bal_account_hash`` (a keyed hash) serves look-ups.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from wxrecon.domain.states import (
    BILL_ACTIVE,
    REDUCTION_ACTIVE,
    BState,
    RState,
)

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """An aware-UTC datetime on every backend."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# SQLite only auto-increments an INTEGER PRIMARY KEY.
Id = BigInteger().with_variant(Integer(), "sqlite")


def active_predicate(states: frozenset[Any]) -> Any:
    """``state IN ('A', 'B')`` with literal values: the claim's filter and the partial index's
    predicate are this one text, so the planner can prove the index applies (bound
    parameters would hide that)."""
    listed = ", ".join(f"'{s}'" for s in sorted(states))
    return text(f"state IN ({listed})")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime()}  # noqa: RUF012


class PollingColumns:
    """The columns the sweep works on, shared by both order tables."""

    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # When the next query (or submit) is due; NULL on terminal rows.
    next_poll_at: Mapped[datetime | None]
    # The claim lease: a claimed row is left alone by other sweeps until claimed_until.
    claimed_until: Mapped[datetime | None]
    claim_token: Mapped[str | None] = mapped_column(String(64))
    last_error: Mapped[str | None] = mapped_column(Text)
    last_request_id: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Bumped by every write; the compare-and-set key.
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")


class SpecialReduction(PollingColumns, Base):
    __tablename__ = "special_reductions"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    mchid: Mapped[str] = mapped_column(String(32))
    # Sealed: ``v1:<key id>:<base64>`` (a row from before 0007 holds plaintext until
    # ``wxrecon db seal``; its hash is NULL then).
    bal_account_no: Mapped[str] = mapped_column(String(256))
    # HMAC-SHA256 of the plaintext under WXRECON_LOOKUP_KEY: finding one ledger's orders.
    bal_account_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    out_request_no: Mapped[str] = mapped_column(String(32))
    reduction_type: Mapped[str] = mapped_column(String(32))
    amount: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str | None] = mapped_column(String(512))

    state: Mapped[str] = mapped_column(String(20), default=RState.RECEIVED)
    provider_state: Mapped[str | None] = mapped_column(String(32))
    fail_reason: Mapped[str | None] = mapped_column(String(64))  # verbatim from the provider
    quota_change_no: Mapped[str | None] = mapped_column(String(64))
    success_time: Mapped[datetime | None]
    fail_time: Mapped[datetime | None]
    submitted_at: Mapped[datetime | None]  # first POST: starts the 31-day re-entry window
    last_submit_at: Mapped[datetime | None]  # latest POST (the grace before re-entry)
    # The provider refused a POST (4xx): not proof that nothing moved, since an earlier
    # attempt may have landed; kept until a signed query settles the order.
    refusal: Mapped[str | None] = mapped_column(Text)
    # The caller profile that signs this order's calls; never changes (wxrecon/callers.py).
    caller: Mapped[str] = mapped_column(String(32), default="default", server_default="default")

    __table_args__ = (
        UniqueConstraint("mchid", "out_request_no"),
        Index("ix_special_reductions_state", "state"),
        Index(
            "ix_special_reductions_due",
            "next_poll_at",
            postgresql_where=active_predicate(REDUCTION_ACTIVE),
            sqlite_where=active_predicate(REDUCTION_ACTIVE),
        ),
    )

    def __repr__(self) -> str:  # never shows bal_account_no
        return (
            f"<SpecialReduction id={self.id} mchid={self.mchid} "
            f"out_request_no={self.out_request_no} state={self.state}>"
        )


class CompensationBill(PollingColumns, Base):
    __tablename__ = "compensation_bills"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    out_bill_no: Mapped[str] = mapped_column(String(32), unique=True)
    state: Mapped[str] = mapped_column(String(20), default=BState.TRACKING)
    provider_state: Mapped[str | None] = mapped_column(String(32))
    amount: Mapped[int | None] = mapped_column(BigInteger)
    bill_id: Mapped[str | None] = mapped_column(String(64))
    sp_mchid: Mapped[str | None] = mapped_column(String(32))
    sponsor_mchid: Mapped[str | None] = mapped_column(String(32))
    transfer_remark: Mapped[str | None] = mapped_column(String(512))
    accept_time: Mapped[datetime | None]
    success_time: Mapped[datetime | None]
    close_reason: Mapped[str | None] = mapped_column(String(64))
    close_time: Mapped[datetime | None]
    # receiver_detail.receiver, flat: {"type", "transaction_id", "transaction_type"} as sent
    receiver_detail: Mapped[dict[str, str] | None] = mapped_column(JSON)
    caller: Mapped[str] = mapped_column(String(32), default="default", server_default="default")

    __table_args__ = (
        Index("ix_compensation_bills_state", "state"),
        Index(
            "ix_compensation_bills_due",
            "next_poll_at",
            postgresql_where=active_predicate(BILL_ACTIVE),
            sqlite_where=active_predicate(BILL_ACTIVE),
        ),
    )

    def __repr__(self) -> str:
        return f"<CompensationBill id={self.id} out_bill_no={self.out_bill_no} state={self.state}>"


class Event(Base):
    """Append-only history: every transition and every operator action, with its reason."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))  # "reduction" or "bill"
    order_id: Mapped[int] = mapped_column(BigInteger)
    from_state: Mapped[str | None] = mapped_column(String(20))
    to_state: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str] = mapped_column(Text)
    request_id: Mapped[str | None] = mapped_column(String(128))
    actor: Mapped[str] = mapped_column(String(128), default="engine")
    at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ix_events_kind_order_id", "kind", "order_id"),)

    def __repr__(self) -> str:
        return f"<Event {self.kind}#{self.order_id} {self.from_state}->{self.to_state}>"


class Resolution(Base):
    """A four-eyes resolution of an order in review (``domain/resolution.py``): proposed with
    evidence after a fresh query, pending until a different person approves it. Only its
    status (and who decided, when) ever changes, once, from pending; each change is also an
    event of the order."""

    __tablename__ = "resolutions"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))
    order_id: Mapped[int] = mapped_column(BigInteger)
    order_version: Mapped[int] = mapped_column(Integer)  # the approval's compare-and-set key
    # pending -> approved | withdrawn | superseded; settled: the provider's word won at once
    status: Mapped[str] = mapped_column(String(12))
    target_state: Mapped[str] = mapped_column(String(20))
    evidence: Mapped[str] = mapped_column(Text)
    amount: Mapped[int | None] = mapped_column(BigInteger)  # fen, for a SUCCESS
    quota_change_no: Mapped[str | None] = mapped_column(String(64))
    proposed_by: Mapped[str] = mapped_column(String(128))
    proposed_at: Mapped[datetime] = mapped_column(default=utcnow)
    query_request_id: Mapped[str | None] = mapped_column(String(128))
    query_said: Mapped[str] = mapped_column(String(512))  # the resolve-time query's answer
    decided_by: Mapped[str | None] = mapped_column(String(128))
    decided_at: Mapped[datetime | None]

    __table_args__ = (
        Index("ix_resolutions_kind_order_id", "kind", "order_id"),
        # At most one pending resolution per order.
        Index(
            "uq_resolutions_pending",
            "kind",
            "order_id",
            unique=True,
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
    )

    def __repr__(self) -> str:
        return f"<Resolution {self.id} {self.kind}#{self.order_id} {self.status}>"


class Outcome(Base):
    """The outbox: one row per outcome an app is told about (a final state, an entry into
    review, an operator's state change, a refused intake), written in the transaction of the
    change it reports, and delivered by the relay (:mod:`wxrecon.engine.relay`)."""

    __tablename__ = "outcomes"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    # Deterministic (kind, order id, row version; or the refused message's id): a receiver
    # deduplicates by it, and a repeated write of the same change is a no-op.
    event_id: Mapped[str] = mapped_column(String(96), unique=True)
    type: Mapped[str] = mapped_column(String(40))
    kind: Mapped[str] = mapped_column(String(16))
    order_id: Mapped[int | None] = mapped_column(BigInteger)  # NULL for a refused intake
    # Events of one order are delivered in order: the relay claims the oldest pending one.
    order_key: Mapped[str] = mapped_column(String(128))
    order_no: Mapped[str | None] = mapped_column(String(64))  # out_request_no / out_bill_no
    state: Mapped[str] = mapped_column(String(20))  # the order's state it reports
    payload: Mapped[str] = mapped_column(Text)  # the event as JSON (never bal_account_no)
    occurred_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Delivery: pending -> delivered, or dead after the retry limit.
    delivery: Mapped[str] = mapped_column(String(12), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)  # also the claim lease
    claim_token: Mapped[str | None] = mapped_column(String(64))
    last_error: Mapped[str | None] = mapped_column(String(256))
    task_sent_at: Mapped[datetime | None]  # each target is sent once it has succeeded
    webhook_sent_at: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]

    __table_args__ = (
        Index("ix_outcomes_order_key_id", "order_key", "id"),
        Index(
            "ix_outcomes_pending",
            "next_attempt_at",
            postgresql_where=text("delivery = 'pending'"),
            sqlite_where=text("delivery = 'pending'"),
        ),
        Index("ix_outcomes_occurred_at", "occurred_at"),
        # The backlog (metrics, ``outcomes list --state dead``) without scanning the delivered.
        Index(
            "ix_outcomes_undelivered",
            "delivery",
            "occurred_at",
            postgresql_where=text("delivery <> 'delivered'"),
            sqlite_where=text("delivery <> 'delivered'"),
        ),
    )

    def __repr__(self) -> str:
        return f"<Outcome {self.event_id} {self.type} {self.delivery}>"


class LedgerSnapshot(Base):
    """One channel-balance answer for a quota ledger (domain/ledger.py checks pairs of them).
    The ledger number is sealed (AAD: the mchid and "ledger") and grouped by its lookup hash."""

    __tablename__ = "ledger_snapshots"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    mchid: Mapped[str] = mapped_column(String(32))
    ledger_hash: Mapped[str] = mapped_column(String(64))
    ledger_sealed: Mapped[str] = mapped_column(String(256))
    balance: Mapped[int | None] = mapped_column(BigInteger)  # fen; None: not sent
    in_transit: Mapped[bool | None] = mapped_column(Boolean)  # None: not sent
    request_id: Mapped[str | None] = mapped_column(String(128))
    asked_at: Mapped[datetime | None]  # the query left (the database's clock)
    taken_at: Mapped[datetime]  # the answer came (the database's clock)
    point: Mapped[bool | None] = mapped_column(Boolean)  # decided a check point (domain/ledger)

    __table_args__ = (
        Index("ix_ledger_snapshots_mchid_ledger_hash_taken_at", "mchid", "ledger_hash", "taken_at"),
    )


class LedgerDiscrepancy(Base):
    """A window whose balance change the reductions recorded SUCCESS do not explain."""

    __tablename__ = "ledger_discrepancies"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    mchid: Mapped[str] = mapped_column(String(32))
    ledger_hash: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(24))  # unexplained_debit / unexplained_credit
    amount: Mapped[int] = mapped_column(BigInteger)  # fen, positive
    observed: Mapped[int] = mapped_column(BigInteger)  # balance change, fen
    explained: Mapped[int] = mapped_column(BigInteger)  # minus the reductions' sum, fen
    start_snapshot_id: Mapped[int] = mapped_column(BigInteger)
    # One verdict per window: a re-run check of the same window is a no-op.
    end_snapshot_id: Mapped[int] = mapped_column(BigInteger, unique=True)
    window_start: Mapped[datetime]
    window_end: Mapped[datetime]
    order_ids: Mapped[list[int]] = mapped_column(JSON)
    created_at: Mapped[datetime]

    __table_args__ = (
        Index(
            "ix_ledger_discrepancies_mchid_ledger_hash_created_at",
            "mchid",
            "ledger_hash",
            "created_at",
        ),
    )


class WebToken(Base):
    """A web console token (``wxrecon web token create``): only its SHA-256 is kept."""

    __tablename__ = "web_tokens"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)  # the actor of its actions
    role: Mapped[str] = mapped_column(String(16))  # viewer | operator | approver
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]

    def __repr__(self) -> str:
        return f"<WebToken {self.name} {self.role}>"


__all__ = [
    "Base",
    "CompensationBill",
    "Event",
    "LedgerDiscrepancy",
    "LedgerSnapshot",
    "Outcome",
    "Resolution",
    "SpecialReduction",
    "UTCDateTime",
    "WebToken",
    "utcnow",
]
