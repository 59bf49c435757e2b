"""Database fixtures for engine tests: a fresh, migrated schema per test on SQLite and on
PostgreSQL, plus a scripted in-memory provider and a settable clock.

PostgreSQL: migrations run once per session into a template database, cloned with
``CREATE DATABASE … TEMPLATE …``. A test has its clone to itself; afterwards the clone is
emptied and handed to the session's next test, and dropped only when the test changed more than
rows (``Reusable``): on PostgreSQL 15 every ``DROP DATABASE`` forces a checkpoint of the whole
server, 0.2-1 s each under load, for each of the ~250 PostgreSQL tests. SQLite: a migrated
template file copied per test. Database names start with ``wxrecon_engine_`` and carry the
run's id (``tests.services.unique_name``), so parallel and concurrent runs never collide.
"""

from __future__ import annotations

import copy
import shutil
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url

from tests.services import unique_name
from wxrecon import runtime
from wxrecon.config import Settings
from wxrecon.store.db import Database, normalize_url, upgrade
from wxrecon.wechatpay.resources import (
    BillState,
    CloseInfo,
    CompensationBill,
    FailReason,
    ReductionState,
    ReductionType,
    SpecialReduction,
    SpecialReductionRequest,
)

BACKENDS = ["sqlite", "postgresql"]


def _admin_conninfo(url: str) -> str:
    u = make_url(normalize_url(url))
    return (
        f"host={u.host or '127.0.0.1'} port={u.port or 5432} user={u.username or 'postgres'}"
        + (f" password={u.password}" if u.password else "")
        + f" dbname={u.database or 'postgres'}"
    )


def _pg_url(base: str, name: str) -> str:
    return make_url(normalize_url(base)).set(database=name).render_as_string(hide_password=False)


def pg_admin(base_url: str, *statements: str) -> None:
    with psycopg.connect(_admin_conninfo(base_url), autocommit=True) as conn:
        for sql in statements:
            conn.execute(sql)


@pytest.fixture(scope="session")
def pg_template(postgres_url: str) -> Iterator[str]:
    """A migrated template database; yields its name."""
    # Unique per test session: several sessions (other engineers, CI) may run at once.
    name = unique_name("wxrecon_engine_tpl")
    pg_admin(
        postgres_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", f"CREATE DATABASE {name}"
    )
    upgrade(_pg_url(postgres_url, name))
    # No one may stay connected to a template while it is copied.
    pg_admin(postgres_url, f"ALTER DATABASE {name} WITH ALLOW_CONNECTIONS false")
    yield name
    pg_admin(postgres_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("engine-template") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


# What a test could change in a database beyond its rows: schemas, relations (with their
# grants and options), columns and defaults, constraints, indexes, triggers (and whether they
# are enabled), functions, types, rules, policies, sequence parameters, extensions, database
# settings, and the schema revision. Two databases with the same digest differ in rows only.
SHAPE = """
WITH ns AS (
    SELECT oid, nspname FROM pg_namespace
    WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'
)
SELECT md5(string_agg(x, E'\\n' ORDER BY x)) FROM (
    SELECT 'n ' || nspname FROM ns
    UNION ALL SELECT concat_ws(' ', 'c', c.oid::regclass, c.relkind, c.relacl, c.reloptions,
        c.relrowsecurity, CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END)
        FROM pg_class c JOIN ns ON ns.oid = c.relnamespace
    UNION ALL SELECT concat_ws(' ', 'a', a.attrelid::regclass, a.attnum, a.attname,
        format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attisdropped, a.attidentity,
        a.attgenerated, pg_get_expr(d.adbin, d.adrelid))
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN ns ON ns.oid = c.relnamespace
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE a.attnum > 0
    UNION ALL SELECT concat_ws(' ', 'k', k.conrelid::regclass, k.conname,
        pg_get_constraintdef(k.oid)) FROM pg_constraint k JOIN ns ON ns.oid = k.connamespace
    UNION ALL SELECT concat_ws(' ', 'i', pg_get_indexdef(i.indexrelid)) FROM pg_index i
        JOIN pg_class c ON c.oid = i.indrelid JOIN ns ON ns.oid = c.relnamespace
    UNION ALL SELECT concat_ws(' ', 't', t.tgname, t.tgenabled, pg_get_triggerdef(t.oid))
        FROM pg_trigger t WHERE NOT t.tgisinternal
    UNION ALL SELECT concat_ws(' ', 'p', p.oid::regprocedure, md5(p.prosrc), p.proacl)
        FROM pg_proc p JOIN ns ON ns.oid = p.pronamespace
    UNION ALL SELECT concat_ws(' ', 'y', y.oid::regtype, y.typtype) FROM pg_type y
        JOIN ns ON ns.oid = y.typnamespace
    UNION ALL SELECT concat_ws(' ', 'e', e.enumtypid::regtype, e.enumsortorder, e.enumlabel)
        FROM pg_enum e
    UNION ALL SELECT concat_ws(' ', 'r', schemaname, tablename, rulename, definition)
        FROM pg_rules WHERE schemaname IN (SELECT nspname FROM ns)
    UNION ALL SELECT concat_ws(' ', 'o', schemaname, tablename, policyname, qual, with_check)
        FROM pg_policies
    UNION ALL SELECT concat_ws(' ', 'q', s.seqrelid::regclass, s.seqtypid, s.seqstart,
        s.seqincrement, s.seqmax, s.seqmin, s.seqcache, s.seqcycle) FROM pg_sequence s
    UNION ALL SELECT concat_ws(' ', 'x', extname, extversion) FROM pg_extension
    UNION ALL SELECT concat_ws(' ', 'g', setrole, setconfig) FROM pg_db_role_setting
        WHERE setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
    UNION ALL SELECT 'v ' || version_num FROM alembic_version
) AS shape(x)
"""


def _shape(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute(SHAPE).fetchone()
    return str(row[0]) if row else ""


class Reusable:
    """This session's clones of the template. ``take()`` hands out one no test is using;
    ``give_back()`` ends every connection to it, deletes every row and restarts every sequence
    (the rows of a fresh clone: none but ``alembic_version``'s), then keeps it for the next test
    only if its digest (``SHAPE``) is still the template's, else drops it. Deleting needs a
    superuser (``session_replication_role``: the events table's append-only trigger and the
    foreign keys stay out of the way); without one, or on any error, the clone is dropped as
    before. A test therefore always starts on what a fresh clone holds."""

    def __init__(self, postgres_url: str, template: str) -> None:
        self.postgres_url = postgres_url
        self.template = template
        self.free: list[str] = []
        self.shape: str | None = None  # the template's digest, read on its first clone

    def take(self) -> str:
        if self.free:
            return self.free.pop()
        url = fresh_pg_url(self.postgres_url, self.template)
        if self.shape is None:
            with psycopg.connect(_admin_conninfo(url), autocommit=True) as conn:
                self.shape = _shape(conn)
        return url

    def give_back(self, url: str) -> None:
        try:
            emptied = self._empty(url)
        except psycopg.Error:
            emptied = False
        if emptied:
            self.free.append(url)
        else:
            drop_pg(self.postgres_url, url)

    def _empty(self, url: str) -> bool:
        with psycopg.connect(_admin_conninfo(url), autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            if _shape(conn) != self.shape:
                return False
            with conn.transaction():
                conn.execute("SET LOCAL synchronous_commit = off")  # a test database
                conn.execute("SET LOCAL session_replication_role = replica")
                conn.execute("SET LOCAL lock_timeout = '10s'")
                for (table,) in conn.execute(
                    "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables"
                    " WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
                ).fetchall():
                    conn.execute(f"DELETE FROM {table}")
                for (sequence,) in conn.execute(
                    "SELECT format('%I.%I', schemaname, sequencename) FROM pg_sequences"
                ).fetchall():
                    conn.execute(f"ALTER SEQUENCE {sequence} RESTART")
            return True

    def close(self) -> None:
        while self.free:
            drop_pg(self.postgres_url, self.free.pop())


@pytest.fixture(scope="session")
def pg_clones(postgres_url: str, pg_template: str) -> Iterator[Reusable]:
    clones = Reusable(postgres_url, pg_template)
    try:
        yield clones
    finally:
        clones.close()  # before the template is dropped


def fresh_pg_url(postgres_url: str, template: str) -> str:
    name = unique_name("wxrecon_engine")
    pg_admin(postgres_url, f"CREATE DATABASE {name} TEMPLATE {template}")
    return _pg_url(postgres_url, name)


def drop_pg(postgres_url: str, url: str) -> None:
    name = make_url(url).database
    pg_admin(postgres_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def pg_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A migrated PostgreSQL database URL (PostgreSQL only) that this test alone uses, with the
    rows of a fresh clone of the template (see ``Reusable``)."""
    clones: Reusable = request.getfixturevalue("pg_clones")
    url = clones.take()
    yield url
    clones.give_back(url)


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    path = tmp_path / "wxrecon.db"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest) -> str:
    """A fresh migrated database URL, once on SQLite and once on PostgreSQL."""
    if request.param == "postgresql":
        return str(request.getfixturevalue("pg_url"))
    return str(request.getfixturevalue("sqlite_url"))


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    yield database
    database.dispose()


@pytest.fixture
def pg_db(pg_url: str) -> Iterator[Database]:
    database = Database(pg_url)
    yield database
    database.dispose()


# -- a settable clock -------------------------------------------------------------------------


class FakeClock:
    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 1, 5, 8, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float = 0, **kw: float) -> datetime:
        self.now += timedelta(seconds=seconds, **kw)
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# -- engine settings for tests ----------------------------------------------------------------


@dataclass
class EngineSettings:
    """The settings the engine reads, with small deterministic values."""

    poll_schedule: list[float] = field(default_factory=lambda: [5.0, 15.0, 60.0])
    poll_jitter: float = 0.0
    poll_max_attempts: int = 6
    reentry_window_days: int = 31
    reentry_margin: float = 3600.0
    reentry_grace: float = 30.0
    sweep_batch: int = 200
    sweep_interval: float = 2.0
    claim_lease: float = 120.0


@pytest.fixture
def engine_settings() -> EngineSettings:
    return EngineSettings()


# -- a scripted provider ----------------------------------------------------------------------

Answer = Any  # a result, an exception instance, or a callable(request-ish) -> either


def reduction(
    out_request_no: str,
    state: str,
    *,
    fail_reason: str | None = None,
    request_id: str = "rid-q",
    amount: int | None = None,
    reduction_type: str | None = None,
    mchid: str | None = None,
) -> SpecialReduction:
    return SpecialReduction(
        out_request_no=out_request_no,
        state=ReductionState(state),
        mchid=mchid,
        amount=amount,
        reduction_type=ReductionType(reduction_type) if reduction_type else None,
        fail_reason=FailReason(fail_reason) if fail_reason else None,
        quota_change_no="Q" + out_request_no if state == "SUCCESS" else None,
        success_time=datetime(2026, 1, 5, 8, 1, tzinfo=UTC) if state == "SUCCESS" else None,
        fail_time=datetime(2026, 1, 5, 8, 1, tzinfo=UTC) if state == "FAILED" else None,
        request_id=request_id,
    )


def bill(
    out_bill_no: str,
    state: str,
    *,
    amount: int = 500,
    close_reason: str | None = None,
    request_id: str = "rid-b",
) -> CompensationBill:
    close = (
        CloseInfo(datetime(2026, 1, 5, 9, 0, tzinfo=UTC), close_reason) if close_reason else None
    )
    return CompensationBill(
        out_bill_no=out_bill_no,
        state=BillState(state),
        amount=amount,
        bill_id="B" + out_bill_no,
        close_info=close,
        request_id=request_id,
    )


class FakeProvider:
    """Answers each call with the next scripted answer (a result or an exception to raise).

    ``hook`` (if set) runs inside every call, before answering: tests use it to act while
    the engine is "waiting on the network" (e.g. an operator action, to lose a CAS race).
    """

    def __init__(self) -> None:
        self.submit_answers: deque[Answer] = deque()
        self.query_answers: deque[Answer] = deque()
        self.bill_answers: deque[Answer] = deque()
        self.submits: list[SpecialReductionRequest] = []
        self.sent: dict[str, SpecialReductionRequest] = {}  # by number, never cleared
        self.echo_numbers = True
        self.queries: list[tuple[str, str, str]] = []
        self.bill_queries: list[str] = []
        self.hook: Callable[[], None] | None = None

    def _answer(self, answers: deque[Answer], what: str) -> Any:
        if self.hook is not None:
            self.hook()
        if not answers:
            raise AssertionError(f"unexpected {what} call: no answer scripted")
        answer = answers.popleft()
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def _named(self, answer: Any, number: str, mchid: str = "") -> Any:
        """Like the provider, name the order asked about in a scripted answer: its number
        (the real client refuses an answer about another one; ``echo_numbers = False``
        leaves the scripted number), and when left out its mchid and, from the order as
        last submitted here, its amount (script ``mchid=""`` to leave it out)."""
        field_name = "out_bill_no" if isinstance(answer, CompensationBill) else "out_request_no"
        changes: dict[str, Any] = {}
        if self.echo_numbers and getattr(answer, field_name, number) != number:
            changes[field_name] = number
        if isinstance(answer, SpecialReduction):
            changes.update(self._identity(answer, mchid))
        if not changes:
            return answer
        named = copy.copy(answer)  # not dataclasses.replace: that would read (decrypt) every field
        for name, value in changes.items():
            object.__setattr__(named, name, value)
        return named

    def _identity(self, answer: SpecialReduction, mchid: str) -> dict[str, Any]:
        sent = self.sent.get(answer.out_request_no)
        changes: dict[str, Any] = {}
        if answer.mchid is None:
            changes["mchid"] = mchid
        if answer.amount is None and sent is not None:
            changes["amount"] = sent.amount
        return changes

    def submit_special_reduction(self, request: SpecialReductionRequest) -> SpecialReduction:
        self.submits.append(request)
        self.sent[request.out_request_no] = request
        answer = self._answer(self.submit_answers, "submit")
        return self._named(answer, request.out_request_no, request.mchid)

    def query_special_reduction(
        self, out_request_no: str, *, mchid: str, bal_account_no: str
    ) -> SpecialReduction:
        self.queries.append((out_request_no, mchid, bal_account_no))
        return self._named(self._answer(self.query_answers, "query"), out_request_no, mchid)

    def query_compensation_bill(self, out_bill_no: str) -> CompensationBill:
        self.bill_queries.append(out_bill_no)
        return self._named(self._answer(self.bill_answers, "bill query"), out_bill_no)


@pytest.fixture
def provider() -> FakeProvider:
    return FakeProvider()


@pytest.fixture
def installed(db: Database, tmp_path: Path) -> Iterator[tuple[Database, FakeProvider]]:
    """The process runtime on ``db`` and a FakeProvider, as the tasks see it."""
    provider = FakeProvider()
    settings = Settings.model_validate(
        {"database_url": db.url, "data_dir": tmp_path, "poll_schedule": [1.0], "poll_jitter": 0}
    )
    runtime.install(runtime.Runtime(settings, _db=db, _clients={"default": provider}))
    try:
        yield db, provider
    finally:
        runtime.install(None)
