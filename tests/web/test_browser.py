"""A real browser (Debian's Chromium, driven by Playwright) through the console: sign in
with a token, find an order, retry it; resolve another and approve it with a second token;
propose a third and withdraw the proposal.
Screenshots go to test-artifacts/web/ (git-ignored)."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from tests.web.helpers import EVIDENCE, REDUCTION, Rt, reduction, to_review
from wxrecon.demo.env import free_port
from wxrecon.store import web_tokens
from wxrecon.store.db import Database
from wxrecon.web.app import create_app

CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "web"


@pytest.fixture
def served(sqlite_url: str, sim_client: Any) -> Iterator[tuple[str, Database]]:
    db = Database(sqlite_url)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(Rt(db, sim_client)), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:  # readiness, not timing: the loop ends when uvicorn says so
        thread.join(0.05)
    yield f"http://127.0.0.1:{port}", db
    server.should_exit = True
    thread.join()
    db.dispose()


def test_sign_in_find_retry_resolve_approve(served: tuple[str, Database]) -> None:
    from playwright.sync_api import sync_playwright

    assert shutil.which("chromium") or Path(CHROMIUM).exists(), "apt-get install -y chromium"
    base, db = served
    SHOTS.mkdir(parents=True, exist_ok=True)
    first = reduction(db, "BROWSERRETRY1")
    second = reduction(db, "BROWSERRESOLVE2")
    third = reduction(db, "BROWSERWITHDRAW3")
    to_review(db, REDUCTION, first)
    to_review(db, REDUCTION, second)
    to_review(db, REDUCTION, third)
    alice = web_tokens.create(db, "alice", "operator")
    bob = web_tokens.create(db, "bob", "approver")

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_context().new_page()
            page.goto(base + "/")
            assert page.url.endswith("/signin")
            page.fill("#token", alice)
            page.click("#signin")
            page.wait_for_selector("text=Overview")
            page.screenshot(path=str(SHOTS / "1-overview.png"), full_page=True)
            page.click("text=Search")
            page.fill("#q", "BROWSERRETRY")
            page.click("#find")
            page.click("a:has-text('BROWSERRETRY1')")
            page.screenshot(path=str(SHOTS / "2-order.png"), full_page=True)
            page.fill("form[action$='/retry'] input[name=why]", "checked with the merchant")
            page.click("#retry")
            page.wait_for_selector("#msg")
            assert "done: now RECEIVED" in page.inner_text("#msg")
            assert "web:alice" in page.inner_text("#timeline")
            page.screenshot(path=str(SHOTS / "3-retried.png"), full_page=True)

            page.goto(base + "/review")
            page.click(f"a[href='/orders/reduction/{second}']")
            page.select_option("#resolve-state", "FAILED")
            page.fill("#evidence", EVIDENCE)
            page.click("#resolve")
            page.wait_for_selector("#msg")
            assert "NEEDS_REVIEW" in page.inner_text("#msg")  # pending, not applied
            page.screenshot(path=str(SHOTS / "4-proposed.png"), full_page=True)

            # A proposal taken back: the order stays in review, the withdrawal is on record.
            page.goto(f"{base}/orders/reduction/{third}")
            page.select_option("#resolve-state", "FAILED")
            page.fill("#evidence", EVIDENCE)
            page.click("#resolve")
            page.wait_for_selector("#withdraw")
            page.fill("form[action$='/withdraw'] input[name=why]", "wrong order")
            page.click("#withdraw")
            page.wait_for_selector("#msg")
            assert "done: now NEEDS_REVIEW" in page.inner_text("#msg")
            assert page.query_selector("#withdraw") is None  # nothing pending any more
            assert "withdrawn" in page.inner_text("body")
            page.screenshot(path=str(SHOTS / "4b-withdrawn.png"), full_page=True)

            page2 = browser.new_context().new_page()
            page2.goto(base + "/signin")
            page2.fill("#token", bob)
            page2.click("#signin")
            page2.goto(f"{base}/orders/reduction/{second}")
            page2.click("#approve")
            page2.wait_for_selector("#msg")
            assert "done: now FAILED" in page2.inner_text("#msg")
            assert page2.inner_text("#state") == "FAILED"
            page2.screenshot(path=str(SHOTS / "5-approved.png"), full_page=True)
        finally:
            browser.close()
    with db.read() as s:
        assert s.get(REDUCTION.model, first).state == "RECEIVED"
        assert s.get(REDUCTION.model, second).state == "FAILED"
        assert s.get(REDUCTION.model, third).state == "NEEDS_REVIEW"
    assert len(list(SHOTS.glob("*.png"))) >= 5
