"""``sim init`` and ``sim serve``: files, client.env, a child process, state across restarts."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.fixtures_sim import (
    SIM_BAL_ACCOUNT_NO,
    SIM_MCHID,
    make_sim_client,
    make_sim_dir,
    sim_env,
    sim_reduction,
    start_sim_process,
)
from wxrecon.config import Settings
from wxrecon.simulator import SimDir, SimDirError, SimulatorStartError
from wxrecon.simulator.cli import app
from wxrecon.wechatpay import ProviderBusy, ReductionState
from wxrecon.wechatpay.keys import Credentials

runner = CliRunner()

PRIVATE = ("apiclient_key.pem", "wechatpay_private_key.pem", "platform_private_key.pem")


def test_init_writes_keys_certificates_and_client_env(tmp_path: Path) -> None:
    target = tmp_path / "sim"
    result = runner.invoke(
        app, ["init", str(target), "--ledger", "1900000001:ACC:1:9:500", "--port", "8123"]
    )
    assert result.exit_code == 0, result.output
    assert "ACC:1:9" not in result.output  # no account number echoed
    for name in PRIVATE:
        assert stat.S_IMODE((target / name).stat().st_mode) == 0o600
    sim = SimDir.load(target)
    env = dict(
        line.split("=", 1)
        for line in (target / "client.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert env["WXRECON_MCHID"] == "1900000001"
    assert env["WXRECON_MCH_CERT_SERIAL"] == sim.mch_cert_serial
    assert env["WXRECON_WECHATPAY_PUBLIC_KEY_ID"].startswith("PUB_KEY_ID_")
    assert env["WXRECON_WECHATPAY_BASE_URL"] == "http://127.0.0.1:8123"
    assert env["WXRECON_WECHATPAY_BACKUP_URL"] == ""
    for key in (
        "WXRECON_MCH_PRIVATE_KEY_PATH",
        "WXRECON_MCH_CERT_PATH",
        "WXRECON_WECHATPAY_PUBLIC_KEY_PATH",
    ):
        assert Path(env[key]).is_absolute() and Path(env[key]).is_file()
    # The settings load into the project's own Settings and credentials.
    settings = Settings(_env_file=target / "client.env")  # type: ignore[call-arg]
    creds = Credentials.load(
        mchid=settings.mchid,
        cert_serial=settings.mch_cert_serial,
        private_key_path=settings.mch_private_key_path,
        public_key_id=settings.wechatpay_public_key_id,
        public_key_path=settings.wechatpay_public_key_path,
        platform_cert_paths=settings.platform_cert_paths,
        mch_cert_path=settings.mch_cert_path,
    )
    assert creds.encrypt_serial == sim.wechatpay_public_key_id
    assert settings.wechatpay_backup_url in ("", None)
    [seed] = sim.ledger_seed()
    assert (seed.mchid, seed.bal_account_no, seed.balance) == ("1900000001", "ACC:1:9", 500)


def test_init_cert_mode_configures_platform_certificates(tmp_path: Path) -> None:
    result = runner.invoke(app, ["init", str(tmp_path / "c"), "--cert-mode", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["cert_mode"] is True
    env = (tmp_path / "c" / "client.env").read_text()
    assert "WXRECON_PLATFORM_CERT_PATHS=" in env
    assert "WXRECON_WECHATPAY_PUBLIC_KEY_ID" not in env
    assert (
        SimDir.load(tmp_path / "c").credentials().encrypt_serial == summary["platform_cert_serial"]
    )


@pytest.mark.parametrize(
    "args",
    [
        ["--ledger", "nocolons"],
        ["--ledger", "19x:ACC:5"],
        ["--ledger", "1900000001:ACC:-5"],
        ["--ledger", "1900000001::5"],
        ["--mchid", "abc"],
        ["--port", "70000"],
    ],
)
def test_init_refuses_bad_input_with_one_line_and_writes_nothing(
    tmp_path: Path, args: list[str]
) -> None:
    result = runner.invoke(app, ["init", str(tmp_path / "bad"), *args])
    assert result.exit_code == 2
    assert (
        result.output.strip().startswith("error:") and len(result.output.strip().splitlines()) == 1
    )
    assert not (tmp_path / "bad").exists()


def test_init_does_not_overwrite_without_force(tmp_path: Path) -> None:
    target = tmp_path / "sim"
    assert runner.invoke(app, ["init", str(target)]).exit_code == 0
    serial = SimDir.load(target).mch_cert_serial
    again = runner.invoke(app, ["init", str(target)])
    assert again.exit_code == 2 and "--force" in again.output
    assert SimDir.load(target).mch_cert_serial == serial
    assert runner.invoke(app, ["init", str(target), "--force"]).exit_code == 0
    assert SimDir.load(target).mch_cert_serial != serial


def test_serve_refuses_a_directory_that_is_not_initialised(tmp_path: Path) -> None:
    result = runner.invoke(app, ["serve", "--dir", str(tmp_path)])
    assert result.exit_code == 2 and "sim init" in result.output
    with pytest.raises(SimDirError):
        SimDir.load(tmp_path)


def test_serve_refuses_bad_options(tmp_path: Path) -> None:
    make_sim_dir(tmp_path / "sim")
    for args in (["--fault", "explode"], ["--settle-delay", "5s:1s"], ["--latency", "soon"]):
        result = runner.invoke(app, ["serve", "--dir", str(tmp_path / "sim"), *args])
        assert result.exit_code == 2, args
        assert result.output.startswith("error:")


def test_serve_as_a_child_process_with_faults_and_state_kept_across_restarts(
    tmp_path: Path,
) -> None:
    sim_dir = make_sim_dir(tmp_path / "sim")
    state = tmp_path / "state.json"
    proc = start_sim_process(sim_dir, "--state", str(state), "--fault", "system_error@query_bill#1")
    try:
        env = sim_env(proc)
        assert env["WXRECON_WECHATPAY_BASE_URL"] == proc.url
        # client.env now names the running server, for clients started from it.
        assert f"WXRECON_WECHATPAY_BASE_URL={proc.url}" in sim_dir.file("client.env").read_text()
        with proc.admin() as admin, make_sim_client(proc, attempts=1) as client:
            admin.seed_bill("PB1", 10)
            with pytest.raises(ProviderBusy):  # the --fault flag fired once
                client.query_compensation_bill("PB1")
            assert client.query_compensation_bill("PB1").out_bill_no == "PB1"
            client.submit_special_reduction(sim_reduction("PS1", 321))
    finally:
        assert proc.stop() == 0  # SIGTERM: clean exit, state saved
    assert state.exists() and stat.S_IMODE(state.stat().st_mode) == 0o600
    again = start_sim_process(sim_dir, "--state", str(state))
    try:
        with again.admin() as admin, make_sim_client(again) as client:
            truth = admin.reduction("PS1")
            assert truth is not None and truth["submit_count"] == 1
            final = client.query_special_reduction(
                "PS1", mchid=SIM_MCHID, bal_account_no=SIM_BAL_ACCOUNT_NO
            )
            assert final.state in (ReductionState.PROCESSING, ReductionState.SUCCESS)
            assert admin.bill("PB1") is not None
            assert admin.faults() == []  # faults are not state
    finally:
        again.stop()


def test_a_child_that_cannot_start_says_why(tmp_path: Path) -> None:
    sim_dir = make_sim_dir(tmp_path / "sim")
    with pytest.raises(SimulatorStartError, match="error"):
        start_sim_process(sim_dir, "--fault", "explode", timeout=20)


def test_a_serving_simulator_freezes_its_growing_heap_every_few_seconds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its books only grow; frozen, a collection no longer scans them all (one of 40,000
    orders' books took 94-160 ms, and stamped the requests it held up together)."""
    import gc
    import threading
    import time

    from wxrecon.simulator import server

    monkeypatch.setattr(server, "FREEZE_EVERY", 0.05)
    sim = server.Simulator(make_sim_dir(tmp_path / "sim"), port=0)
    gc.unfreeze()
    serving = threading.Thread(target=sim.serve_forever, daemon=True)
    serving.start()
    try:
        deadline = time.monotonic() + 10
        while not gc.get_freeze_count() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert gc.get_freeze_count() > 0
    finally:
        sim.stopping.set()
        serving.join(10)
        gc.unfreeze()
    assert not serving.is_alive()
