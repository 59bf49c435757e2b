"""Server-rendered pages (Jinja2; every asset in the package): sign-in, overview, the
review queue, search, an order's detail. Forms post back here; each action is the same
engine call as the API's, behind the same role and cross-site checks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from wxrecon.domain.errors import IllegalTransition, OrderNotFound
from wxrecon.domain.kinds import KINDS
from wxrecon.store import reads, web_tokens
from wxrecon.store.web_tokens import Holder
from wxrecon.web import actions, charts
from wxrecon.web.api import OrderId
from wxrecon.web.auth import CSRF, SESSION, cookie_flags, holder_of, new_csrf, same_origin

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
router = APIRouter(include_in_schema=False)


async def page_holder(request: Request) -> Holder:
    """A page's holder; without one the browser goes to the sign-in page."""
    try:
        return await holder_of(request)
    except HTTPException as exc:
        if exc.status_code == 401:
            raise HTTPException(303, headers={"Location": "/signin"}) from None
        raise


Who = Annotated[Holder, Depends(page_holder)]


def render(request: Request, name: str, who: Holder | None, **ctx: Any) -> Response:
    csrf = request.cookies.get(CSRF) or new_csrf()
    resp = templates.TemplateResponse(
        request, name, {"who": who, "csrf": csrf, "kinds": list(KINDS), **ctx}
    )
    if request.cookies.get(CSRF) != csrf:
        resp.set_cookie(CSRF, csrf, **(cookie_flags(request) | {"httponly": False}))
    return resp


def _kind(name: str) -> Any:
    if name not in KINDS:
        raise HTTPException(404, f"no kind {name!r}")
    return KINDS[name]


@router.get("/signin", response_class=HTMLResponse)
def signin_page(request: Request) -> Response:
    return render(request, "signin.html", None, error=None)


@router.post("/signin")
async def signin(request: Request, token: Annotated[str, Form(max_length=100)]) -> Response:
    form_csrf = str((await request.form()).get("csrf", ""))
    if not same_origin(request) or not form_csrf or form_csrf != request.cookies.get(CSRF):
        raise HTTPException(403, "cross-site request refused")
    who = web_tokens.holder(request.app.state.runtime.db, token.strip())
    if who is None:
        resp = render(request, "signin.html", None, error="That token is not valid.")
        resp.status_code = 401
        return resp
    resp = RedirectResponse("/", status_code=303)
    resp.set_cookie(SESSION, token.strip(), **cookie_flags(request))
    resp.set_cookie(CSRF, new_csrf(), **(cookie_flags(request) | {"httponly": False}))
    return resp


@router.post("/signout")
def signout(request: Request, who: Who) -> Response:
    resp = RedirectResponse("/signin", status_code=303)
    resp.delete_cookie(SESSION, path="/")
    return resp


@router.get("/", response_class=HTMLResponse)
def overview(request: Request, who: Who) -> Response:
    data = actions.overview(request.app.state.runtime.db)
    chart = charts.bars(data["hourly"], ("finalised", "errors"))
    return render(request, "overview.html", who, data=data, chart=chart)


@router.get("/review", response_class=HTMLResponse)
def review(request: Request, who: Who) -> Response:
    db = request.app.state.runtime.db
    queues = {}
    with db.read() as s:
        for name, k in KINDS.items():
            rows, total = reads.list_orders(s, k, states=[k.review], limit=200)
            queues[name] = (total, [(r, k.number(r)) for r in rows])
    return render(request, "review.html", who, queues=queues)


@router.get("/search", response_class=HTMLResponse)
def search(request: Request, who: Who, q: str = "", kind: str = "reduction") -> Response:
    k = _kind(kind)
    rows: list[Any] = []
    total = 0
    if q:
        with request.app.state.runtime.db.read() as s:
            found, total = reads.list_orders(s, k, search=q[:64], limit=100)
            rows = [(r, k.number(r)) for r in found]
    return render(request, "search.html", who, q=q, kind=kind, rows=rows, total=total)


@router.get("/orders/{kind}/{order_id}", response_class=HTMLResponse)
def detail(request: Request, who: Who, kind: str, order_id: OrderId, msg: str = "") -> Response:
    k = _kind(kind)
    db = request.app.state.runtime.db
    with db.read() as s:
        try:
            row = reads.get_order(s, k, order_id)
        except OrderNotFound as exc:
            raise HTTPException(404, str(exc)) from None
        events = reads.events_of(s, k.name, order_id)
        fields = reads.order_dict(k, row)
    return render(
        request,
        "order.html",
        who,
        kind=kind,
        k=k,
        row=row,
        number=k.number(row),
        fields=fields,
        events=events,
        resolutions=actions.resolutions(db, k, order_id),
        msg=msg[:300],
    )


def _after(kind: str, order_id: int, text: str) -> Response:
    from urllib.parse import quote

    return RedirectResponse(f"/orders/{kind}/{order_id}?msg={quote(text)}", status_code=303)


def _do(request: Request, who: Holder, kind: str, order_id: int, fn: Any, *args: Any) -> Response:
    """``fn(runtime, who, kind, order_id, *args)``, an operator's action on the order, and the
    order page again with what came of it."""
    call = (request.app.state.runtime, who, _kind(kind), order_id, *args)
    try:
        out = fn(*call)
    except OrderNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except (IllegalTransition, ValueError) as exc:
        return _after(kind, order_id, f"refused: {exc}")
    state = out if isinstance(out, str) else out.get("order_state", "")
    return _after(kind, order_id, f"done: now {state}")


@router.post("/orders/{kind}/{order_id}/retry")
def retry(
    request: Request,
    who: Who,
    kind: str,
    order_id: OrderId,
    why: Annotated[str, Form(max_length=500)] = "",
) -> Response:
    return _do(request, who, kind, order_id, actions.retry, why, False)


@router.post("/orders/{kind}/{order_id}/requery")
def requery(
    request: Request,
    who: Who,
    kind: str,
    order_id: OrderId,
    why: Annotated[str, Form(max_length=500)] = "",
) -> Response:
    return _do(request, who, kind, order_id, actions.requery, why)


@router.post("/orders/{kind}/{order_id}/resolve")
def resolve(
    request: Request,
    who: Who,
    kind: str,
    order_id: OrderId,
    state: Annotated[str, Form(max_length=16)],
    evidence: Annotated[str, Form(max_length=2000)],
) -> Response:
    from wxrecon.web.api import Resolve

    try:
        body = Resolve(state=state, evidence=evidence)
    except ValueError:
        return _after(kind, order_id, "refused: pick a final state and give evidence")
    return _do(request, who, kind, order_id, actions.resolve, body)


@router.post("/orders/{kind}/{order_id}/approve")
def approve(request: Request, who: Who, kind: str, order_id: OrderId) -> Response:
    return _do(request, who, kind, order_id, actions.approve)


@router.post("/orders/{kind}/{order_id}/withdraw")
def withdraw(
    request: Request,
    who: Who,
    kind: str,
    order_id: OrderId,
    why: Annotated[str, Form(max_length=500)] = "",
) -> Response:
    return _do(request, who, kind, order_id, actions.withdraw, why)
