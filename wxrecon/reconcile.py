"""The domain: intake, submit, refresh, sweep claims and operator actions. No Celery here.

Rules (DESIGN.md §2):

- A row is written before anything is sent; a reduction moves RECEIVED → SUBMITTED in a
  transaction committed *before* its POST (a chunk's new orders in one, see
  ``_mark_sending``), so a crash after sending is never mistaken for "nothing sent". Outcomes
  learnt afterwards may be held and committed with a chunk's next write (see
  ``Reconciler._write``): losing one only means asking the provider again.
- Every write is a compare-and-set on ``(id, version, state)`` plus, for every transition, an
  event row in the same transaction. A writer that loses the race changes nothing.
- An unknown outcome is never a failure: the order stays SUBMITTED and is queried. A
  ``NOT_ENOUGH`` / ``ALREADY_EXISTS`` answer (unsigned) is confirmed with a signed query before
  a final state is written. ``NotFound`` shortly after a POST proves nothing: after a grace
  period the same POST is re-entered (idempotent for 31 days); past the window, a person looks.
- A call deferred by the shared rate limiter (``Throttled``) is rescheduled after its
  ``retry_after`` and does not count as an attempt.
- Final states never change except through :func:`retry_reduction` / :func:`retry_bill`, which
  record the operator and why.
"""

from __future__ import annotations

import functools
import logging
import random
import time
import uuid
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol, cast

from sqlalchemy import Select, Table, bindparam, insert, select, text, update
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.orm import Session, configure_mappers

from wxrecon import metrics
from wxrecon.domain.errors import Conflict, OrderNotFound
from wxrecon.domain.schedule import next_delay, past_reentry_window
from wxrecon.domain.states import (
    BILL_ACTIVE,
    BILL_FINAL,
    REDUCTION_ACTIVE,
    REDUCTION_FINAL,
    REDUCTION_UNCONFIRMED,
    BState,
    IllegalTransition,
    Kind,
    RState,
    bill_from_provider,
    bill_retry_target,
    check_bill,
    check_reduction,
    reduction_from_provider,
    reduction_retry_target,
)
from wxrecon.store.db import Database
from wxrecon.store.models import CompensationBill, Event, SpecialReduction, utcnow
from wxrecon.wechatpay import errors
from wxrecon.wechatpay.resources import (
    CompensationBill as ProviderBill,
)
from wxrecon.wechatpay.resources import (
    SpecialReduction as ProviderReduction,
)
from wxrecon.wechatpay.resources import (
    SpecialReductionRequest,
    check_order_no,
)

log = logging.getLogger(__name__)

ENGINE_ACTOR = "engine"
DEFAULT_REENTRY_GRACE = 30.0  # seconds after a POST during which NotFound proves nothing
MAX_ERROR_TEXT = 1000
MAX_CHUNK = 1000  # orders per poll message, at most

Clock = Callable[[], datetime]
Step = Callable[[], "str | None"]  # one order's step of a chunk: returns its state
Steps = Generator[tuple[int, Step], None, None]  # (order id, its step), each id once

__all__ = [
    "Claim",
    "Conflict",
    "IllegalTransition",
    "IntakeResult",
    "OrderNotFound",
    "Provider",
    "Reconciler",
    "claim_due_bills",
    "claim_due_reductions",
    "intake_bill",
    "intake_reduction",
    "intake_reductions",
    "new_token",
    "requery_bill",
    "requery_reduction",
    "retry_bill",
    "retry_bills",
    "retry_reduction",
    "retry_reductions",
]


class Provider(Protocol):
    """What the engine needs from :class:`wxrecon.wechatpay.WeChatPayClient`."""

    def submit_special_reduction(self, request: SpecialReductionRequest) -> ProviderReduction: ...

    def query_special_reduction(
        self, out_request_no: str, *, mchid: str, bal_account_no: str
    ) -> ProviderReduction: ...

    def query_compensation_bill(self, out_bill_no: str) -> ProviderBill: ...


@dataclass(frozen=True)
class Claim:
    """A leased order: whoever holds ``token`` may work on row ``id`` until the lease ends."""

    id: int
    token: str


@dataclass(frozen=True)
class IntakeResult:
    order_id: int
    created: bool
    state: str
    # The claim token when the caller holds the order's lease (it was just created, or this
    # is a redelivery of the call that created it), so it should process or enqueue it.
    token: str | None

    @property
    def claimed(self) -> bool:
        return self.token is not None


def new_token() -> str:
    return uuid.uuid4().hex


def _short(error: BaseException | str) -> str:
    return str(error).replace("\n", " ")[:MAX_ERROR_TEXT]


def _active_sql(states: Iterable[str]) -> Any:
    # Literal values, written exactly like the partial index predicate, so the planner can
    # prove the index applies (bound parameters would hide that).
    return text("state IN ({})".format(", ".join(f"'{s}'" for s in sorted(states))))


def _insert(session: Session, model: type[Any]) -> Any:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return pg_dialect.insert(model)
    if dialect == "sqlite":
        return sqlite_dialect.insert(model)
    raise RuntimeError(f"unsupported database: {dialect}")


EVENTS = cast(Table, Event.__table__)
EVENT_COLUMNS = (
    "kind",
    "order_id",
    "from_state",
    "to_state",
    "reason",
    "request_id",
    "actor",
    "at",
)
# The event row of a transition, its values bound as ``e_<column>`` (order_id: ``cas_id``).
_EVENT_INSERT = insert(EVENTS).values(
    {
        name: bindparam("cas_id" if name == "order_id" else f"e_{name}", type_=EVENTS.c[name].type)
        for name in EVENT_COLUMNS
    }
)


def _event(
    kind: Kind,
    order_id: int,
    src: str | None,
    dst: str,
    reason: str,
    actor: str,
    at: datetime,
    *,
    request_id: str | None = None,
) -> dict[str, Any]:
    """The bound values of ``_EVENT_INSERT`` (and of the event half of a CAS statement)."""
    return {
        "cas_id": order_id,
        "e_kind": str(kind),
        "e_from_state": src,
        "e_to_state": str(dst),
        "e_reason": reason or "(no reason given)",
        "e_request_id": request_id,
        "e_actor": actor,
        "e_at": at,
    }


# -- intake -----------------------------------------------------------------------------------


REDUCTION_PARAMS = ("bal_account_no", "reduction_type", "amount", "reason")


def intake_reduction(
    session: Session,
    request: SpecialReductionRequest,
    *,
    token: str | None = None,
    lease: float = 120.0,
    now: datetime | None = None,
    actor: str = "intake",
) -> IntakeResult:
    """Write a new RECEIVED order in ``session``'s transaction, or find the same one.

    The new row is claimed for ``lease`` seconds under ``token`` (a fresh one if None), so
    the caller can process it (or enqueue a task for it) without the sweep racing it; if the
    caller dies, the lease expires and the sweep submits it. Raises :class:`Conflict`, and
    writes nothing, when the order exists with different parameters.
    """
    now = now or utcnow()
    token = token or new_token()
    stmt = (
        _insert(session, SpecialReduction)
        .values(**_received(request, token, lease, now))
        .on_conflict_do_nothing(index_elements=["mchid", "out_request_no"])
        .returning(SpecialReduction.id)
    )
    new_id = session.execute(stmt).scalar()
    if new_id is not None:
        _record_received(session, [(new_id, request)], actor, now)
        return IntakeResult(new_id, True, RState.RECEIVED.value, token)
    return _existing_reduction(session, request, token)


INTAKE_ROWS_PER_STATEMENT = 500


def intake_reductions(
    session: Session,
    requests: Sequence[SpecialReductionRequest],
    *,
    token: str,
    lease: float = 120.0,
    now: datetime | None = None,
    actor: str = "intake",
) -> list[IntakeResult]:
    """:func:`intake_reduction` for many orders under one ``token``, in ``session``'s
    transaction: new rows with one multi-row INSERT (per 500), their events with one
    executemany; an order that exists already, or repeats one earlier in ``requests``, is
    then looked up as one order is (Conflict when its parameters differ)."""
    now = now or utcnow()
    created: dict[tuple[str, str], int] = {}
    for i in range(0, len(requests), INTAKE_ROWS_PER_STATEMENT):
        part = requests[i : i + INTAKE_ROWS_PER_STATEMENT]
        stmt = (
            _insert(session, SpecialReduction)
            .values([_received(r, token, lease, now) for r in part])
            .on_conflict_do_nothing(index_elements=["mchid", "out_request_no"])
            .returning(SpecialReduction.id, SpecialReduction.mchid, SpecialReduction.out_request_no)
        )
        created.update({(mchid, no): row_id for row_id, mchid, no in session.execute(stmt)})
    results: list[IntakeResult] = []
    new: list[tuple[int, SpecialReductionRequest]] = []
    for request in requests:
        new_id = created.pop((request.mchid, request.out_request_no), None)
        if new_id is not None:
            new.append((new_id, request))
            results.append(IntakeResult(new_id, True, RState.RECEIVED.value, token))
        else:
            results.append(_existing_reduction(session, request, token))
    _record_received(session, new, actor, now)
    return results


def _received(
    request: SpecialReductionRequest, token: str, lease: float, now: datetime
) -> dict[str, Any]:
    """The values of a new RECEIVED row, claimed for ``lease`` seconds under ``token``."""
    until = now + timedelta(seconds=lease)
    return {
        "mchid": request.mchid,
        "bal_account_no": request.bal_account_no,
        "out_request_no": request.out_request_no,
        "reduction_type": str(request.reduction_type),
        "amount": request.amount,
        "reason": request.reason,
        "state": RState.RECEIVED.value,
        "attempts": 0,
        "next_poll_at": until,
        "claimed_until": until,
        "claim_token": token,
        "created_at": now,
        "updated_at": now,
        "version": 1,
    }


def _record_received(
    session: Session,
    new: Sequence[tuple[int, SpecialReductionRequest]],
    actor: str,
    now: datetime,
) -> None:
    """The RECEIVED events of new rows (one executemany), their log lines and counts."""
    if not new:
        return
    session.execute(
        _EVENT_INSERT,
        [
            _event(Kind.REDUCTION, new_id, None, RState.RECEIVED, "received", actor, now)
            for new_id, _ in new
        ],
    )
    for _, request in new:
        log.info(
            "reduction received",
            extra={"out_request_no": request.out_request_no, "mchid": request.mchid},
        )
        metrics.count_transition(Kind.REDUCTION, "", RState.RECEIVED)


def _existing_reduction(
    session: Session, request: SpecialReductionRequest, token: str
) -> IntakeResult:
    """The stored order with ``request``'s number: Conflict when its parameters differ."""
    existing = session.execute(
        select(SpecialReduction).where(
            SpecialReduction.mchid == request.mchid,
            SpecialReduction.out_request_no == request.out_request_no,
        )
    ).scalar_one()
    differs = reduction_differences(existing, request)
    if differs:
        raise Conflict(
            f"out_request_no {request.out_request_no} for mchid {request.mchid} already exists "
            f"with a different {', '.join(differs)}; nothing changed"
        )
    # A redelivered intake message (same deterministic token) still owns its claim.
    mine = existing.claim_token == token and existing.state in REDUCTION_ACTIVE
    return IntakeResult(existing.id, False, existing.state, token if mine else None)


def reduction_differences(row: SpecialReduction, request: SpecialReductionRequest) -> list[str]:
    """Names (never values) of the parameters in which ``request`` differs from ``row``."""
    theirs = {
        "bal_account_no": request.bal_account_no,
        "reduction_type": str(request.reduction_type),
        "amount": request.amount,
        "reason": request.reason,
    }
    return [name for name in REDUCTION_PARAMS if getattr(row, name) != theirs[name]]


def request_of(row: SpecialReduction) -> SpecialReductionRequest:
    """The (re-validated) request a stored order sends; every re-entry sends exactly this."""
    return SpecialReductionRequest.create(
        mchid=row.mchid,
        bal_account_no=row.bal_account_no,
        out_request_no=row.out_request_no,
        reduction_type=row.reduction_type,
        amount=row.amount,
        reason=row.reason,
    )


def _sendable(row: SpecialReduction) -> bool:
    try:
        request_of(row)
    except errors.InvalidRequest:
        return False
    return True


def intake_bill(
    session: Session,
    out_bill_no: object,
    *,
    token: str | None = None,
    lease: float = 120.0,
    now: datetime | None = None,
    actor: str = "intake",
) -> IntakeResult:
    """Start tracking a compensation bill (idempotent: an existing one is returned).

    Raises InvalidRequest, writing nothing, when ``out_bill_no`` is not a valid number."""
    out_bill_no = check_order_no(out_bill_no, "out_bill_no")
    now = now or utcnow()
    token = token or new_token()
    until = now + timedelta(seconds=lease)
    stmt = (
        _insert(session, CompensationBill)
        .values(
            out_bill_no=out_bill_no,
            state=BState.TRACKING.value,
            attempts=0,
            next_poll_at=until,
            claimed_until=until,
            claim_token=token,
            created_at=now,
            updated_at=now,
            version=1,
        )
        .on_conflict_do_nothing(index_elements=["out_bill_no"])
        .returning(CompensationBill.id)
    )
    new_id = session.execute(stmt).scalar()
    if new_id is not None:
        session.execute(
            _EVENT_INSERT,
            _event(Kind.BILL, new_id, None, BState.TRACKING, "tracking requested", actor, now),
        )
        log.info("bill tracked", extra={"out_bill_no": out_bill_no})
        metrics.count_transition(Kind.BILL, "", BState.TRACKING)
        return IntakeResult(new_id, True, BState.TRACKING.value, token)
    existing = session.execute(
        select(CompensationBill).where(CompensationBill.out_bill_no == out_bill_no)
    ).scalar_one()
    mine = existing.claim_token == token and existing.state in BILL_ACTIVE
    return IntakeResult(existing.id, False, existing.state, token if mine else None)


# -- sweep claims -----------------------------------------------------------------------------


def _claim(
    db: Database, model: type[Any], active: Iterable[str], limit: int, lease: float, now: datetime
) -> list[Claim]:
    token = new_token()
    until = now + timedelta(seconds=lease)
    due: Select[Any] = (
        select(model.id)
        .where(_active_sql(active), model.next_poll_at <= now)
        .order_by(model.next_poll_at)
        .limit(limit)
    )
    values = {
        "claimed_until": until,
        "next_poll_at": until,  # the lease is also the next due time
        "claim_token": token,
        "version": model.version + 1,
    }
    if db.is_postgresql:
        # SKIP LOCKED: concurrent sweeps never wait for (or double-claim) each other's rows.
        # A CTE with FOR UPDATE is evaluated exactly once, so LIMIT really bounds the batch
        # (an IN (subquery) may be re-run by the planner).
        due_cte = due.with_for_update(skip_locked=True).cte("due")
        stmt = update(model).where(model.id == due_cte.c.id)
    else:
        # SQLite has one writer at a time (BEGIN IMMEDIATE): a plain subquery is enough.
        stmt = update(model).where(model.id.in_(due.scalar_subquery()))
    stmt = stmt.values(**values).returning(model.id).execution_options(synchronize_session=False)
    with db.begin() as conn:
        ids = list(conn.execute(stmt).scalars())
    return [Claim(i, token) for i in sorted(ids)]


def claim_due_reductions(
    db: Database, *, limit: int, lease: float, now: datetime | None = None
) -> list[Claim]:
    """Claim up to ``limit`` due reductions in one statement; returns the leases taken."""
    return _claim(db, SpecialReduction, REDUCTION_ACTIVE, limit, lease, now or utcnow())


def claim_due_bills(
    db: Database, *, limit: int, lease: float, now: datetime | None = None
) -> list[Claim]:
    return _claim(db, CompensationBill, BILL_ACTIVE, limit, lease, now or utcnow())


# -- processing -------------------------------------------------------------------------------


def _on_one_connection(
    step: Callable[[Reconciler, int, str], str | None],
) -> Callable[[Reconciler, int, str], str | None]:
    """One order's step (its read, compare-and-sets and commits) on one pinned connection."""

    @functools.wraps(step)
    def run(self: Reconciler, order_id: int, token: str) -> str | None:
        with self.db.pinned():
            return step(self, order_id, token)

    return run


@dataclass
class Reconciler:
    """Works on one claimed order at a time: I/O with the provider, CAS writes to the DB."""

    db: Database
    client: Provider
    settings: Any  # wxrecon.config.Settings (or anything with the same attributes)
    clock: Clock = utcnow
    rng: random.Random = field(default_factory=random.Random)
    actor: str = ENGINE_ACTOR
    # Seconds after a POST during which a not-found answer proves nothing (None: from
    # ``settings.reentry_grace``, else DEFAULT_REENTRY_GRACE).
    grace: float | None = None
    # While a chunk runs: its outcome writes not yet committed (see ``_steps``). A
    # Reconciler serves one task (one chunk) at a time: ``runtime`` makes one per call.
    _pending: list[Cas] | None = field(default=None, init=False, repr=False)

    # -- settings with defaults (some are not in config.Settings yet) ----------------------

    @property
    def reentry_grace(self) -> float:
        if self.grace is not None:
            return self.grace
        return float(getattr(self.settings, "reentry_grace", DEFAULT_REENTRY_GRACE))

    @property
    def window_days(self) -> int:
        return int(getattr(self.settings, "reentry_window_days", 31))

    # -- sweeps ------------------------------------------------------------------------------

    def sweep_reductions(self, dispatch: Callable[[Claim], Any], *, max_batches: int = 50) -> int:
        """Claim due reductions batch by batch (one statement each, committed before any
        dispatch) and hand each claim to ``dispatch``; returns how many were claimed.

        Stops at the first short batch, after ``max_batches``, or once a sweep interval has
        passed (the next sweep carries on)."""
        return self._sweep(claim_due_reductions, dispatch, max_batches)

    def sweep_bills(self, dispatch: Callable[[Claim], Any], *, max_batches: int = 50) -> int:
        return self._sweep(claim_due_bills, dispatch, max_batches)

    def _sweep(
        self, claim: Callable[..., list[Claim]], dispatch: Callable[[Claim], Any], max_batches: int
    ) -> int:
        batch = int(self.settings.sweep_batch)
        budget = float(getattr(self.settings, "sweep_interval", 2.0))
        started = time.monotonic()
        total = 0
        for _ in range(max_batches):
            claims = claim(
                self.db, limit=batch, lease=float(self.settings.claim_lease), now=self.clock()
            )
            for c in claims:
                dispatch(c)
            total += len(claims)
            if len(claims) < batch or time.monotonic() - started > budget:
                break
        return total

    # -- reductions ------------------------------------------------------------------------

    @_on_one_connection
    def process_reduction(self, order_id: int, token: str) -> str | None:
        """Advance one claimed reduction as far as one step allows; returns its state.

        Returns None when the row is gone or the claim is no longer ours (a newer claim or
        an operator action took over): nothing is done then.
        """
        return self._reduction_step(order_id, token, load_row(self.db, SpecialReduction, order_id))

    def reduction_steps(self, ids: Sequence[int], token: str) -> Steps:
        """The steps of a chunk of reductions claimed together under ``token``, to be called
        in turn (each one isolated by the caller): one pinned connection and one select for
        the chunk's rows instead of one each. A row read at the start may have moved on by
        its turn; every write is a compare-and-set, so a stale row only loses the race."""
        return self._steps(
            SpecialReduction, self._reduction_step, ids, token, start=self._mark_sending
        )

    def bill_steps(self, ids: Sequence[int], token: str) -> Steps:
        return self._steps(CompensationBill, self._bill_step, ids, token)

    def _steps(
        self,
        model: type[Any],
        step: Callable[[int, str, Any], str | None],
        ids: Sequence[int],
        token: str,
        *,
        start: Callable[[Iterable[Any], str], dict[int, bool]] | None = None,
    ) -> Steps:
        """``start`` runs before the first step; what it returns for an id (the chunk's mark
        on that order) is handed to that order's step."""
        ids = list(dict.fromkeys(ids))
        with self.db.pinned():
            rows = load_rows(self.db, model, ids)
            try:
                marks = {} if start is None else start(rows.values(), token)
                self._pending = []
                for i in ids:
                    mark = (marks[i],) if i in marks else ()
                    yield i, functools.partial(step, i, token, rows.get(i), *mark)
            finally:
                self._flush()

    def _mark_sending(self, rows: Iterable[SpecialReduction], token: str) -> dict[int, bool]:
        """Mark a chunk's new orders SUBMITTED in one transaction before any of their POSTs
        leaves: one commit for the chunk instead of one per order, and still before sending.

        An order marked but never sent (the worker dies first, the chunk runs out of time) is
        what an order whose POST was lost is: a query finds nothing and, past the grace
        period, the same POST is entered again. An order whose stored parameters are invalid
        is left to its step, which rejects it. Returns, by id, whether each mark won."""
        now = self.clock()
        writes = [
            self._sending(row, now)
            for row in rows
            if row.claim_token == token and row.state == RState.RECEIVED and _sendable(row)
        ]
        if not writes:
            return {}
        won = commit_cas(self.db, writes)
        return {w.row.id: ok for w, ok in zip(writes, won, strict=True)}

    def _sending(self, row: SpecialReduction, now: datetime) -> Cas:
        """RECEIVED → SUBMITTED, the mark written (and committed) before a first POST."""
        return prepare_cas(
            self.db,
            row,
            RState.SUBMITTED,
            {"submitted_at": row.submitted_at or now, "last_submit_at": now},
            reason="sending",
            actor=self.actor,
            now=now,
        )

    def _reduction_step(
        self, order_id: int, token: str, row: SpecialReduction | None, marked: bool | None = None
    ) -> str | None:
        """``marked``: None, or whether its chunk's mark before sending (RECEIVED → SUBMITTED)
        won; an order so marked is sent at once, or left alone when its mark lost."""
        if row is None:
            log.warning("reduction %s does not exist", order_id)
            return None
        if row.claim_token != token:
            log.info("stale claim on reduction %s; skipped", order_id, extra=_rx(row))
            return None
        if row.state not in REDUCTION_ACTIVE:
            return row.state
        if row.state == RState.RECEIVED or marked is not None:
            self._submit(row, marked)
        else:
            self._refresh(row)
        return self._state_of(row)

    def _submit(self, row: SpecialReduction, marked: bool | None = None) -> None:
        now = self.clock()
        if row.state == RState.SUBMITTED and past_reentry_window(
            row.submitted_at, now, self.window_days
        ):
            self._review(row, "the 31-day re-entry window has passed; the provider has no trace")
            return
        try:
            request = request_of(row)
        except errors.InvalidRequest as exc:
            self._write(
                row,
                RState.REJECTED,
                {"last_error": _short(exc), **_settled()},
                reason=f"stored order is invalid: {exc}",
            )
            return
        if marked is not None:  # marked with its chunk, before any POST of it
            ok = marked
        elif row.state == RState.RECEIVED:
            ok = self._put(self._sending(row, now), ahead=True)
        else:
            ok = self._write(
                row,
                None,
                {"last_submit_at": now},
                reason="re-entering the same POST: the provider has no trace of the order",
                note=True,
                ahead=True,
            )
        if not ok:
            return
        try:
            result = self.client.submit_special_reduction(request)
        except errors.Throttled as exc:
            self._defer(row, exc)
        except errors.OutcomeUnknown as exc:
            self._retry_later(row, exc, "outcome of the POST unknown; will query")
        except (errors.NotEnough, errors.AlreadyExists) as exc:
            self._confirm(row, exc)
        except errors.Rejected as exc:
            self._write(
                row,
                RState.REJECTED,
                {"last_error": _short(exc), "last_request_id": exc.request_id, **_settled()},
                reason=f"rejected by the provider: {_short(exc)}",
                request_id=exc.request_id,
            )
        except errors.InvalidRequest as exc:
            self._write(
                row,
                RState.REJECTED,
                {"last_error": _short(exc), **_settled()},
                reason=f"refused before sending: {exc}",
            )
        except errors.WeChatPayError as exc:  # UnexpectedAnswer, NotFound on a POST, …
            self._review(row, f"unexpected answer to the POST: {_short(exc)}", exc)
        else:
            self._apply(row, result, via="POST", check_ledger=True)

    def _confirm(self, row: SpecialReduction, hint: errors.WeChatPayError) -> None:
        """An unsigned NOT_ENOUGH / ALREADY_EXISTS: ask a signed query before anything final."""
        try:
            result = self._query(row)
        except errors.Throttled as exc:
            self._defer(row, exc)
        except errors.WeChatPayError as exc:
            self._retry_later(row, exc, f"{hint.kind} not yet confirmed by a signed query")
        else:
            self._apply(row, result, via=f"signed query after {hint.kind}")

    def _refresh(self, row: SpecialReduction) -> None:
        try:
            result = self._query(row)
        except errors.Throttled as exc:
            self._defer(row, exc)
        except errors.NotFound as exc:
            self._not_found(row, exc)
        except errors.TransientError as exc:
            self._retry_later(row, exc, "query failed")
        except errors.WeChatPayError as exc:
            self._review(row, f"unexpected answer to the query: {_short(exc)}", exc)
        else:
            self._apply(row, result, via="query")

    def _query(self, row: SpecialReduction) -> ProviderReduction:
        return self.client.query_special_reduction(
            row.out_request_no, mchid=row.mchid, bal_account_no=row.bal_account_no
        )

    def _not_found(self, row: SpecialReduction, exc: errors.NotFound) -> None:
        now = self.clock()
        if row.state != RState.SUBMITTED:
            # It answered PROCESSING before: a not-found now is a lagging replica, not proof.
            self._retry_later(row, exc, "query found nothing for an accepted order")
            return
        last = row.last_submit_at or row.submitted_at
        if last is not None and (now - last).total_seconds() < self.reentry_grace:
            self._retry_later(row, exc, "not found yet, too soon after the POST to conclude")
            return
        log.info("reduction not found after the grace period; re-entering", extra=_rx(row, exc))
        self._submit(row)

    def _apply(
        self,
        row: SpecialReduction,
        result: ProviderReduction,
        *,
        via: str,
        check_ledger: bool = False,
    ) -> None:
        local = reduction_from_provider(result.state)
        if local is None:
            self._review(row, f"the provider answered an unknown state {result.state!s}", result)
            return
        try:
            differs = _provider_differences(row, result, ledger=check_ledger)
        except errors.GarbledResponse as exc:  # the POST's ledger number does not decrypt
            self._retry_later(
                row, errors.OutcomeUnknown(exc), "outcome of the POST unknown; will query"
            )
            return
        if differs:
            self._review(
                row,
                f"the provider's order differs from ours in {', '.join(differs)}",
                result,
            )
            return
        values: dict[str, Any] = {
            "provider_state": str(result.state),
            "fail_reason": str(result.fail_reason) if result.fail_reason is not None else None,
            "quota_change_no": result.quota_change_no,
            "success_time": result.success_time,
            "fail_time": result.fail_time,
            "last_request_id": result.request_id,
            "last_error": None,
        }
        detail = f" ({result.fail_reason})" if result.fail_reason is not None else ""
        self._record(row, local, local in REDUCTION_FINAL, values, result, f"{via}: ", detail)

    # -- bills -----------------------------------------------------------------------------

    @_on_one_connection
    def process_bill(self, order_id: int, token: str) -> str | None:
        """Query one claimed compensation bill and record what the provider says."""
        return self._bill_step(order_id, token, load_row(self.db, CompensationBill, order_id))

    def _bill_step(self, order_id: int, token: str, row: CompensationBill | None) -> str | None:
        if row is None:
            log.warning("bill %s does not exist", order_id)
            return None
        if row.claim_token != token:
            log.info("stale claim on bill %s; skipped", order_id, extra=_bx(row))
            return None
        if row.state not in BILL_ACTIVE:
            return row.state
        try:
            result = self.client.query_compensation_bill(row.out_bill_no)
        except errors.Throttled as exc:
            self._defer(row, exc)
        except (errors.TransientError, errors.NotFound) as exc:
            # A bill the provider does not know yet may simply not be created yet.
            self._retry_later(row, exc, "bill query gave no answer")
        except errors.WeChatPayError as exc:
            self._review(row, f"unexpected answer to the bill query: {_short(exc)}", exc)
        else:
            self._apply_bill(row, result)
        return self._state_of(row)

    def _state_of(self, row: Any) -> str:
        """The row's state once its held outcome (if any) is committed."""
        for write in reversed(self._pending or ()):
            if write.row is row:
                return write.to or write.src
        return str(row.state)

    def _apply_bill(self, row: CompensationBill, result: ProviderBill) -> None:
        local = bill_from_provider(result.state)
        if local is None:
            self._review(row, f"the provider answered an unknown state {result.state!s}", result)
            return
        close = result.close_info
        values: dict[str, Any] = {
            "provider_state": str(result.state),
            "amount": result.amount,
            "bill_id": result.bill_id,
            "sp_mchid": result.sp_mchid,
            "sponsor_mchid": result.sponsor_mchid,
            "transfer_remark": result.transfer_remark,
            "accept_time": result.accept_time,
            "success_time": result.success_time,
            "close_reason": close.close_reason if close else None,
            "close_time": close.close_time if close else None,
            "last_request_id": result.request_id,
            "last_error": None,
        }
        detail = f" ({close.close_reason})" if close and close.close_reason else ""
        self._record(row, local, local in BILL_FINAL, values, result, "query: ", detail)

    # -- shared write paths ------------------------------------------------------------------

    def _record(
        self,
        row: Any,
        local: str,
        final: bool,
        values: dict[str, Any],
        result: ProviderReduction | ProviderBill,
        via: str,
        detail: str,
    ) -> None:
        """Write what the provider said: a final state settles the row; an in-flight one
        schedules the next query (attempts restart on a change of state), or gives up into
        NEEDS_REVIEW once the schedule is spent."""
        if final:
            self._write(
                row,
                local,
                {**values, **_settled()},
                reason=f"{via}{result.state}{detail}",
                request_id=result.request_id,
            )
            return
        changed = local != row.state
        attempts = 1 if changed else row.attempts + 1
        delay = next_delay(attempts, self.settings, self.rng)
        if delay is None:
            self._review(row, f"still {result.state} after {row.attempts} attempts", result)
            return
        self._write(
            row,
            local if changed else None,
            {**values, **self._later(attempts, delay)},
            reason=f"{via}{result.state}",
            request_id=result.request_id,
        )

    def _later(self, attempts: int, delay: float) -> dict[str, Any]:
        return {
            "attempts": attempts,
            "next_poll_at": self.clock() + timedelta(seconds=delay),
            "claimed_until": None,
            "claim_token": None,
        }

    def _defer(self, row: Any, exc: errors.Throttled) -> None:
        """The rate limiter said wait: come back later, no attempt spent, no event."""
        log.info("deferred by the rate limiter for %.2fs", exc.retry_after, extra=_x(row))
        self._write(
            row,
            None,
            {
                "next_poll_at": self.clock() + timedelta(seconds=max(exc.retry_after, 0.05)),
                "claimed_until": None,
                "claim_token": None,
            },
            reason="",
        )

    def _retry_later(self, row: Any, exc: errors.WeChatPayError, why: str) -> None:
        attempts = row.attempts + 1
        delay = next_delay(attempts, self.settings, self.rng)
        unconfirmed = isinstance(row, SpecialReduction) and row.state in REDUCTION_UNCONFIRMED
        if unconfirmed and past_reentry_window(row.submitted_at, self.clock(), self.window_days):
            self._review(row, f"past the 31-day re-entry window; {why}: {_short(exc)}", exc)
            return
        if delay is None:
            self._review(row, f"gave up after {attempts} attempts; {why}: {_short(exc)}", exc)
            return
        log.info("%s: %s; next try in %.1fs", why, _short(exc), delay, extra=_x(row, exc))
        self._write(
            row,
            None,
            {
                "last_error": f"{why}: {_short(exc)}"[:MAX_ERROR_TEXT],
                "last_request_id": exc.request_id,
                **self._later(attempts, delay),
            },
            reason="",
        )

    def _review(self, row: Any, why: str, source: Any = None) -> None:
        request_id = getattr(source, "request_id", None)
        log.warning("needs review: %s", why, extra=_x(row, source))
        self._write(
            row,
            RState.NEEDS_REVIEW if isinstance(row, SpecialReduction) else BState.NEEDS_REVIEW,
            {"last_error": why[:MAX_ERROR_TEXT], "last_request_id": request_id, **_settled()},
            reason=why,
            request_id=request_id,
        )

    def _write(
        self,
        row: Any,
        to: str | None,
        values: dict[str, Any],
        *,
        reason: str,
        request_id: str | None = None,
        note: bool = False,
        ahead: bool = False,
    ) -> bool:
        """Compare-and-set ``row`` (id, version, state) to ``to`` (None: same state) with
        ``values``, plus an event when the state changes (or ``note``). Updates ``row`` in
        place on success; returns False, changing nothing, when another writer won.

        Within a chunk an outcome write is held and committed with the chunk's next write
        (in one transaction), and returns True at once; a write-``ahead`` (the mark made
        before a POST is sent) always commits before returning. A held outcome that is lost
        (the worker dies first) only leaves the order as it was, claimed, so its lease runs
        out and the sweep asks the provider again."""
        write = prepare_cas(
            self.db,
            row,
            to,
            values,
            reason=reason,
            request_id=request_id,
            actor=self.actor,
            note=note,
            now=self.clock(),
        )
        return self._put(write, ahead=ahead)

    def _put(self, write: Cas, *, ahead: bool = False) -> bool:
        """Hold ``write`` (within a chunk, unless ``ahead``) or commit it with what is held."""
        if self._pending is not None and not ahead:
            self._pending.append(write)
            return True
        writes = [*(self._pending or ()), write]
        if self._pending:
            self._pending = []
        return commit_cas(self.db, writes)[-1]

    def _flush(self) -> None:
        """Commit the chunk's held outcome writes (end of the chunk)."""
        writes, self._pending = self._pending, None
        if not writes:
            return
        try:
            commit_cas(self.db, writes)
        except Exception:
            log.exception(
                "writing the outcomes of %d orders failed; they return when their leases end",
                len(writes),
            )


def _settled() -> dict[str, Any]:
    """Values of a row that needs no more polling (terminal)."""
    return {"next_poll_at": None, "claimed_until": None, "claim_token": None}


@dataclass(frozen=True)
class Cas:
    """One prepared compare-and-set (see :func:`cas`), ready to run in a transaction."""

    row: Any
    kind: Kind
    src: str
    to: str | None  # None or ``src``: the state stays
    new_values: dict[str, Any]
    params: dict[str, Any]
    statement: Any
    one_statement: bool  # PostgreSQL: the UPDATE and its event in one statement
    event: bool
    reason: str
    request_id: str | None

    @property
    def changed(self) -> bool:
        return self.to is not None and self.to != self.src

    def run(self, conn: Any) -> bool:
        """Execute on ``conn`` (inside its transaction); True when the compare-and-set won."""
        if self.one_statement:
            return conn.execute(self.statement, self.params).first() is not None
        won: bool = conn.execute(self.statement, self.params).rowcount == 1
        if won and self.event:
            conn.execute(_EVENT_INSERT, self.params)
        return won

    def settle(self, won: bool) -> None:
        """After commit: update the row object, count and log the transition."""
        row = self.row
        if not won:
            log.info("lost a race on %s; leaving it to the winner", _label(row), extra=_x(row))
            return
        row.__dict__.update(self.new_values)  # a detached row (see load_rows): no ORM events
        if self.changed:
            metrics.count_transition(self.kind, self.src, str(self.to))
            log.info(
                "%s %s -> %s: %s",
                self.kind,
                self.src,
                self.to,
                self.reason,
                extra=_x(row, request_id=self.request_id),
            )


def prepare_cas(
    db: Database,
    row: Any,
    to: str | None,
    values: dict[str, Any],
    *,
    reason: str,
    request_id: str | None = None,
    actor: str = ENGINE_ACTOR,
    note: bool = False,
    now: datetime | None = None,
) -> Cas:
    """Check the transition (IllegalTransition) and build its statement and parameters."""
    now = now or utcnow()
    kind = Kind.REDUCTION if type(row) is SpecialReduction else Kind.BILL
    src = row.state
    changed = to is not None and to != src
    if changed:
        (check_reduction if kind is Kind.REDUCTION else check_bill)(src, to)  # type: ignore[arg-type]
    new_values = {**values, "version": row.version + 1, "updated_at": now}
    if changed:
        new_values["state"] = to
    params = {f"v_{k}": v for k, v in new_values.items()}
    params.update(cas_id=row.id, cas_version=row.version, cas_state=src)
    event = changed or note
    if event:
        dst: str = src if to is None else to
        params.update(_event(kind, row.id, src, dst, reason, actor, now, request_id=request_id))
    one_statement = event and db.is_postgresql
    return Cas(
        row=row,
        kind=kind,
        src=src,
        to=to,
        new_values=new_values,
        params=params,
        statement=_cas_statement(kind, tuple(sorted(new_values)), one_statement),
        one_statement=one_statement,
        event=event,
        reason=reason,
        request_id=request_id,
    )


def commit_cas(db: Database, writes: Sequence[Cas]) -> list[bool]:
    """Run ``writes`` in one transaction (one commit); each is settled after the commit.
    Returns, per write, whether it won."""
    with db.begin() as conn:
        won = [w.run(conn) for w in writes]
    for w, ok in zip(writes, won, strict=True):
        w.settle(ok)
    return won


def cas(db: Database, row: Any, to: str | None, values: dict[str, Any], **how: Any) -> bool:
    """The one write path of the engine: ``UPDATE … WHERE id=? AND version=? AND state=?``
    and, when the state changes (or ``note``), an event row, in one transaction (``how``:
    the keywords of :func:`prepare_cas`).

    Core statements on one connection, no ORM unit of work: this runs for every step of
    every order. On PostgreSQL the UPDATE and the event INSERT are one statement (the INSERT
    selects from the UPDATE's RETURNING, so it adds a row only if the compare-and-set won);
    on SQLite they are two, under the write lock BEGIN IMMEDIATE takes."""
    return commit_cas(db, [prepare_cas(db, row, to, values, **how)])[0]


@functools.cache
def _cas_statement(kind: Kind, keys: tuple[str, ...], with_event: bool) -> Any:
    """The compare-and-set UPDATE setting ``keys`` (bound as ``v_<key>``), built once per
    shape: building SQLAlchemy statements per call costs more CPU than running them.

    ``with_event`` (PostgreSQL): ``WITH moved AS (UPDATE … RETURNING id) INSERT INTO events …
    SELECT … FROM moved RETURNING id``, one round trip, and the event row exists exactly
    when the UPDATE matched (told by RETURNING: the driver gives no row count for it)."""
    table = cast(
        Table, (SpecialReduction if kind is Kind.REDUCTION else CompensationBill).__table__
    )
    moved = (
        update(table)
        .where(
            table.c.id == bindparam("cas_id"),
            table.c.version == bindparam("cas_version"),
            table.c.state == bindparam("cas_state"),
        )
        .values({k: bindparam(f"v_{k}", type_=table.c[k].type) for k in keys})
    )
    if not with_event:
        return moved
    cte = moved.returning(table.c.id).cte("moved")
    columns = [
        cte.c.id
        if name == "order_id"
        else bindparam(f"e_{name}", type_=EVENTS.c[name].type).label(name)
        for name in EVENT_COLUMNS
    ]
    return (
        insert(EVENTS)
        .from_select(list(EVENT_COLUMNS), select(*columns))
        .add_cte(cte)
        .returning(EVENTS.c.id)
    )


def _rows_select(model: type[Any]) -> Any:
    table = model.__table__
    return select(table).where(table.c.id.in_(bindparam("ids", expanding=True)))


# Built once: building a statement per call costs more CPU than its cached compilation.
_ROWS_SELECT = {model: _rows_select(model) for model in (SpecialReduction, CompensationBill)}


def load_rows(db: Database, model: type[Any], ids: Sequence[int]) -> dict[int, Any]:
    """The orders' rows by id as detached (transient) ``model`` instances, read with one
    Core select outside any ORM session; ids with no row are absent."""
    with db.connect() as conn:
        found = conn.execute(_ROWS_SELECT[model], {"ids": list(ids)}).mappings().all()
    configure_mappers()  # what a first ``model(...)`` would do; a no-op once done
    new = model.__mapper__.class_manager.new_instance
    rows = {}
    for m in found:
        # Filled in directly, not through __init__: the ORM's per-attribute events cost more
        # than the select, and these rows never join a session (their writes are Core).
        row = rows[m["id"]] = new()
        row.__dict__.update(m)
    return rows


def load_row(db: Database, model: type[Any], order_id: int) -> Any:
    """The order's row (see :func:`load_rows`); None when there is no such row."""
    return load_rows(db, model, (order_id,)).get(order_id)


def _provider_differences(
    row: SpecialReduction, result: ProviderReduction, *, ledger: bool
) -> list[str]:
    """Fields where the provider's copy of the order disagrees with ours (names only).

    The ledger number is compared only with ``ledger`` (the POST's answer): a query is made
    with our own ledger number as its filter, so its answer cannot be about another ledger,
    and reading ``result.bal_account_no`` costs an RSA private-key decryption (about a quarter
    of a query's client CPU). Raises GarbledResponse when that number does not decrypt."""
    out = []
    if result.mchid is not None and result.mchid != row.mchid:
        out.append("mchid")
    if result.amount is not None and result.amount != row.amount:
        out.append("amount")
    if result.reduction_type is not None and str(result.reduction_type) != row.reduction_type:
        out.append("reduction_type")
    if ledger and result.bal_account_no is not None and result.bal_account_no != row.bal_account_no:
        out.append("bal_account_no")
    return out


# -- logging helpers (never the bal_account_no) -----------------------------------------------


def _rx(row: SpecialReduction, source: Any = None) -> dict[str, Any]:
    return {
        "out_request_no": row.out_request_no,
        "mchid": row.mchid,
        "request_id": getattr(source, "request_id", None),
    }


def _bx(row: CompensationBill, source: Any = None) -> dict[str, Any]:
    return {"out_bill_no": row.out_bill_no, "request_id": getattr(source, "request_id", None)}


def _x(row: Any, source: Any = None, *, request_id: str | None = None) -> dict[str, Any]:
    extra = _rx(row, source) if isinstance(row, SpecialReduction) else _bx(row, source)
    if request_id is not None:
        extra["request_id"] = request_id
    return extra


def _label(row: Any) -> str:
    if isinstance(row, SpecialReduction):
        return f"reduction {row.mchid}/{row.out_request_no}"
    return f"bill {row.out_bill_no}"


# -- operator actions -------------------------------------------------------------------------


def _load(session: Session, model: type[Any], order_id: int, *, lock: bool) -> Any:
    stmt = select(model).where(model.id == order_id)
    if lock and session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    row = session.execute(stmt).scalar_one_or_none()
    if row is None:
        raise OrderNotFound(
            f"no {'reduction' if model is SpecialReduction else 'bill'} #{order_id}"
        )
    return row


def _operator_write(
    db: Database,
    model: type[Any],
    order_id: int,
    target: Callable[[Any], str],
    values: Callable[[Any], dict[str, Any]],
    *,
    actor: str,
    reason: str,
    now: datetime,
) -> str:
    """Lock, re-read, decide, write and record an operator action in one transaction."""
    if not actor:
        raise ValueError("an operator action needs an actor")
    kind = Kind.REDUCTION if model is SpecialReduction else Kind.BILL
    with db.transaction() as session:
        row = _load(session, model, order_id, lock=True)
        src = row.state
        dst = target(row)  # raises IllegalTransition when not allowed
        stmt = (
            update(model)
            .where(model.id == row.id, model.version == row.version)
            .values(state=dst, version=row.version + 1, updated_at=now, **values(row))
            .execution_options(synchronize_session=False)
        )
        if session.execute(stmt).rowcount != 1:  # type: ignore[attr-defined]
            raise IllegalTransition(f"{kind} #{order_id} changed meanwhile; try again")
        session.add(
            Event(
                kind=kind,
                order_id=row.id,
                from_state=src,
                to_state=dst,
                reason=reason,
                actor=actor,
                at=now,
            )
        )
    if src != dst:
        metrics.count_transition(kind, src, dst)
    log.info("%s #%s %s -> %s by %s: %s", kind, order_id, src, dst, actor, reason)
    return dst


def _restart(now: datetime) -> Callable[[Any], dict[str, Any]]:
    return lambda _row: {
        "attempts": 0,
        "next_poll_at": now,
        "claimed_until": None,
        "claim_token": None,
    }


def retry_reduction(
    db: Database,
    order_id: int,
    *,
    actor: str,
    why: str,
    force: bool = False,
    now: datetime | None = None,
) -> str:
    """Put a reduction in NEEDS_REVIEW or REJECTED (or, with ``force``, a final one) back to
    work: RECEIVED if it was never sent, else SUBMITTED (queried first, re-entered only if
    the provider has no trace). Records ``actor`` and ``why``; returns the new state."""
    now = now or utcnow()
    return _operator_write(
        db,
        SpecialReduction,
        order_id,
        lambda row: reduction_retry_target(
            row.state, ever_sent=row.submitted_at is not None, force=force
        ),
        _restart(now),
        actor=actor,
        reason=f"operator retry: {why}" if why else "operator retry",
        now=now,
    )


def retry_bill(
    db: Database,
    order_id: int,
    *,
    actor: str,
    why: str,
    force: bool = False,
    now: datetime | None = None,
) -> str:
    now = now or utcnow()
    return _operator_write(
        db,
        CompensationBill,
        order_id,
        lambda row: bill_retry_target(row.state, force=force),
        _restart(now),
        actor=actor,
        reason=f"operator retry: {why}" if why else "operator retry",
        now=now,
    )


def _requery(
    db: Database,
    model: type[Any],
    active: frozenset[Any],
    order_id: int,
    *,
    actor: str,
    why: str,
    now: datetime | None,
) -> str:
    def target(row: Any) -> str:
        if row.state not in active:
            raise IllegalTransition(f"order is {row.state}, not in flight: use retry instead")
        return str(row.state)

    now = now or utcnow()
    return _operator_write(
        db,
        model,
        order_id,
        target,
        lambda row: {"next_poll_at": now, "claimed_until": None, "claim_token": None},
        actor=actor,
        reason=f"operator re-query: {why}" if why else "operator re-query",
        now=now,
    )


def requery_reduction(
    db: Database, order_id: int, *, actor: str, why: str = "", now: datetime | None = None
) -> str:
    """Make an in-flight reduction due now (dropping any claim); recorded as an event."""
    return _requery(db, SpecialReduction, REDUCTION_ACTIVE, order_id, actor=actor, why=why, now=now)


def requery_bill(
    db: Database, order_id: int, *, actor: str, why: str = "", now: datetime | None = None
) -> str:
    """Make an in-flight bill due now (dropping any claim); recorded as an event."""
    return _requery(db, CompensationBill, BILL_ACTIVE, order_id, actor=actor, why=why, now=now)


@dataclass
class BulkResult:
    retried: list[int] = field(default_factory=list)
    skipped: dict[int, str] = field(default_factory=dict)  # id -> why not


def retry_reductions(
    db: Database,
    *,
    actor: str,
    why: str,
    states: Sequence[str] = (RState.NEEDS_REVIEW,),
    mchid: str | None = None,
    force: bool = False,
    limit: int | None = None,
    now: datetime | None = None,
) -> BulkResult:
    """Retry every reduction matching the filter (each in its own recorded transaction)."""
    stmt = select(SpecialReduction.id).where(SpecialReduction.state.in_([str(s) for s in states]))
    if mchid is not None:
        stmt = stmt.where(SpecialReduction.mchid == mchid)
    return _bulk(
        db,
        stmt.order_by(SpecialReduction.id).limit(limit),
        lambda i: retry_reduction(db, i, actor=actor, why=why, force=force, now=now),
    )


def retry_bills(
    db: Database,
    *,
    actor: str,
    why: str,
    states: Sequence[str] = (BState.NEEDS_REVIEW,),
    force: bool = False,
    limit: int | None = None,
    now: datetime | None = None,
) -> BulkResult:
    stmt = select(CompensationBill.id).where(CompensationBill.state.in_([str(s) for s in states]))
    return _bulk(
        db,
        stmt.order_by(CompensationBill.id).limit(limit),
        lambda i: retry_bill(db, i, actor=actor, why=why, force=force, now=now),
    )


def _bulk(db: Database, stmt: Select[Any], action: Callable[[int], str]) -> BulkResult:
    with db.read() as session:
        ids = list(session.execute(stmt).scalars())
    result = BulkResult()
    for order_id in ids:
        try:
            action(order_id)
        except (IllegalTransition, OrderNotFound) as exc:
            result.skipped[order_id] = str(exc)
        else:
            result.retried.append(order_id)
    return result
