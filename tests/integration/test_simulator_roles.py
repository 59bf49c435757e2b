"""The simulator's identities and roles: like the provider, a bill query is for a platform
merchant and a reduction, its query and the balance for an ordinary one (403 NO_AUTH)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fixtures_sim import (
    SIM_BAL_ACCOUNT_NO,
    SIM_MCHID,
    SIM_SP_MCHID,
    make_sim_dir,
    sim_reduction,
    start_simulator,
)
from wxrecon.callers import profiles_from
from wxrecon.config import Settings
from wxrecon.provider import load_credentials
from wxrecon.simulator import Simulator
from wxrecon.wechatpay import errors
from wxrecon.wechatpay.client import RetryPolicy, Timeouts, WeChatPayClient
from wxrecon.wechatpay.keys import Credentials


@pytest.fixture
def two(tmp_path: Path) -> Iterator[Simulator]:
    sim = start_simulator(make_sim_dir(tmp_path / "sim", roles=True))
    try:
        yield sim
    finally:
        sim.stop()


def client(sim: Simulator, credentials: Credentials, transport: object = None) -> WeChatPayClient:
    assert sim.url
    return WeChatPayClient(
        credentials,
        base_url=sim.url,
        backup_url=None,
        timeouts=Timeouts(connect=1.0, read=1.0),
        retry=RetryPolicy(attempts=1, initial_wait=0, max_wait=0),
        transport=transport,
    )


def test_each_identity_may_call_only_its_own_endpoints(two: Simulator) -> None:
    with two.admin() as admin:
        admin.seed_bill("ROLEBILL1", 300, "SUCCESS")
    ordinary = client(two, two.dir.credentials())
    platform = client(two, two.dir.platform_credentials())
    with ordinary, platform:
        with pytest.raises(errors.Rejected) as info:
            ordinary.query_compensation_bill("ROLEBILL1")
        assert info.value.status == 403 and info.value.code == "NO_AUTH"
        answer = platform.query_compensation_bill("ROLEBILL1")
        assert answer.sp_mchid == SIM_SP_MCHID  # the bill is the platform merchant's
        for call in (
            lambda: platform.submit_special_reduction(sim_reduction("ROLE1")),
            lambda: platform.query_special_reduction(
                "ROLE1", mchid=SIM_MCHID, bal_account_no=SIM_BAL_ACCOUNT_NO
            ),
            lambda: platform.query_balance(mchid=SIM_MCHID, bal_account_no=SIM_BAL_ACCOUNT_NO),
        ):
            with pytest.raises(errors.Rejected) as info:
                call()
            assert info.value.status == 403 and info.value.code == "NO_AUTH"
        assert ordinary.submit_special_reduction(sim_reduction("ROLE1")).out_request_no == "ROLE1"
    with two.admin() as admin:
        # The refused reduction never reached the books; the ordinary one did, once.
        assert [r["out_request_no"] for r in admin.reductions()] == ["ROLE1"]


def test_the_no_auth_answer_has_the_providers_error_shape(two: Simulator) -> None:
    seen: list[httpx.Response] = []

    def keep(request: httpx.Request) -> httpx.Response:
        with httpx.Client() as raw:
            response = raw.send(request)
            response.read()
        seen.append(response)
        return response

    ordinary = client(two, two.dir.credentials(), httpx.MockTransport(keep))
    with ordinary, pytest.raises(errors.Rejected):
        ordinary.query_compensation_bill("NOSUCH1")
    body = seen[-1].json()
    assert seen[-1].status_code == 403
    assert body["code"] == "NO_AUTH" and isinstance(body["message"], str) and body["message"]


def test_sim_init_writes_two_identities_into_client_env(tmp_path: Path) -> None:
    sim = make_sim_dir(tmp_path / "sim", roles=True)
    env = sim.client_env()
    assert env["WXRECON_BILL_CALLER"] == "platform"
    assert env["WXRECON_REDUCTION_CALLER"] == "default"
    written = sim.file("client.env").read_text()
    assert "WXRECON_CALLERS_FILE=" in written and "WXRECON_BILL_CALLER=platform" in written
    import tomllib

    parsed = tomllib.loads(Path(env["WXRECON_CALLERS_FILE"]).read_text())
    settings = Settings.model_validate({"mchid": sim.mchid, "mch_cert_serial": sim.mch_cert_serial})
    platform = profiles_from(parsed, settings)["platform"]
    assert platform.mchid == SIM_SP_MCHID
    assert load_credentials(settings, platform).mchid == SIM_SP_MCHID
    single = make_sim_dir(tmp_path / "one")  # one merchant: no second identity
    assert "WXRECON_CALLERS_FILE" not in single.client_env()
