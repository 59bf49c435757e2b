"""Base URLs and request targets: which provider URLs are acceptable, and the query string
encoded once, exactly as it is signed and sent."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import quote

import httpx


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_url(url: str, name: str) -> str:
    """``url`` without its trailing slash, or a one-line ValueError naming ``name``.

    Plain http is accepted only on loopback (the simulator, tests): anywhere else it would put
    signed requests and ciphertext on the network in the clear."""
    url = url.rstrip("/")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        raise ValueError(f"{name} is not a URL") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"{name} must be an http(s) URL with a host")
    if parsed.scheme == "http" and not is_loopback(parsed.host):
        raise ValueError(f"{name} must be https:// (http:// only on loopback)")
    return url


# What quote(value, safe="") gives for base64 text (the ciphertext) without its per-character
# Python loop: only + / = need escaping there.
_BASE64_TEXT = re.compile(r"[A-Za-z0-9+/=_.~-]*")


def _quote(value: str) -> str:
    if _BASE64_TEXT.fullmatch(value):
        return value.replace("+", "%2B").replace("/", "%2F").replace("=", "%3D")
    return quote(value, safe="")


def query(params: dict[str, str]) -> str:
    """``?k=v&…`` with every value percent-encoded (RFC 3986 unreserved characters kept)."""
    return "?" + "&".join(f"{k}={_quote(v)}" for k, v in params.items())
