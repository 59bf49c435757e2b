"""Validation of what we send and parsing of what we receive, by example and by property."""

from __future__ import annotations

import dataclasses
import json
import pickle
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wxrecon.wechatpay.errors import GarbledResponse, InvalidRequest
from wxrecon.wechatpay.resources import (
    FIELD_LIMITS,
    BillState,
    ChannelBalance,
    CompensationBill,
    FailReason,
    ReductionState,
    ReductionType,
    SpecialReduction,
    SpecialReductionRequest,
)

SECRET = "6222021234567890XYZsecret"

VALID: dict[str, Any] = {
    "mchid": "1900016681",
    "bal_account_no": SECRET,
    "out_request_no": "htozr8denqegbt6tk6u10iymo7yww5pn",
    "reduction_type": "JUDICIAL_DEDUCTION",
    "amount": 1,
    "reason": "司法案件号：202508080009",
}


# -- validation -----------------------------------------------------------------------------


def test_valid_request_and_body() -> None:
    req = SpecialReductionRequest.create(**VALID)
    assert req.reduction_type is ReductionType.JUDICIAL_DEDUCTION
    assert req.body("CIPHER") == {**VALID, "bal_account_no": "CIPHER"}
    assert SECRET not in repr(req)
    no_reason = SpecialReductionRequest.create(**{**VALID, "reason": None})
    assert "reason" not in no_reason.body("C")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("amount", -5, "amount must be a positive number of fen"),
        ("amount", 0, "amount must be a positive number of fen"),
        ("amount", 1.5, "amount must be an integer number of fen"),
        ("amount", 100.0, "amount must be an integer number of fen"),
        ("amount", "100", "amount must be an integer number of fen"),
        ("amount", True, "amount must be an integer number of fen"),
        ("amount", None, "amount is required"),
        ("amount", 2**63, "amount is too large"),
        ("out_request_no", "A" * 33, "out_request_no must be 1 to 32 characters"),
        ("out_request_no", "", "out_request_no is required"),
        ("out_request_no", "ab-12", "out_request_no must be 1 to 32 characters"),
        ("out_request_no", "ａｂ", "out_request_no must be 1 to 32 characters"),
        (
            "reduction_type",
            "PENALTY",
            "reduction_type must be FINANCIAL_PENALTY or JUDICIAL_DEDUCTION",
        ),
        ("reduction_type", "financial_penalty", "reduction_type must be"),
        ("reduction_type", None, "reduction_type is required"),
        ("reason", "x" * 513, "reason is longer than 512 characters"),
        ("reason", "a\nb", "reason must not contain control characters"),
        ("reason", "\ud800", "reason must not contain control characters or lone surrogates"),
        ("mchid", "", "mchid is required"),
        ("mchid", "19000x", "mchid must be 1 to 32 digits"),
        ("mchid", "１９", "mchid must be 1 to 32 digits"),
        ("bal_account_no", "", "bal_account_no is required"),
        ("bal_account_no", "with space", "bal_account_no must be 1 to 128 printable ASCII"),
        ("bal_account_no", "x" * 129, "bal_account_no must be 1 to 128 printable ASCII"),
    ],
)
def test_invalid_requests(field: str, value: object, message: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        SpecialReductionRequest.create(**{**VALID, field: value})
    assert str(info.value).startswith(message)
    assert info.value.field == field
    assert not info.value.maybe_sent


def test_reason_of_exactly_512_characters_is_fine() -> None:
    assert SpecialReductionRequest.create(**{**VALID, "reason": "理" * 512}).reason == "理" * 512


def test_secret_typed_into_the_wrong_field_is_not_echoed() -> None:
    for field in ("reduction_type", "out_request_no", "mchid", "reason", "amount"):
        with pytest.raises(InvalidRequest) as info:
            SpecialReductionRequest.create(**{**VALID, field: SECRET + "\n!" * 300})
        assert SECRET not in str(info.value)


anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.text(max_size=600),
    st.binary(max_size=10),
    st.lists(st.integers(), max_size=2),
)
plausible_or_not: dict[str, st.SearchStrategy[Any]] = {
    "mchid": st.one_of(st.from_regex(r"[0-9]{1,32}", fullmatch=True), anything),
    "bal_account_no": st.one_of(st.from_regex(r"[\x21-\x7e]{16,128}", fullmatch=True), anything),
    "out_request_no": st.one_of(st.from_regex(r"[0-9A-Za-z]{1,32}", fullmatch=True), anything),
    "reduction_type": st.one_of(
        st.sampled_from(["FINANCIAL_PENALTY", "JUDICIAL_DEDUCTION"]), anything
    ),
    "amount": st.one_of(st.integers(min_value=1, max_value=2**63 - 1), anything),
    "reason": st.one_of(st.none(), st.text(max_size=600), anything),
}


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.fixed_dictionaries(plausible_or_not))
def test_create_property(kwargs: dict[str, Any]) -> None:
    """Any input gives a valid request or one InvalidRequest line that never holds the secret."""
    secret = kwargs["bal_account_no"]
    try:
        req = SpecialReductionRequest.create(**kwargs)
    except InvalidRequest as exc:
        message = str(exc)
        assert message and "\n" not in message and len(message) < 200
        if isinstance(secret, str) and len(secret) >= 16:
            assert secret not in message
            assert secret not in repr(exc)
        assert exc.field in plausible_or_not
        return
    # Accepted: then every rule holds.
    assert req.bal_account_no == secret
    assert isinstance(req.amount, int) and not isinstance(req.amount, bool) and req.amount > 0
    assert req.reduction_type.known
    assert 1 <= len(req.out_request_no) <= 32 and req.out_request_no.isascii()
    assert req.out_request_no.isalnum()
    assert req.mchid.isascii() and req.mchid.isdigit()
    assert req.reason is None or len(req.reason) <= 512
    json.dumps(req.body("C"), ensure_ascii=False).encode()  # always serialisable as UTF-8


# -- parsing --------------------------------------------------------------------------------

DOC_REDUCTION = {
    "mchid": "1900016681",
    "out_request_no": "htozr8denqegbt6tk6u10iymo7yww5pn",
    "reduction_type": "JUDICIAL_DEDUCTION",
    "amount": 1,
    "state": "SUCCESS",
    "reason": "司法案件号:202508080009",
    "quota_change_no": "m6a6dx8iit7m932dx03ue2lw2ofo2r88",
    "success_time": "2015-05-20T13:29:35+08:00",
    "fail_reason": "BALANCE_NOT_ENOUGH",
}
DOC_BILL = {
    "sp_mchid": "1900001108",
    "receiver_detail": {"receiver": {"type": "TRANSACTION_USER"}},
    "out_bill_no": "plfk2020042013",
    "amount": 10000,
    "transfer_remark": "直播违规扣罚",
    "bill_id": "1330000071100999991182020050700019480001",
    "state": "CLOSED",
    "accept_time": "2015-05-20T13:29:35+08:00",
    "close_info": {"close_time": "2015-05-20T13:29:35+08:00", "close_reason": "NOT_ENOUGH"},
    "sponsor_mchid": "1900001109",
}


def test_parse_documented_reduction() -> None:
    r = SpecialReduction.parse(DOC_REDUCTION, expect_out_request_no=DOC_REDUCTION["out_request_no"])
    assert r.state is ReductionState.SUCCESS and r.state.final
    assert r.amount == 1 and isinstance(r.amount, int)
    assert r.success_time == datetime(2015, 5, 20, 5, 29, 35, tzinfo=UTC)
    assert r.success_time.utcoffset() == timedelta(hours=8)
    assert r.reduction_type is ReductionType.JUDICIAL_DEDUCTION
    assert r.bal_account_no is None  # not in the answer


def test_parse_decrypts_the_ledger_number() -> None:
    data = {**DOC_REDUCTION, "bal_account_no": "CIPHER"}
    r = SpecialReduction.parse(
        data, expect_out_request_no=data["out_request_no"], decrypt=lambda c: c.lower()
    )
    assert r.bal_account_no == "cipher"

    def refuse(_: str) -> str:
        raise ValueError("does not decrypt")

    # Decrypted lazily: the failure comes on reading the field, not on parsing.
    r = SpecialReduction.parse(
        data, expect_out_request_no=data["out_request_no"], decrypt=refuse, request_id="RID-9"
    )
    with pytest.raises(GarbledResponse, match="bal_account_no does not decrypt") as info:
        _ = r.bal_account_no
    assert info.value.request_id == "RID-9" and "CIPHER" not in str(info.value)
    with pytest.raises(GarbledResponse, match="bal_account_no does not decrypt"):
        _ = r.bal_account_no  # still sealed: every read fails alike


def test_ledger_number_is_decrypted_once_on_first_read_and_never_shown() -> None:
    calls: list[str] = []

    def decrypt(ciphertext: str) -> str:
        calls.append(ciphertext)
        return "6222000011112222"

    data = {**DOC_REDUCTION, "bal_account_no": "CIPHER"}
    r = SpecialReduction.parse(data, expect_out_request_no=data["out_request_no"], decrypt=decrypt)
    assert calls == []  # parsing alone costs no private-key operation
    assert "CIPHER" not in repr(r) and "bal_account_no" not in repr(r)
    assert r.bal_account_no == "6222000011112222" and r.bal_account_no == "6222000011112222"
    assert calls == ["CIPHER"]
    assert "6222000011112222" not in repr(r)
    # Still a dataclass field (generic display code lists it), and still frozen.
    assert "bal_account_no" in [f.name for f in dataclasses.fields(r)]
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.bal_account_no = "x"  # type: ignore[misc]
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(
            SpecialReduction.parse(
                data, expect_out_request_no=data["out_request_no"], decrypt=decrypt
            )
        )


def test_results_built_directly_keep_plaintext_and_compare_by_it() -> None:
    a = SpecialReduction(out_request_no="A1", state=ReductionState.SUCCESS, bal_account_no="L1")
    assert a.bal_account_no == "L1"
    assert (
        SpecialReduction(out_request_no="A1", state=ReductionState.SUCCESS).bal_account_no is None
    )
    sealed = SpecialReduction.parse(
        {"out_request_no": "A1", "state": "SUCCESS", "bal_account_no": "l1"},
        expect_out_request_no="A1",
        decrypt=str.upper,
    )
    assert sealed == a and dataclasses.replace(sealed, amount=1).bal_account_no == "L1"


@pytest.mark.parametrize(
    "reason", ["RECEIPT_NOT_EXIST", "RECEIPT_NOT_EXIST_CLOSED", "TIME_OUT_CLOSED"]
)
def test_both_receipt_not_exist_spellings(reason: str) -> None:
    r = SpecialReduction.parse(
        {
            "out_request_no": "A1",
            "state": "FAILED",
            "fail_reason": reason,
            "fail_time": "2025-01-01T00:00:00Z",
        },
        expect_out_request_no="A1",
    )
    assert r.fail_reason == reason and r.fail_reason is not None and r.fail_reason.known
    assert r.fail_time == datetime(2025, 1, 1, tzinfo=UTC)


def test_unknown_enum_values_are_kept_verbatim() -> None:
    r = SpecialReduction.parse(
        {
            "out_request_no": "A1",
            "state": "STATE_UNKNOWN",
            "fail_reason": "SOMETHING_NEW",
            "reduction_type": "REDUCTION_TYPE_UNKNOWN",
        },
        expect_out_request_no="A1",
    )
    assert r.state == "STATE_UNKNOWN" and not r.state.known and not r.state.final
    assert isinstance(r.state, ReductionState)
    assert r.fail_reason is None and r.dropped == ("fail_reason",)  # valid for FAILED only
    failed = SpecialReduction.parse(
        {"out_request_no": "A1", "state": "FAILED", "fail_reason": "SOMETHING_NEW"},
        expect_out_request_no="A1",
    )
    assert failed.fail_reason == "SOMETHING_NEW" and not failed.fail_reason.known
    assert isinstance(failed.fail_reason, FailReason)
    assert r.reduction_type == "REDUCTION_TYPE_UNKNOWN"
    b = CompensationBill.parse(
        {**DOC_BILL, "state": "REFUNDING"}, expect_out_bill_no="plfk2020042013"
    )
    assert b.state == "REFUNDING" and not b.state.known and not b.state.final


def test_parse_documented_bill() -> None:
    b = CompensationBill.parse(DOC_BILL, expect_out_bill_no="plfk2020042013")
    assert b.state is BillState.CLOSED and b.state.final
    assert b.amount == 10000
    assert b.close_info is not None and b.close_info.close_reason == "NOT_ENOUGH"
    assert b.close_info.close_time == datetime(
        2015, 5, 20, 13, 29, 35, tzinfo=timezone(timedelta(hours=8))
    )
    assert b.accept_time is not None and b.accept_time.tzinfo is not None
    for state, final in [
        ("ACCEPTED", False),
        ("WAIT_USER_CONFIRM", False),
        ("CANCELING", False),
        ("SUCCESS", True),
        ("CANCELLED", True),
    ]:
        assert (
            CompensationBill.parse(
                {**DOC_BILL, "state": state}, expect_out_bill_no="plfk2020042013"
            ).state.final
            is final
        )


def test_parse_balance() -> None:
    assert ChannelBalance.parse(
        {"in_transit_reduction_exist": False, "balance": 1}
    ) == ChannelBalance(1, False)
    # Both fields are optional (选填): an absent or empty one is not sent, never False or 0.
    assert ChannelBalance.parse({"balance": 0}).in_transit_reduction_exist is None
    assert ChannelBalance.parse({}) == ChannelBalance(None, None)
    assert ChannelBalance.parse({"balance": "", "in_transit_reduction_exist": ""}) == (
        ChannelBalance(None, None)
    )


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        ([], "not a JSON object"),
        ({"state": 1, "out_request_no": "A1"}, "field state is not a string"),
        ({"out_request_no": "A1"}, "field state is missing"),
        ({"out_request_no": "A1", "state": ""}, "field state is missing"),  # empty is missing
        ({"out_request_no": "B2", "state": "SUCCESS"}, "another out_request_no"),
        ({"out_request_no": "A1", "state": "SUCCESS", "amount": "1"}, "amount is not an integer"),
        ({"out_request_no": "A1", "state": "SUCCESS", "amount": 1.0}, "amount is not an integer"),
        ({"out_request_no": "A1", "state": "SUCCESS", "amount": True}, "amount is not an integer"),
        ({"out_request_no": "A1", "state": "SUCCESS", "amount": -1}, "amount is negative"),
        (
            {"out_request_no": "A1", "state": "SUCCESS", "success_time": "yesterday"},
            "not an RFC 3339",
        ),
        (
            {"out_request_no": "A1", "state": "SUCCESS", "success_time": "2015-05-20T13:29:35"},
            "no time zone",
        ),
    ],
)
def test_garbled_reduction(data: object, complaint: str) -> None:
    with pytest.raises(GarbledResponse, match=complaint):
        SpecialReduction.parse(data, expect_out_request_no="A1")


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        ({**DOC_BILL, "amount": None}, "amount is missing"),
        ({**DOC_BILL, "out_bill_no": "other"}, "another out_bill_no"),
        ({**DOC_BILL, "close_info": "closed"}, "close_info: response body is not a JSON object"),
        ({**DOC_BILL, "close_info": {"close_time": 5}}, "close_time is not a string"),
        ({k: v for k, v in DOC_BILL.items() if k != "state"}, "state is missing"),
    ],
)
def test_garbled_bill(data: object, complaint: str) -> None:
    with pytest.raises(GarbledResponse, match=complaint):
        CompensationBill.parse(data, expect_out_bill_no="plfk2020042013")


@pytest.mark.parametrize(
    "data", [{"balance": "1"}, {"balance": 1, "in_transit_reduction_exist": "no"}, None, "x"]
)
def test_garbled_balance(data: object) -> None:
    with pytest.raises(GarbledResponse):
        ChannelBalance.parse(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


def _shaped(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with the endpoint's own keys holding plausible or arbitrary values."""
    return st.fixed_dictionaries(
        {}, optional={k: st.one_of(v, json_values) for k, v in fields.items()}
    )


times = st.one_of(
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
    st.datetimes().map(lambda d: d.isoformat()),
    st.text(max_size=30),
)
reduction_shapes = _shaped(
    {
        "out_request_no": st.just("A1"),
        "state": st.sampled_from(["PROCESSING", "SUCCESS", "FAILED", "", "X"]),
        "amount": st.integers(),
        "reduction_type": st.sampled_from(list(ReductionType)),
        "fail_reason": st.text(max_size=30),
        "success_time": times,
        "fail_time": times,
        "bal_account_no": st.text(max_size=30),
        "mchid": st.text(max_size=30),
    }
)
bill_shapes = _shaped(
    {
        "out_bill_no": st.just("B1"),
        "state": st.sampled_from(list(BillState)),
        "amount": st.integers(),
        "accept_time": times,
        "close_info": _shaped({"close_time": times, "close_reason": st.text(max_size=10)}),
    }
)


def _no_decrypt(_: str) -> str:
    raise ValueError("does not decrypt")


@settings(max_examples=300)
@given(st.one_of(json_values, reduction_shapes))
def test_reduction_parse_property(data: Any) -> None:
    try:
        r = SpecialReduction.parse(data, expect_out_request_no="A1", decrypt=_no_decrypt)
        r.bal_account_no  # noqa: B018  (decrypted on read)
    except GarbledResponse as exc:
        assert "\n" not in str(exc)
        return
    assert r.out_request_no == "A1" and isinstance(r.state, ReductionState) and r.state
    assert r.amount is None or (type(r.amount) is int and r.amount >= 0)
    for t in (r.success_time, r.fail_time):
        assert t is None or t.tzinfo is not None
    assert r.bal_account_no is None


@settings(max_examples=300)
@given(st.one_of(json_values, bill_shapes))
def test_bill_parse_property(data: Any) -> None:
    try:
        b = CompensationBill.parse(data, expect_out_bill_no="B1")
    except GarbledResponse:
        return
    assert b.out_bill_no == "B1" and type(b.amount) is int and b.amount >= 0
    assert isinstance(b.state, BillState)
    assert b.accept_time is None or b.accept_time.tzinfo is not None


@settings(max_examples=200)
@given(
    st.one_of(
        json_values,
        _shaped({"balance": st.integers(), "in_transit_reduction_exist": st.booleans()}),
    )
)
def test_balance_parse_property(data: Any) -> None:
    try:
        b = ChannelBalance.parse(data)
    except GarbledResponse:
        return
    assert b.balance is None or type(b.balance) is int
    assert b.in_transit_reduction_exist is None or type(b.in_transit_reduction_exist) is bool


# -- every field fits the column that stores it ---------------------------------------------

# Where each limited field is stored: (table, column) in wxrecon/models.py.
STORED_IN = {
    "out_request_no": ("special_reductions", "out_request_no"),
    "mchid": ("special_reductions", "mchid"),
    "reduction_type": ("special_reductions", "reduction_type"),
    "reason": ("special_reductions", "reason"),
    "fail_reason": ("special_reductions", "fail_reason"),
    "quota_change_no": ("special_reductions", "quota_change_no"),
    "request_id": ("special_reductions", "last_request_id"),
    "out_bill_no": ("compensation_bills", "out_bill_no"),
    "state": ("compensation_bills", "provider_state"),
    "bill_id": ("compensation_bills", "bill_id"),
    "sp_mchid": ("compensation_bills", "sp_mchid"),
    "sponsor_mchid": ("compensation_bills", "sponsor_mchid"),
    "transfer_remark": ("compensation_bills", "transfer_remark"),
    "close_reason": ("compensation_bills", "close_reason"),
}


def test_the_longest_ledger_number_sealed_under_the_longest_key_id_fits_its_column() -> None:
    from wxrecon.store.models import Base
    from wxrecon.store.sealed import MAX_PLAINTEXT, Keyring, generate_key

    assert FIELD_LIMITS["bal_account_no_plaintext"] == MAX_PLAINTEXT  # what may be sealed
    keys = Keyring.from_settings(f"{'k' * 32}:{generate_key()}", generate_key())
    sealed = keys.seal("6" * MAX_PLAINTEXT, "1" * 32, "R" * 32)
    assert len(sealed) <= Base.metadata.tables["special_reductions"].c["bal_account_no"].type.length


@pytest.mark.parametrize("name", sorted(STORED_IN))
def test_field_limits_are_the_column_widths(name: str) -> None:
    from wxrecon.store.models import Base

    table, column = STORED_IN[name]
    assert FIELD_LIMITS[name] == Base.metadata.tables[table].c[column].type.length
    assert Base.metadata.tables["events"].c["request_id"].type.length == FIELD_LIMITS["request_id"]
    assert (
        Base.metadata.tables["special_reductions"].c["provider_state"].type.length
        == FIELD_LIMITS["state"]
    )


REDUCTION_TEXT = ["mchid", "reduction_type", "state", "fail_reason", "quota_change_no", "reason"]
BILL_TEXT = ["sp_mchid", "sponsor_mchid", "bill_id", "transfer_remark", "state"]


@pytest.mark.parametrize("name", REDUCTION_TEXT)
def test_an_over_long_reduction_field_is_garbled(name: str) -> None:
    limit = FIELD_LIMITS[name]
    state = "FAILED" if name == "fail_reason" else "SUCCESS"  # kept only in its state
    base = {"out_request_no": "A1", "state": state}
    fits = SpecialReduction.parse({**base, name: "1" * limit}, expect_out_request_no="A1")
    assert len(str(getattr(fits, name))) == limit
    with pytest.raises(GarbledResponse, match=f"field {name} is longer than {limit}"):
        SpecialReduction.parse({**base, name: "1" * (limit + 1)}, expect_out_request_no="A1")


def test_an_over_long_out_request_no_is_garbled_not_compared() -> None:
    with pytest.raises(GarbledResponse, match="out_request_no is longer than 32"):
        SpecialReduction.parse(
            {"out_request_no": "A" * 33, "state": "SUCCESS"}, expect_out_request_no="A1"
        )


@pytest.mark.parametrize("name", BILL_TEXT)
def test_an_over_long_bill_field_is_garbled(name: str) -> None:
    limit = FIELD_LIMITS[name]
    fits = CompensationBill.parse(
        {**DOC_BILL, name: "x" * limit}, expect_out_bill_no="plfk2020042013"
    )
    assert fits is not None
    with pytest.raises(GarbledResponse, match=f"field {name} is longer than {limit}"):
        CompensationBill.parse(
            {**DOC_BILL, name: "x" * (limit + 1)}, expect_out_bill_no="plfk2020042013"
        )


def test_an_over_long_close_reason_is_garbled() -> None:
    data = {**DOC_BILL, "close_info": {"close_reason": "R" * 65}}
    with pytest.raises(GarbledResponse, match="close_info: field close_reason is longer than 64"):
        CompensationBill.parse(data, expect_out_bill_no="plfk2020042013")


def test_an_over_long_decrypted_ledger_number_is_garbled() -> None:
    data = {**DOC_REDUCTION, "bal_account_no": "C" * 344}
    r = SpecialReduction.parse(
        data, expect_out_request_no=data["out_request_no"], decrypt=lambda c: c + "x" * 128
    )
    with pytest.raises(GarbledResponse, match="bal_account_no is longer than 128"):
        _ = r.bal_account_no
    with pytest.raises(GarbledResponse, match="field bal_account_no is longer than 1024"):
        SpecialReduction.parse(
            {**data, "bal_account_no": "C" * 1025}, expect_out_request_no=data["out_request_no"]
        )


# -- identity -------------------------------------------------------------------------------


def test_identity_fields_as_the_provider_sent_them() -> None:
    data = {**DOC_REDUCTION, "bal_account_no": "CIPHER"}
    r = SpecialReduction.parse(
        data,
        expect_out_request_no=data["out_request_no"],
        expect_mchid=data["mchid"],
        expect_amount=1,
        decrypt=str.lower,
    )
    assert r.provider_out_request_no == data["out_request_no"] and r.missing_identity() == ()
    bare = SpecialReduction.parse({"state": "PROCESSING"}, expect_out_request_no="A1")
    assert bare.out_request_no == "A1" and bare.provider_out_request_no is None
    assert bare.missing_identity() == ("out_request_no", "mchid", "amount", "bal_account_no")


@pytest.mark.parametrize(
    ("field", "value", "complaint"),
    [("mchid", "1900000099", "another mchid"), ("amount", 2, "another amount")],
)
def test_an_answer_about_another_order_is_garbled(
    field: str, value: object, complaint: str
) -> None:
    data = {**DOC_REDUCTION, field: value}
    with pytest.raises(GarbledResponse, match=complaint):
        SpecialReduction.parse(
            data,
            expect_out_request_no=DOC_REDUCTION["out_request_no"],
            expect_mchid=DOC_REDUCTION["mchid"],
            expect_amount=DOC_REDUCTION["amount"],
        )


# -- the pages taken literally (issue 18) ----------------------------------------------------


@pytest.mark.parametrize(
    ("state", "kept", "dropped"),
    [
        ("SUCCESS", {"quota_change_no", "success_time"}, ("fail_time", "fail_reason")),
        ("FAILED", {"fail_time", "fail_reason"}, ("quota_change_no", "success_time")),
        ("PROCESSING", set(), ("quota_change_no", "success_time", "fail_time", "fail_reason")),
        ("STATE_UNKNOWN", set(), ("quota_change_no", "success_time", "fail_time", "fail_reason")),
    ],
)
def test_fields_valid_for_one_state_are_kept_only_in_it(
    state: str, kept: set[str], dropped: tuple[str, ...]
) -> None:
    every = {
        "quota_change_no": "Q1",
        "success_time": "2015-05-20T13:29:35+08:00",
        "fail_time": "2015-05-20T13:29:35+08:00",
        "fail_reason": "BALANCE_NOT_ENOUGH",
    }
    r = SpecialReduction.parse(
        {"out_request_no": "A1", "state": state, **every}, expect_out_request_no="A1"
    )
    assert {name for name in every if getattr(r, name) is not None} == kept
    assert set(r.dropped) == set(dropped)
    # Nothing sent, nothing dropped.
    bare = SpecialReduction.parse(
        {"out_request_no": "A1", "state": state}, expect_out_request_no="A1"
    )
    assert bare.dropped == ()


def test_a_dropped_field_is_still_checked() -> None:
    """Dropped or not, a malformed field makes the answer garbled (it is not the provider's)."""
    with pytest.raises(GarbledResponse, match="fail_time is not an RFC 3339"):
        SpecialReduction.parse(
            {"out_request_no": "A1", "state": "SUCCESS", "fail_time": "yesterday"},
            expect_out_request_no="A1",
        )


def test_the_page_example_answer_parses_to_a_success_without_a_fail_reason() -> None:
    page = {
        **DOC_REDUCTION,
        "fail_time": "2015-05-20T13:29:35+08:00",
        "fail_reason": "BALANCE_NOT_ENOUGH",
    }
    r = SpecialReduction.parse(page, expect_out_request_no=page["out_request_no"])
    assert r.state is ReductionState.SUCCESS and r.fail_reason is None and r.fail_time is None
    assert r.dropped == ("fail_time", "fail_reason")


@pytest.mark.parametrize("name", ["reduction_type", "fail_reason", "quota_change_no", "mchid"])
def test_an_empty_text_field_is_a_missing_one(name: str) -> None:
    base = {"out_request_no": "A1", "state": "FAILED"}
    empty = SpecialReduction.parse({**base, name: ""}, expect_out_request_no="A1")
    assert getattr(empty, name) is None
    assert empty == SpecialReduction.parse(base, expect_out_request_no="A1")
    assert "mchid" in empty.missing_identity()  # an empty mchid was not sent


def test_an_empty_out_bill_no_is_missing_and_an_empty_bill_field_not_sent() -> None:
    with pytest.raises(GarbledResponse, match="out_bill_no is missing"):
        CompensationBill.parse({**DOC_BILL, "out_bill_no": ""}, expect_out_bill_no="x")
    b = CompensationBill.parse(
        {**DOC_BILL, "sp_mchid": "", "transfer_remark": ""}, expect_out_bill_no="plfk2020042013"
    )
    assert b.sp_mchid is None and b.transfer_remark is None


def test_receiver_detail_is_read_and_bounded() -> None:
    full = {
        **DOC_BILL,
        "receiver_detail": {
            "receiver": {
                "type": "TRANSACTION_USER",
                "transaction_info": {"transaction_id": "1217752501", "type": "WXVALUE"},
            }
        },
    }
    b = CompensationBill.parse(full, expect_out_bill_no="plfk2020042013")
    assert b.receiver_detail is not None
    assert b.receiver_detail.as_dict() == {
        "type": "TRANSACTION_USER",
        "transaction_id": "1217752501",
        "transaction_type": "WXVALUE",
    }
    partial = CompensationBill.parse(DOC_BILL, expect_out_bill_no="plfk2020042013")
    assert partial.receiver_detail is not None  # only the receiver's type was sent
    assert partial.receiver_detail.as_dict() == {"type": "TRANSACTION_USER"}
    absent = {k: v for k, v in DOC_BILL.items() if k != "receiver_detail"}
    assert (
        CompensationBill.parse(absent, expect_out_bill_no="plfk2020042013").receiver_detail is None
    )
    too_long = json.loads(json.dumps(full))
    too_long["receiver_detail"]["receiver"]["transaction_info"]["transaction_id"] = "1" * 65
    with pytest.raises(GarbledResponse, match="transaction_id is longer than 64"):
        CompensationBill.parse(too_long, expect_out_bill_no="plfk2020042013")
    with pytest.raises(GarbledResponse, match="receiver_detail: response body is not"):
        CompensationBill.parse(
            {**DOC_BILL, "receiver_detail": "x"}, expect_out_bill_no="plfk2020042013"
        )


def test_a_bill_naming_another_sp_mchid_is_garbled() -> None:
    ok = CompensationBill.parse(
        DOC_BILL, expect_out_bill_no="plfk2020042013", expect_sp_mchid="1900001108"
    )
    assert ok.sp_mchid == "1900001108"
    with pytest.raises(GarbledResponse, match="another sp_mchid"):
        CompensationBill.parse(
            DOC_BILL, expect_out_bill_no="plfk2020042013", expect_sp_mchid="1900000001"
        )
    absent = {k: v for k, v in DOC_BILL.items() if k != "sp_mchid"}
    assert (
        CompensationBill.parse(
            absent, expect_out_bill_no="plfk2020042013", expect_sp_mchid="1900000001"
        ).sp_mchid
        is None
    )


def test_a_reason_is_refused_for_exactly_control_characters_and_lone_surrogates() -> None:
    """The one-regex check (resources.REASON_FORBIDDEN) is the per-character rule, over every
    code point: C0 controls, DEL, lone surrogates refused; everything else kept."""
    from wxrecon.wechatpay.resources import check_reason

    def forbidden(c: int) -> bool:
        return c < 0x20 or c == 0x7F or 0xD800 <= c <= 0xDFFF

    for c in range(0x110000):
        text = f"a{chr(c)}b"
        if forbidden(c):
            with pytest.raises(InvalidRequest):
                check_reason(text)
        else:
            assert check_reason(text) == text
