"""Failover between the primary and the backup domain.

The rule: a *connect-level* failure on the primary (nothing reached it) sends every call to
the backup for a cooldown; a connect-level failure on the backup ends the cooldown at once.
Anything after connecting (a timeout, a reset, a 5xx) is no reason to switch: the host is up,
and a request that may have landed must be re-sent where it went. The decisions are pure
functions of the time; :class:`Failover` holds the one shared "primary down until" instant.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


def choose_base(primary: str, backup: str | None, now: float, primary_down_until: float) -> str:
    """Where the next attempt goes."""
    if backup is not None and now < primary_down_until:
        return backup
    return primary


def down_until_after_connect_failure(
    failed: str,
    primary: str,
    backup: str | None,
    now: float,
    primary_down_until: float,
    cooldown: float,
) -> float:
    """The new "primary down until" instant after nothing could reach ``failed``."""
    if backup is None:
        return primary_down_until
    if failed == primary:
        return now + cooldown
    return 0.0  # the backup is failing too: give the primary its chance again at once


class Failover:
    """Thread-safe state of one client's two domains."""

    def __init__(
        self, primary: str, backup: str | None, cooldown: float, clock: Callable[[], float]
    ) -> None:
        self.primary = primary
        self.backup = backup if backup != primary else None
        self.cooldown = cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self._primary_down_until = 0.0

    @property
    def using_backup(self) -> bool:
        return choose_base(self.primary, self.backup, self._clock(), self._primary_down_until) != (
            self.primary
        )

    def pick(self) -> str:
        return choose_base(self.primary, self.backup, self._clock(), self._primary_down_until)

    def connect_failed(self, base: str, failure_name: str) -> None:
        if self.backup is None:
            return
        with self._lock:
            before = self._primary_down_until
            after = down_until_after_connect_failure(
                base, self.primary, self.backup, self._clock(), before, self.cooldown
            )
            self._primary_down_until = after
        if base == self.primary:
            log.warning(
                "primary %s unreachable (%s); using backup %s for %.0fs",
                base,
                failure_name,
                self.backup,
                self.cooldown,
            )
        elif before:
            log.warning("backup %s unreachable (%s); back to primary", base, failure_name)
