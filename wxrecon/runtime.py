"""Per-process singletons: settings, the Database and the provider client.

Created lazily on first use and dropped after a fork (Celery's prefork children must not
share the parent's connection pools or HTTP connections).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any

from wxrecon import metrics
from wxrecon.config import Settings, get_settings
from wxrecon.engine.steps import Provider, Reconciler
from wxrecon.store.db import Database
from wxrecon.store.sealed import keyring


@dataclass
class Runtime:
    settings: Settings
    _db: Database | None = None
    _client: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def db(self) -> Database:
        with self._lock:
            if self._db is None:
                self._db = Database(self.settings.database_url, keyring=keyring(self.settings))
            return self._db

    @property
    def client(self) -> Provider:
        with self._lock:
            if self._client is None:
                self._client = build_client(self.settings)
            return self._client

    def reconciler(self) -> Reconciler:
        return Reconciler(self.db, self.client, self.settings)

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                close = getattr(self._client, "close", None)
                if close is not None:
                    close()
            if self._db is not None:
                self._db.dispose()
            self._client = None
            self._db = None


def build_client(settings: Settings) -> Provider:
    """The provider client with the shared rate limiter and the metrics observer."""
    from wxrecon.provider import build_client as build
    from wxrecon.ratelimit import make_limiter, rate_limit_hook

    limiter = make_limiter(settings.effective_ratelimit_url, settings.rate_limit_per_second)
    hook = rate_limit_hook(
        limiter, max_wait=settings.rate_limit_max_wait, scope=settings.rate_limit_scope
    )
    return build(
        settings,
        before_request=hook,
        observer=metrics.observe_provider_request,
        on_error=metrics.count_provider_error,
    )


_runtime: Runtime | None = None
_lock = threading.Lock()


def get() -> Runtime:
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = Runtime(get_settings())
        return _runtime


def install(runtime: Runtime | None) -> None:
    """Replace the process runtime (tests, embedding apps)."""
    global _runtime
    with _lock:
        _runtime = runtime


def reset() -> None:
    """Forget (without closing: they may belong to the parent process) the singletons."""
    global _runtime
    _runtime = None


os.register_at_fork(after_in_child=reset)
