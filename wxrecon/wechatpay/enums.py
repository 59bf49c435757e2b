"""Enums that keep values they do not know."""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class OpenEnum(StrEnum):
    """A StrEnum that turns an unknown value into a pseudo-member instead of failing."""

    @classmethod
    def _missing_(cls, value: object) -> Any:
        if not isinstance(value, str):
            return None
        member = str.__new__(cls, value)
        member._name_ = value
        member._value_ = value
        return member

    @property
    def known(self) -> bool:
        return self._name_ in type(self).__members__
