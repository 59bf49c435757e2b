"""The demo processes' environment: ports, metric samples, settings."""

from __future__ import annotations

import socket
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def metrics_dir(work: Path) -> Path:
    """Where every demo process writes its metric samples (created empty)."""
    path = work / "metrics"
    path.mkdir(parents=True, exist_ok=True)
    return path


def demo_env(
    base: dict[str, str], work: Path, sim_env: dict[str, str], broker_url: str
) -> dict[str, str]:
    """The environment of every demo process (and of the demo itself)."""
    env = {k: v for k, v in base.items() if not k.startswith("WXRECON_")}
    env.update(sim_env)
    env.update(
        {
            "WXRECON_DATABASE_URL": base.get(
                "WXRECON_DATABASE_URL", f"sqlite:///{work / 'wxrecon-demo.db'}"
            ),
            "WXRECON_BROKER_URL": broker_url,
            "WXRECON_DATA_DIR": str(work / "data"),
            # A demo-sized schedule: query often, give up late.
            "WXRECON_POLL_SCHEDULE": "1s,1s,2s,3s,5s",
            "WXRECON_POLL_MAX_ATTEMPTS": "60",
            "WXRECON_SWEEP_INTERVAL": "1",
            "WXRECON_HTTP_READ_TIMEOUT": "3",
            "WXRECON_HTTP_CONNECT_TIMEOUT": "2",
            "WXRECON_CLAIM_LEASE": "30",
            "WXRECON_LOG_LEVEL": base.get("WXRECON_LOG_LEVEL", "INFO"),
            "WXRECON_LOG_JSON": base.get("WXRECON_LOG_JSON", "false"),
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir(work)),
            "PYTHONUNBUFFERED": "1",
        }
    )
    if "WXRECON_RATELIMIT_URL" in base:
        env["WXRECON_RATELIMIT_URL"] = base["WXRECON_RATELIMIT_URL"]
    return env
