"""wxrecon's own errors: one base class, each subclass says what the caller must do.

``str()`` of every one is a single line that is safe to show (no secret, no traceback); the
CLI maps each class to an exit code in one table. The provider client's errors
(:mod:`wxrecon.wechatpay.errors`) are a tree of their own: that package stands alone.
"""

from __future__ import annotations


class WxreconError(Exception):
    """Base of every error wxrecon raises on purpose."""


class Conflict(WxreconError, ValueError):
    """The same order number arrived with different parameters; nothing changed."""


class OrderNotFound(WxreconError, LookupError):
    """No order with that id or number."""


class Ambiguous(WxreconError, LookupError):
    """An order number names more than one order (give the mchid or the id)."""


class IllegalTransition(WxreconError, ValueError):
    """A transition the state table forbids (a bug, or a stale read: try again)."""


class SchemaError(WxreconError, RuntimeError):
    """The database has no schema, or one this version cannot use (run ``wxrecon db upgrade``)."""
