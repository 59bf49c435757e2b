"""What a provider's answer says about one stored order: the row values it sets, how it
differs from the order, and whether it carries what a final answer must. Pure functions,
one set per kind (``kinds.py`` binds them).
"""

from __future__ import annotations

from typing import Any

from wxrecon.store.rows import BillRow, ReductionRow
from wxrecon.wechatpay.resources import CompensationBill as ProviderBill
from wxrecon.wechatpay.resources import SpecialReduction as ProviderReduction
from wxrecon.wechatpay.resources import SpecialReductionRequest


def reduction_request(row: ReductionRow) -> SpecialReductionRequest:
    """The (re-validated) request a stored order sends; every re-entry sends exactly this.
    Raises InvalidRequest when the stored parameters are not sendable."""
    return SpecialReductionRequest.create(
        mchid=row.mchid,
        bal_account_no=row.bal_account_no,
        out_request_no=row.out_request_no,
        reduction_type=row.reduction_type,
        amount=row.amount,
        reason=row.reason,
    )


REDUCTION_PARAMS = ("bal_account_no", "reduction_type", "amount", "reason")


def request_differences(row: ReductionRow, request: SpecialReductionRequest) -> list[str]:
    """Names (never values) of the parameters in which ``request`` differs from ``row``."""
    theirs = {
        "bal_account_no": request.bal_account_no,
        "reduction_type": str(request.reduction_type),
        "amount": request.amount,
        "reason": request.reason,
    }
    return [name for name in REDUCTION_PARAMS if getattr(row, name) != theirs[name]]


def reduction_values(result: ProviderReduction) -> dict[str, Any]:
    return {
        "provider_state": str(result.state),
        "fail_reason": str(result.fail_reason) if result.fail_reason is not None else None,
        "quota_change_no": result.quota_change_no,
        "success_time": result.success_time,
        "fail_time": result.fail_time,
        "last_request_id": result.request_id,
        "last_error": None,
        "refusal": None,  # the provider knows the order: a refused POST proved nothing
    }


def reduction_detail(result: ProviderReduction) -> str:
    """The event's account of an answer beyond its state: the fail reason, the fields it sent
    that are not valid for its state (dropped), and an unknown reduction type (not compared)."""
    out = f" ({result.fail_reason})" if result.fail_reason is not None else ""
    if result.dropped:
        out += f"; dropped {', '.join(result.dropped)}: not valid for state {result.state}"
    kind = result.reduction_type
    if kind is not None and not kind.known:
        out += f"; reduction_type {kind} is not one we know, not compared"
    return out


def reduction_differences(row: ReductionRow, result: ProviderReduction, ledger: bool) -> list[str]:
    """Fields where the provider's copy of the order disagrees with ours (names only).

    The ledger number is compared only with ``ledger`` (a SUCCESS, POST's answer or query's:
    money moved, so from our ledger): reading ``result.bal_account_no`` costs an RSA
    decryption, one per order, and an in-flight or FAILED answer moved nothing. Raises
    GarbledResponse when that number does not decrypt."""
    out = []
    if result.out_request_no != row.out_request_no:
        out.append("out_request_no")
    if result.mchid and result.mchid != row.mchid:  # empty is missing, not a difference
        out.append("mchid")
    if result.amount is not None and result.amount != row.amount:
        out.append("amount")
    kind = result.reduction_type
    # An unknown value (REDUCTION_TYPE_UNKNOWN, a new one) says nothing against ours.
    if kind is not None and kind.known and str(kind) != row.reduction_type:
        out.append("reduction_type")
    if ledger and result.bal_account_no is not None and result.bal_account_no != row.bal_account_no:
        out.append("bal_account_no")
    return out


def reduction_missing(result: ProviderReduction, state: str) -> list[str]:
    """What a final answer must carry but does not: its mchid; for SUCCESS the amount (a
    signed ``{"state": "SUCCESS"}`` alone says nothing about which order moved money); for
    FAILED its reason (the one thing a FAILED answer tells). Optional on the page, so an
    answer without them is asked again, never completed by a guess."""
    missing = [] if result.mchid else ["mchid"]
    if state == "SUCCESS" and result.amount is None:
        missing.append("amount")
    if state == "FAILED" and result.fail_reason is None:
        missing.append("fail_reason")
    return missing


def _bill_close(result: ProviderBill) -> Any:
    """``close_info`` counts only on a CLOSED bill (the page: 当状态为已关闭时返回)."""
    return result.close_info if str(result.state) == "CLOSED" else None


def bill_values(result: ProviderBill) -> dict[str, Any]:
    close = _bill_close(result)
    succeeded = str(result.state) == "SUCCESS"  # success_time: 转账成功时会返回
    return {
        "provider_state": str(result.state),
        "amount": result.amount,
        "bill_id": result.bill_id,
        "sp_mchid": result.sp_mchid,
        "sponsor_mchid": result.sponsor_mchid,
        "transfer_remark": result.transfer_remark,
        "accept_time": result.accept_time,
        "success_time": result.success_time if succeeded else None,
        "close_reason": close.close_reason if close else None,
        "close_time": close.close_time if close else None,
        "receiver_detail": result.receiver_detail.as_dict() if result.receiver_detail else None,
        "last_request_id": result.request_id,
        "last_error": None,
    }


def bill_detail(result: ProviderBill) -> str:
    close = _bill_close(result)
    return f" ({close.close_reason})" if close and close.close_reason else ""


def bill_differences(row: BillRow, result: ProviderBill, ledger: bool) -> list[str]:
    return [] if result.out_bill_no == row.out_bill_no else ["out_bill_no"]


def bill_missing(result: ProviderBill, state: str) -> list[str]:
    """A CLOSED bill's answer must say why (its close_info), else it is asked again."""
    close = _bill_close(result)
    return ["close_reason"] if state == "CLOSED" and not (close and close.close_reason) else []
