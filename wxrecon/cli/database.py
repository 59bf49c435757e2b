"""The configured database, opened for a command, with failures that say which.

Before a command touches the database it is probed, so the error names the cause: the
driver package that is missing, the host and port that cannot be reached, the database that
does not exist, the schema that is missing (run ``wxrecon db upgrade``). Only ``db upgrade``
may create a SQLite file: every other command refuses a missing one instead of leaving an
empty file behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wxrecon.cli.errors import CliError
from wxrecon.cli.output import safe_url
from wxrecon.config import Settings, get_settings

# The package to install for a driver module SQLAlchemy could not import.
DRIVER_PACKAGES = {
    "psycopg": "psycopg[binary]",
    "psycopg2": "psycopg2-binary",
    "pymysql": "pymysql",
    "MySQLdb": "mysqlclient",
    "asyncpg": "asyncpg",
}


class DatabaseProblem(CliError):
    """The database cannot be used; the message says why and what to do."""


def settings() -> Settings:
    """The process's settings; an invalid one is a one-line SettingsError (see errors)."""
    return get_settings()


def sqlite_path(url: Any) -> Path | None:
    """The file behind a SQLite URL, or None (memory databases, other backends)."""
    if url.get_backend_name() != "sqlite":
        return None
    name = url.database
    if not name or name == ":memory:" or url.query.get("mode") == "memory":
        return None
    return Path(name)


def connect_problem(text: str, url: Any) -> str:
    """The driver's connect error as what an operator acts on."""
    where = f"{url.host or 'localhost'}:{url.port or 'default port'}"
    lowered = text.lower()
    if "does not exist" in lowered and "database" in lowered:
        return (
            f"no such database {url.database!r} on {where} (create it, then `wxrecon db upgrade`)"
        )
    if "password authentication failed" in lowered or "authentication failed" in lowered:
        return f"authentication failed for user {url.username!r} on {where}"
    if url.get_backend_name() == "sqlite":
        return f"cannot open the SQLite database {url.database}: {text}"
    reason = text.rsplit(":", 1)[-1].strip() or text
    return f"cannot connect to the database server at {where}: {reason}"


def probe(database_url: str, *, create: bool = False) -> None:
    """Raise DatabaseProblem unless a connection to ``database_url`` can be opened."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError
    from sqlalchemy.pool import NullPool

    from wxrecon.cli.errors import first_line
    from wxrecon.store import db

    try:
        url = make_url(db.normalize_url(database_url))
    except ArgumentError:
        raise DatabaseProblem("WXRECON_DATABASE_URL is not a database URL") from None
    shown = safe_url(str(url))
    path = sqlite_path(url)
    if path is not None and not create and not path.is_file():
        raise DatabaseProblem(
            f"no such database: {path} does not exist (create it with `wxrecon db upgrade`)"
        )
    try:
        dialect = url.get_dialect()
        dialect.import_dbapi()
    except NoSuchModuleError:
        raise DatabaseProblem(
            f"{shown}: unknown kind of database {url.drivername!r} (use sqlite:/// or "
            "postgresql://)"
        ) from None
    except ImportError as exc:
        module = (exc.name or "").split(".")[0] or url.get_driver_name()
        package = DRIVER_PACKAGES.get(module, module)
        raise DatabaseProblem(
            f"{shown}: the database driver is not installed (pip install {package})"
        ) from None
    engine = db.make_engine(str(url), poolclass=NullPool)
    try:
        with engine.connect():
            pass
    except OperationalError as exc:
        text = first_line(str(exc.orig)) if exc.orig is not None else first_line(str(exc))
        raise DatabaseProblem(connect_problem(text, url)) from None
    finally:
        engine.dispose()


def database(*, sealed: bool = True) -> Any:
    """The engine's Database for the configured URL, reachable and at the code's schema,
    with the keys that seal ledger numbers (SealError, one line, when missing or bad) and,
    with ``sealed``, none left unsealed (else: run `wxrecon db seal`)."""
    from wxrecon.store import db, sealing
    from wxrecon.store.sealed import keyring

    s = settings()
    keys = keyring(s)
    probe(s.database_url)
    db.check_schema(s.database_url)  # SchemaError: one line that says to run `db upgrade`
    database = db.Database(s.database_url, keyring=keys)
    if sealed:
        sealing.ready(database, keys)
    return database
