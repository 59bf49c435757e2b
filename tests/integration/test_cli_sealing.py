"""The sealing commands and key settings at the command line: keygen, rotate-key, seal, verify,
and one line (never a key) for missing or bad keys."""

from __future__ import annotations

import json

from sqlalchemy import text

from tests.fixtures_cli import Cli
from tests.integration.test_cli import BAL, add_reduction
from tests.services import SEALING_ENV
from wxrecon.store.sealed import generate_key, is_sealed, key_id_of

CURRENT = SEALING_ENV["WXRECON_DATA_KEYS"]


def values(cli: Cli) -> list[str]:
    with cli.db.engine.connect() as conn:
        return list(conn.execute(text("SELECT bal_account_no FROM special_reductions")).scalars())


def test_keygen_prints_usable_keys_once(cli: Cli) -> None:
    first = json.loads(cli.ok("db", "keygen", "--id", "2027a", "--json").stdout)
    second = json.loads(cli.ok("db", "keygen", "--id", "2027a", "--json").stdout)
    assert first["WXRECON_DATA_KEYS"].startswith("2027a:") and first != second
    cli.setenv(**first)
    add_reduction(cli, "K1")  # the new keys seal (a fresh database: nothing under others)
    assert [key_id_of(v) for v in values(cli)] == ["2027a"]
    assert "one line" not in cli.fails("db", "keygen", "--id", "bad id!", code=2)


def test_show_masks_the_opened_ledger_number(cli: Cli) -> None:
    add_reduction(cli, "M1")
    shown = json.loads(cli.ok("reduction", "show", "M1", "--json").stdout)
    assert shown["bal_account_no"] == f"{BAL[:4]}…{BAL[-4:]}"
    assert BAL not in cli.ok("reduction", "list").stdout


def test_rotate_key_then_drop_the_old_key(cli: Cli) -> None:
    for n in range(3):
        add_reduction(cli, f"RK{n}")
    new = f"next:{generate_key()}"
    cli.setenv(WXRECON_DATA_KEYS=f"{new},{CURRENT}")
    done = json.loads(cli.ok("db", "rotate-key", "--batch", "2", "--json").stdout)
    assert done["re-sealed"] == 3 and done["key"] == "next" and done["batches"] == 2
    assert {key_id_of(v) for v in values(cli)} == {"next"}
    cli.setenv(WXRECON_DATA_KEYS=new)  # the old key is gone: everything still opens
    cli.ok("db", "verify")
    assert json.loads(cli.ok("db", "rotate-key", "--json").stdout)["re-sealed"] == 0


def test_db_seal_then_verify_names_a_copied_ciphertext(cli: Cli) -> None:
    a, b = add_reduction(cli, "V1"), add_reduction(cli, "V2")
    with cli.db.engine.begin() as conn:  # one row from before sealing
        conn.execute(
            text(
                "UPDATE special_reductions SET bal_account_no = :p, bal_account_hash = NULL "
                "WHERE id = :a"
            ),
            {"p": BAL, "a": a},
        )
    assert "wxrecon db seal" in cli.fails("reduction", "list")  # refused until sealed
    sealed = json.loads(cli.ok("db", "seal", "--json").stdout)
    assert sealed["sealed"] == 1 and all(is_sealed(v) for v in values(cli))
    cli.ok("db", "verify")
    with cli.db.engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE special_reductions SET bal_account_no = "
                "(SELECT bal_account_no FROM special_reductions WHERE id = :a) WHERE id = :b"
            ),
            {"a": a, "b": b},
        )
    line = cli.fails("db", "verify")
    assert f"reduction #{b}" in line and BAL not in line


def test_missing_or_bad_keys_are_one_line_without_key_material(cli: Cli) -> None:
    cli.monkeypatch.delenv("WXRECON_DATA_KEYS")
    cli.setenv()
    line = cli.fails("reduction", "list")
    assert "WXRECON_DATA_KEYS and WXRECON_LOOKUP_KEY must both be set" in line
    cli.setenv(WXRECON_DATA_KEYS="k1:not-base64!!")
    assert "not base64" in cli.fails("reduction", "list")
    short = "c2hvcnQ="  # base64 of "short": 5 bytes
    cli.setenv(WXRECON_DATA_KEYS=f"k1:{short}")
    line = cli.fails("db", "seal")
    assert "32 bytes" in line and short not in line
    cli.setenv(WXRECON_DATA_KEYS=CURRENT, WXRECON_LOOKUP_KEY=short)
    line = cli.fails("reduction", "list")
    assert "WXRECON_LOOKUP_KEY" in line and short not in line


def test_rotate_key_shows_progress_lines_and_resumes_after_ctrl_c(cli: Cli) -> None:
    import contextlib

    from wxrecon.cli import db as db_cli

    for n in range(3):
        add_reduction(cli, f"P{n}")
    cli.setenv(WXRECON_DATA_KEYS=f"next:{generate_key()},{CURRENT}")
    real = db_cli._progress

    @contextlib.contextmanager
    def ctrl_c_after_first(out, what):  # type: ignore[no-untyped-def]
        def report(done: int, total: int) -> None:
            raise KeyboardInterrupt  # as if Ctrl-C came between two batches

        yield report

    cli.monkeypatch.setattr(db_cli, "_progress", ctrl_c_after_first)
    line = cli.fails("db", "rotate-key", "--batch", "1", code=130)
    assert "interrupted" in line and "run it again" in line
    assert sorted(key_id_of(v) for v in values(cli)) == ["next", "test1", "test1"]
    cli.monkeypatch.setattr(db_cli, "_progress", real)
    cli.monkeypatch.setattr(db_cli, "EVERY", 0.0)  # not a terminal: a line per batch
    result = cli.ok("db", "rotate-key", "--batch", "1")
    assert "re-sealing: 1/2" in result.stderr and "re-sealing: 2/2" in result.stderr
    assert "2 ledger number(s) re-sealed" in result.stdout
    assert {key_id_of(v) for v in values(cli)} == {"next"}
