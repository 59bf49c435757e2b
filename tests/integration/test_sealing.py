"""bal_account_no sealed at rest, on both databases: intake seals, the engine's load opens, a
copied ciphertext goes to review, rotation and the sealing of old rows run in resumable
batches, and the migration leaves plaintext rows for ``db seal`` (the engine refuses them)."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest
from sqlalchemy import text

from tests.fixtures_db import FakeProvider, drop_pg, pg_admin, reduction
from tests.services import unique_name
from wxrecon.domain.errors import Conflict
from wxrecon.engine.intake import intake_reduction
from wxrecon.engine.steps import Reconciler, load_row
from wxrecon.store import db as dbmod
from wxrecon.store import sealing
from wxrecon.store.db import Database
from wxrecon.store.models import SpecialReduction
from wxrecon.store.sealed import Keyring, SealError, is_sealed, key_id_of
from wxrecon.wechatpay.resources import SpecialReductionRequest

BAL = "6222000011112222"
MCHID = "1900000109"
OLD = base64.b64encode(bytes(range(32))).decode()
NEW = base64.b64encode(bytes(range(32, 64))).decode()
LOOKUP = base64.b64encode(bytes(range(64, 96))).decode()


def ring(setting: str) -> Keyring:
    return Keyring.from_settings(setting, LOOKUP)


def request(no: str, bal: str = BAL, amount: int = 100) -> SpecialReductionRequest:
    return SpecialReductionRequest.create(
        mchid=MCHID,
        bal_account_no=bal,
        out_request_no=no,
        reduction_type="FINANCIAL_PENALTY",
        amount=amount,
    )


def raw(db: Database, order_id: int) -> tuple[str, str | None]:
    with db.engine.connect() as conn:
        row = conn.execute(
            text("SELECT bal_account_no, bal_account_hash FROM special_reductions WHERE id = :i"),
            {"i": order_id},
        ).one()
    return row[0], row[1]


@pytest.fixture
def keyed(db_url: str) -> Iterator[Database]:
    """The test database with its own keyring (old key only)."""
    database = Database(db_url, keyring=ring(f"old:{OLD}"))
    yield database
    database.dispose()


def submit(db: Database, *nos: str, bal: str = BAL) -> list[int]:
    with db.transaction() as session:
        return [intake_reduction(session, request(n, bal)).order_id for n in nos]


def test_intake_seals_and_the_engine_opens_to_success(keyed: Database, engine_settings) -> None:
    [order_id] = submit(keyed, "S1")
    stored, digest = raw(keyed, order_id)
    assert is_sealed(stored) and BAL not in stored and key_id_of(stored) == "old"
    assert digest == keyed.keyring.lookup_hash(BAL)
    with keyed.engine.connect() as conn:  # nowhere else in the database either
        for table in ("events", "outcomes"):
            dump = str(conn.execute(text(f"SELECT * FROM {table}")).all())
            assert BAL not in dump and stored not in dump
    assert load_row(keyed, _kind(), order_id).bal_account_no == BAL  # opened in memory
    provider = FakeProvider()
    provider.submit_answers.append(reduction("S1", "SUCCESS", amount=100))
    token = _claim_token(keyed, order_id)
    state = Reconciler(keyed, provider, engine_settings).process(_kind(), order_id, token)
    assert state == "SUCCESS" and provider.submits[0].bal_account_no == BAL
    assert raw(keyed, order_id)[0] == stored  # the engine's writes never touch it


def test_a_resent_order_is_found_by_hash_and_another_ledger_is_a_conflict(
    keyed: Database,
) -> None:
    [first] = submit(keyed, "S2")
    with keyed.transaction() as session:
        again = intake_reduction(session, request("S2"))
    assert again.order_id == first and not again.created
    with pytest.raises(Conflict, match="bal_account_no") as info:
        submit(keyed, "S2", bal="6222000099998888")
    assert "6222000099998888" not in str(info.value) and BAL not in str(info.value)


def test_a_ciphertext_copied_to_another_row_goes_to_review(
    keyed: Database, engine_settings
) -> None:
    a, b = submit(keyed, "S3", "S4")
    with keyed.engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE special_reductions SET bal_account_no = "
                "(SELECT bal_account_no FROM special_reductions WHERE id = :a) WHERE id = :b"
            ),
            {"a": a, "b": b},
        )
    provider = FakeProvider()  # no answer scripted: any call would fail the test
    state = Reconciler(keyed, provider, engine_settings).process(_kind(), b, _claim_token(keyed, b))
    assert state == "NEEDS_REVIEW" and provider.submits == [] and provider.queries == []
    with keyed.engine.connect() as conn:
        reason = (
            conn.execute(
                text("SELECT reason FROM events WHERE order_id = :b ORDER BY id DESC"), {"b": b}
            )
            .scalars()
            .first()
        )
    assert reason is not None and "does not open" in reason and "another row" in reason
    bad = sealing.unopened(keyed, keyed.keyring)
    assert [(i, why) for i, _, why in bad if i == b] and all(i != a for i, _, _ in bad)


def test_an_unknown_key_leaves_the_order_alone(keyed: Database, engine_settings) -> None:
    [order_id] = submit(keyed, "S5")
    other = Database(keyed.url, keyring=ring(f"new:{NEW}"))
    try:
        state = Reconciler(other, FakeProvider(), engine_settings).process(
            _kind(), order_id, _claim_token(keyed, order_id)
        )
    finally:
        other.dispose()
    assert state is None and load_row(keyed, _kind(), order_id).state == "RECEIVED"


def test_rotate_with_two_keys_then_drop_the_old_one_even_when_interrupted(
    keyed: Database,
) -> None:
    ids = submit(keyed, *(f"R{i}" for i in range(7)))
    both = ring(f"new:{NEW},old:{OLD}")
    rotating = Database(keyed.url, keyring=both)
    try:
        calls: list[tuple[int, int]] = []

        def stop_after_first(done: int, total: int) -> None:
            calls.append((done, total))
            raise KeyboardInterrupt  # between batches: the first one is committed

        with pytest.raises(KeyboardInterrupt):
            sealing.rotate(rotating, both, batch=3, progress=stop_after_first)
        assert calls == [(3, 7)]
        assert sorted(key_id_of(raw(keyed, i)[0]) for i in ids) == ["new"] * 3 + ["old"] * 4
        loaded = load_row(rotating, _kind(), ids[-1])  # mid-rotation, both keys open
        assert loaded.bal_account_no == BAL
        summary = sealing.rotate(rotating, both, batch=3)
        assert summary.done == 4 and not summary.failed
        assert sealing.rotate(rotating, both).done == 0  # nothing left: idempotent
    finally:
        rotating.dispose()
    after = Database(keyed.url, keyring=ring(f"new:{NEW}"))
    try:
        assert all(load_row(after, _kind(), i).unopened is None for i in ids)
        assert {raw(keyed, i)[1] for i in ids} == {both.lookup_hash(BAL)}  # hashes kept
        sealing.ready(after, after.keyring)
    finally:
        after.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def at_0006(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """A database migrated to 0006 only (before sealing)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'old.db'}"
        dbmod.upgrade(url, "0006")
        yield url
        return
    base = request.getfixturevalue("postgres_url")
    name = unique_name("wxrecon_engine_seal")
    pg_admin(base, f"CREATE DATABASE {name}")
    from sqlalchemy.engine import make_url

    url = make_url(dbmod.normalize_url(base)).set(database=name)
    url_text = url.render_as_string(hide_password=False)
    dbmod.upgrade(url_text, "0006")
    yield url_text
    drop_pg(base, url_text)


def test_the_migration_leaves_plaintext_for_db_seal_which_resumes(at_0006: str) -> None:
    with dbmod.make_engine(at_0006).begin() as conn:
        for i in range(5):
            conn.execute(
                text(
                    "INSERT INTO special_reductions (mchid, bal_account_no, out_request_no, "
                    "reduction_type, amount, state, attempts, created_at, updated_at, version) "
                    "VALUES (:m, :b, :n, 'FINANCIAL_PENALTY', 100, 'SUBMITTED', 0, "
                    "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 1)"
                ),
                {"m": MCHID, "b": BAL, "n": f"M{i}"},
            )
    dbmod.upgrade(at_0006)  # no keys needed: a schema step only
    keys = ring(f"old:{OLD}")
    db = Database(at_0006, keyring=keys)
    try:
        with pytest.raises(SealError, match="wxrecon db seal") as info:
            sealing.ready(db, keys)
        assert "\n" not in str(info.value)
        rows = sealing.by_key(db)
        assert rows == {"": 5}

        def interrupt(done: int, total: int) -> None:
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            sealing.seal_pending(db, keys, batch=2, progress=interrupt)
        assert sealing.by_key(db) == {"old": 2, "": 3}
        with pytest.raises(SealError):
            sealing.ready(db, keys)  # still refused while any is left
        assert sealing.seal_pending(db, keys, batch=2).done == 3
        sealing.ready(db, keys)
        with db.engine.connect() as conn:
            values = conn.execute(text("SELECT id, bal_account_no FROM special_reductions")).all()
        assert all(is_sealed(v) and BAL not in v for _, v in values)
        assert all(load_row(db, _kind(), i).bal_account_no == BAL for i, _ in values)
        assert sealing.unopened(db, keys) == []
    finally:
        db.dispose()


def test_a_wrong_key_under_the_right_id_is_refused_at_start(keyed: Database) -> None:
    submit(keyed, "W1")
    wrong = ring(f"old:{NEW}")
    with pytest.raises(SealError, match="does not open") as info:
        sealing.ready(Database(keyed.url, keyring=wrong), wrong)
    assert NEW not in str(info.value) and OLD not in str(info.value)


def _kind():
    from wxrecon.domain.kinds import REDUCTION

    return REDUCTION


def _claim_token(db: Database, order_id: int) -> str:
    with db.read() as session:
        token = session.get(SpecialReduction, order_id).claim_token
    assert token is not None
    return token
