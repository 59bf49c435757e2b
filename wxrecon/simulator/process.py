"""Run the simulator as a child process (``python -m wxrecon.simulator serve``) and wait for it.

For end-to-end tests and the demo: the child binds a free port (``--port 0``), writes its URL
into ``DIR/client.env`` and prints ``listening on URL``, which ``start`` waits for, then
checks ``/_sim/health``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import httpx

from wxrecon.simulator.admin import AdminClient
from wxrecon.simulator.material import SimDir

_LISTENING = re.compile(r"listening on (http://\S+)")


class SimulatorStartError(RuntimeError):
    pass


class SimulatorProcess:
    def __init__(
        self,
        directory: str | Path | SimDir,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        log_path: str | Path | None = None,
    ) -> None:
        self.dir = directory if isinstance(directory, SimDir) else SimDir.load(directory)
        self.port = port
        self.host = host
        self.args = list(args)
        self.env = dict(env) if env is not None else None
        self.log_path = Path(log_path) if log_path else self.dir.path / "simulator.log"
        self.url: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "wxrecon.simulator",
            "serve",
            "--dir",
            str(self.dir.path),
            "--host",
            self.host,
            "--port",
            str(self.port),
            *self.args,
        ]

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout: float = 20.0) -> SimulatorProcess:
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        offset = self._log.tell()
        self._proc = subprocess.Popen(
            self.command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise SimulatorStartError(
                    f"simulator exited with status {self._proc.returncode}: {self._tail(offset)}"
                )
            m = _LISTENING.search(self._read_log(offset))
            if m and self._healthy(m.group(1)):
                self.url = m.group(1)
                return self
            time.sleep(0.05)
        self.stop()
        raise SimulatorStartError(
            f"simulator did not answer within {timeout:.0f}s: {self._tail(offset)}"
        )

    def _read_log(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def _tail(self, offset: int) -> str:
        lines = [line for line in self._read_log(offset).splitlines() if line.strip()]
        return lines[-1][:300] if lines else "no output"

    @staticmethod
    def _healthy(url: str) -> bool:
        try:
            return httpx.get(f"{url}/_sim/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def admin(self) -> AdminClient:
        if not self.url:
            raise RuntimeError("the simulator is not running")
        return AdminClient(self.url)

    def client_env(self) -> dict[str, str]:
        return self.dir.client_env(self.url)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit status."""
        proc = self._proc
        code = None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            code = proc.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def __enter__(self) -> SimulatorProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def start_subprocess(directory: str | Path | SimDir, **kw: Any) -> SimulatorProcess:
    """Start ``python -m wxrecon.simulator serve`` for ``directory`` and wait until it answers."""
    timeout = kw.pop("timeout", 20.0)
    return SimulatorProcess(directory, **kw).start(timeout)
