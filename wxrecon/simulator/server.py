"""``Simulator``: one simulated provider for one simulator directory, and its lifecycle.

The HTTP plumbing is in :mod:`.handler`, the admin API in :mod:`.admin_api`, the provider's
answers in :mod:`.provider` and its books in :mod:`.state`.
"""

from __future__ import annotations

import gc
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from wxrecon.simulator import material
from wxrecon.simulator.admin import AdminClient
from wxrecon.simulator.admin_api import AdminApi
from wxrecon.simulator.faults import FaultPlan, FaultRule
from wxrecon.simulator.handler import Server, is_loopback
from wxrecon.simulator.material import SimDir
from wxrecon.simulator.provider import Provider, Reply, Timing
from wxrecon.simulator.state import ApiError, Books, BusinessConfig
from wxrecon.simulator.traffic import Traffic

log = logging.getLogger("wxrecon.simulator")

SAVE_INTERVAL = 5.0
FREEZE_EVERY = 5.0  # seconds between freezes of the heap (Simulator.wait)


class Simulator:
    """A running (or ready-to-run) simulated provider for one simulator directory.

    ``start()`` serves on a background thread (port 0 picks a free port; see ``url``);
    ``serve_forever()`` serves on the calling thread. ``stop()`` ends both.
    """

    def __init__(
        self,
        directory: str | Path | SimDir,
        *,
        config: BusinessConfig | None = None,
        faults: list[FaultRule] | None = None,
        rate_limit: int = 100,
        idle_timeout: float = 8.0,
        latency: float = 0.2,
        hang: float = 60.0,
        state_file: str | Path | None = None,
        seed: int | None = None,
        host: str | None = None,
        port: int | None = None,
        docs_literal: bool = False,
    ) -> None:
        self.dir = directory if isinstance(directory, SimDir) else SimDir.load(directory)
        self.keys = self.dir.provider_keys
        self.books = Books(config, seed=seed)
        self.faults = FaultPlan(faults, seed=None if seed is None else seed + 1)
        self.traffic = Traffic(rate_limit)
        self.timing = Timing(latency=latency, hang=hang)
        self.provider = Provider(
            self.keys,
            self.books,
            self.faults,
            self.traffic,
            self.timing,
            shape_seed=None if seed is None else seed + 2,
        )
        self.provider.docs_literal = docs_literal
        self.idle_timeout = idle_timeout
        self.state_file = Path(state_file).resolve() if state_file else None
        self.host = host if host is not None else self.dir.host
        self.requested_port = port if port is not None else self.dir.port
        self.stopping = threading.Event()
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self._saver: threading.Thread | None = None
        self._initial_faults = list(faults or [])
        self.admin_api = AdminApi(self)
        if self.state_file and self.state_file.exists():
            try:
                self.books.load(json.loads(self.state_file.read_text()))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise material.SimDirError(
                    f"{self.state_file}: cannot load simulator state ({type(exc).__name__})"
                ) from None
        else:
            self.seed_ledgers()

    def seed_ledgers(self) -> None:
        for seed in self.dir.ledger_seed():
            self.books.set_ledger(seed.mchid, seed.bal_account_no, seed.balance)

    # -- lifecycle ------------------------------------------------------------------------

    def bind(self) -> Server:
        if self._server is None:
            self._server = Server((self.host, self.requested_port), self)
            if self.state_file:
                self._saver = threading.Thread(
                    target=self._save_loop, name="sim-saver", daemon=True
                )
                self._saver.start()
        return self._server

    def start(self) -> Simulator:
        server = self.bind()
        self._thread = threading.Thread(
            target=server.serve_forever,
            # stop() waits for one poll: short, as a test starts and stops one every time
            kwargs={"poll_interval": 0.02},
            name="simulator",
            daemon=True,
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve until ``stopping`` is set (e.g. by a signal handler), then stop."""
        self.start()
        try:
            self.wait()
        finally:
            self.stop()

    def wait(self) -> None:
        """Until ``stopping`` is set. The books only grow: a full collection of them took
        94-160 ms at 40,000 orders and stamped the requests it held up together (a peak over
        the limit the client never sent); frozen now and then, only what came since is
        scanned."""
        while not self.stopping.wait(FREEZE_EVERY):
            gc.freeze()

    def stop(self) -> None:
        self.stopping.set()
        if self._server is not None:
            if self._thread is not None:
                self._server.shutdown()
                self._thread.join(timeout=5)
            self._close()

    def _close(self) -> None:
        self.stopping.set()
        server = self._server
        if server is None:
            return
        server.server_close()
        server.drop_connections()
        self.save_state()
        self._server = None

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the simulator is not bound yet")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = self.host
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def client_env(self) -> dict[str, str]:
        """The ``WXRECON_*`` settings of a client for this running simulator."""
        return self.dir.client_env(self.url)

    def admin(self) -> AdminClient:
        return AdminClient(self.url)

    # -- state file -----------------------------------------------------------------------

    def save_state(self) -> None:
        if self.state_file:
            try:
                self.books.save(self.state_file)
            except OSError as exc:
                log.error("cannot save simulator state to %s: %s", self.state_file, exc.strerror)

    def _save_loop(self) -> None:
        saved = -1
        while not self.stopping.wait(SAVE_INTERVAL):
            self.books.settle(time.time())  # due settlements count as changes too
            if self.books.version != saved:
                saved = self.books.version
                self.save_state()

    # -- admin API ------------------------------------------------------------------------

    def admin_request(
        self, method: str, path: str, params: dict[str, str], data: Any
    ) -> tuple[int, Any]:
        """Answer one admin call; raises ValueError (→ 400) on bad input."""
        return self.admin_api.request(method, path, params, data)


__all__ = ["ApiError", "Reply", "Simulator", "is_loopback"]
