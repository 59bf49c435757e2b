"""The names of a simulator directory's files, and the error about that directory."""

from __future__ import annotations

DEFAULT_MCHID = "1900000001"
DEFAULT_SP_MCHID = "1900000009"  # the platform merchant `sim init` also creates
DEFAULT_PORT = 8000
SIM_JSON = "sim.json"
CLIENT_ENV = "client.env"
LEDGERS_JSON = "ledgers.json"
SEALING_JSON = "sealing.json"  # the client's data and look-up keys (bal_account_no at rest)

MERCHANT_KEY = "apiclient_key.pem"
MERCHANT_CERT = "apiclient_cert.pem"
WECHATPAY_PUBLIC_KEY = "wechatpay_pub_key.pem"
WECHATPAY_PRIVATE_KEY = "wechatpay_private_key.pem"
PLATFORM_CERT = "platform_cert.pem"
PLATFORM_PRIVATE_KEY = "platform_private_key.pem"
SP_MERCHANT_KEY = "sp_apiclient_key.pem"  # the platform merchant's API key and certificate
SP_MERCHANT_CERT = "sp_apiclient_cert.pem"
CALLERS_TOML = "callers.toml"  # the client's second identity (WXRECON_CALLERS_FILE)
# Who may call what (the provider's pages: 支持商户【普通商户】 / 【平台商户】); "any" is a
# single-identity directory's merchant, allowed everything (older dirs, most tests).
ROLES = ("ordinary", "platform", "any")


class SimDirError(ValueError):
    """The directory is missing, incomplete or would be overwritten; one line, no secrets."""
