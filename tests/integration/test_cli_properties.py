"""Property-based tests of the CLI's intake entry points: whatever the input, either the
order is accepted exactly as the task would accept it, or the command exits 2 with one line
and nothing is written or enqueued."""

from __future__ import annotations

import re
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from tests.fixtures_cli import Cli
from wxrecon.store.models import Event, SpecialReduction

ORDER_NO = re.compile(r"[0-9A-Za-z]{1,32}")
MCHID = re.compile(r"[0-9]{1,32}")
TYPES = ("FINANCIAL_PENALTY", "JUDICIAL_DEDUCTION")

amounts = st.one_of(
    st.integers(min_value=-10, max_value=2**64).map(str),
    st.sampled_from(["15.00", "1e3", "0x10", " 12", "١٢", "²", "", "+5"]),
    st.text(max_size=6),
)
mchids = st.one_of(st.from_regex(MCHID, fullmatch=True), st.text(max_size=34))
numbers = st.one_of(st.from_regex(ORDER_NO, fullmatch=True), st.text(max_size=34))
types = st.one_of(st.sampled_from(TYPES), st.text(max_size=20))

EXAMPLES = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def valid(mchid: str, number: str, kind: str, amount: str) -> bool:
    return bool(
        MCHID.fullmatch(mchid)
        and ORDER_NO.fullmatch(number)
        and kind in TYPES
        and amount.isascii()
        and amount.isdigit()
        and 0 < int(amount) < 2**63
    )


@EXAMPLES
@given(mchid=mchids, number=numbers, kind=types, amount=amounts)
# The same number twice with another amount: the second is a conflict, and nothing changes.
@example(mchid="1", number="0", kind="FINANCIAL_PENALTY", amount="1")
@example(mchid="1", number="0", kind="FINANCIAL_PENALTY", amount="2")
def test_submit_accepts_exactly_the_valid_orders(cli: Cli, mchid, number, kind, amount):
    if "\x00" in mchid + number + kind + amount:
        return  # cannot be passed on a real command line
    before = (cli.count(SpecialReduction), cli.count(Event), len(cli.sent))
    args = [
        "reduction",
        "submit",
        f"--mchid={mchid}",
        "--bal-account-no=6222020000123456789",
        f"--out-request-no={number}",
        f"--type={kind}",
        f"--amount={amount}",
        "--json",
    ]
    # The database lives across examples: the same number may already hold another order.
    with cli.db.read() as session:
        known = session.execute(
            select(SpecialReduction.reduction_type, SpecialReduction.amount).where(
                SpecialReduction.mchid == mchid, SpecialReduction.out_request_no == number
            )
        ).first()
    result = cli.run(*args)
    if valid(mchid, number, kind, amount):
        if known is not None and tuple(known) != (kind, int(amount)):
            assert result.exit_code == 1 and "already exists" in result.stderr, result.output
            assert (cli.count(SpecialReduction), cli.count(Event), len(cli.sent)) == before
            return
        assert result.exit_code == 0, result.output
        assert cli.count(SpecialReduction) - before[0] in (0, 1)
    else:
        assert result.exit_code == 2, (args, result.output)
        assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1
        assert (cli.count(SpecialReduction), cli.count(Event), len(cli.sent)) == before


@EXAMPLES
@given(rows=st.lists(st.tuples(mchids, numbers, types, amounts), min_size=1, max_size=5))
def test_import_writes_the_valid_rows_only(cli: Cli, tmp_path: Path, rows):
    bad_chars = (
        "\x00",
        ",",
        '"',
        "\n",
        "\r",
        "\x0b",
        "\x0c",
        "\x1c",
        "\x1d",
        "\x1e",
        "\x85",
        "\u2028",
        "\u2029",
    )
    if any(c in "".join(map("".join, rows)) for c in bad_chars):
        return  # CSV quoting is the csv module's business, not this property's
    lines = ["mchid,bal_account_no,out_request_no,reduction_type,amount"]
    lines += [f"{m},6222020000123456789,{n},{k},{a}" for m, n, k, a in rows]
    path = tmp_path / "rows.csv"
    path.write_text("\n".join(lines) + "\n")
    with cli.db.read() as session:
        known = {
            (r.mchid, r.out_request_no): (r.reduction_type, r.amount)
            for r in session.execute(select(SpecialReduction)).scalars()
        }
    before = len(known)
    created = refused = 0
    for m, n, k, a in ((x.strip() for x in row) for row in rows):
        if not valid(m, n, k, a):
            refused += 1
        elif (m, n) not in known:
            known[(m, n)] = (k, int(a))
            created += 1
        elif known[(m, n)] != (k, int(a)):
            refused += 1  # a conflict: the same order number with other parameters
    result = cli.run("import", str(path), "--json")
    assert result.exit_code == (1 if refused else 0), result.output
    assert cli.count(SpecialReduction) == before + created
    sent = [i for _, kwargs in cli.sent for i in kwargs["ids"]]
    assert len(sent) == len(set(sent)) == len(known)  # each order ever created enqueued once
