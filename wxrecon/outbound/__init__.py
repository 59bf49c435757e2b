"""Outbound delivery of outcome events to the business apps: a signed webhook, a Celery
task by name. Each target raises :class:`DeliveryFailed` (a short, secret-free reason) when
an event was not delivered."""

from __future__ import annotations

from wxrecon.domain.errors import WxreconError


class DeliveryFailed(WxreconError):
    """Not delivered this time (retried with backoff); the message names no secret."""
