"""Engines, sessions, transactions with after-commit hooks, and schema migrations.

- SQLite: WAL journal, a busy timeout, foreign keys on, and ``BEGIN IMMEDIATE`` for every
  write transaction, so concurrent worker processes queue for the write lock instead of
  failing a read-to-write upgrade.
- PostgreSQL: psycopg 3 (``postgresql://`` URLs are mapped to ``postgresql+psycopg://``).
- ``on_commit(session, fn)`` runs ``fn`` only after the session's outermost transaction has
  committed, and drops it on rollback (the warehouse idiom: a task is never enqueued for a row
  that was rolled back).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker
from sqlalchemy.pool import NullPool

from wxrecon.domain.errors import SchemaError
from wxrecon.filemodes import tighten_sqlite
from wxrecon.store import sealed

log = logging.getLogger(__name__)


class DatabaseDown(SchemaError):
    """The schema could not be read because the database does not answer (it may be back
    soon: a worker waits for it at start-up instead of exiting)."""


AFTER_COMMIT_KEY = "wxrecon_after_commit"
SESSION_DB_KEY = "wxrecon_database"
SQLITE_BUSY_TIMEOUT_MS = 30_000
CLOCK_REFRESH = 60.0  # seconds between two readings of the database's clock


def database_now(conn: Connection) -> datetime:
    """The database server's clock (UTC); SQLite lives on this host, so this host's."""
    if conn.dialect.name != "postgresql":
        return datetime.now(UTC)
    value: datetime = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
    return value.astimezone(UTC)


def normalize_url(url: str) -> str:
    """``postgresql://`` and ``postgres://`` mean psycopg 3 here."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def is_sqlite(url: str) -> bool:
    return normalize_url(url).startswith("sqlite")


def _sqlite_setup(engine: Engine, database: str | None) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        if database and database != ":memory:":
            tighten_sqlite(database)  # before WAL mode: its side files take the file's mode
        # Let SQLAlchemy's "begin" event below emit BEGIN itself (pysqlite's implicit
        # transactions would defer it and break SAVEPOINTs and lock ordering).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        mode = "DEFERRED" if conn.get_execution_options().get("wxrecon_readonly") else "IMMEDIATE"
        conn.exec_driver_sql(f"BEGIN {mode}")


def make_engine(url: str, **kwargs: Any) -> Engine:
    url = normalize_url(url)
    # Statement parameters hold plaintext bal_account_no: keep them out of every exception
    # message (and so out of Celery's retry and failure logs).
    kwargs.setdefault("hide_parameters", True)
    if is_sqlite(url):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        kwargs.setdefault("connect_args", {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        engine = create_engine(url, **kwargs)
        _sqlite_setup(engine, database)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def keyring_of(session: Session) -> sealed.Keyring:
    """The keys of the Database ``session`` came from; an app's own session: the process's."""
    db = session.info.get(SESSION_DB_KEY)
    return db.keyring if isinstance(db, Database) else sealed.current()


# -- after-commit hooks (registered once, for every Session in the process) ----------------


def on_commit(session: Session, callback: Callable[[], Any]) -> None:
    """Run ``callback`` after ``session``'s current outermost transaction commits.

    Dropped if that transaction rolls back. Callbacks run in registration order; one that
    raises is logged and does not stop the others (the row is committed; the sweep will pick
    it up if its task was not enqueued).
    """
    session.info.setdefault(AFTER_COMMIT_KEY, []).append(callback)


@event.listens_for(Session, "after_commit")
def _run_after_commit(session: Session) -> None:
    callbacks = session.info.pop(AFTER_COMMIT_KEY, [])
    for callback in callbacks:
        try:
            callback()
        except Exception:
            log.exception("after-commit callback failed; the sweep will pick the work up")


@event.listens_for(Session, "after_soft_rollback")
def _drop_after_commit(session: Session, previous_transaction: SessionTransaction) -> None:
    if previous_transaction.parent is None:
        session.info.pop(AFTER_COMMIT_KEY, None)


# -- the Database object --------------------------------------------------------------------


class Database:
    """An engine plus a session factory for one URL."""

    def __init__(
        self,
        url: str,
        *,
        engine: Engine | None = None,
        keyring: sealed.Keyring | None = None,
        **engine_kwargs: Any,
    ) -> None:
        self.url = normalize_url(url)
        self._keyring = keyring
        self.engine = engine or make_engine(self.url, **engine_kwargs)
        # A session remembers its Database, so intake in it seals with this one's keys.
        self.sessionmaker = sessionmaker(
            self.engine, expire_on_commit=False, info={SESSION_DB_KEY: self}
        )
        self._read_engine = self.engine.execution_options(wxrecon_readonly=True)
        self._pin = threading.local()
        self._offset: timedelta | None = None  # the database's clock minus this host's
        self._offset_read_at = 0.0

    def now(self) -> datetime:
        """The time by the database's clock. Leases, the re-entry grace and the window are
        compared between workers, so none may use its own clock: a worker 300 s fast would
        take over live leases. The offset to this host's clock is read at most once a
        minute (one round trip), so the hot path pays nothing."""
        if not self.is_postgresql:
            return datetime.now(UTC)
        if self._offset is None or time.monotonic() - self._offset_read_at > CLOCK_REFRESH:
            with self.connect() as conn:
                before = datetime.now(UTC)
                server = database_now(conn)
                after = datetime.now(UTC)
            self._offset = server - (before + (after - before) / 2)
            self._offset_read_at = time.monotonic()
        return datetime.now(UTC) + self._offset

    @property
    def keyring(self) -> sealed.Keyring:
        """The keys that seal and open ledger numbers: the ones given, else the process's
        (from WXRECON_DATA_KEYS / WXRECON_LOOKUP_KEY; SealError when missing or bad)."""
        return self._keyring if self._keyring is not None else sealed.current()

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @property
    def is_postgresql(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    def session(self, *, readonly: bool = False) -> Session:
        if readonly:
            return self.sessionmaker(bind=self._read_engine)
        return self.sessionmaker()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One write transaction: commits on success (then runs on_commit hooks), rolls
        back on error."""
        with self.sessionmaker() as session, session.begin():
            yield session

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """One write transaction on a Core connection, without the ORM's unit of work (the
        engine's hot path): commits on success, rolls back on error. No on_commit hooks."""
        pinned = self._pinned
        if pinned is not None:
            with pinned.begin():
                yield pinned
            return
        with self.engine.begin() as conn:
            yield conn

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """A read-only Core connection (no write lock on SQLite) for reads only.

        A read that succeeds ends its implicit transaction with a COMMIT, not a ROLLBACK: the
        two are the same to a transaction that wrote nothing, but psycopg forgets every
        statement it prepared on the connection at a ROLLBACK, so reads that rolled back kept
        the engine's hot statements from ever being prepared."""
        pinned = self._pinned
        if pinned is not None:
            try:
                yield pinned
            except BaseException:
                pinned.rollback()
                raise
            pinned.commit()
            return
        with self._read_engine.connect() as conn:
            yield conn
            conn.commit()

    @property
    def _pinned(self) -> Connection | None:
        conn: Connection | None = getattr(self._pin, "conn", None)
        return conn

    @contextmanager
    def pinned(self) -> Iterator[None]:
        """Within this block, this thread's ``begin()`` and ``connect()`` share one pooled
        PostgreSQL connection: one checkout (and one pre-ping) for the several short
        transactions of one order's step, instead of one each. Each transaction still
        commits on its own. A no-op on SQLite, whose reads must not take the write lock."""
        if not self.is_postgresql or self._pinned is not None:
            yield
            return
        with self.engine.connect() as conn:
            self._pin.conn = conn
            try:
                yield
            finally:
                self._pin.conn = None

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only unit of work (no write lock on SQLite); never commits. Rows loaded in
        it stay readable (detached) afterwards."""
        with self.session(readonly=True) as session:
            try:
                yield session
            finally:
                session.expunge_all()  # keep loaded rows usable after the session ends
                session.rollback()

    def dispose(self) -> None:
        self.engine.dispose()

    def __repr__(self) -> str:
        return f"<Database {make_url(self.url).render_as_string(hide_password=True)}>"


# -- migrations -----------------------------------------------------------------------------


def alembic_config(url: str | None = None) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", "wxrecon:migrations")
    if url is not None:
        config.attributes["url"] = normalize_url(url)
    return config


def head_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    return set(ScriptDirectory.from_config(alembic_config()).get_heads())


def current_revisions(url: str) -> set[str]:
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return set(MigrationContext.configure(conn).get_current_heads())
    finally:
        engine.dispose()


def upgrade(url: str, revision: str = "head") -> None:
    """Apply migrations up to ``revision`` (what ``wxrecon db upgrade`` runs)."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def check_schema(url: str) -> None:
    """Raise SchemaError (one line) unless the database is at the code's schema head."""
    from sqlalchemy.exc import InterfaceError, OperationalError

    try:
        current = current_revisions(url)
    except (OperationalError, InterfaceError) as exc:
        raise DatabaseDown(
            f"the database does not answer ({type(exc).__name__}); check WXRECON_DATABASE_URL"
        ) from None
    except Exception as exc:
        raise SchemaError(
            f"cannot read the database schema ({type(exc).__name__}); "
            "check WXRECON_DATABASE_URL, then run `wxrecon db upgrade`"
        ) from None
    heads = head_revisions()
    if current == heads:
        return
    if not current:
        raise SchemaError("the database has no wxrecon schema: run `wxrecon db upgrade`")
    unknown = current - _known_revisions()
    if unknown:
        raise SchemaError(
            f"the database schema ({', '.join(sorted(unknown))}) is newer than this code; "
            "upgrade wxrecon"
        )
    raise SchemaError(
        f"the database schema is at {', '.join(sorted(current))}, this code needs "
        f"{', '.join(sorted(heads))}: run `wxrecon db upgrade`"
    )


def _known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    return {rev.revision for rev in ScriptDirectory.from_config(alembic_config()).walk_revisions()}


def table_names(url: str) -> list[str]:
    engine = make_engine(url, poolclass=NullPool)
    try:
        return sorted(inspect(engine).get_table_names())
    finally:
        engine.dispose()
