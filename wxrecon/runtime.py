"""Per-process singletons: settings, the Database and one provider client per caller.

Created lazily on first use and dropped after a fork (Celery's prefork children must not
share the parent's connection pools or HTTP connections).
"""

from __future__ import annotations

import functools
import os
import threading
from dataclasses import dataclass, field
from typing import Any

from wxrecon import metrics
from wxrecon.callers import DEFAULT, Profile, default_profile, profiles_of
from wxrecon.config import Settings, get_settings
from wxrecon.engine.steps import Provider, Reconciler
from wxrecon.store.db import Database
from wxrecon.store.sealed import keyring
from wxrecon.wechatpay.keys import CredentialError


@dataclass
class Runtime:
    settings: Settings
    _db: Database | None = None
    # One client per caller profile (each its own pooled connections and keys).
    _clients: dict[str, Any] = field(default_factory=dict)
    _profiles: dict[str, Profile] | None = None
    _limiter: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def db(self) -> Database:
        with self._lock:
            if self._db is None:
                self._db = Database(self.settings.database_url, keyring=keyring(self.settings))
            return self._db

    @property
    def profiles(self) -> dict[str, Profile]:
        """Every caller profile by name (CallerError, one line, when the file is bad)."""
        with self._lock:
            if self._profiles is None:
                self._profiles = profiles_of(self.settings)
            return self._profiles

    @property
    def limiter(self) -> Any:
        """The shared rate limiter every client of this process takes its grants from."""
        with self._lock:
            return self._shared_limiter()

    def _shared_limiter(self) -> Any:  # with the lock held
        if self._limiter is None:
            self._limiter = make_shared_limiter(self.settings)
        return self._limiter

    def client(self, caller: str = DEFAULT) -> Provider:
        """The client that signs as ``caller`` (the one place a client is built from a
        profile); CredentialError for an unknown caller or bad keys."""
        profiles = self.profiles
        with self._lock:
            found = self._clients.get(caller)
            if found is None:
                profile = profiles.get(caller)
                if profile is None:
                    raise CredentialError(f"unknown caller {caller!r}")
                found = self._clients[caller] = build_client(
                    self.settings, profile, limiter=self._shared_limiter()
                )
            return found

    def reconciler(self) -> Reconciler:
        return Reconciler(self.db, None, self.settings, clients=self.client)

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                close = getattr(client, "close", None)
                if close is not None:
                    close()
            if self._db is not None:
                self._db.dispose()
            self._clients = {}
            self._db = None


def make_shared_limiter(settings: Settings) -> Any:
    """One limiter for all of a process's clients: the budget is per endpoint and target
    merchant, whichever caller signs."""
    from wxrecon.ratelimit import make_limiter

    return make_limiter(
        settings.effective_ratelimit_url,
        settings.rate_limit_per_second,
        guard=settings.rate_limit_guard,
    )


def build_client(
    settings: Settings, profile: Profile | None = None, *, limiter: Any = None
) -> Provider:
    """The provider client of ``profile`` (None: ``default``) with the shared rate limiter
    and the metrics observer, whose samples carry the caller."""
    from wxrecon.provider import build_client as build
    from wxrecon.ratelimit import rate_limit_hook

    profile = profile or default_profile(settings)
    hook = rate_limit_hook(
        limiter if limiter is not None else make_shared_limiter(settings),
        max_wait=settings.rate_limit_max_wait,
        scope=settings.rate_limit_scope,
    )
    return build(
        settings,
        profile,
        before_request=hook,
        observer=functools.partial(metrics.observe_provider_request, caller=profile.name),
        on_error=functools.partial(metrics.count_provider_error, caller=profile.name),
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
