"""Schemathesis against the published OpenAPI document: generated requests (bounded) give
no 5xx and every response matches the document. Run with a viewer's and an operator's
token over a database holding orders of each kind."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.web.helpers import REDUCTION, Rt, bill, reduction, to_review
from wxrecon.store import web_tokens
from wxrecon.store.db import Database
from wxrecon.web.app import create_app


@pytest.fixture
def web_schema(sqlite_url: str, sim_client: Any) -> Any:
    db = Database(sqlite_url)
    rid = reduction(db, "SCHEMA1")
    to_review(db, REDUCTION, rid)
    reduction(db, "SCHEMA2")
    bill(db, "SCHEMAB")
    app = create_app(Rt(db, sim_client))
    app.state.token = web_tokens.create(db, "schema-operator", "operator")
    return schemathesis.openapi.from_asgi("/api/v1/openapi.json", app)


def test_api_matches_its_document(web_schema: Any) -> None:
    """Each operation, up to 6 generated requests (hypothesis, bounded; no timing)."""
    token = web_schema.app.state.token
    checked = 0
    for result in web_schema.get_all_operations():
        operation = result.ok()

        @given(operation.as_strategy())
        @settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
        def check(case: Any) -> None:
            response = case.call(headers={"Authorization": f"Bearer {token}"})
            assert response.status_code < 500, (case.method, case.formatted_path, response.text)
            case.validate_response(response)

        check()
        checked += 1
    assert checked >= 9  # every published operation was exercised
