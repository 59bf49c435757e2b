"""Answers shaped like the provider pages' own examples (the ``docs_literal`` fault).

The pages promise less than the simulator's tidy answers give: every query answer field is
optional (选填), the query page's 200 example is a SUCCESS that also carries ``fail_time`` and
``fail_reason``, the bill page's SUCCESS example carries ``close_info``, the enums have
``*_UNKNOWN`` members and two spellings of one fail reason. A ``docs_literal`` answer is the
true answer reshaped that way, per request:

- fields valid for another state only get the pages' placeholder values;
- an answer that is not final may say ``STATE_UNKNOWN`` / ``REDUCTION_TYPE_UNKNOWN`` (a final
  answer never does, so every order still reaches its true final answer);
- optional fields are left out or sent empty (``""``, ``{}``, or ``null`` for numbers);
- a bill's receiver is sometimes a ``WXVALUE`` (balance) transaction instead of ``WXPAY``.

``state`` itself, and the bill page's required (必填) fields, always come back as they are.
Pure functions over a JSON object and a ``random.Random``; the books are never touched.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from wxrecon.simulator.reductions import FAILED, PROCESSING, SUCCESS
from wxrecon.wechatpay.client import Endpoint

Answer = dict[str, Any]

# Values from the pages' examples.
PLACEHOLDER_TIME = "2015-05-20T13:29:35+08:00"
PLACEHOLDER_QUOTA_CHANGE_NO = "m6a6dx8iit7m932dx03ue2lw2ofo2r88"
PLACEHOLDER_FAIL_REASONS = ("BALANCE_NOT_ENOUGH", "FAIL_REASON_UNKNOWN", "RECEIPT_NOT_EXIST_CLOSED")
PLACEHOLDER_CLOSE_INFO = {"close_time": PLACEHOLDER_TIME, "close_reason": "NOT_ENOUGH"}
STATE_UNKNOWN = "STATE_UNKNOWN"
REDUCTION_TYPE_UNKNOWN = "REDUCTION_TYPE_UNKNOWN"
RECEIVER_TYPES = ("WXPAY", "WXVALUE")

# Odds of each reshaping, per field and answer.
PLACEHOLDER_ODDS = 0.5  # an other-state field appears with a placeholder
UNKNOWN_ODDS = 0.3  # a non-final answer says *_UNKNOWN
DROP_ODDS = 0.2  # an optional field is left out
EMPTY_ODDS = 0.1  # an optional field is sent empty

# field -> (the only state it is valid for, its placeholder)
REDUCTION_STATE_FIELDS: dict[str, tuple[str, Callable[[random.Random], Any]]] = {
    "quota_change_no": (SUCCESS, lambda rng: PLACEHOLDER_QUOTA_CHANGE_NO),
    "success_time": (SUCCESS, lambda rng: PLACEHOLDER_TIME),
    "fail_time": (FAILED, lambda rng: PLACEHOLDER_TIME),
    "fail_reason": (FAILED, lambda rng: rng.choice(PLACEHOLDER_FAIL_REASONS)),
}
BILL_STATE_FIELDS: dict[str, tuple[str, Callable[[random.Random], Any]]] = {
    "success_time": ("SUCCESS", lambda rng: PLACEHOLDER_TIME),
    "close_info": ("CLOSED", lambda rng: dict(PLACEHOLDER_CLOSE_INFO)),
}

REDUCTION_OPTIONAL = (
    "mchid",
    "bal_account_no",
    "out_request_no",
    "reduction_type",
    "amount",
    "reason",
    "quota_change_no",
    "success_time",
    "fail_time",
    "fail_reason",
)
BALANCE_OPTIONAL = ("in_transit_reduction_exist", "balance")
BILL_OPTIONAL = ("transfer_remark", "success_time", "close_info", "sponsor_mchid")


def empty_of(value: object) -> object:
    """What "sent empty" looks like for a value of this type."""
    if isinstance(value, str):
        return ""
    if isinstance(value, dict):
        return {}
    return None


def add_placeholders(
    answer: Answer,
    state: str,
    fields: dict[str, tuple[str, Callable[[random.Random], Any]]],
    rng: random.Random,
) -> None:
    for name, (valid_for, placeholder) in fields.items():
        if state != valid_for and name not in answer and rng.random() < PLACEHOLDER_ODDS:
            answer[name] = placeholder(rng)


def thin_out(answer: Answer, optional: tuple[str, ...], rng: random.Random) -> None:
    """Leave optional fields out, or send them empty."""
    for name in optional:
        if name not in answer:
            continue
        draw = rng.random()
        if draw < DROP_ODDS:
            del answer[name]
        elif draw < DROP_ODDS + EMPTY_ODDS:
            answer[name] = empty_of(answer[name])


def say_unknown(answer: Answer, rng: random.Random) -> None:
    """A reduction answer that is not final may name its state and type as unknown."""
    if answer.get("state") != PROCESSING:
        return
    if rng.random() < UNKNOWN_ODDS:
        answer["state"] = STATE_UNKNOWN
    if rng.random() < UNKNOWN_ODDS:
        answer["reduction_type"] = REDUCTION_TYPE_UNKNOWN


def shape_reduction(answer: Answer, rng: random.Random) -> Answer:
    out = dict(answer)
    add_placeholders(out, str(out.get("state")), REDUCTION_STATE_FIELDS, rng)
    say_unknown(out, rng)
    thin_out(out, REDUCTION_OPTIONAL, rng)
    return out


def shape_balance(answer: Answer, rng: random.Random) -> Answer:
    out = dict(answer)
    thin_out(out, BALANCE_OPTIONAL, rng)
    return out


def shape_bill(answer: Answer, rng: random.Random) -> Answer:
    out = dict(answer)
    add_placeholders(out, str(out.get("state")), BILL_STATE_FIELDS, rng)
    receiver = out["receiver_detail"]["receiver"]
    info = {**receiver["transaction_info"], "type": rng.choice(RECEIVER_TYPES)}
    out["receiver_detail"] = {"receiver": {**receiver, "transaction_info": info}}
    thin_out(out, BILL_OPTIONAL, rng)
    return out


SHAPERS: dict[Endpoint, Callable[[Answer, random.Random], Answer]] = {
    Endpoint.SUBMIT_REDUCTION: shape_reduction,
    Endpoint.QUERY_REDUCTION: shape_reduction,
    Endpoint.QUERY_BALANCE: shape_balance,
    Endpoint.QUERY_BILL: shape_bill,
}


def shape(endpoint: Endpoint, answer: Answer, rng: random.Random) -> Answer:
    """The docs-literal form of one true 2xx answer (a new object; ``answer`` is kept)."""
    return SHAPERS[endpoint](answer, rng)
