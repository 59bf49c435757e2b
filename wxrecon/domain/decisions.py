"""What to do next with one order: pure functions of (kind, order, what was asked, the
provider's answer or error, now) that return a Decision — another call to make, or one
write. The engine carries it out (``engine/steps.py``); nothing here does I/O.

The rules (DESIGN.md §2, and the money-safe edges):

- An unknown outcome is never a failure: the order stays as it is and is queried.
- No state that says nothing moved is written on an unsigned answer. ``NOT_ENOUGH`` and
  ``ALREADY_EXISTS`` are confirmed by a signed query; a refused POST (PARAM_ERROR,
  SIGN_ERROR, …) may follow an earlier attempt that landed, so it becomes REJECTED only once
  a signed query, made after the re-entry grace, finds no such order.
- ``NotFound`` shortly after a POST proves nothing; after the grace the same POST is
  re-entered (idempotent within the provider's window); past the window a person looks.
- An answer that finalises an order must name it (out_request_no, mchid; for SUCCESS the
  amount) and agree with it; one that disagrees goes to review, naming the fields.
- A call deferred by the rate limiter is rescheduled and costs no attempt.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from wxrecon.domain.kinds import OrderKind
from wxrecon.domain.schedule import ScheduleSettings, next_delay, past_reentry_window
from wxrecon.wechatpay import errors

MAX_ERROR_TEXT = 1000


class Action(StrEnum):
    MARK = "mark"  # RECEIVED -> SUBMITTED, committed before the first POST leaves
    REENTER = "reenter"  # an event noting a re-entry, committed before the POST leaves
    RECORD = "record"  # the provider's (signed) word
    LATER = "later"  # ask again on the schedule (one attempt spent)
    DEFER = "defer"  # the rate limiter said wait (no attempt spent, no event)
    REVIEW = "review"  # a person must look
    REJECT = "reject"  # final: never applied (proven by a signed query, or never sent)


@dataclass(frozen=True)
class Write:
    """One compare-and-set: to ``to`` (None: the state stays) with ``values``; an event is
    written when the state changes, or with ``note``."""

    action: Action
    to: str | None
    values: Mapping[str, Any]
    reason: str = ""
    request_id: str | None = None
    note: bool = False
    log: str = ""  # the log line, when it says more than the reason


class Endpoint(StrEnum):
    SUBMIT = "submit"
    QUERY = "query"


@dataclass(frozen=True)
class Call:
    """Ask the provider, then decide again on its answer."""

    endpoint: Endpoint
    via: str  # how the answer is recorded: "POST", "query", "signed query after NOT_ENOUGH"
    ahead: Write | None = None  # committed before the call leaves (a POST's mark)
    hint: errors.WeChatPayError | None = None  # the unsigned answer a query confirms
    first: bool = False  # a POST that was never sent before


Decision = Call | Write


class PolicySettings(ScheduleSettings, Protocol):
    """The settings decisions read (``wxrecon.config.Settings`` has them all)."""

    @property
    def reentry_window_days(self) -> int: ...
    @property
    def reentry_margin(self) -> float: ...
    @property
    def reentry_grace(self) -> float: ...


@dataclass(frozen=True)
class Policy:
    """The settings decisions read, typed (``Policy.of(settings)``)."""

    schedule: ScheduleSettings
    grace: float  # seconds after a POST during which NotFound proves nothing
    window: timedelta  # re-entry stops this long after the first POST
    window_days: int  # the provider's window (the margin is taken off ``window``)
    rng: random.Random = field(default_factory=random.Random, compare=False)

    @classmethod
    def of(cls, settings: PolicySettings, rng: random.Random | None = None) -> Policy:
        window = timedelta(days=settings.reentry_window_days) - timedelta(
            seconds=settings.reentry_margin
        )
        days = int(settings.reentry_window_days)
        grace = float(settings.reentry_grace)
        return cls(settings, grace, window, days, rng or random.Random())

    def delay(self, attempts: int) -> float | None:
        return next_delay(attempts, self.schedule, self.rng)


def short(error: BaseException | str) -> str:
    return str(error).replace("\n", " ")[:MAX_ERROR_TEXT]


SETTLED: Mapping[str, Any] = {"next_poll_at": None, "claimed_until": None, "claim_token": None}


def _due(at: datetime) -> dict[str, Any]:
    return {"next_poll_at": at, "claimed_until": None, "claim_token": None}


# -- the first call of a step ---------------------------------------------------------------


def start(kind: OrderKind, row: Any, now: datetime, policy: Policy, marked: bool) -> Decision:
    """A claimed active order's first move: submit what was never sent (or was marked with
    its chunk), else query. One whose sealed ledger number did not open (altered, or copied
    from another row) can be neither sent nor queried: a person looks."""
    problem = getattr(row, "unopened", None)
    if problem is not None:
        return review(kind, row, f"the stored ledger number cannot be used: {problem}")
    if kind.request is not None and (row.state == kind.initial or marked):
        return submit(kind, row, now, policy, marked=marked)
    return Call(Endpoint.QUERY, "query")


def submit(kind: OrderKind, row: Any, now: datetime, p: Policy, *, marked: bool) -> Decision:
    """Send (or re-enter) the stored order's POST, with the write that must precede it."""
    assert kind.request is not None and kind.sent is not None
    first = row.state == kind.initial or marked
    if not first and past_reentry_window(row.submitted_at, now, p.window):
        why = f"the {p.window_days}-day re-entry window has passed; the provider has no trace"
        return review(kind, row, why)
    try:
        kind.request(row)
    except errors.InvalidRequest as exc:
        if not first:  # it was sent before (older rules?): only a person may say it never moved
            return review(kind, row, f"stored order is invalid: {exc}")
        return reject(kind, f"stored order is invalid: {exc}", short(exc))
    if marked:
        return Call(Endpoint.SUBMIT, "POST", first=True)
    if first:
        mark = sending(kind, row, now)
        return Call(Endpoint.SUBMIT, "POST", ahead=mark, first=True)
    note = Write(
        Action.REENTER,
        None,
        {"last_submit_at": now},
        reason="re-entering the same POST: the provider has no trace of the order",
        note=True,
    )
    return Call(Endpoint.SUBMIT, "POST", ahead=note)


def sending(kind: OrderKind, row: Any, now: datetime) -> Write:
    """RECEIVED -> SUBMITTED: the mark committed before a first POST leaves; SUBMITTED ->
    SUBMITTED for an order handed back by its chunk before that POST left (marked again so
    that one chunk alone sends it)."""
    assert kind.sent is not None
    again = row.state == kind.sent
    return Write(
        Action.MARK,
        kind.sent,
        {"submitted_at": row.submitted_at or now, "last_submit_at": now},
        reason="sending after a rate-limit wait" if again else "sending",
        note=again,  # the state stays: recorded all the same, the mark is what decides
    )


# -- after the provider answered -------------------------------------------------------------


def decide(
    kind: OrderKind,
    row: Any,
    call: Call,
    outcome: Any,
    now: datetime,
    policy: Policy,
) -> Decision:
    """The next move after ``call`` gave ``outcome`` (an answer or a WeChatPayError)."""
    if isinstance(outcome, errors.Throttled):
        return defer(kind, row, outcome, now)
    if isinstance(outcome, errors.WeChatPayError):
        if call.endpoint is Endpoint.SUBMIT:
            return _submit_failed(kind, row, call, outcome, now, policy)
        return _query_failed(kind, row, call, outcome, now, policy)
    return answered(kind, row, call, outcome, now, policy)


def _submit_failed(
    kind: OrderKind, row: Any, call: Call, exc: errors.WeChatPayError, now: datetime, p: Policy
) -> Decision:
    if isinstance(exc, errors.OutcomeUnknown):
        return later(kind, row, exc, "outcome of the POST unknown; will query", now, p)
    if isinstance(exc, errors.NotEnough | errors.AlreadyExists | errors.Rejected):
        return Call(Endpoint.QUERY, f"signed query after {exc.kind}", hint=exc)
    if isinstance(exc, errors.InvalidRequest) and call.first:  # refused here: nothing left
        return reject(kind, f"refused before sending: {exc}", short(exc))
    return review(kind, row, f"unexpected answer to the POST: {short(exc)}", exc)


def _query_failed(
    kind: OrderKind, row: Any, call: Call, exc: errors.WeChatPayError, now: datetime, p: Policy
) -> Decision:
    hint = call.hint
    refusal = short(hint) if isinstance(hint, errors.Rejected) else None
    if isinstance(exc, errors.NotFound) and (hint is None or refusal):
        if kind.request is None:
            return later(kind, row, exc, kind.query_failed, now, p)
        return not_found(kind, row, exc, now, p, refusal=refusal)
    if hint is not None:
        extra = {"refusal": refusal} if refusal else {}
        why = f"{hint.kind} not yet confirmed by a signed query"
        return later(kind, row, exc, why, now, p, extra)
    if isinstance(exc, errors.TransientError):
        return later(kind, row, exc, kind.query_failed, now, p)
    return review(kind, row, f"unexpected answer to the query: {short(exc)}", exc)


def not_found(
    kind: OrderKind,
    row: Any,
    exc: errors.WeChatPayError,
    now: datetime,
    p: Policy,
    *,
    refusal: str | None = None,
) -> Decision:
    """The provider has no such order (as far as this answer goes)."""
    refusal = refusal or row.refusal
    extra = {"refusal": refusal} if refusal else {}
    if row.state not in kind.unconfirmed:
        # It answered PROCESSING before: a not-found now is a lagging replica, not proof.
        return later(kind, row, exc, "query found nothing for an accepted order", now, p)
    last = row.last_submit_at or row.submitted_at
    if last is not None and (now - last).total_seconds() < p.grace:
        # A refused order's next look is after the grace: sooner proves nothing either.
        floor = last + timedelta(seconds=p.grace) if refusal else None
        why = "not found yet, too soon after the POST to conclude"
        return later(kind, row, exc, why, now, p, extra, not_before=floor)
    if refusal:
        why = (
            f"refused by the provider ({refusal}), and a signed query "
            f"{p.grace:g}s after the last POST finds no such order"
        )
        return reject(kind, why, refusal, exc.request_id)
    return submit(kind, row, now, p, marked=False)


def answered(
    kind: OrderKind, row: Any, call: Call, result: Any, now: datetime, p: Policy
) -> Decision:
    """Record what the provider said: a final state settles the row; an in-flight one
    schedules the next query (attempts restart on a change of state), or gives up into
    review once the schedule is spent."""
    local = kind.from_provider(result.state)
    if local is None:
        # STATE_UNKNOWN (or a new value) may be a passing state: keep asking on the schedule;
        # ``later`` sends it to review once the attempt budget is spent.
        unknown = errors.WeChatPayError(
            f"the provider answered state {result.state!s}", request_id=result.request_id
        )
        return later(kind, row, unknown, "a state we do not know, asking again", now, p)
    final = local in kind.final
    success = final and local == "SUCCESS"
    try:
        # The ledger number only on a SUCCESS, the answer that says money moved: reading it
        # is an RSA decryption, and a 200 to our POST or query is of our ledger's order (a
        # re-entry with other parameters is refused, a query of another ledger not found).
        differs = kind.differences(row, result, success)
    except errors.GarbledResponse as exc:  # the answer's ledger number does not decrypt
        if call.endpoint is Endpoint.SUBMIT:
            unknown = errors.OutcomeUnknown(exc)
            return later(kind, row, unknown, "outcome of the POST unknown; will query", now, p)
        return later(kind, row, exc, "the answer's ledger number is garbled", now, p)
    if differs:
        why = f"the provider's order differs from ours in {', '.join(differs)}"
        return review(kind, row, why, result)
    missing = kind.missing(result, local) if final else []
    if missing:
        garbled = errors.GarbledResponse(
            f"a {result.state} answer without {', '.join(missing)}", request_id=result.request_id
        )
        return later(kind, row, garbled, "a final answer must be complete", now, p)
    values = kind.values(result)
    if final:
        return Write(
            Action.RECORD,
            local,
            {**values, **SETTLED},
            reason=f"{call.via}: {result.state}{kind.detail(result)}",
            request_id=result.request_id,
        )
    changed = local != row.state
    attempts = 1 if changed else row.attempts + 1
    delay = p.delay(attempts)
    if delay is None:
        return review(kind, row, f"still {result.state} after {row.attempts} attempts", result)
    return Write(
        Action.RECORD,
        local if changed else None,
        {**values, "attempts": attempts, **_due(now + timedelta(seconds=delay))},
        reason=f"{call.via}: {result.state}{kind.detail(result)}",
        request_id=result.request_id,
    )


# -- the writes every path ends in -----------------------------------------------------------


def later(
    kind: OrderKind,
    row: Any,
    exc: errors.WeChatPayError,
    why: str,
    now: datetime,
    p: Policy,
    extra: Mapping[str, Any] | None = None,
    *,
    not_before: datetime | None = None,
) -> Write:
    """Query again on the schedule; review once past the re-entry window (an order never
    confirmed accepted) or once the attempt budget is spent."""
    attempts = row.attempts + 1
    delay = p.delay(attempts)
    if row.state in kind.unconfirmed and past_reentry_window(row.submitted_at, now, p.window):
        why = f"past the {p.window_days}-day re-entry window; {why}: {short(exc)}"
        return review(kind, row, why, exc)
    if delay is None:
        return review(kind, row, f"gave up after {attempts} attempts; {why}: {short(exc)}", exc)
    at = now + timedelta(seconds=delay)
    if not_before is not None and at < not_before:
        at = not_before
    return Write(
        Action.LATER,
        None,
        {
            "last_error": f"{why}: {short(exc)}"[:MAX_ERROR_TEXT],
            "last_request_id": exc.request_id,
            "attempts": attempts,
            **_due(at),
            **(extra or {}),
        },
        log=f"{why}: {short(exc)}; next try in {(at - now).total_seconds():.1f}s",
    )


def defer(kind: OrderKind, row: Any, exc: errors.Throttled, now: datetime) -> Write:
    """The rate limiter said wait: come back later, no attempt spent, no event."""
    return Write(
        Action.DEFER,
        None,
        _due(now + timedelta(seconds=max(exc.retry_after, 0.05))),
        log=f"deferred by the rate limiter for {exc.retry_after:.2f}s",
    )


def reject(kind: OrderKind, why: str, error: str, request_id: str | None = None) -> Write:
    """Final: the order was never applied (refused before sending, or proven absent)."""
    assert kind.rejected is not None
    return Write(
        Action.REJECT,
        kind.rejected,
        {"last_error": error, "last_request_id": request_id, **SETTLED},
        reason=why,
        request_id=request_id,
    )


def review(kind: OrderKind, row: Any, why: str, source: Any = None) -> Write:
    request_id = getattr(source, "request_id", None)
    return Write(
        Action.REVIEW,
        kind.review,
        {"last_error": why[:MAX_ERROR_TEXT], "last_request_id": request_id, **SETTLED},
        reason=why,
        request_id=request_id,
        log=f"needs review: {why}",
    )
