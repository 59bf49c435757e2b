"""Files wxrecon creates are its own: directories 0700, files 0600, and a private key that
group or others can read is reported at start-up.

The SQLite database, the filesystem broker's folder (messages hold plaintext ledger numbers)
and the simulator's state all hold secrets; a umask is the process owner's choice, so modes
are set explicitly where wxrecon creates those paths instead of relying on it.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def loose(mode: int) -> bool:
    """Group or others may read, write or enter it."""
    return bool(stat.S_IMODE(mode) & 0o077)


def private_dir(path: Path, *, ours: bool = False) -> Path:
    """Create ``path`` (and parents) if missing, 0700. An existing folder is tightened only
    when it is ``ours`` (a folder only wxrecon uses, e.g. the broker's), never one the
    operator chose and may share."""
    path = Path(path)
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    if created or ours:
        _tighten(path, PRIVATE_DIR)
    return path


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to a file that is 0600 from its first byte (no window where the umask's
    mode shows it to others)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), PRIVATE_FILE)  # an existing file keeps its old mode otherwise
        f.write(data)


def tighten_sqlite(database: str | Path) -> None:
    """Make a SQLite database file and its WAL/SHM side files 0600 (SQLite creates side files
    with the main file's mode, so doing this first keeps them private too)."""
    main = Path(database)
    for path in (main, *(main.with_name(main.name + s) for s in SQLITE_SIDE_FILES)):
        _tighten(path, PRIVATE_FILE)


def _tighten(path: Path, mode: int) -> None:
    try:
        current = path.stat()
    except FileNotFoundError:
        return
    if not loose(current.st_mode) or current.st_uid != os.geteuid():
        return  # already private, or not ours to change
    try:
        os.chmod(path, mode)
    except OSError as exc:
        log.warning("cannot make %s private (%s)", path, type(exc).__name__)


def key_file_problem(path: Path | None) -> str | None:
    """Why a private key file is exposed (readable by group or others), or None."""
    if path is None:
        return None
    try:
        mode = Path(path).stat().st_mode
    except OSError:
        return None  # loading the key reports a missing file
    if not loose(mode):
        return None
    return (
        f"private key {path} is readable by group or others (mode {stat.S_IMODE(mode):04o}): "
        f"run chmod 600 {path}"
    )


def warn_loose_keys(*paths: Path | None) -> list[str]:
    """Log (and return) one warning line per exposed private key file."""
    problems = [p for p in (key_file_problem(path) for path in paths) if p is not None]
    for problem in problems:
        log.warning("%s", problem)
    return problems
