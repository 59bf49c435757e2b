"""From settings to a ready client: the one place the engine and the CLI get their provider.

Credentials are loaded and cross-checked here, once, at start-up; every problem is a one-line
:class:`CredentialError` naming the ``WXRECON_*`` setting at fault, before any request.
"""

from __future__ import annotations

from typing import Any

from wxrecon.callers import Profile, default_profile
from wxrecon.config import Settings
from wxrecon.wechatpay.client import (
    BeforeRequest,
    ErrorObserver,
    Observer,
    RetryPolicy,
    Timeouts,
    WeChatPayClient,
)
from wxrecon.wechatpay.keys import CredentialError, Credentials
from wxrecon.wechatpay.wire import Wire

__all__ = ["CredentialError", "build_client", "load_all", "load_credentials"]


def load_credentials(settings: Settings, profile: Profile | None = None) -> Credentials:
    """A caller's keys and the provider's verification keys, checked against each other
    (``profile``: one of wxrecon.callers; None: the ``default`` one, from the settings). A
    problem is a CredentialError naming the profile's field."""
    profile = profile or default_profile(settings)
    try:
        return Credentials.load(
            mchid=profile.mchid,
            cert_serial=profile.cert_serial,
            private_key_path=profile.private_key_path,
            public_key_id=profile.wechatpay_public_key_id or None,
            public_key_path=profile.wechatpay_public_key_path,
            platform_cert_paths=list(profile.platform_cert_paths),
            mch_cert_path=profile.cert_path,
        )
    except CredentialError as exc:
        raise CredentialError(profile.names(str(exc))) from None
    except Exception as exc:  # never let a library message (or key bytes) through
        raise CredentialError(
            profile.names(
                f"key settings could not be loaded ({type(exc).__name__}); check "
                "WXRECON_MCH_PRIVATE_KEY_PATH, WXRECON_WECHATPAY_PUBLIC_KEY_PATH and "
                "WXRECON_PLATFORM_CERT_PATHS"
            )
        ) from None


def load_all(settings: Settings) -> dict[str, Credentials]:
    """Every caller's credentials, checked at start-up (the first bad one raises, named)."""
    from wxrecon.callers import load_profiles

    return {name: load_credentials(settings, p) for name, p in load_profiles(settings).items()}


def build_client(
    settings: Settings,
    profile: Profile | None = None,
    *,
    before_request: BeforeRequest | None = None,
    observer: Observer | None = None,
    on_error: ErrorObserver | None = None,
    wire: Wire | None = None,
    transport: Any = None,
) -> WeChatPayClient:
    """A client for ``settings`` signing as ``profile`` (None: ``default``); create it once
    per profile and process and reuse it (it pools
    connections). ``before_request`` is the rate-limiter hook, ``observer`` and ``on_error``
    the metrics ones; ``wire`` (a ScriptedWire) or ``transport`` (an httpx MockTransport)
    replace the network in tests."""
    credentials = load_credentials(settings, profile)
    try:
        return WeChatPayClient(
            credentials,
            base_url=settings.wechatpay_base_url,
            backup_url=settings.wechatpay_backup_url or None,
            timeouts=Timeouts(
                connect=settings.http_connect_timeout,
                read=settings.http_read_timeout,
                total=settings.http_total_timeout,
            ),
            max_body=settings.http_max_body,
            retry=RetryPolicy(attempts=settings.http_retries),
            failover_cooldown=settings.failover_cooldown,
            before_request=before_request,
            observer=observer,
            on_error=on_error,
            wire=wire,
            transport=transport,
            proxy=settings.https_proxy or None,
        )
    except ValueError as exc:  # a malformed base, backup or proxy URL
        raise CredentialError(f"{_setting_of(str(exc))}: {exc}") from None


def _setting_of(message: str) -> str:
    if message.startswith("backup_url"):
        return "WXRECON_WECHATPAY_BACKUP_URL"
    if message.startswith("proxy"):
        return "WXRECON_HTTPS_PROXY"
    return "WXRECON_WECHATPAY_BASE_URL"
