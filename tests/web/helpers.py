"""Shared set-up for the web console tests: an app over a test database and a client."""

from __future__ import annotations

from typing import Any

from sqlalchemy import update

from tests.fixtures_sim import SIM_BAL_ACCOUNT_NO, SIM_MCHID
from wxrecon.domain.kinds import BILL, REDUCTION, OrderKind
from wxrecon.engine.intake import intake_bill, intake_reduction
from wxrecon.store.db import Database
from wxrecon.wechatpay.resources import SpecialReductionRequest

EVIDENCE = "merchant platform shows no deduction, ticket OPS-77"


class Rt:
    """The part of wxrecon.runtime.Runtime the web app uses."""

    def __init__(self, db: Database, client: Any = None) -> None:
        self.db = db
        self.client = client


def reduction(db: Database, no: str, amount: int = 1000) -> int:
    req = SpecialReductionRequest.create(
        mchid=SIM_MCHID,
        bal_account_no=SIM_BAL_ACCOUNT_NO,
        out_request_no=no,
        reduction_type="FINANCIAL_PENALTY",
        amount=amount,
        reason="web test",
    )
    with db.transaction() as session:
        return intake_reduction(session, req).order_id


def bill(db: Database, no: str) -> int:
    with db.transaction() as session:
        return intake_bill(session, no).order_id


def to_review(db: Database, kind: OrderKind, order_id: int) -> None:
    with db.begin() as conn:
        conn.execute(
            update(kind.model)
            .where(kind.model.id == order_id)
            .values(
                state=kind.review,
                version=kind.model.version + 1,
                claim_token=None,
                claimed_until=None,
                next_poll_at=None,
            )
        )


__all__ = ["BILL", "REDUCTION"]
