"""The ``wxrecon demo`` command: options, the work directory, Ctrl-C, and the summary (the run
itself is :mod:`wxrecon.demo.flow`, its rig :mod:`wxrecon.demo.run`)."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import typer

from wxrecon.cli.errors import CliError, describe
from wxrecon.cli.output import JsonOpt, Output, safe_url
from wxrecon.demo import view
from wxrecon.demo.flow import run
from wxrecon.demo.procs import ChildDied, Supervisor
from wxrecon.demo.run import Demo


class Interrupted(CliError):
    exit_code = 130


def skip_teardown_at_exit(code: int) -> None:
    """After Ctrl-C every child is stopped and nothing is left to write but the message: exit
    right after it, without the interpreter's teardown of celery, kombu, SQLAlchemy and rich
    (1.3 s of a 3 s budget on a busy 2-core machine)."""

    def _exit() -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)

    atexit.register(_exit)


def interrupted_message(stopped: list[str], work: Path, elapsed: float) -> str:
    """What Ctrl-C stopped and what it kept (the work directory is never removed then)."""
    names = ", ".join(reversed(stopped)) or "nothing had started"
    return (
        f"interrupted after {elapsed:.0f}s: stopped {names}; kept {work} "
        f"(database, logs, metric samples; delete it when done)"
    )


def demo(
    orders: int = typer.Option(40, "--orders", min=1, max=5000, help="Special reductions."),
    timeout: float = typer.Option(150.0, "--timeout", min=5, help="Seconds to wait for them."),
    work_dir: Path = typer.Option(
        None, "--dir", help="Keep the database, logs and metrics here (default: a temp dir)."
    ),
    workers: int = typer.Option(4, "--workers", min=1, max=16, help="Worker processes."),
    json_out: JsonOpt = False,
) -> None:
    """Run wxrecon end to end on this machine: simulator, worker, beat, a mix of orders."""
    out = Output(json_out)
    keep = work_dir is not None
    work = Path(work_dir).resolve() if keep else Path(tempfile.mkdtemp(prefix="wxrecon-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    d = Demo(
        orders=orders,
        timeout=timeout,
        work=work,
        workers=workers,
        out=out,
        live=not json_out and out.console.is_terminal,
    )
    summary: dict[str, Any] | None = None
    sup = Supervisor()
    try:
        with sup:
            if not json_out:
                db_url = os.environ.get("WXRECON_DATABASE_URL", "SQLite")
                broker_url = os.environ.get("WXRECON_BROKER_URL", "embedded Valkey")
                out.print(
                    f"[bold]wxrecon demo[/]: {orders} reductions + {len(d.plan.bills)} bills · "
                    f"database {safe_url(db_url)} · broker {safe_url(broker_url)} · "
                    f"work dir {work}"
                )
            summary = run(d, sup)
    except KeyboardInterrupt:
        skip_teardown_at_exit(Interrupted.exit_code)
        elapsed = time.monotonic() - d.started
        raise Interrupted(interrupted_message(sup.stopped, work, elapsed)) from None
    except ChildDied as exc:
        raise CliError(f"demo aborted: {exc} (logs in {work / 'logs'})") from None
    except CliError:
        raise
    except Exception as exc:
        raise CliError(f"demo failed: {describe(exc)[1]} (logs in {work / 'logs'})") from None
    finally:
        if summary is not None and summary["ok"] and not keep:
            shutil.rmtree(work, ignore_errors=True)
    if json_out:
        out.json(summary)
    else:
        view.render_summary(out.console, summary)
        if not summary["ok"] or keep:
            out.print(f"logs, database and metrics: {work}")
    if not summary["ok"]:
        raise typer.Exit(1)
