"""Every failure a user can reach, as one line and an exit code: one table, first match wins.

The command tree runs inside :class:`OneLineErrors`; whatever escapes a command is looked up
in :func:`rules` (exception class -> exit code, one-line message) and printed on stderr as
``error: …`` (a JSON object with ``--json``). No traceback ever reaches the user, and every
message goes through :func:`wxrecon.logs.redact` so a secret that slipped into one is masked.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

import click
import typer
from typer.core import TyperGroup

from wxrecon.domain.errors import WxreconError
from wxrecon.logs import redact

# Exit codes (the README's command-line section documents them).
EXIT_OK = 0
EXIT_FAILED = 1  # the operation failed: provider, database, configuration, conflict, …
EXIT_BAD_INPUT = 2  # the input was refused before anything was written or sent
EXIT_FINAL_FAILURE = 3  # --wait: the order ended FAILED or REJECTED (a bill CLOSED/CANCELLED)
EXIT_IN_FLIGHT = 4  # --wait: still in flight at --timeout; kept and reconciled: do not resubmit
EXIT_NEEDS_REVIEW = 5  # --wait: the order needs a person (see the README's runbook)
EXIT_INTERRUPTED = 130

# Typer vendors its own copy of click: its usage errors are not click's classes.
_TYPER_CLICK_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
CLICK_ERRORS: tuple[type[Exception], ...] = tuple({click.ClickException, _TYPER_CLICK_ERROR})
ABORTS: tuple[type[BaseException], ...] = tuple({click.exceptions.Abort, typer.Abort})


class CliError(WxreconError):
    """A one-line failure of an operation; ``exit_code`` says which kind."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class BadInput(CliError):
    """A one-line refusal of the input, before anything was written or sent (exit 2)."""

    exit_code = EXIT_BAD_INPUT


def bad_input(message: str) -> CliError:
    return BadInput(message)


def first_line(text: str) -> str:
    """The first non-empty line, whitespace collapsed."""
    for line in text.strip().splitlines():
        if line.strip():
            return " ".join(line.split())
    return ""


def _click_message(exc: BaseException) -> str:
    return str(exc.format_message())  # type: ignore[attr-defined]


def _outcome_unknown(exc: BaseException) -> str:
    return f"{exc}; query the order to learn its outcome"


def _configuration(exc: BaseException) -> str:
    return f"configuration: {first_line(str(exc))}"


def _pydantic(exc: BaseException) -> str:
    from wxrecon.config import settings_error

    return f"configuration: {settings_error(exc)}"  # type: ignore[arg-type]


def _sqlalchemy(exc: BaseException) -> str:
    # Their text carries the statement (and, without hide_parameters, its parameters): only
    # the driver's own first line is shown.
    orig = getattr(exc, "orig", None)
    text = first_line(str(orig)) if orig is not None else first_line(str(exc))
    return f"database: {text or type(exc).__name__}"


def _os_error(exc: BaseException) -> str:
    assert isinstance(exc, OSError)
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or type(exc).__name__}"


def _unexpected(exc: BaseException) -> str:
    # A bug: say what kind, never its text (it may hold anything, a secret included).
    return f"unexpected {type(exc).__name__} (a bug: please report it with the command)"


def _text(exc: BaseException) -> str:
    return first_line(str(exc)) or type(exc).__name__


Rule = tuple[tuple[type[BaseException], ...], int | None, Callable[[BaseException], str]]


@cache
def rules() -> tuple[Rule, ...]:
    """(classes, exit code, message) in order; ``None`` as the code means ``exc.exit_code``.

    Imported lazily: ``wxrecon --help`` loads neither SQLAlchemy nor the provider client."""
    from kombu.exceptions import KombuError
    from pydantic import ValidationError
    from sqlalchemy.exc import SQLAlchemyError

    from wxrecon.config import SettingsError
    from wxrecon.domain.errors import (
        Ambiguous,
        Conflict,
        IllegalTransition,
        OrderNotFound,
        SchemaError,
    )
    from wxrecon.wechatpay.errors import InvalidRequest, OutcomeUnknown, WeChatPayError
    from wxrecon.wechatpay.keys import CredentialError

    return (
        (ABORTS, EXIT_FAILED, lambda _: "aborted"),
        ((KeyboardInterrupt,), EXIT_INTERRUPTED, lambda _: "interrupted"),
        (CLICK_ERRORS, None, _click_message),
        ((CliError,), None, _text),
        ((SettingsError, CredentialError), EXIT_FAILED, _configuration),
        ((ValidationError,), EXIT_FAILED, _pydantic),
        ((InvalidRequest,), EXIT_BAD_INPUT, _text),
        ((OutcomeUnknown,), EXIT_FAILED, _outcome_unknown),
        ((WeChatPayError,), EXIT_FAILED, _text),
        ((Conflict, OrderNotFound, Ambiguous, IllegalTransition, SchemaError), EXIT_FAILED, _text),
        ((WxreconError,), EXIT_FAILED, _text),
        ((SQLAlchemyError,), EXIT_FAILED, _sqlalchemy),
        ((KombuError,), EXIT_FAILED, lambda exc: f"broker: {_text(exc)}"),
        ((OSError,), EXIT_FAILED, _os_error),
        ((Exception,), EXIT_FAILED, _unexpected),
    )


def describe(exc: BaseException) -> tuple[int, str]:
    """The exit code and the one secret-free line for ``exc``."""
    for classes, code, message in rules():
        if isinstance(exc, classes):
            exit_code = getattr(exc, "exit_code", EXIT_FAILED) if code is None else code
            return int(exit_code), redact(first_line(message(exc)) or type(exc).__name__)
    raise exc  # a BaseException no rule names (SystemExit, GeneratorExit): not ours to hide


def error_document(exc: BaseException, message: str) -> dict[str, Any]:
    """The ``--json`` error object: the line, plus the provider's fields when it answered."""
    from wxrecon.wechatpay.errors import WeChatPayError, one_line

    doc: dict[str, Any] = {"error": message}
    if isinstance(exc, WeChatPayError) and exc.code != "INVALID_INPUT":
        doc.update(
            kind=type(exc).__name__,
            status=exc.status,
            code=exc.code,
            message=redact(one_line(exc.message)),
            request_id=exc.request_id,
        )
    return doc


def report(exc: BaseException, json_mode: bool) -> int:
    """Print ``exc`` as one line on stderr; returns its exit code."""
    code, message = describe(exc)
    if json_mode:
        line = json.dumps(error_document(exc, message), ensure_ascii=False)
    else:
        line = f"error: {message}"
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
    return code


def warn(message: str, json_mode: bool) -> None:
    """One warning line on stderr (the command still succeeds)."""
    text = redact(first_line(message))
    line = json.dumps({"warning": text}, ensure_ascii=False) if json_mode else f"warning: {text}"
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


class OneLineErrors(TyperGroup):
    """Runs the command tree and turns every failure into one line and an exit code."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        try:
            rv = super().main(
                argv, prog_name or "wxrecon", complete_var, standalone_mode=False, **extra
            )
        except (Exception, KeyboardInterrupt) as exc:
            sys.exit(report(exc, "--json" in argv))
        code = rv if isinstance(rv, int) else EXIT_OK
        if standalone_mode:
            sys.exit(code)
        return code
