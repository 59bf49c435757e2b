"""Caller profiles: loading (both key modes, bad profiles) and which caller an order gets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.fixtures_sim import make_sim_dir
from wxrecon import callers
from wxrecon.callers import CallerError, Profile, profiles_from, resolve
from wxrecon.config import Settings
from wxrecon.provider import load_all, load_credentials
from wxrecon.simulator.material import (
    MERCHANT_CERT,
    MERCHANT_KEY,
    PLATFORM_CERT,
    WECHATPAY_PUBLIC_KEY,
)
from wxrecon.wechatpay.errors import InvalidRequest
from wxrecon.wechatpay.keys import CredentialError

PLATFORM = {
    "mchid": "1900000009",
    "cert_serial": "5157F09EFDC096DE15EBE81A47057A7232F1B8E1",
    "private_key_path": "/etc/wxrecon/platform_key.pem",
    "wechatpay_public_key_id": "PUB_KEY_ID_0114232019112100000000000000",
    "wechatpay_public_key_path": "/etc/wxrecon/wxp_pub.pem",
}


def settings(**kw: Any) -> Settings:
    return Settings.model_validate({"mchid": "1900000001", "mch_cert_serial": "AB", **kw})


def test_default_comes_from_the_settings_and_the_file_adds_profiles() -> None:
    profiles = profiles_from({"callers": {"platform": PLATFORM}}, settings())
    assert set(profiles) == {"default", "platform"}
    assert profiles["default"].mchid == "1900000001"
    platform = profiles["platform"]
    assert platform.mchid == "1900000009"
    assert platform.private_key_path == Path("/etc/wxrecon/platform_key.pem")
    assert platform.platform_cert_paths == ()


def test_certificate_mode_profile() -> None:
    table = {k: v for k, v in PLATFORM.items() if "public_key" not in k}
    table["platform_cert_paths"] = ["/etc/wxrecon/cert1.pem", "/etc/wxrecon/cert2.pem"]
    profile = profiles_from({"callers": {"cert": table}}, settings())["cert"]
    assert profile.platform_cert_paths == ("/etc/wxrecon/cert1.pem", "/etc/wxrecon/cert2.pem")
    assert profile.wechatpay_public_key_id is None


@pytest.mark.parametrize(
    ("parsed", "expect"),
    [
        (
            {"callers": {"platform": {**PLATFORM, "mchid": ""}}},
            "caller 'platform': mchid is not set",
        ),
        (
            {"callers": {"platform": {k: v for k, v in PLATFORM.items() if k != "cert_serial"}}},
            "caller 'platform': cert_serial is not set",
        ),
        ({"callers": {"platform": {**PLATFORM, "colour": "red"}}}, "unknown field(s): colour"),
        ({"callers": {"platform": {**PLATFORM, "cert_path": 7}}}, "cert_path must be a non-empty"),
        (
            {"callers": {"platform": {**PLATFORM, "platform_cert_paths": "x.pem"}}},
            "platform_cert_paths must be a list",
        ),
        (
            {"callers": {"platform": {k: v for k, v in PLATFORM.items() if "public_key" not in k}}},
            "caller 'platform': no way to verify the provider",
        ),
        ({"callers": {"Bad Name": PLATFORM}}, "caller 'Bad Name': the name must be"),
        ({"callers": {"default": PLATFORM}}, "caller 'default' is the WXRECON_MCHID settings"),
        ({"callers": {"platform": "x"}}, "caller 'platform': must be a table"),
        ({"callers": [1]}, "callers must be a table"),
        ({"other": {}}, "unknown table(s): other"),
    ],
)
def test_bad_profiles_are_one_line_naming_profile_and_field(
    parsed: dict[str, Any], expect: str
) -> None:
    with pytest.raises(CallerError) as info:
        profiles_from(parsed, settings())
    message = str(info.value)
    assert expect in message and "\n" not in message
    assert message.startswith("WXRECON_CALLERS_FILE:")


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CallerError, match="not valid TOML"):
        callers.parse_file(b"[callers.platform\nmchid = 1")
    with pytest.raises(CallerError, match="not UTF-8"):
        callers.parse_file(b"\xff\xfe")
    with pytest.raises(CallerError, match="cannot read"):
        callers.load_profiles(settings(callers_file=tmp_path / "nope.toml"))


def test_default_caller_per_kind_and_explicit_and_unknown() -> None:
    s = settings(bill_caller="platform")
    known = {"default": object(), "platform": object()}
    assert resolve("reduction", None, known, s) == "default"
    assert resolve("bill", None, known, s) == "platform"
    assert resolve("bill", "default", known, s) == "default"
    with pytest.raises(InvalidRequest, match="unknown caller 'nobody'"):
        resolve("reduction", "nobody", known, s)
    with pytest.raises(InvalidRequest, match="must be 1-32"):
        resolve("reduction", "x" * 33, known, s)
    with pytest.raises(InvalidRequest, match="must be a string"):
        resolve("reduction", 5, known, s)


def test_default_caller_settings_are_checked() -> None:
    from wxrecon.config import SettingsError, load_settings

    with pytest.raises(SettingsError, match="WXRECON_BILL_CALLER"):
        load_settings(bill_caller="Not A Name")


def _profile(root: Path, name: str, **kw: Any) -> Profile:
    sim = make_sim_dir(root)
    table: dict[str, Any] = {
        "mchid": sim.mchid,
        "cert_serial": sim.mch_cert_serial,
        "private_key_path": str(sim.file(MERCHANT_KEY)),
        "cert_path": str(sim.file(MERCHANT_CERT)),
        **kw,
    }
    return profiles_from({"callers": {name: table}}, settings())[name]


def test_profiles_load_real_keys_in_both_modes(tmp_path: Path) -> None:
    sim = make_sim_dir(tmp_path / "sim")
    public = _profile(
        tmp_path / "a",
        "pub",
        wechatpay_public_key_id=sim.wechatpay_public_key_id,
        wechatpay_public_key_path=str(sim.file(WECHATPAY_PUBLIC_KEY)),
    )
    certs = _profile(tmp_path / "b", "certs", platform_cert_paths=[str(sim.file(PLATFORM_CERT))])
    # The same generated material (one per session) in both dirs: the keys match either way.
    assert load_credentials(settings(), public).encrypt_serial == sim.wechatpay_public_key_id
    assert load_credentials(settings(), certs).encrypt_serial == sim.platform_cert_serial


def test_a_bad_key_names_the_profile_and_its_field(tmp_path: Path) -> None:
    sim = make_sim_dir(tmp_path / "sim")
    broken = _profile(
        tmp_path / "a",
        "platform",
        platform_cert_paths=[str(sim.file(PLATFORM_CERT))],
        private_key_path=str(tmp_path / "missing.pem"),
    )
    with pytest.raises(CredentialError) as info:
        load_credentials(settings(), broken)
    message = str(info.value)
    assert message.startswith("caller 'platform': private_key_path")
    assert "WXRECON_" not in message


def test_every_profile_is_checked_at_start_up(tmp_path: Path) -> None:
    sim = make_sim_dir(tmp_path / "sim")
    env = sim.client_env()
    good = settings(
        mchid=env["WXRECON_MCHID"],
        mch_cert_serial=env["WXRECON_MCH_CERT_SERIAL"],
        mch_private_key_path=env["WXRECON_MCH_PRIVATE_KEY_PATH"],
        wechatpay_public_key_id=env["WXRECON_WECHATPAY_PUBLIC_KEY_ID"],
        wechatpay_public_key_path=env["WXRECON_WECHATPAY_PUBLIC_KEY_PATH"],
    )
    file = tmp_path / "callers.toml"
    file.write_text(
        "[callers.platform]\n"
        'mchid = "1900000009"\n'
        f'cert_serial = "{sim.mch_cert_serial}"\n'
        f'private_key_path = "{tmp_path / "gone.pem"}"\n'
        f'platform_cert_paths = ["{sim.file(PLATFORM_CERT)}"]\n'
    )
    assert set(load_all(good)) == {"default"}
    with pytest.raises(CredentialError, match=r"^caller 'platform': private_key_path"):
        load_all(good.model_copy(update={"callers_file": file}))
