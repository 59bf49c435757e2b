"""Whether the caller has other work to do while a rate-limit grant is not free: a chunk of
orders (engine/turns.turns) sets it, and the limiter's hook (ratelimit.rate_limit_hook) then
raises NotYet at once instead of sleeping, so the process spends other merchants' budgets
meanwhile. A module of its own so the engine needs neither Redis nor the client to set it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_ON: ContextVar[bool] = ContextVar("wxrecon_put_back", default=False)


def on() -> bool:
    return _ON.get()


@contextmanager
def putting_back(enabled: bool = True) -> Iterator[None]:
    token = _ON.set(enabled)
    try:
        yield
    finally:
        _ON.reset(token)
