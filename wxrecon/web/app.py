"""The ASGI app: FastAPI (its OpenAPI document is generated from the same typed routes the
API serves, so the published schema cannot drift from the code), Jinja2 pages, static files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from wxrecon import __version__
from wxrecon.web import api, pages


def create_app(runtime: Any = None) -> FastAPI:
    """The app over ``runtime`` (a wxrecon.runtime.Runtime: its db and provider client)."""
    if runtime is None:
        from wxrecon import runtime as rt

        runtime = rt.get()
    app = FastAPI(
        title="wxrecon admin API",
        version=__version__,
        description="Orders, their timelines, stats, outcome deliveries and operator actions. "
        "Authenticate with `Authorization: Bearer <token>` (wxrecon web token create).",
        openapi_url="/api/v1/openapi.json",
        docs_url=None,  # Swagger UI loads from a CDN: not shipped
        redoc_url=None,
    )
    app.state.runtime = runtime
    app.include_router(api.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=str(Path(__file__).parent / "static")), "static")

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """The one endpoint open without a token."""
        return {"status": "ok"}

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        # One line per problem, never the submitted values (a token could be among them).
        problems = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))} for e in exc.errors()
        ]
        return JSONResponse({"detail": problems}, status_code=422)

    return app
