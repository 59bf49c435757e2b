"""The admin API on both databases: every endpoint, every role, revocation, cross-site."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.fixtures_sim import SIM_BAL_ACCOUNT_NO
from tests.web.helpers import BILL, EVIDENCE, REDUCTION, Rt, bill, reduction, to_review
from wxrecon.store import web_tokens
from wxrecon.store.db import Database
from wxrecon.store.models import Event, WebToken
from wxrecon.web.app import create_app


@pytest.fixture
def web(db: Database, sim_client: Any) -> Iterator[tuple[TestClient, dict[str, str], Database]]:
    tokens = {role: web_tokens.create(db, f"{role}-1", role) for role in web_tokens.ROLES} | {
        "approver2": web_tokens.create(db, "approver-2", "approver")
    }
    with TestClient(create_app(Rt(db, sim_client)), base_url="http://127.0.0.1") as client:
        yield client, tokens, db


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


READS = [
    "/api/v1/me",
    "/api/v1/orders/reduction",
    "/api/v1/orders/bill?state=TRACKING&limit=5",
    "/api/v1/stats",
    "/api/v1/outcomes",
    "/api/v1/ledgers",
    "/api/v1/ledgers/discrepancies",
]


def test_health_is_open_and_everything_else_needs_a_token(web: Any) -> None:
    client, _tokens, db = web
    rid = reduction(db, "WEBANON")
    assert client.get("/healthz").json() == {"status": "ok"}
    for url in [*READS, f"/api/v1/orders/reduction/{rid}"]:
        assert client.get(url).status_code == 401, url
        assert client.get(url, headers=auth("wxr_not-a-token")).status_code == 401, url
    for action in ("retry", "requery", "resolve", "approve", "withdraw"):
        r = client.post(f"/api/v1/orders/reduction/{rid}/{action}", json={})
        assert r.status_code == 401, action
    assert client.get("/", follow_redirects=False).headers["location"] == "/signin"


def test_reads_filters_and_pages(web: Any) -> None:
    client, tokens, db = web
    ids = [reduction(db, f"WEBLIST{i}") for i in range(3)]
    reduction(db, "OTHER1")
    to_review(db, REDUCTION, ids[0])
    bid = bill(db, "WEBBILL1")
    h = auth(tokens["viewer"])
    page = client.get("/api/v1/orders/reduction?q=WEBLIST&limit=2", headers=h).json()
    assert page["total"] == 3 and len(page["orders"]) == 2
    assert [o["id"] for o in page["orders"]] == [ids[2], ids[1]]
    nxt = client.get("/api/v1/orders/reduction?q=WEBLIST&limit=2&offset=2", headers=h).json()
    assert [o["id"] for o in nxt["orders"]] == [ids[0]]
    review = client.get("/api/v1/orders/reduction?state=NEEDS_REVIEW", headers=h).json()
    assert [o["id"] for o in review["orders"]] == [ids[0]]
    assert SIM_BAL_ACCOUNT_NO not in str(review)  # masked
    m = client.get("/api/v1/orders/reduction?mchid=nobody", headers=h).json()
    assert m["total"] == 0
    since = client.get("/api/v1/orders/reduction?since=2999-01-01T00:00:00Z", headers=h).json()
    assert since["total"] == 0
    assert (
        client.get("/api/v1/orders/reduction?since=2020-01-01T00:00", headers=h).status_code == 422
    )
    bills = client.get("/api/v1/orders/bill?q=WEBBILL", headers=h).json()
    assert [o["number"] for o in bills["orders"]] == ["WEBBILL1"]
    detail = client.get(f"/api/v1/orders/bill/{bid}", headers=h).json()
    assert detail["order"]["state"] == "TRACKING" and detail["events"][0]["to_state"] == "TRACKING"
    assert client.get("/api/v1/orders/bill/999999", headers=h).status_code == 404
    assert client.get("/api/v1/orders/nokind", headers=h).status_code == 422
    st = client.get("/api/v1/stats", headers=h).json()
    assert st["by_state"]["reduction"]["NEEDS_REVIEW"] == 1
    assert len(st["hourly"]) == 12
    assert client.get("/api/v1/outcomes?delivery=pending", headers=h).status_code == 200
    assert client.get("/api/v1/outcomes?delivery=bogus", headers=h).status_code == 422


def test_ledger_checks_are_read_without_the_number(web: Any) -> None:
    from tests.integration.test_ledger_engine import KEYS, LEDGER, MCHID, Balances
    from wxrecon.engine import ledger as engine
    from wxrecon.store.ledgers import Ledger

    client, tokens, db = web
    balances = Balances().then(10_000).then(9_700)  # a ¥3.00 debit nobody explains
    for _ in range(2):
        engine.snapshot(db, balances, KEYS, [Ledger(MCHID, LEDGER)])
    h = auth(tokens["viewer"])
    [line] = client.get("/api/v1/ledgers", headers=h).json()
    assert (line["mchid"], line["snapshots"], line["balance"]) == (MCHID, 2, 9_700)
    assert (line["unexplained_debits"], line["unexplained_debit_fen"]) == (1, 300)
    [found] = client.get(f"/api/v1/ledgers/discrepancies?mchid={MCHID}", headers=h).json()
    assert (found["kind"], found["amount"], found["ledger"]) == (
        "unexplained_debit",
        300,
        line["ledger"],
    )
    assert LEDGER not in client.get("/api/v1/ledgers", headers=h).text
    assert client.get("/api/v1/ledgers/discrepancies?limit=0", headers=h).status_code == 422


def test_viewer_cannot_act_operator_retries_and_requeries_as_itself(web: Any) -> None:
    client, tokens, db = web
    rid = reduction(db, "WEBRETRY")
    to_review(db, REDUCTION, rid)
    for action, body in (
        ("retry", {}),
        ("requery", {}),
        ("resolve", {"state": "FAILED", "evidence": EVIDENCE}),
        ("approve", None),
        ("withdraw", {}),
    ):
        r = client.post(
            f"/api/v1/orders/reduction/{rid}/{action}", json=body, headers=auth(tokens["viewer"])
        )
        assert r.status_code == 403, action
    r = client.post(f"/api/v1/orders/reduction/{rid}/approve", headers=auth(tokens["operator"]))
    assert r.status_code == 403  # an operator proposes, never approves
    r = client.post(
        f"/api/v1/orders/reduction/{rid}/retry",
        json={"why": "checked"},
        headers=auth(tokens["operator"]),
    )
    assert r.status_code == 200 and r.json()["state"] == "RECEIVED"
    r = client.post(
        f"/api/v1/orders/reduction/{rid}/requery", json={}, headers=auth(tokens["operator"])
    )
    assert r.status_code == 200
    # Retrying an order not in review is a conflict, said in one line.
    r = client.post(
        f"/api/v1/orders/reduction/{rid}/retry", json={}, headers=auth(tokens["operator"])
    )
    assert r.status_code == 409
    with db.read() as s:
        actors = [e.actor for e in s.execute(select(Event).where(Event.order_id == rid)).scalars()]
    assert actors.count("web:operator-1") == 2


def test_four_eyes_proposer_cannot_approve_and_another_approver_can(web: Any) -> None:
    client, tokens, db = web
    rid = reduction(db, "WEBRESOLVE")
    to_review(db, REDUCTION, rid)
    r = client.post(
        f"/api/v1/orders/reduction/{rid}/resolve",
        json={"state": "FAILED", "evidence": EVIDENCE},
        headers=auth(tokens["approver"]),
    )
    assert r.status_code == 200, r.text
    assert r.json()["resolution"]["status"] == "pending" and r.json()["state"] == "NEEDS_REVIEW"
    own = client.post(f"/api/v1/orders/reduction/{rid}/approve", headers=auth(tokens["approver"]))
    assert own.status_code == 409
    ok = client.post(f"/api/v1/orders/reduction/{rid}/approve", headers=auth(tokens["approver2"]))
    assert ok.status_code == 200 and ok.json()["state"] == "FAILED"
    detail = client.get(f"/api/v1/orders/reduction/{rid}", headers=auth(tokens["viewer"])).json()
    assert {e["actor"] for e in detail["events"]} >= {"web:approver-1", "web:approver-2"}
    assert detail["resolutions"][0]["decided_by"] == "web:approver-2"


def test_a_pending_resolution_is_withdrawn_and_the_order_stays_in_review(web: Any) -> None:
    client, tokens, db = web
    rid = reduction(db, "WEBWITHDRAW")
    to_review(db, REDUCTION, rid)
    op = auth(tokens["operator"])
    url = f"/api/v1/orders/reduction/{rid}"
    assert client.post(f"{url}/withdraw", json={}, headers=op).status_code == 409  # none pending
    r = client.post(f"{url}/resolve", json={"state": "FAILED", "evidence": EVIDENCE}, headers=op)
    assert r.status_code == 200 and r.json()["resolution"]["status"] == "pending"
    r = client.post(f"{url}/withdraw", json={"why": "wrong evidence"}, headers=op)
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "NEEDS_REVIEW" and r.json()["resolution"]["status"] == "withdrawn"
    approve = client.post(f"{url}/approve", headers=auth(tokens["approver2"]))
    assert approve.status_code == 409  # nothing left to approve
    detail = client.get(url, headers=auth(tokens["viewer"])).json()
    assert detail["order"]["state"] == "NEEDS_REVIEW"
    assert any(
        "withdrawn" in e["reason"] and e["actor"] == "web:operator-1" for e in detail["events"]
    )


def test_a_revoked_token_is_refused_at_once(web: Any) -> None:
    client, tokens, db = web
    assert client.get("/api/v1/me", headers=auth(tokens["operator"])).json()["role"] == "operator"
    web_tokens.revoke(db, "operator-1")
    assert client.get("/api/v1/me", headers=auth(tokens["operator"])).status_code == 401
    with db.read() as s:
        stored = {t.token_hash for t in s.execute(select(WebToken)).scalars()}
    assert tokens["viewer"] not in stored and web_tokens.digest(tokens["viewer"]) in stored


def test_browser_session_and_cross_site_posts_refused(web: Any) -> None:
    client, tokens, db = web
    rid = reduction(db, "WEBCSRF")
    to_review(db, REDUCTION, rid)
    page = client.get("/signin")
    csrf = client.cookies.get("wxr_csrf")
    assert csrf and csrf in page.text
    bad = client.post("/signin", data={"token": "wxr_nope", "csrf": csrf})
    assert bad.status_code == 401
    r = client.post(
        "/signin", data={"token": tokens["operator"], "csrf": csrf}, follow_redirects=False
    )
    assert r.status_code == 303
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    csrf = client.cookies.get("wxr_csrf")
    assert "Overview" in client.get("/").text
    url = f"/orders/reduction/{rid}/retry"
    # Cookie but no CSRF token, a wrong one, or a cross-site origin: refused, nothing written.
    assert client.post(url, data={"why": "x"}).status_code == 403
    assert client.post(url, data={"why": "x", "csrf": "wrong"}).status_code == 403
    cross = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
    assert client.post(url, data={"why": "x", "csrf": csrf}, headers=cross).status_code == 403
    api = client.post(f"/api/v1/orders/reduction/{rid}/retry", json={})  # cookie, no CSRF header
    assert api.status_code == 403
    with db.read() as s:
        assert s.get(REDUCTION.model, rid).state == "NEEDS_REVIEW"
    ok = client.post(
        url, data={"why": "x", "csrf": csrf}, headers={"Sec-Fetch-Site": "same-origin"}
    )
    assert ok.status_code == 200 and "done: now RECEIVED" in ok.text


def test_pages_render(web: Any) -> None:
    client, tokens, db = web
    rid = reduction(db, "WEBPAGE")
    to_review(db, REDUCTION, rid)
    bid = bill(db, "WEBPAGEB")
    client.cookies.set("wxr_session", tokens["viewer"])
    assert "<svg" in client.get("/").text
    assert "WEBPAGE" in client.get("/review").text
    assert f"/orders/bill/{bid}" in client.get("/search?kind=bill&q=WEBPAGE").text
    detail = client.get(f"/orders/reduction/{rid}").text
    assert "Timeline" in detail and 'id="retry"' not in detail  # a viewer sees no actions
    assert client.get("/static/style.css").status_code == 200
    assert client.get("/orders/nokind/1").status_code == 404


def test_token_names_and_roles_are_checked(db: Database) -> None:
    for name, role in (("", "viewer"), ("a b", "viewer"), ("x" * 65, "viewer"), ("ok", "root")):
        with pytest.raises(web_tokens.TokenProblem):
            web_tokens.create(db, name, role)
    web_tokens.create(db, "dup", "viewer")
    with pytest.raises(web_tokens.TokenProblem, match="exists"):
        web_tokens.create(db, "dup", "operator")
    with pytest.raises(web_tokens.TokenProblem):
        web_tokens.revoke(db, "nobody")


__all__ = ["BILL"]
