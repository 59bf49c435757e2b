"""Four-eyes resolution of an order in review, as pure rules (Kill Bill's audited manual
fixes): may this order be resolved to that state, what the fresh signed query made at resolve
time decides, may this person approve, and what the approved write is. The engine
(``engine/resolution.py``) does the I/O.

The rules:

- Only an order in review, only to one of its kind's final states (a reduction: SUCCESS or
  FAILED; a bill: SUCCESS, CLOSED or CANCELLED), only with evidence text (bounded).
- A fresh query is made at resolve time. A signed final answer that agrees with the order and
  is complete wins: it is recorded as the sweep would record it, no person needs to approve.
- Any other answer from the provider (in flight, a state we do not know, not found, a final
  answer that disagrees) leaves the decision to people: the proposal is stored as *pending*
  with what the query said and its Request-ID, and the order does not change. No answer at
  all (network, busy, unverified, throttled) refuses the proposal: UNKNOWN is not FAILED, and
  a resolution needs the provider's current word on record.
- A different person approves (names compared case-insensitively); the approval is refused if
  the order is no longer in review at the version the proposal saw (compare-and-set).
- SUCCESS without an amount from the provider takes the order's own amount (a bill with no
  known amount needs one given); a different amount is refused: that would be another order.
  The write's reason says it was a manual resolution, by whom, and the evidence.

Roles (viewer / operator / approver) are the caller's business (the web layer holds tokens);
these rules only know names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from wxrecon.domain.decisions import SETTLED, Action, Write, short
from wxrecon.domain.errors import WxreconError
from wxrecon.domain.kinds import OrderKind
from wxrecon.wechatpay import errors

MIN_EVIDENCE = 10
MAX_EVIDENCE = 2000
MAX_ACTOR = 128  # the events table's actor column
MAX_SAID = 500  # what the resolve-time query said, as stored
MAX_QUOTA_CHANGE_NO = 64
MAX_AMOUNT = 10**12  # fen; bounded like every input


class ResolutionRefused(WxreconError, ValueError):
    """A resolution (or its approval, or withdrawal) that the rules do not allow."""


class Status(StrEnum):
    PENDING = "pending"  # waiting for a second person
    APPROVED = "approved"  # a second person confirmed: the order is final
    WITHDRAWN = "withdrawn"  # taken back before approval
    SUPERSEDED = "superseded"  # the order left review (a retry) before approval
    SETTLED = "settled"  # the resolve-time query gave a final answer: the provider's word won


OPEN = frozenset({Status.PENDING})


@dataclass(frozen=True)
class Proposal:
    """What a person proposes, checked: the target state, the evidence, and for SUCCESS the
    amount (and, for a reduction, the quota_change_no if known)."""

    target: str
    evidence: str
    amount: int | None
    quota_change_no: str | None


# -- inputs ---------------------------------------------------------------------------------


def check_evidence(text: Any) -> str:
    if not isinstance(text, str):
        raise ResolutionRefused("evidence is required")
    text = " ".join(text.split())  # one line in events and logs
    if len(text) < MIN_EVIDENCE:
        raise ResolutionRefused(f"evidence is required: at least {MIN_EVIDENCE} characters")
    if len(text) > MAX_EVIDENCE:
        raise ResolutionRefused(f"evidence is too long: at most {MAX_EVIDENCE} characters")
    return text


def check_actor(actor: Any) -> str:
    if not isinstance(actor, str) or not actor.strip():
        raise ResolutionRefused("a resolution needs an actor")
    actor = actor.strip()
    if len(actor) > MAX_ACTOR or not actor.isprintable():
        raise ResolutionRefused(f"actor: at most {MAX_ACTOR} printable characters")
    return actor


def same_person(a: str, b: str) -> bool:
    return a.strip().casefold() == b.strip().casefold()


def targets(kind: OrderKind, state: str) -> frozenset[str]:
    """The states an order of ``kind`` in ``state`` may be resolved to (none: not in review)."""
    return frozenset(str(s) for s in kind.resolutions.get(state, frozenset()))


def propose(
    kind: OrderKind,
    row: Any,
    target: Any,
    evidence: Any,
    *,
    amount: Any = None,
    quota_change_no: Any = None,
) -> Proposal:
    """Check a proposal against the order as it is; raises ResolutionRefused."""
    allowed = targets(kind, row.state)
    if not allowed:
        raise ResolutionRefused(
            f"{kind} #{row.id} is {row.state}, not {kind.review}: only an order in review "
            "can be resolved"
        )
    target = str(target or "")
    if target not in allowed:
        raise ResolutionRefused(
            f"a {kind} can be resolved to {', '.join(sorted(allowed))}, not {target or '(none)'}"
        )
    text = check_evidence(evidence)
    if amount is not None and (
        isinstance(amount, bool) or not isinstance(amount, int) or not 0 < amount <= MAX_AMOUNT
    ):
        raise ResolutionRefused(f"amount: a positive integer of fen up to {MAX_AMOUNT}")
    if quota_change_no is not None and (
        not isinstance(quota_change_no, str)
        or not 0 < len(quota_change_no) <= MAX_QUOTA_CHANGE_NO
        or not quota_change_no.isprintable()
    ):
        raise ResolutionRefused(f"quota_change_no: 1 to {MAX_QUOTA_CHANGE_NO} characters")
    if target != "SUCCESS":
        if amount is not None or quota_change_no is not None:
            raise ResolutionRefused("amount and quota_change_no belong to a SUCCESS only")
        return Proposal(target, text, None, None)
    if quota_change_no is not None and "quota_change_no" not in _columns(row):
        raise ResolutionRefused(f"a {kind} has no quota_change_no")
    own = getattr(row, "amount", None)
    if own is not None and amount is not None and amount != own:
        raise ResolutionRefused(
            f"amount {amount} is not the order's own {own}: a different amount is another order"
        )
    settled = own if own is not None else amount
    if settled is None:
        raise ResolutionRefused(f"{kind} #{row.id} has no known amount: give it for a SUCCESS")
    return Proposal(target, text, settled, quota_change_no)


def _columns(row: Any) -> set[str]:
    return set(getattr(row, "__dataclass_fields__", {}))


# -- the fresh query ------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """What the resolve-time query decides: ``write`` (the provider's final word, recorded
    instead of the proposal), else a pending proposal noting ``said`` and ``request_id``."""

    said: str
    request_id: str | None
    write: Write | None = None


def verdict(kind: OrderKind, row: Any, outcome: Any) -> Verdict:
    """Classify the answer (or WeChatPayError) of the query made at resolve time; raises
    ResolutionRefused when the provider gave no answer at all."""
    if isinstance(outcome, errors.WeChatPayError):
        no_answer = (errors.TransientError, errors.Throttled, errors.OutcomeUnknown)
        if isinstance(outcome, no_answer) or not outcome.request_id:
            raise ResolutionRefused(
                f"the provider could not be asked ({short(outcome)[:200]}): a resolution needs "
                "a fresh answer; try again"
            )
        return Verdict(short(f"{type(outcome).__name__}: {outcome}")[:MAX_SAID], outcome.request_id)
    state = str(outcome.state)
    local = kind.from_provider(outcome.state)
    said = f"{state}{kind.detail(outcome)}"
    if local is None or local not in kind.final:
        return Verdict(said[:MAX_SAID], outcome.request_id)
    try:
        differs = kind.differences(row, outcome, local == "SUCCESS")
    except errors.GarbledResponse:
        return Verdict(f"{state}, its ledger number garbled"[:MAX_SAID], outcome.request_id)
    missing = kind.missing(outcome, local)
    if differs or missing:
        what = f"differs in {', '.join(differs)}" if differs else f"lacks {', '.join(missing)}"
        return Verdict(f"{said}, but it {what}"[:MAX_SAID], outcome.request_id)
    write = Write(
        Action.RECORD,
        local,
        {**kind.values(outcome), **SETTLED},
        reason=f"signed query at resolve time: {said} (the provider's word; no manual "
        "resolution needed)",
        request_id=outcome.request_id,
    )
    return Verdict(said[:MAX_SAID], outcome.request_id, write)


# -- approval -------------------------------------------------------------------------------


def check_open(resolution: Any) -> None:
    if resolution.status not in OPEN:
        raise ResolutionRefused(f"resolution #{resolution.id} is {resolution.status}, not pending")


def may_approve(kind: OrderKind, resolution: Any, row: Any, approver: str) -> None:
    """Raises ResolutionRefused unless ``approver`` may approve ``resolution`` of ``row`` now."""
    check_open(resolution)
    if same_person(resolution.proposed_by, approver):
        raise ResolutionRefused(
            f"{approver} proposed resolution #{resolution.id}: a different person must approve"
        )
    if moved(kind, resolution, row):
        raise ResolutionRefused(
            f"{kind} #{row.id} changed since resolution #{resolution.id} was proposed "
            f"(now {row.state}, version {row.version}): it is superseded"
        )


def moved(kind: OrderKind, resolution: Any, row: Any) -> bool:
    """The order is no longer in review at the version the proposal saw."""
    return bool(row.state != kind.review or row.version != resolution.order_version)


def manual_reason(resolution: Any, approver: str) -> str:
    return (
        f"manual resolution #{resolution.id} to {resolution.target_state}: proposed by "
        f"{resolution.proposed_by}, approved by {approver}; resolve-time query "
        f"(Request-ID {resolution.query_request_id or '-'}): {resolution.query_said}; "
        f"evidence: {resolution.evidence}"
    )


def approval(kind: OrderKind, resolution: Any, row: Any, approver: str) -> Write:
    """The final write of an approved resolution (the engine writes it by compare-and-set,
    with its event and outcome). A SUCCESS records the amount the proposal settled on."""
    values: dict[str, Any] = {**SETTLED, "last_error": None}
    if resolution.target_state == "SUCCESS":
        values["amount"] = resolution.amount
        if resolution.quota_change_no is not None:
            values["quota_change_no"] = resolution.quota_change_no
    if "refusal" in _columns(row):
        values["refusal"] = None
    return Write(
        Action.RECORD,
        str(resolution.target_state),
        values,
        reason=manual_reason(resolution, approver),
        request_id=resolution.query_request_id,
    )


def status_reason(resolution: Any, status: Status, actor: str, why: str = "") -> str:
    """The event noting a change of a resolution's status (the order stays as it is)."""
    said = f"; {why}" if why else ""
    if status is Status.PENDING:
        return (
            f"resolution #{resolution.id} to {resolution.target_state} proposed by {actor}, "
            f"pending approval; resolve-time query (Request-ID "
            f"{resolution.query_request_id or '-'}): {resolution.query_said}; evidence: "
            f"{resolution.evidence}"
        )
    return f"resolution #{resolution.id} to {resolution.target_state} {status} by {actor}{said}"


def row_values(
    kind: OrderKind,
    row: Any,
    proposal: Proposal,
    v: Verdict,
    actor: str,
    now: datetime,
    status: Status,
) -> Mapping[str, Any]:
    """The ``resolutions`` row of a proposal."""
    return {
        "kind": str(kind.name),
        "order_id": row.id,
        "order_version": row.version,
        "status": str(status),
        "target_state": proposal.target,
        "evidence": proposal.evidence,
        "amount": proposal.amount,
        "quota_change_no": proposal.quota_change_no,
        "proposed_by": actor,
        "proposed_at": now,
        "query_request_id": v.request_id,
        "query_said": v.said,
        "decided_by": None if status is Status.PENDING else actor,
        "decided_at": None if status is Status.PENDING else now,
    }
