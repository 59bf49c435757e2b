"""The storage layer under the engine: migrations, schema checks, SQLite settings, UTC times,
the partial index, and queries for the CLI."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from tests.fixtures_db import FakeClock
from wxrecon.domain.errors import OrderNotFound
from wxrecon.engine.intake import intake_bill, intake_reduction
from wxrecon.store import db as dbmod
from wxrecon.store import reads as queries
from wxrecon.store.db import Database, SchemaError, check_schema, head_revisions
from wxrecon.store.models import Base, SpecialReduction
from wxrecon.wechatpay.resources import SpecialReductionRequest


def request(no: str, mchid: str = "1900000109", amount: int = 100) -> SpecialReductionRequest:
    return SpecialReductionRequest.create(
        mchid=mchid,
        bal_account_no="6222000011112222",
        out_request_no=no,
        reduction_type="FINANCIAL_PENALTY",
        amount=amount,
    )


def test_schema_is_at_head_and_matches_the_models(db: Database) -> None:
    check_schema(db.url)
    assert dbmod.current_revisions(db.url) == head_revisions()
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_downgrade_and_upgrade_again(db_url: str) -> None:
    from alembic import command

    command.downgrade(dbmod.alembic_config(db_url), "base")
    assert "special_reductions" not in dbmod.table_names(db_url)
    with pytest.raises(SchemaError, match="wxrecon db upgrade"):
        check_schema(db_url)
    dbmod.upgrade(db_url)
    check_schema(db_url)
    dbmod.upgrade(db_url)  # idempotent


def test_empty_database_is_refused_in_one_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/empty.db"
    with pytest.raises(SchemaError) as info:
        check_schema(url)
    assert "run `wxrecon db upgrade`" in str(info.value) and "\n" not in str(info.value)


def test_schema_newer_than_the_code_is_refused(db: Database) -> None:
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'f00dfeed'"))
    with pytest.raises(SchemaError, match="newer than this code"):
        check_schema(db.url)


def test_unreachable_database_is_a_one_line_schema_error() -> None:
    with pytest.raises(SchemaError, match="WXRECON_DATABASE_URL"):
        check_schema("postgresql://nobody@127.0.0.1:1/none")


def test_sqlite_connection_settings(sqlite_url: str) -> None:
    database = Database(sqlite_url)
    with database.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
    database.dispose()


def test_postgres_urls_use_psycopg3() -> None:
    assert dbmod.normalize_url("postgresql://u@h/d") == "postgresql+psycopg://u@h/d"
    assert dbmod.normalize_url("postgres://u@h/d") == "postgresql+psycopg://u@h/d"
    assert dbmod.normalize_url("sqlite:///x.db") == "sqlite:///x.db"


def test_partial_index_on_active_rows(db: Database) -> None:
    with db.engine.connect() as conn:
        if db.is_postgresql:
            sql = conn.exec_driver_sql(
                "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_special_reductions_due'"
            ).scalar()
        else:
            sql = conn.exec_driver_sql(
                "SELECT sql FROM sqlite_master WHERE name = 'ix_special_reductions_due'"
            ).scalar()
    assert sql is not None and "WHERE" in sql.upper() and "PROCESSING" in sql


def test_times_are_aware_utc_both_ways(db: Database, clock: FakeClock) -> None:
    shanghai = datetime(2026, 1, 5, 16, 0, tzinfo=UTC).astimezone(ZoneInfo("Asia/Shanghai"))
    with db.transaction() as session:
        order = intake_reduction(session, request("T1"), now=shanghai)
    with db.read() as session:
        row = session.get(SpecialReduction, order.order_id)
    assert row is not None
    assert row.created_at == shanghai and row.created_at.tzinfo == UTC
    with pytest.raises(Exception, match="naive"), db.transaction() as session:
        intake_reduction(session, request("T2"), now=datetime(2026, 1, 1))


def test_queries_for_the_cli(db: Database, clock: FakeClock) -> None:
    with db.transaction() as session:
        a = intake_reduction(session, request("Q1"), now=clock())
        intake_reduction(session, request("Q1", mchid="1900000110"), now=clock())
        intake_reduction(session, request("Q2", amount=250), now=clock())
        intake_bill(session, "BQ1", now=clock())
    with db.read() as session:
        with pytest.raises(queries.Ambiguous, match="mchid"):
            queries.get_reduction(session, out_request_no="Q1")
        one = queries.get_reduction(session, out_request_no="Q1", mchid="1900000109")
        assert one.id == a.order_id
        with pytest.raises(OrderNotFound):
            queries.get_reduction(session, out_request_no="NOPE")
        assert len(queries.list_reductions(session, mchid="1900000109")) == 2
        assert len(queries.list_reductions(session, states=["RECEIVED"], limit=1)) == 1
        assert queries.list_bills(session)[0].out_bill_no == "BQ1"
        assert queries.get_bill(session, out_bill_no="BQ1").state == "TRACKING"
        stats = queries.stats(session, now=clock() + timedelta(hours=1))
        view = queries.reduction_dict(one)
        events = [queries.event_dict(e) for e in queries.reduction_events(session, one.id)]
    assert stats.reductions == {"RECEIVED": 3} and stats.reduction_amounts == {"RECEIVED": 450}
    assert stats.bills == {"TRACKING": 1} and stats.reductions_due == 3 and stats.bills_due == 1
    assert stats.as_dict()["oldest_due"] is not None
    assert view["bal_account_no"] != "6222000011112222" and "2222" in view["bal_account_no"]
    assert events[0]["to_state"] == "RECEIVED" and events[0]["actor"] == "intake"


def test_events_cannot_be_rewritten(db: Database, clock: FakeClock) -> None:
    with db.transaction() as session:
        intake_reduction(session, request("EV1"), now=clock())
    with pytest.raises(Exception, match="append-only"), db.transaction() as session:
        session.execute(text("UPDATE events SET reason = 'rewritten'"))
    with db.read() as session:
        assert session.execute(text("SELECT reason FROM events")).scalar_one() == "received"


def test_old_schema_is_refused_with_the_command_to_run(db_url: str) -> None:
    from alembic import command

    command.downgrade(dbmod.alembic_config(db_url), "0001")
    with pytest.raises(SchemaError) as info:
        check_schema(db_url)
    message = str(info.value)
    assert "0001" in message and "run `wxrecon db upgrade`" in message and "\n" not in message
    dbmod.upgrade(db_url)
    check_schema(db_url)


def test_database_errors_never_carry_statement_parameters(db_url: str) -> None:
    secret = "6222000099998888"
    engine = dbmod.make_engine(db_url)
    try:
        with engine.connect() as conn, pytest.raises(DBAPIError) as info:
            conn.execute(text("SELECT * FROM no_such_table WHERE x = :x"), {"x": secret})
    finally:
        engine.dispose()
    assert secret not in str(info.value)
    assert "hidden due to hide_parameters" in str(info.value)


def test_pinned_transactions_share_one_connection_and_commit_each(pg_db: Database) -> None:
    """One checkout for an order's step; every transaction in it still commits on its own."""
    pool = pg_db.engine.pool
    with pg_db.begin() as conn:
        conn.execute(text("CREATE TABLE pin_probe (n int)"))
    with pg_db.pinned():
        checked_out = pool.checkedout()  # type: ignore[attr-defined]
        with pg_db.connect() as first:
            assert first.execute(text("SELECT count(*) FROM pin_probe")).scalar() == 0
        assert not first.in_transaction()  # the read ended its transaction
        with pg_db.begin() as conn:
            assert conn is first
            conn.execute(text("INSERT INTO pin_probe VALUES (1)"))
        # Committed, as seen from another connection while the pin is still held.
        with pg_db.engine.connect() as other:
            assert other.execute(text("SELECT count(*) FROM pin_probe")).scalar() == 1
        with pytest.raises(DBAPIError), pg_db.begin() as conn:
            conn.execute(text("INSERT INTO pin_probe VALUES (2)"))
            conn.execute(text("SELECT 1/0"))
        with pg_db.begin() as conn:  # the failed transaction rolled back; the pin goes on
            conn.execute(text("INSERT INTO pin_probe VALUES (3)"))
        with pg_db.pinned(), pg_db.connect() as nested:  # nesting keeps the same connection
            assert nested is first
        assert pool.checkedout() == checked_out  # type: ignore[attr-defined]
    with pg_db.connect() as conn:
        assert sorted(conn.execute(text("SELECT n FROM pin_probe")).scalars()) == [1, 3]
        assert conn is not first


def _prepared_here(conn: Connection) -> int:
    return int(conn.execute(text("SELECT count(*) FROM pg_prepared_statements")).scalar_one())


def test_a_read_keeps_the_statements_prepared_on_its_connection(pg_db: Database) -> None:
    """psycopg forgets a connection's prepared statements at a ROLLBACK; a read (which wrote
    nothing) ends with a COMMIT instead, so the hot statements stay prepared, pinned or not."""
    probe = text("SELECT CAST(:n AS integer) + 1")
    for pinned in (True, False):
        with pg_db.pinned() if pinned else contextlib.nullcontext():
            for n in range(8):  # past psycopg's prepare threshold (5)
                with pg_db.connect() as conn:
                    assert conn.execute(probe, {"n": n}).scalar_one() == n + 1
            with pg_db.connect() as conn:
                assert _prepared_here(conn) >= 1, f"pinned={pinned}"
    with pytest.raises(DBAPIError), pg_db.connect() as conn:  # a failed read still ends
        conn.execute(text("SELECT 1/0"))
    with pg_db.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar_one() == 1


def test_pinning_is_a_no_op_on_sqlite(sqlite_url: str) -> None:
    db = Database(sqlite_url)
    with db.pinned(), db.connect() as a, db.connect() as b:
        assert a is not b  # SQLite reads keep their own (lock-free) connections
    db.dispose()
