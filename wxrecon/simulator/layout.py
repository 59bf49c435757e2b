"""The names of a simulator directory's files, and the error about that directory."""

from __future__ import annotations

DEFAULT_MCHID = "1900000001"
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


class SimDirError(ValueError):
    """The directory is missing, incomplete or would be overwritten; one line, no secrets."""
