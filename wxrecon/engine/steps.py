"""One claimed order's step: load -> call -> decide -> write, for any kind.

A row is written before anything is sent; a reduction moves RECEIVED -> SUBMITTED in a
transaction committed *before* its POST (a chunk's new orders in one, see ``_mark``), so a
crash after sending is never mistaken for "nothing sent". Outcomes learnt afterwards may be
held and committed with the chunk's next write (``store.unit.Unit``): losing one only means
asking the provider again. What to do with each answer is ``domain.decisions``' call.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy.exc import DBAPIError

from wxrecon import metrics
from wxrecon.domain import decisions
from wxrecon.domain.decisions import (
    Action,
    Call,
    Decision,
    Endpoint,
    Policy,
    PolicySettings,
    Write,
)
from wxrecon.domain.kinds import OrderKind, kind_of
from wxrecon.engine.turns import PATIENCE, HandBack, Later, Publish, Steps, Waiting, turns
from wxrecon.store import sql, unit
from wxrecon.store.db import Database
from wxrecon.store.rows import Row
from wxrecon.store.sealed import UnknownKey
from wxrecon.store.unit import ENGINE_ACTOR, Cas, Unit
from wxrecon.wechatpay import errors
from wxrecon.wechatpay.resources import CompensationBill as ProviderBill
from wxrecon.wechatpay.resources import SpecialReduction as ProviderReduction
from wxrecon.wechatpay.resources import SpecialReductionRequest

log = logging.getLogger(__name__)

MAX_CHUNK = 1000  # orders per poll message, at most

Clock = Callable[[], datetime]
_LOG_LEVEL = {Action.REVIEW: logging.WARNING}


class Provider(Protocol):
    """What the engine needs from :class:`wxrecon.wechatpay.WeChatPayClient`."""

    def submit_special_reduction(self, request: SpecialReductionRequest) -> ProviderReduction: ...

    def query_special_reduction(
        self, out_request_no: str, *, mchid: str, bal_account_no: str
    ) -> ProviderReduction: ...

    def query_compensation_bill(self, out_bill_no: str) -> ProviderBill: ...


def moved(write: Cas) -> None:
    """After a won transition: count it and log it."""
    if write.changed:
        metrics.count_transition(write.kind, write.src, str(write.to))
        log.info(
            "%s %s -> %s: %s",
            write.kind,
            write.src,
            write.to,
            write.reason,
            extra=kind_of(write.row).log_fields(write.row, write.request_id),
        )


def load_rows(db: Database, kind: OrderKind, ids: Sequence[int]) -> dict[int, Any]:
    return sql.load_rows(db, kind.model, kind.row, ids)


def load_row(db: Database, kind: OrderKind, order_id: int) -> Any:
    """The order's row; None when there is no such row."""
    return load_rows(db, kind, (order_id,)).get(order_id)


def cas(
    db: Database,
    row: Row,
    to: str | None,
    values: dict[str, Any],
    *,
    reason: str,
    now: datetime | None = None,
    request_id: str | None = None,
    actor: str = ENGINE_ACTOR,
    note: bool = False,
) -> bool:
    """One checked compare-and-set, committed now (IllegalTransition when the table forbids
    it); updates ``row`` when it wins."""
    write = Write(Action.RECORD, to, values, reason, request_id, note)
    return unit.commit(db, [prepare(db, row, write, now or db.now(), actor)], moved)[0]


def prepare(db: Database, row: Row, write: Write, now: datetime, actor: str) -> Cas:
    """``write`` as a compare-and-set on ``row``, its transition checked against the kind's
    table first (IllegalTransition)."""
    kind = kind_of(row)
    if write.to is not None and write.to != row.state:
        kind.check(row.state, write.to)
    return unit.prepare(
        db,
        kind.model,
        row,
        write.to,
        write.values,
        reason=write.reason,
        now=now,
        request_id=write.request_id,
        actor=actor,
        note=write.note,
    )


@dataclass
class Reconciler:
    """Works on claimed orders: I/O with the provider, compare-and-set writes to the DB."""

    db: Database
    client: Provider | None  # every order's provider, unless ``clients`` routes by caller
    settings: PolicySettings  # wxrecon.config.Settings, or anything with its attributes
    clock: Clock | None = None  # None: the database's clock (tests pass their own)
    rng: random.Random = field(default_factory=random.Random)
    actor: str = ENGINE_ACTOR
    # caller -> the client signing as it (Runtime.client): an order's calls are signed by
    # the caller it was taken in with, e.g. bills by a platform merchant.
    clients: Callable[[str], Provider] | None = None

    def provider_for(self, row: Row) -> Provider:
        if self.clients is not None:
            return self.clients(getattr(row, "caller", "default"))
        assert self.client is not None, "a Reconciler needs client or clients"
        return self.client

    def now(self) -> datetime:
        return self.db.now() if self.clock is None else self.clock()

    @functools.cached_property
    def policy(self) -> Policy:
        return Policy.of(self.settings, self.rng)

    def process(self, kind: OrderKind, order_id: int, token: str) -> str | None:
        """Advance one claimed order as far as one step allows; returns its state.

        Returns None when the row is gone or the claim is no longer ours (a newer claim or
        an operator action took over): nothing is done then."""
        with self.db.pinned():
            row = load_row(self.db, kind, order_id)
            work = Unit(self.db, moved, hold=False, fallback=self._unrecorded)
            state = self._step(kind, work, order_id, token, row)
            assert not isinstance(state, Later)  # put back only inside a chunk's turns
            return state

    def steps(
        self,
        kind: OrderKind,
        ids: Sequence[int],
        token: str,
        unsent: Mapping[int, int] | None = None,
        hand_back: Publish | None = None,
    ) -> Steps:
        """The steps of a chunk of orders claimed together under ``token``, to be called in
        turn (each one isolated by the caller): one pinned connection and one select for the
        chunk's rows. A row read at the start may have moved on by its turn; every write is a
        compare-and-set, so a stale row only loses the race. ``hand_back`` publishes the
        orders left waiting (``turns``) as a chunk again, with ``unsent``: those whose first
        POST had not left, by the row version then."""
        ids = list(dict.fromkeys(ids))
        with self.db.pinned():
            rows = load_rows(self.db, kind, ids)
            work = Unit(self.db, moved, fallback=self._unrecorded)
            try:
                marks = self._mark(kind, rows.values(), token, unsent or {})
                step = functools.partial(self._step, kind, work)
                pairs = [
                    (i, functools.partial(step, i, token, rows.get(i), marks.get(i))) for i in ids
                ]
                back: HandBack | None = None
                if hand_back is not None:
                    publish = hand_back

                    def back(waiting: list[Waiting]) -> Collection[int]:
                        versions = {w.id: rows[w.id].version for w in waiting if w.unsent}
                        return publish(
                            waiting, versions, functools.partial(self._hold, kind, token)
                        )

                patience = getattr(self.settings, "rate_limit_max_wait", PATIENCE)
                yield from turns(pairs, patience, hand_back=back)
            finally:
                work.flush()

    def _hold(self, kind: OrderKind, token: str, ids: list[int], seconds: float) -> bool:
        """Keep the claims of a chunk's handed-back orders until ``seconds`` from now and a
        lease past that (committed now): a message that waits its turn must not find its
        orders taken by a sweep. False when the database refused."""
        lease = getattr(self.settings, "claim_lease", 120.0)
        until = self.now() + timedelta(seconds=seconds + lease)
        try:
            sql.hold_claims(self.db, kind.model, ids, token, until)
        except DBAPIError as exc:
            log.warning("could not hold %d waiting orders (%s)", len(ids), type(exc).__name__)
            return False
        return True

    def _mark(
        self, kind: OrderKind, rows: Iterable[Row], token: str, unsent: Mapping[int, int]
    ) -> dict[int, bool]:
        """Mark a chunk's new orders sent in one transaction before any of their POSTs
        leaves: one commit for the chunk instead of one per order, and still before sending.

        An order marked but never sent (the worker dies first, the chunk runs out of time) is
        what an order whose POST was lost is: a query finds nothing and, past the grace
        period, the same POST is entered again. An order handed back ``unsent`` is marked
        again, SUBMITTED to SUBMITTED, if its row is at the version the hand-back saw: one
        chunk alone makes that first POST (a message delivered twice, or run again after a
        crash, finds the version moved on and queries first). An order whose stored
        parameters are invalid is left to its step, which rejects it. Returns, by id,
        whether each mark won."""
        if kind.request is None:
            return {}
        now = self.now()
        writes = [
            prepare(self.db, row, decisions.sending(kind, row, now), now, self.actor)
            for row in rows
            if row.claim_token == token
            and (
                row.state == kind.initial
                or (row.state == kind.sent and unsent.get(row.id, -1) == row.version)
            )
            and _sendable(kind, row)
        ]
        if not writes:
            return {}
        won = unit.commit(self.db, writes, moved)
        return {w.row.id: ok for w, ok in zip(writes, won, strict=True)}

    def _step(
        self,
        kind: OrderKind,
        work: Unit,
        order_id: int,
        token: str,
        row: Row | None,
        marked: bool | None = None,
    ) -> str | Later | None:
        """``marked``: None, or whether its chunk's mark before sending won; an order so
        marked is sent at once, or left alone when its mark lost."""
        if row is None:
            log.warning("%s %s does not exist", kind, order_id)
            return None
        if row.claim_token != token:
            log.info("stale claim on %s %s; skipped", kind, order_id, extra=kind.log_fields(row))
            return None
        if row.state not in kind.active:
            return row.state
        unopened = getattr(row, "unopened", None)
        if isinstance(unopened, UnknownKey):
            # A configuration matter, not the order's: left for a process holding that key.
            log.warning("%s %s left alone: %s", kind, order_id, unopened)
            return None
        if marked is False:
            return row.state
        decision: Decision = decisions.start(kind, row, self.now(), self.policy, bool(marked))
        return self._run(kind, work, row, decision)

    def _run(
        self, kind: OrderKind, work: Unit, row: Row, decision: Decision, written: bool = False
    ) -> str | Later | None:
        """Call, decide, until a write ends the step; ``written``: the first call's write
        ahead is done (a step put back resumes at its call)."""
        while isinstance(decision, Call):
            ahead = None if written else decision.ahead
            if ahead is not None and not self._write(kind, work, row, ahead):
                return work.state_of(row)
            written = False
            outcome = self._ask(kind, row, decision)
            if isinstance(outcome, errors.NotYet):
                resume = functools.partial(self._run, kind, work, row, decision, True)
                unsent = decision.endpoint is Endpoint.SUBMIT and decision.first
                return Later(outcome.retry_after, resume, outcome.endpoint, unsent, outcome.key)
            decision = decisions.decide(kind, row, decision, outcome, self.now(), self.policy)
        self._write(kind, work, row, decision)
        return work.state_of(row)

    def _unrecorded(self, refused: Cas) -> Cas:
        """Instead of a write the database refused: an attempt spent (review once the budget
        is), the claim released, so one bad answer never stalls its order."""
        kind, row, now = kind_of(refused.row), refused.row, self.now()
        exc = errors.GarbledResponse(f"the database refused to record: {refused.reason[:200]}")
        why = "the outcome could not be recorded"
        return prepare(
            self.db, row, decisions.later(kind, row, exc, why, now, self.policy), now, self.actor
        )

    def _ask(self, kind: OrderKind, row: Row, call: Call) -> Any:
        """The provider's answer to ``call``, or the WeChatPayError it raised."""
        try:
            client = self.provider_for(row)
            if call.endpoint is Endpoint.SUBMIT:
                assert kind.request is not None
                return client.submit_special_reduction(kind.request(row))
            return kind.query(client, row)
        except errors.WeChatPayError as exc:
            return exc

    def _write(self, kind: OrderKind, work: Unit, row: Row, write: Write) -> bool:
        if write.log:
            level = _LOG_LEVEL.get(write.action, logging.INFO)
            log.log(level, "%s", write.log, extra=kind.log_fields(row, write.request_id))
        ahead = write.action in (Action.MARK, Action.REENTER)
        return work.put(prepare(self.db, row, write, self.now(), self.actor), ahead=ahead)


def _sendable(kind: OrderKind, row: Row) -> bool:
    assert kind.request is not None
    try:
        kind.request(row)
    except errors.InvalidRequest:
        return False
    return True
