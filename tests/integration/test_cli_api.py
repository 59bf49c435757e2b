"""``wxrecon api`` (read-only), through typer's CliRunner on ``wxrecon.cli.api.app``.

The provider is an ``httpx.MockTransport`` for the error paths. ``api submit-reduction`` is
gone (it POSTed without a row): it is refused and sends nothing, and what it showed (bad input,
a business refusal, an unknown outcome) is tested on ``wxrecon reduction submit``, which writes
the row first. The end of the file runs both against the simulator, with an in-process worker.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

import wxrecon.cli.api as cli_api
import wxrecon.cli.provider as cli_provider
from tests.fixtures_cli import Cli
from tests.fixtures_db import EngineSettings
from tests.fixtures_keys import (
    BAL_ACCOUNT_NO,
    MCHID,
    KeySet,
    error_response,
    reduction_answer,
    signed_headers,
    signed_response,
)
from tests.fixtures_sim import (
    SIM_BAL_ACCOUNT_NO,
    SIM_BALANCE,
    SIM_MCHID,
    make_sim_dir,
    sim_env,
    start_simulator,
    wait_for,
)
from wxrecon import provider
from wxrecon.cli import app as cli_app
from wxrecon.cli.output import default_actor
from wxrecon.config import Settings, get_settings
from wxrecon.domain.kinds import REDUCTION
from wxrecon.engine.steps import Reconciler
from wxrecon.engine.sweep import claim_due
from wxrecon.simulator import AdminClient
from wxrecon.store.models import Event, SpecialReduction, utcnow
from wxrecon.wechatpay.keys import decrypt, mask

runner = CliRunner()
MASKED = mask(BAL_ACCOUNT_NO)
NO = "htozr8denqegbt6tk6u10iymo7yww5pn"


class Provider:
    """The fake provider behind the CLI: a list of answers and the requests it got."""

    def __init__(self) -> None:
        self.answers: list[httpx.Response | Exception] = []
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
def fake(keys: KeySet, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Provider]:
    """Settings from the environment (as in production), the transport swapped for a fake."""
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name, value in keys.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("WXRECON_HTTP_RETRIES", "1")
    monkeypatch.setenv("WXRECON_WECHATPAY_BASE_URL", "https://primary.test")
    monkeypatch.setenv("WXRECON_WECHATPAY_BACKUP_URL", "")
    prov = Provider()
    real = provider.build_client

    def build(settings: Settings, *profile: Any, **kw: Any) -> Any:
        return real(settings, *profile, transport=httpx.MockTransport(prov), **kw)

    monkeypatch.setattr(cli_provider, "build_client", build)
    get_settings.cache_clear()
    yield prov
    get_settings.cache_clear()


def _run(*args: str, env: dict[str, str] | None = None) -> Any:
    result = runner.invoke(cli_api.app, list(args), env=env)
    # Whatever happened, the plaintext ledger number never shows.
    assert BAL_ACCOUNT_NO not in result.output
    assert "Traceback" not in result.output
    return result


def _one_error_line(result: Any) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# -- happy paths ----------------------------------------------------------------------------


def test_balance_table(keys: KeySet, fake: Provider) -> None:
    fake.answers = [signed_response(keys, {"balance": 12345, "in_transit_reduction_exist": True})]
    result = _run("balance", "--mchid", MCHID, "--bal-account-no", BAL_ACCOUNT_NO)
    assert result.exit_code == 0, result.output
    assert "12345 fen (¥123.45)" in result.stdout
    assert MASKED in result.stdout and "yes" in result.stdout
    (request,) = fake.requests
    assert request.url.path == "/v3/aggracct-bc/wb-channel/account/balance"
    assert decrypt(keys.wechatpay_key, request.url.params["bal_account_no"]) == BAL_ACCOUNT_NO


def test_balance_json_with_ledger_from_the_environment(keys: KeySet, fake: Provider) -> None:
    fake.answers = [
        signed_response(keys, {"balance": 7, "in_transit_reduction_exist": False}, request_id="R-7")
    ]
    result = _run(
        "balance", "--mchid", MCHID, "--json", env={"WXRECON_API_BAL_ACCOUNT_NO": BAL_ACCOUNT_NO}
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "mchid": MCHID,
        "bal_account_no": MASKED,
        "balance": 7,
        "in_transit_reduction_exist": False,
        "request_id": "R-7",
    }


def test_query_reduction_table(keys: KeySet, fake: Provider) -> None:
    answer = reduction_answer(
        keys,
        NO,
        "FAILED",
        extra={"fail_reason": "RECEIPT_NOT_EXIST_CLOSED", "fail_time": "2025-09-11T10:00:00+08:00"},
    )
    fake.answers = [signed_response(keys, answer)]
    result = _run("query-reduction", NO, "--mchid", MCHID, "--bal-account-no", BAL_ACCOUNT_NO)
    assert result.exit_code == 0, result.output
    for text in ("FAILED", "RECEIPT_NOT_EXIST_CLOSED", "2025-09-11T10:00:00+08:00", MASKED):
        assert text in result.stdout
    assert fake.requests[0].url.path.endswith(f"/special-reduction/{NO}")


def test_query_bill(keys: KeySet, fake: Provider) -> None:
    bill = {
        "out_bill_no": "plfk2020042013",
        "state": "CLOSED",
        "amount": 10000,
        "close_info": {"close_time": "2015-05-20T13:29:35+08:00", "close_reason": "NOT_ENOUGH"},
    }
    fake.answers = [signed_response(keys, bill), signed_response(keys, bill)]
    result = _run("query-bill", "plfk2020042013")
    assert result.exit_code == 0, result.output
    assert "CLOSED" in result.stdout and "10000 fen (¥100.00)" in result.stdout
    assert "close_reason=NOT_ENOUGH" in result.stdout
    doc = json.loads(_run("query-bill", "plfk2020042013", "--json").stdout)
    assert doc["close_info"] == {
        "close_time": "2015-05-20T13:29:35+08:00",
        "close_reason": "NOT_ENOUGH",
    }


def test_provider_text_is_not_rich_markup(keys: KeySet, fake: Provider) -> None:
    answer = reduction_answer(keys, NO, "SUCCESS", extra={"reason": "[/red] [bold]罚款[/bold]"})
    fake.answers = [signed_response(keys, answer)]
    result = _run("query-reduction", NO, "--mchid", MCHID, "--bal-account-no", BAL_ACCOUNT_NO)
    assert result.exit_code == 0, result.output
    assert "[/red] [bold]罚款[/bold]" in result.stdout


# -- provider failures: one line with status, code, message, Request-ID ----------------------


def test_business_answer_is_one_line(fake: Provider) -> None:
    fake.answers = [error_response(403, "NO_AUTH", "商户无权限", request_id="0A1B2C")]
    result = _run("balance", "--mchid", MCHID, "--bal-account-no", BAL_ACCOUNT_NO)
    assert result.exit_code == 1
    assert _one_error_line(result) == "error: HTTP 403 NO_AUTH 商户无权限 (Request-ID 0A1B2C)"
    assert result.stdout == ""


def test_failure_as_json(fake: Provider) -> None:
    fake.answers = [error_response(401, "SIGN_ERROR", "签名错误", request_id="RID")]
    result = _run("query-bill", "B1", "--json")
    assert result.exit_code == 1
    doc = json.loads(_one_error_line(result))
    assert doc == {
        "error": "HTTP 401 SIGN_ERROR 签名错误 (Request-ID RID)",
        "kind": "Rejected",
        "status": 401,
        "code": "SIGN_ERROR",
        "message": "签名错误",
        "request_id": "RID",
    }


def test_server_error_of_a_query_is_one_line(fake: Provider) -> None:
    # Only a POST has an unknown outcome (tests/unit/test_cli_errors.py renders OutcomeUnknown; the
    # recorded path's version is test_sim_unknown_outcome_is_kept_and_reconciled): a query
    # that failed changed nothing, so its line says only what the provider answered.
    fake.answers = [error_response(500, "SYSTEM_ERROR", "系统异常", request_id="X9")]
    result = _run("query-reduction", NO, "--mchid", MCHID, "--bal-account-no", BAL_ACCOUNT_NO)
    assert result.exit_code == 1
    assert _one_error_line(result) == "error: HTTP 500 SYSTEM_ERROR 系统异常 (Request-ID X9)"
    assert len(fake.requests) == 1 and fake.requests[0].method == "GET"


def test_unverified_answer_is_a_failure_not_data(keys: KeySet, fake: Provider) -> None:
    body = b'{"balance":999999,"in_transit_reduction_exist":false}'
    headers = signed_headers(keys, body, signer=keys.other_key)
    fake.answers = [httpx.Response(200, content=body, headers=headers)]
    result = _run("balance", "--mchid", MCHID, "--bal-account-no", BAL_ACCOUNT_NO)
    assert result.exit_code == 1 and "999999" not in result.output
    assert "signature does not verify" in _one_error_line(result)


def test_answer_whose_ledger_does_not_decrypt_is_one_line(keys: KeySet, fake: Provider) -> None:
    # Decryption happens when the answer is read for display: still a one-line failure.
    answer = reduction_answer(keys, NO, extra={"bal_account_no": "bm90IG91ciBjaXBoZXJ0ZXh0"})
    fake.answers = [signed_response(keys, answer, request_id="R-G")]
    args = ("query-reduction", NO, "--mchid", MCHID, "--bal-account-no", BAL_ACCOUNT_NO, "--json")
    result = _run(*args)
    assert result.exit_code == 1, result.output
    error = json.loads(_one_error_line(result))
    assert error["kind"] == "GarbledResponse" and error["request_id"] == "R-G"
    assert "does not decrypt" in error["error"]


def test_network_failure(fake: Provider) -> None:
    fake.answers = [httpx.ConnectError("refused")]
    result = _run("query-bill", "B1")
    assert result.exit_code == 1
    assert (
        _one_error_line(result)
        == "error: GET /v3/platsolution/ecommerce/mch-transfer/compensate-bills/out-bill-no/B1"
        " failed: ConnectError"
    )


# -- bad input: one line, exit 2, nothing loaded or sent -------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["balance", "--mchid", "abc", "--bal-account-no", BAL_ACCOUNT_NO],
            "mchid must be 1 to 32 digits",
        ),
        (["balance", "--mchid", MCHID, "--bal-account-no", ""], "bal_account_no is required"),
        (
            ["query-reduction", "no-dash", "--mchid", MCHID, "--bal-account-no", BAL_ACCOUNT_NO],
            "out_request_no must be 1 to 32 characters",
        ),
        (["query-bill", "B" * 33], "out_bill_no must be 1 to 32 characters"),
        (["balance", "--mchid", MCHID], "Missing option '--bal-account-no'"),
        (["no-such-command"], "No such command"),
    ],
)
def test_bad_input(
    fake: Provider, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    def never(*_: object, **__: object) -> None:
        raise AssertionError("bad input must not load keys or build a client")

    monkeypatch.setattr(cli_provider, "build_client", never)
    result = _run(*args)
    assert result.exit_code == 2, result.output
    line = _one_error_line(result)
    assert line.startswith("error: ") and message in line
    assert fake.requests == [] and result.stdout == ""


# -- `api submit-reduction` is gone: one line, exit 2, nothing loaded or sent ----------------

ORDER = ["--out-request-no", NO, "--type", "FINANCIAL_PENALTY", "--amount", "5"]
FULL_SUBMIT = ["--mchid", MCHID, "--bal-account-no", BAL_ACCOUNT_NO, *ORDER]


@pytest.mark.parametrize(
    "extra", [FULL_SUBMIT, [*FULL_SUBMIT, "--json"], [], ["--help"], ["--amount", "-5"]]
)
def test_submit_reduction_is_refused_and_sends_nothing(
    fake: Provider, monkeypatch: pytest.MonkeyPatch, extra: list[str]
) -> None:
    def never(*_: object, **__: object) -> None:
        raise AssertionError("the removed command must not load keys or build a client")

    monkeypatch.setattr(cli_provider, "build_client", never)
    for app in (cli_api.app, cli_app):  # `wxrecon.cli.api` alone, and `wxrecon api …`
        prefix = [] if app is cli_api.app else ["api"]
        result = runner.invoke(app, [*prefix, "submit-reduction", *extra])
        assert result.exit_code == 2, result.output
        assert BAL_ACCOUNT_NO not in result.output and "Traceback" not in result.output
        line = _one_error_line(result)
        if "--json" in extra:
            line = json.loads(line)["error"]
        else:
            assert line.startswith("error: ")
        assert "was removed" in line and "use `wxrecon reduction submit`" in line
        assert result.stdout == ""
    assert fake.requests == []


def test_api_help_lists_only_read_only_commands(fake: Provider) -> None:
    text = _run("--help").stdout
    assert "balance" in text and "query-reduction" in text and "query-bill" in text
    assert "submit" not in text


# -- `reduction submit` (the recorded path): its bad input, one line, nothing written or sent --

SUBMIT = ["reduction", "submit", "--mchid", MCHID, "--bal-account-no", BAL_ACCOUNT_NO]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            [*SUBMIT, "--out-request-no", NO, "--type", "FINANCIAL_PENALTY", "--amount", "-5"],
            "amount must be a positive number of fen",
        ),
        (
            [*SUBMIT, "--out-request-no", NO, "--type", "FINANCIAL_PENALTY", "--amount", "0"],
            "amount must be a positive number of fen",
        ),
        (
            [*SUBMIT, "--out-request-no", NO, "--type", "FINANCIAL_PENALTY", "--amount", "1.5"],
            "amount must be a whole number of fen",
        ),
        (
            [*SUBMIT, "--out-request-no", NO, "--type", "FINANCIAL_PENALTY", "--amount", "1e3"],
            "amount must be a whole number of fen",
        ),
        (
            [*SUBMIT, "--out-request-no", NO, "--type", "FINANCIAL_PENALTY", "--amount", "１２"],
            "amount must be a whole number of fen",
        ),
        (
            [*SUBMIT, "--out-request-no", "A" * 33, "--type", "FINANCIAL_PENALTY", "--amount", "5"],
            "out_request_no must be 1 to 32 characters of 0-9, A-Z, a-z",
        ),
        (
            [*SUBMIT, "--out-request-no", NO, "--type", "PENALTY", "--amount", "5"],
            "reduction_type must be FINANCIAL_PENALTY or JUDICIAL_DEDUCTION",
        ),
        (
            [*SUBMIT, *ORDER, "--reason", "x" * 513],
            "reason is longer than 512 characters",
        ),
        ([*SUBMIT[:4]], "Missing option"),
    ],
)
def test_reduction_submit_bad_input(cli: Cli, args: list[str], message: str) -> None:
    result = cli.run(*args)
    assert result.exit_code == 2, result.output
    line = _one_error_line(result)
    assert line.startswith("error: ") and message in line
    assert BAL_ACCOUNT_NO not in result.output and result.stdout == ""
    assert cli.count(SpecialReduction) == 0 and cli.count(Event) == 0 and cli.sent == []


def test_reduction_submit_bad_input_as_json(cli: Cli) -> None:
    result = cli.run(*SUBMIT, "--out-request-no", NO, "--type", "X", "--amount", "5", "--json")
    assert result.exit_code == 2
    assert json.loads(_one_error_line(result)) == {
        "error": "reduction_type must be FINANCIAL_PENALTY or JUDICIAL_DEDUCTION"
    }
    assert cli.count(SpecialReduction) == 0 and cli.sent == []


def test_secret_in_the_wrong_option_is_not_echoed(cli: Cli) -> None:
    result = cli.run(
        "reduction",
        "submit",
        "--mchid",
        MCHID,
        "--bal-account-no",
        "x",
        "--out-request-no",
        NO,
        "--type",
        BAL_ACCOUNT_NO,
        "--amount",
        "5",
    )
    assert result.exit_code == 2, result.output
    assert BAL_ACCOUNT_NO not in result.output
    assert cli.count(SpecialReduction) == 0 and cli.sent == []


# -- configuration problems name the setting ------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "setting"),
    [
        ("WXRECON_MCH_PRIVATE_KEY_PATH", "", "WXRECON_MCH_PRIVATE_KEY_PATH"),
        (
            "WXRECON_MCH_PRIVATE_KEY_PATH",
            "/nonexistent/apiclient_key.pem",
            "WXRECON_MCH_PRIVATE_KEY_PATH",
        ),
        (
            "WXRECON_WECHATPAY_PUBLIC_KEY_PATH",
            "/nonexistent/pub.pem",
            "WXRECON_WECHATPAY_PUBLIC_KEY_PATH",
        ),
        ("WXRECON_MCH_CERT_SERIAL", "ABCDEF", "WXRECON_MCH_CERT_SERIAL"),
        ("WXRECON_MCHID", "", "WXRECON_MCHID"),
        ("WXRECON_HTTP_RETRIES", "many", "WXRECON_HTTP_RETRIES"),
        ("WXRECON_WECHATPAY_BASE_URL", "nowhere", "WXRECON_WECHATPAY_BASE_URL"),
    ],
)
def test_broken_settings(
    fake: Provider, monkeypatch: pytest.MonkeyPatch, name: str, value: str, setting: str
) -> None:
    monkeypatch.setenv(name, value)
    result = _run("query-bill", "B1")
    assert result.exit_code == 1
    line = _one_error_line(result)
    assert line.startswith("error: configuration: ") and setting in line
    assert fake.requests == []


def test_garbage_key_file(fake: Provider, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    path.write_text("-----BEGIN PRIVATE KEY-----\nZ2FyYmFnZQ==\n-----END PRIVATE KEY-----\n")
    monkeypatch.setenv("WXRECON_MCH_PRIVATE_KEY_PATH", str(path))
    result = _run("query-bill", "B1", "--json")
    assert result.exit_code == 1
    assert json.loads(_one_error_line(result)) == {
        "error": "configuration: WXRECON_MCH_PRIVATE_KEY_PATH: not an unencrypted PEM private key"
    }


# -- against the simulator ------------------------------------------------------------------


@pytest.fixture
def sim_cli(
    simulator: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Callable[..., Any]]:
    """Run ``wxrecon api`` with the simulator's settings in the environment, unpatched."""
    monkeypatch.chdir(tmp_path)
    for name, value in sim_env(simulator).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("WXRECON_HTTP_RETRIES", "1")
    get_settings.cache_clear()

    def run(*args: str) -> Any:
        result = runner.invoke(cli_api.app, list(args))
        assert SIM_BAL_ACCOUNT_NO not in result.output
        assert "Traceback" not in result.output
        return result

    yield run
    get_settings.cache_clear()


LEDGER = ["--mchid", SIM_MCHID, "--bal-account-no", SIM_BAL_ACCOUNT_NO]


def _json(result: Any) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_sim_bills(sim_cli: Callable[..., Any], sim_admin: Any) -> None:
    sim_admin.seed_bill("BILL1", 8800, "CLOSED", close_reason="NOT_ENOUGH")
    doc = wait_for(
        lambda: _json(sim_cli("query-bill", "BILL1", "--json")), lambda d: d["state"] == "CLOSED"
    )
    assert doc["amount"] == 8800 and doc["close_info"]["close_reason"] == "NOT_ENOUGH"
    missing = sim_cli("query-bill", "NOSUCHBILL")
    assert missing.exit_code == 1
    assert _one_error_line(missing).startswith("error: HTTP 404 ")


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ("bad_signature", "response signature does not verify"),
        ("signtest", "SIGNTEST"),
        ("stale_timestamp", "more than 300s"),
        ("system_error", "HTTP 500 SYSTEM_ERROR"),
        ("rate_limited", "HTTP 429 "),
        ("malformed_json", "HTTP 200 response body is not JSON"),
    ],
)
def test_sim_faults_are_one_line_failures(
    sim_cli: Callable[..., Any], sim_admin: Any, fault: str, expected: str
) -> None:
    sim_admin.add_fault(fault, endpoint="query_balance")
    result = sim_cli("balance", *LEDGER)
    assert result.exit_code == 1 and result.stdout == ""
    assert expected in _one_error_line(result)


def test_sim_platform_certificate_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sim = start_simulator(make_sim_dir(tmp_path / "certsim", cert_mode=True))
    try:
        monkeypatch.chdir(tmp_path)
        env = sim_env(sim)
        assert "WXRECON_PLATFORM_CERT_PATHS" in env
        monkeypatch.delenv("WXRECON_WECHATPAY_PUBLIC_KEY_ID", raising=False)
        monkeypatch.delenv("WXRECON_WECHATPAY_PUBLIC_KEY_PATH", raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        result = runner.invoke(cli_api.app, ["balance", *LEDGER, "--json"])
        assert json.loads(result.stdout)["balance"] == SIM_BALANCE, result.output
    finally:
        sim.stop()
        get_settings.cache_clear()


# -- `reduction submit` against the simulator: the row first, then the POST -------------------


@dataclass
class Recorded:
    """``wxrecon …`` on a migrated database with the simulator's settings, and a worker run
    in-process: it takes the messages the CLI enqueued, then sweeps until nothing is in flight."""

    cli: Cli
    admin: AdminClient
    rec: Reconciler
    taken: int = 0

    def run(self, *args: str) -> Any:
        result = self.cli.run(*args)
        assert SIM_BAL_ACCOUNT_NO not in result.output
        return result

    def json(self, *args: str) -> Any:
        result = self.run(*args, "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    def submit(self, no: str, amount: int, *extra: str) -> Any:
        return self.run(
            "reduction",
            "submit",
            *LEDGER,
            "--out-request-no",
            no,
            "--type",
            "FINANCIAL_PENALTY",
            "--amount",
            str(amount),
            *extra,
        )

    def take(self) -> None:
        """Process the messages the CLI enqueued since the last call, as a worker would."""
        for name, kwargs in self.cli.sent[self.taken :]:
            assert name == "wxrecon.poll_reduction"
            self.rec.process(REDUCTION, kwargs["id"], kwargs["token"])
        self.taken = len(self.cli.sent)

    def work(self) -> None:
        """Take the messages, then sweep (every row due) until nothing is in flight."""
        self.take()
        for _ in range(200):
            with self.cli.db.read() as session:
                states = list(session.execute(select(SpecialReduction.state)).scalars())
            if all(state not in REDUCTION.active for state in states):
                return
            later = utcnow() + timedelta(hours=1)
            for claim in claim_due(self.cli.db, REDUCTION, limit=50, lease=30, now=later):
                self.rec.process(REDUCTION, claim.id, claim.token)
            time.sleep(0.05)
        raise AssertionError(f"still in flight: {states}")

    def posts(self) -> dict[str, int]:
        return dict(self.admin.stats()["requests"].get("submit_reduction", {}))


@pytest.fixture
def recorded(cli: Cli, simulator: Any, sim_admin: AdminClient) -> Iterator[Recorded]:
    cli.setenv(**sim_env(simulator), WXRECON_HTTP_RETRIES="1")
    client = provider.build_client(get_settings())
    settings = EngineSettings(poll_schedule=[0.05], reentry_grace=0.0)
    try:
        yield Recorded(cli, sim_admin, Reconciler(cli.db, client, settings))
    finally:
        client.close()


CLI1 = [
    "reduction",
    "submit",
    *LEDGER,
    "--out-request-no",
    "CLI1",
    "--type",
    "JUDICIAL_DEDUCTION",
    "--amount",
    "2500",
    "--reason",
    "司法案件号：1",
]


def test_sim_reduction_round_trip(recorded: Recorded) -> None:
    assert recorded.json("api", "balance", *LEDGER)["balance"] == SIM_BALANCE
    made = recorded.json(*CLI1)
    assert made["created"] is True and made["state"] == "RECEIVED"
    # The row and its event exist before anything reached the provider.
    assert recorded.admin.reduction("CLI1") is None and recorded.posts() == {}
    shown = recorded.json("reduction", "show", "CLI1")
    assert [e["to_state"] for e in shown["events"]] == ["RECEIVED"]
    recorded.work()
    final = recorded.json("api", "query-reduction", "CLI1", *LEDGER)
    assert final["state"] == "SUCCESS" and final["amount"] == 2500
    assert final["reason"] == "司法案件号：1"
    assert final["bal_account_no"] == mask(SIM_BAL_ACCOUNT_NO)  # decrypted, then masked
    assert recorded.json("api", "balance", *LEDGER)["balance"] == SIM_BALANCE - 2500
    table = recorded.run("api", "query-reduction", "CLI1", *LEDGER)
    assert table.exit_code == 0 and "2500 fen (¥25.00)" in table.stdout
    # The same order again is the same row: followed to its end, not sent again.
    again = recorded.run(*CLI1, "--wait")
    assert again.exit_code == 0 and "SUCCESS" in again.stdout
    assert recorded.posts() == {"200": 1}
    truth = recorded.admin.reduction("CLI1")
    assert truth is not None and truth["applied_count"] == 1


def test_sim_not_enough_is_final_and_never_sent_again(recorded: Recorded) -> None:
    # Where `api submit-reduction` printed the 403 NOT_ENOUGH and, sent again, the 400
    # ALREADY_EXISTS, the recorded path confirms the closure by a signed query, records why
    # (with that query's Request-ID) in the order's events, and never sends it again.
    made = recorded.submit("BIG1", SIM_BALANCE + 1, "--json")
    assert made.exit_code == 0, made.output
    recorded.work()
    closed = recorded.json("api", "query-reduction", "BIG1", *LEDGER)
    assert closed["state"] == "FAILED" and closed["fail_reason"] == "BALANCE_NOT_ENOUGH"
    shown = recorded.json("reduction", "show", "BIG1")
    assert shown["state"] == "FAILED"
    assert [(e["to_state"], e["actor"]) for e in shown["events"]] == [
        ("RECEIVED", default_actor()),  # who handed it in
        ("SUBMITTED", "engine"),
        ("FAILED", "engine"),
    ]
    last = shown["events"][-1]
    assert last["reason"] == "signed query after NOT_ENOUGH: FAILED (BALANCE_NOT_ENOUGH)"
    assert last["request_id"] and last["request_id"] == shown["last_request_id"]
    again = recorded.submit("BIG1", SIM_BALANCE + 1, "--wait")
    assert again.exit_code == 3, again.output
    assert _one_error_line(again) == f"error: reduction #{made_id(made)} FAILED: BALANCE_NOT_ENOUGH"
    as_json = recorded.submit("BIG1", SIM_BALANCE + 1, "--wait", "--json")
    assert as_json.exit_code == 3
    assert "FAILED: BALANCE_NOT_ENOUGH" in json.loads(_one_error_line(as_json))["error"]
    assert recorded.posts() == {"403": 1}  # one POST: no re-entry, no ALREADY_EXISTS
    assert recorded.admin.balance(SIM_MCHID, SIM_BAL_ACCOUNT_NO) == SIM_BALANCE


def test_sim_unknown_outcome_is_kept_and_reconciled(recorded: Recorded) -> None:
    # `api submit-reduction` printed "outcome unknown … query the order"; the recorded path
    # keeps the order in flight (exit 4: do not submit it again) and reconciles it itself.
    recorded.admin.add_fault("system_error", endpoint="submit_reduction", times=1)
    made = recorded.submit("UNK1", 700, "--json")
    assert made.exit_code == 0, made.output
    recorded.take()
    assert recorded.posts() == {"500": 1}
    pending = recorded.json("reduction", "show", "UNK1")
    assert pending["state"] == "SUBMITTED"
    assert pending["last_error"] == (  # the provider's line, as the api command printed it
        "outcome of the POST unknown; will query: HTTP 500 SYSTEM_ERROR outcome unknown:"
        f" system error, retry later (Request-ID {pending['last_request_id']})"
    )
    waited = recorded.submit("UNK1", 700, "--wait", "--timeout", "1")
    assert waited.exit_code == 4, waited.output
    line = _one_error_line(waited)
    assert "still " in line and "do not submit it again" in line
    recorded.work()
    assert recorded.json("reduction", "show", "UNK1")["state"] == "SUCCESS"
    truth = recorded.admin.reduction("UNK1")
    assert truth is not None and truth["applied_count"] == 1


def made_id(result: Any) -> int:
    return int(json.loads(result.stdout)["id"])


def test_balance_fields_not_sent_are_never_shown_as_values(keys: KeySet, fake: Provider) -> None:
    """Both balance fields are optional (选填): one the provider left out (or sent empty) is
    "not given" / "unknown" in the table and null in JSON, never 0 or "no"."""
    fake.answers = [signed_response(keys, {"in_transit_reduction_exist": ""})] * 2
    table = _run("balance", "--mchid", MCHID, "--bal-account-no", BAL_ACCOUNT_NO)
    assert table.exit_code == 0, table.output
    shown = {line.split()[1]: line for line in table.stdout.splitlines() if "│" in line}
    assert "not given" in shown["balance"] and "fen" not in shown["balance"]
    assert "unknown" in shown["in_transit_reduction_exist"]
    as_json = _run("balance", "--mchid", MCHID, "--bal-account-no", BAL_ACCOUNT_NO, "--json")
    data = json.loads(as_json.stdout)
    assert data["balance"] is None and data["in_transit_reduction_exist"] is None
