"""Reading answers: typed access to a JSON object with every text field length-checked, and
the merchant-key ciphertext of a secret that stays sealed until read.

Every response field of the provider's query pages is optional (选填), and an empty string
carries no more than an absent field: both read as None, so no empty value is ever stored
or compared, and a required field that is empty is reported as missing."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, TypeVar, cast, overload

from wxrecon.wechatpay.enums import OpenEnum
from wxrecon.wechatpay.errors import GarbledResponse

E = TypeVar("E", bound=OpenEnum)


class Reader:
    """Typed access to a JSON object; every problem is a GarbledResponse naming the field."""

    def __init__(self, data: object, what: str, limits: Mapping[str, int]) -> None:
        if not isinstance(data, Mapping):
            raise GarbledResponse(f"{what}: response body is not a JSON object")
        self.data = data
        self.what = what
        self.limits = limits

    def _bad(self, name: str, rule: str) -> GarbledResponse:
        return GarbledResponse(f"{self.what}: field {name} {rule}")

    def _get(self, name: str, required: bool) -> Any:
        """The field's value; None when absent or empty (a GarbledResponse if required)."""
        value = self.data.get(name)
        if value is None or value == "":
            if required:
                raise self._bad(name, "is missing")
            return None
        return value

    def text(self, name: str, *, required: bool = False) -> str | None:
        value = self._get(name, required)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self._bad(name, "is not a string")
        limit = self.limits[name]  # every field read has a limit: a KeyError is our bug
        if len(value) > limit:
            raise self._bad(name, f"is longer than {limit} characters")
        return value

    def integer(self, name: str, *, required: bool = False) -> int | None:
        value = self._get(name, required)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._bad(name, "is not an integer")
        return value

    def boolean(self, name: str, *, required: bool = False) -> bool | None:
        value = self._get(name, required)
        if value is None:
            return None
        if not isinstance(value, bool):
            raise self._bad(name, "is not a boolean")
        return value

    def time(self, name: str) -> datetime | None:
        value = self.text(name)
        if value is None:
            return None
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise self._bad(name, "is not an RFC 3339 time") from None
        if parsed.tzinfo is None:
            raise self._bad(name, "has no time zone")
        return parsed

    def enum(self, name: str, kind: type[E], *, required: bool = False) -> E | None:
        value = self.text(name, required=required)
        return None if value is None else kind(value)

    def child(self, name: str) -> Reader | None:
        value = self.data.get(name)
        if value is None:
            return None
        return Reader(value, f"{self.what}.{name}", self.limits)


class Sealed:
    """Merchant-key ciphertext of a secret, with the means to open it (never printed)."""

    __slots__ = ("_ciphertext", "_decrypt", "_limit")

    def __init__(self, ciphertext: str, decrypt: Callable[[str], str], limit: int) -> None:
        self._ciphertext = ciphertext
        self._decrypt = decrypt
        self._limit = limit

    def open(self, what: str) -> str:
        try:
            plaintext = self._decrypt(self._ciphertext)
        except ValueError:
            raise GarbledResponse(
                f"{what}: bal_account_no does not decrypt with the merchant key"
            ) from None
        limit = self._limit
        if len(plaintext) > limit:
            raise GarbledResponse(f"{what}: bal_account_no is longer than {limit} characters")
        return plaintext

    def __repr__(self) -> str:
        return "<sealed>"

    def __reduce__(self) -> Any:
        # Its decrypt function holds the merchant private key: never serialise it.
        raise TypeError("a sealed value cannot be pickled")


class Decrypted:
    """A dataclass field that reads as plaintext but may hold a :class:`Sealed` value.

    Decrypting is an RSA private-key operation (about 0.24 ms, a quarter of a query's client
    CPU) and most answers are never compared by it, so it happens on first read and the
    plaintext replaces the ciphertext. As a dataclass field it stays in ``fields()``, so
    generic code (the CLI's display) sees ``bal_account_no`` as before."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.key = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.key = f"_{name}"

    @overload
    def __get__(self, obj: None, owner: Any = None) -> None: ...

    @overload
    def __get__(self, obj: object, owner: Any = None) -> str | None: ...

    def __get__(self, obj: object | None, owner: Any = None) -> str | None:
        if obj is None:
            return None  # the field's default
        value = obj.__dict__[self.key]
        if isinstance(value, Sealed):
            try:
                value = value.open(self.what)
            except GarbledResponse as exc:  # the ciphertext stays: a later read fails alike
                exc.request_id = getattr(obj, "request_id", None)
                raise
            obj.__dict__[self.key] = value
        return cast(str | None, value)

    def __set__(self, obj: object, value: str | Sealed | None) -> None:
        # dataclass passes the descriptor itself as the default (field(default=…) form).
        obj.__dict__[self.key] = None if value is self else value
