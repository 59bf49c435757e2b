"""Files wxrecon creates are private (0600 files, 0700 folders), and a private key that group
or others can read is reported at start-up."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures_keys import KeySet
from wxrecon.config import Settings
from wxrecon.filemodes import key_file_problem, private_dir, write_private
from wxrecon.simulator.material import LedgerSeed, init_dir
from wxrecon.simulator.state import Books
from wxrecon.store.db import Database, upgrade
from wxrecon.worker import celery_config


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def open_umask() -> object:
    """The loosest usual umask: wxrecon must not rely on the operator's."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_sqlite_database_and_side_files_are_private(tmp_path: Path) -> None:
    path = tmp_path / "new" / "w.db"
    upgrade(f"sqlite:///{path}")
    db = Database(f"sqlite:///{path}")
    with db.begin() as conn:
        conn.exec_driver_sql("SELECT 1")
    files = [p for p in path.parent.iterdir() if p.name.startswith("w.db")]
    assert path in files and len(files) >= 2  # the WAL side files exist
    assert {p.name: mode(p) for p in files} == {p.name: 0o600 for p in files}
    db.dispose()


def test_existing_loose_database_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    upgrade(f"sqlite:///{path}")
    path.chmod(0o644)
    Database(f"sqlite:///{path}").dispose()  # no connection yet: nothing changes
    db = Database(f"sqlite:///{path}")
    with db.connect() as conn:
        conn.exec_driver_sql("SELECT 1")
    assert mode(path) == 0o600
    db.dispose()


def test_broker_and_data_folders_are_private(tmp_path: Path) -> None:
    data = tmp_path / "data"
    conf = celery_config(Settings.model_validate({"broker_url": "filesystem://", "data_dir": data}))
    options = conf["broker_transport_options"]
    for folder in (data, Path(options["data_folder_in"]), Path(options["processed_folder"])):
        assert mode(folder) == 0o700, folder


def test_an_operator_s_existing_folder_is_left_alone(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    private_dir(shared)
    assert mode(shared) == 0o755
    private_dir(shared, ours=True)
    assert mode(shared) == 0o700


def test_write_private_replaces_a_loose_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("old")
    path.chmod(0o644)
    write_private(path, b"new")
    assert path.read_bytes() == b"new" and mode(path) == 0o600


def test_simulator_directory_and_state_are_private(tmp_path: Path) -> None:
    root = init_dir(
        tmp_path / "sim", ledgers=[LedgerSeed("1900000001", "6222000011112222", 100)]
    ).path
    assert mode(root) == 0o700
    # The data keys sealing bal_account_no, and client.env that carries them.
    assert mode(root / "sealing.json") == 0o600 and mode(root / "client.env") == 0o600
    state = root / "state.json"
    Books().save(state)
    assert mode(state) == 0o600


def test_loose_private_key_is_named(tmp_path: Path) -> None:
    key = tmp_path / "apiclient_key.pem"
    key.write_text("x")
    key.chmod(0o600)
    assert key_file_problem(key) is None
    key.chmod(0o644)
    problem = key_file_problem(key)
    assert problem is not None and "0644" in problem and f"chmod 600 {key}" in problem
    assert key_file_problem(None) is None and key_file_problem(tmp_path / "missing") is None


def test_worker_reports_a_loose_key_at_start_up(tmp_path: Path, keys: KeySet) -> None:
    loose = tmp_path / "key.pem"
    loose.write_bytes(keys.merchant_key_path.read_bytes())
    loose.chmod(0o640)
    db_path = tmp_path / "w.db"
    upgrade(f"sqlite:///{db_path}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WXRECON_")}
    env.update(keys.env())
    env.update(
        {
            "WXRECON_MCH_PRIVATE_KEY_PATH": str(loose),
            "WXRECON_DATABASE_URL": f"sqlite:///{db_path}",
            "WXRECON_DATA_DIR": str(tmp_path / "data"),
            "WXRECON_BROKER_URL": "filesystem://",
        }
    )
    # The worker's start-up checks (its worker_init signal), without consuming anything.
    code = (
        "from celery import signals\n"
        "from wxrecon.logs import configure_logging\n"
        "from wxrecon.worker import app\n"
        "configure_logging()\n"
        "signals.worker_init.send(sender=None)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"private key {loose} is readable by group or others (mode 0640)" in proc.stderr
    assert "WARNING" in proc.stderr
