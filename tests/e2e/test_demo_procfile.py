"""The README's one-machine recipe, run as written on a fresh directory: ``sim init``, the
``.env`` copy, ``db upgrade``, ``honcho start`` with the repository's Procfile, then the
README's example submit. Then Ctrl-C: every process stops on its own (no SIGKILL)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.e2e.test_demo import gone_within
from tests.fixtures_e2e import tail
from wxrecon.demo.env import free_port

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
PROCFILE = (ROOT / "Procfile").read_text()


def one_machine_blocks() -> list[list[str]]:
    """The shell blocks of the README's "On one machine" section, as commands."""
    section = README.split("## On one machine", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    return [[c.strip() for c in b.replace("\\\n", " ").splitlines() if c.strip()] for b in blocks]


def ledgers(command: str) -> list[str]:
    words = shlex.split(command)
    return [words[i + 1] for i, w in enumerate(words) if w == "--ledger"]


def test_the_sim_entry_seeds_what_the_readme_submits():
    setup, submit = one_machine_blocks()
    readme_init = next(c for c in setup if c.startswith("wxrecon sim init"))
    sim_entry = next(line for line in PROCFILE.splitlines() if line.startswith("sim:"))
    init = re.search(r"wxrecon sim init [^)]*", sim_entry)
    assert init is not None
    assert ledgers(init.group(0)) == ledgers(readme_init)
    words = shlex.split(submit[0])
    mchid, account = words[words.index("--mchid") + 1], words[words.index("--bal-account-no") + 1]
    amount = int(words[words.index("--amount") + 1])
    seeded = {tuple(spec.split(":")[:2]): int(spec.split(":")[2]) for spec in ledgers(readme_init)}
    assert seeded[(mchid, account)] >= amount
    # the README's other examples (CSV, intake, send_task) name the same ledger
    assert README.count(f"{mchid},{account},") >= 1 and README.count(f'"{account}"') >= 1


@pytest.mark.e2e
@pytest.mark.timeout(240)
def test_honcho_start_works_as_the_readme_says(tmp_path: Path):
    setup, submit = one_machine_blocks()
    assert setup[0].startswith("python3 -m venv .venv") and setup[-1] == "honcho start"
    shutil.copy(ROOT / "Procfile", tmp_path / "Procfile")
    mark = f"WXRECON_TEST_PROCFILE={uuid.uuid4().hex}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WXRECON_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env |= {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",  # activate
        # A port of its own, so the test runs the embedded server, not this machine's Redis.
        "WXRECON_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0",
        "WXRECON_METRICS_PORT": str(free_port()),
        "COLUMNS": "200",
        mark.split("=")[0]: mark.split("=")[1],
    }

    def sh(command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S602 (the README's lines are shell lines)
            command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )

    for command in setup[1:-1]:  # the venv is this one; honcho starts below
        if command.startswith("wxrecon sim init"):
            command += f" --port {free_port()}"  # 8000 may be taken on a shared machine
        done = sh(command)
        assert done.returncode == 0, (command, done.stderr)
    log = (tmp_path / "honcho.log").open("w")
    honcho = subprocess.Popen(
        ["honcho", "start"], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        done = sh(" ".join(submit))
        assert done.returncode == 0, (done.stdout, done.stderr, tail(tmp_path / "honcho.log"))
        assert "PEN20260101A of ¥15.00 for 1900000101: submitted, now SUCCESS" in done.stdout
        assert honcho.poll() is None
        honcho.send_signal(signal.SIGINT)
        assert gone_within(20.0, mark) == []
        honcho.wait(timeout=10)
    finally:
        if honcho.poll() is None:
            honcho.kill()
        log.close()
    text = (tmp_path / "honcho.log").read_text()
    assert "embedded broker: valkey-server on 127.0.0.1:" in text
    for name in ("broker", "worker", "beat", "sim"):
        assert f"{name}.1 stopped (rc=0)" in text, tail(tmp_path / "honcho.log")
    assert "SIGKILL" not in text
