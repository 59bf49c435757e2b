"""``wxrecon demo`` end to end, as a newcomer runs it: no Redis and no PostgreSQL settings,
real simulator / worker / beat processes. Then: no process left behind, no secret in any log,
and a metrics scrape over what the workers recorded."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.services import unique_name
from wxrecon.demo.mix import BILL, DEMO_BAL_ACCOUNT_NOS, NORMAL, NOT_ENOUGH, SLOW_SETTLE

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

ORDERS = 10


def demo_env() -> dict[str, str]:
    """The caller's environment without any wxrecon setting: embedded defaults only."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("WXRECON_") and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    env["COLUMNS"] = "160"
    return env


def wxrecon(*args: str) -> list[str]:
    return [sys.executable, "-m", "wxrecon.cli", *args]


def processes_mentioning(text: str) -> list[str]:
    """Live processes whose command line or environment mentions ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = (entry / "stat").read_text()
            if stat.rsplit(")", 1)[-1].split()[0] == "Z":
                continue
            cmdline = (entry / "cmdline").read_bytes()
            blob = cmdline + (entry / "environ").read_bytes()
        except OSError:  # it ended meanwhile
            continue
        if text.encode() in blob:  # cmdline as read: the process may be gone by now
            found.append(f"{entry.name}: {cmdline[:120]!r}")
    return found


@pytest.fixture(scope="module")
def demo_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, dict, subprocess.CompletedProcess]:
    work = tmp_path_factory.mktemp("demo")
    proc = subprocess.run(
        wxrecon("demo", "--orders", str(ORDERS), "--dir", str(work), "--timeout", "150", "--json"),
        cwd=work,
        env=demo_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    try:
        summary = json.loads(proc.stdout)
    except ValueError:
        pytest.fail(f"demo printed no JSON summary: {proc.stdout[-500:]} {proc.stderr[-2000:]}")
    return work, summary, proc


class TestOneRun:
    """Four looks at one demo run (the module's ``demo_run``). A class, so that the test
    scheduler (tests/conftest.py) keeps them on one worker, where the run happens once."""

    def test_demo_converges_to_the_ground_truth(self, demo_run):
        work, summary, proc = demo_run
        assert proc.returncode == 0, (summary.get("problems"), proc.stderr[-2000:])
        assert summary["ok"] is True and summary["problems"] == []
        assert summary["orders"] == summary["matched_ground_truth"]
        cats = summary["by_category"]
        assert set(cats) == {NORMAL, SLOW_SETTLE, NOT_ENOUGH, BILL}
        assert cats[NOT_ENOUGH] == {"FAILED": sum(cats[NOT_ENOUGH].values())}
        assert set(cats[BILL]) <= {"SUCCESS", "CLOSED", "CANCELLED"}
        assert sum(sum(c.values()) for c in cats.values()) == summary["orders"]
        assert summary["provider_requests"]["submit_reduction"]
        # Outcome delivery on: the demo's own webhook receiver (signatures checked with the run's
        # secret) was told every order's final state, each event counted once by its id.
        told = summary["outcomes"]
        assert told["final_orders_told"] == summary["orders"], told
        assert told["events_received"] >= summary["orders"]
        assert "wxrecon.relay_outcomes" in (work / "logs" / "relay.log").read_text(errors="replace")
        # on the embedded broker: the production transport, on loopback
        worker_log = (work / "logs" / "worker.log").read_text(errors="replace")
        assert re.search(r"transport:\s+redis://(:\*\*@)?127\.0\.0\.1:\d+/0", worker_log)
        assert "Ready to accept connections" in (work / "logs" / "broker.log").read_text()

    def test_demo_leaves_no_process_behind(self, demo_run):
        work, _, _ = demo_run
        assert processes_mentioning(str(work)) == []

    def test_demo_logs_hold_no_secrets(self, demo_run):
        work, _, _ = demo_run
        logs = {p.name: p.read_text(errors="replace") for p in (work / "logs").glob("*.log")}
        assert {"worker.log", "beat.log", "relay.log", "simulator.log", "broker.log"} <= set(logs)
        text = "\n".join(logs.values())
        # the logs do talk about orders, with their context fields
        assert "out_request_no=DEMO" in logs["worker.log"]
        assert "request_id=" in logs["worker.log"]
        assert "PRIVATE KEY" not in text
        for pem in (work / "sim").glob("*key*.pem"):
            body = [line for line in pem.read_text().splitlines() if line and "-----" not in line]
            assert not any(line in text for line in body), pem.name
        for account in DEMO_BAL_ACCOUNT_NOS:
            assert account not in text

    def test_metrics_scrape_after_the_run(self, demo_run):
        work, summary, _ = demo_run
        env = demo_env() | {
            "PROMETHEUS_MULTIPROC_DIR": str(work / "metrics"),
            "WXRECON_DATABASE_URL": f"sqlite:///{work / 'wxrecon-demo.db'}",
        }
        proc = subprocess.run(
            wxrecon("metrics", "--once"),
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        text = proc.stdout
        for series in (
            'wxrecon_provider_request_duration_seconds_bucket{caller="default",endpoint="submit_reduction"',
            'wxrecon_provider_request_duration_seconds_count{caller="default",endpoint="query_reduction"',
            'wxrecon_provider_request_duration_seconds_count{caller="platform",endpoint="query_bill"',
            'wxrecon_transitions_total{from_state="",kind="reduction",to_state="RECEIVED"}',
            'wxrecon_orders{kind="reduction",state="SUCCESS"}',
            'wxrecon_orders{kind="reduction",state="FAILED"}',
            'wxrecon_oldest_due_order_age_seconds{kind="reduction"} 0.0',
            "wxrecon_database_up 1.0",
        ):
            assert series in text, series
        assert re.search(
            r'wxrecon_transitions_total\{from_state="\w+",kind="reduction",to_state="SUCCESS"\}',
            text,
        )
        assert re.search(
            r'wxrecon_transitions_total\{from_state="\w+",kind="bill",to_state="(SUCCESS|CLOSED|CANCELLED)"\}',
            text,
        )
        # every NOT_ENOUGH the simulator answered was counted as a provider error by code
        not_enough = summary["provider_requests"]["submit_reduction"].get("403", 0)
        if not_enough:
            assert (
                'wxrecon_provider_errors_total{caller="default",code="NOT_ENOUGH",endpoint="submit_reduction"}'
                in text
            )
        assert "DEMO" not in text  # no order ids as labels


def test_a_demo_that_does_not_converge_fails_and_cleans_up(tmp_path: Path):
    work = tmp_path / "short"
    proc = subprocess.run(
        wxrecon("demo", "--orders", "4", "--dir", str(work), "--timeout", "5", "--json"),
        cwd=tmp_path,
        env=demo_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    summary = json.loads(proc.stdout)
    assert proc.returncode == 1
    assert summary["ok"] is False and "not final after 5s" in summary["problems"][0]
    assert processes_mentioning(str(work)) == []


def wait_for_ready_worker(proc: subprocess.Popen, worker_log_glob: Path, pattern: str) -> Path:
    """The demo's work directory once its worker says it is ready."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        for log in worker_log_glob.glob(pattern):
            if "ready" in log.read_text(errors="replace"):
                return log.parent.parent
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    pytest.fail("the demo's worker never became ready")


def gone_within(seconds: float, *texts: str) -> list[str]:
    """Poll until no live process mentions any of ``texts``, for at most ``seconds``; return
    what is still alive then (empty: everything is gone)."""
    deadline = time.monotonic() + seconds
    while True:
        alive = [p for t in texts for p in processes_mentioning(t)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def test_ctrl_c_stops_every_child_and_says_what_it_kept(tmp_path: Path):
    """No --dir: the temporary work directory is kept on Ctrl-C, and the message says where."""
    proc = subprocess.Popen(
        wxrecon("demo", "--orders", "20"),
        cwd=tmp_path,
        env=demo_env() | {"TMPDIR": str(tmp_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        work = wait_for_ready_worker(proc, tmp_path, "wxrecon-demo-*/logs/worker.log")
        assert len(processes_mentioning(str(work))) >= 5  # broker, simulator, worker, relay, beat
        proc.send_signal(signal.SIGINT)
        # the bound the README promises (3 s), checked on what is alive, not on a clock
        assert gone_within(3.0, str(work)) == []
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: interrupted after"), err
    assert "stopped beat, relay, worker, simulator, broker" in line
    assert f"kept {work} " in line and "database, logs, metric samples" in line
    assert (work / "wxrecon-demo.db").is_file() and (work / "logs" / "worker.log").is_file()


def test_the_demo_passes_several_times_in_a_row(tmp_path: Path):
    """The flakiness issue 13 was about: three runs back to back, each one green, on the
    embedded broker, each leaving nothing behind (not a process, not its temporary folder)."""
    env = demo_env() | {"TMPDIR": str(tmp_path)}
    for run in range(3):
        proc = subprocess.run(
            wxrecon("demo", "--orders", "4", "--timeout", "120", "--json"),
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=200,
        )
        assert proc.returncode == 0, (run, proc.stdout[-1000:], proc.stderr[-2000:])
        summary = json.loads(proc.stdout)
        assert summary["ok"] and summary["matched_ground_truth"] == summary["orders"]
        assert processes_mentioning(summary["work_dir"]) == []
        assert not Path(summary["work_dir"]).exists()
    assert list(tmp_path.glob("wxrecon-demo-*")) == []


@pytest.mark.postgres
@pytest.mark.redis
def test_the_same_demo_runs_on_redis_and_postgresql(
    postgres_url: str, redis_db: str, tmp_path: Path
):
    import psycopg
    from sqlalchemy.engine import make_url

    from wxrecon.store.db import normalize_url

    base = make_url(normalize_url(postgres_url))
    name = unique_name("wxrecon_cli_demo")

    def conninfo(database: str | None) -> str:
        return f"host={base.host} port={base.port or 5432} user={base.username} dbname={database}"

    with psycopg.connect(conninfo(base.database), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    try:
        work = tmp_path / "services"
        env = demo_env() | {
            "WXRECON_DATABASE_URL": base.set(database=name).render_as_string(hide_password=False),
            "WXRECON_BROKER_URL": redis_db,  # this test's own database on the private Redis
        }
        proc = subprocess.run(
            wxrecon("demo", "--orders", "8", "--dir", str(work), "--timeout", "120", "--json"),
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=200,
        )
        summary = json.loads(proc.stdout)
        assert proc.returncode == 0, (summary["problems"], proc.stderr[-2000:])
        assert summary["ok"] and summary["matched_ground_truth"] == summary["orders"]
        assert processes_mentioning(str(work)) == []
        with psycopg.connect(conninfo(name)) as conn:
            rows = conn.execute("SELECT count(*) FROM special_reductions").fetchone()
        assert rows is not None and rows[0] == 8  # the orders really went to PostgreSQL
    finally:
        with psycopg.connect(conninfo(base.database), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
