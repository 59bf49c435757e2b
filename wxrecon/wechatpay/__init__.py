"""WeChat Pay APIv3 client: signing, verification, field encryption and typed endpoints.

The names below are loaded on first use: a process that only needs a request type or an
error class (the CLI's import, the settings) does not load the client and its HTTP stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wxrecon.wechatpay.client import (
        Endpoint,
        RetryPolicy,
        Timeouts,
        WeChatPayClient,
    )
    from wxrecon.wechatpay.errors import (
        AlreadyExists,
        GarbledResponse,
        InvalidRequest,
        NetworkError,
        NotEnough,
        NotFound,
        OutcomeUnknown,
        ProviderBusy,
        Rejected,
        Throttled,
        TransientError,
        UnexpectedAnswer,
        UnverifiedResponse,
        WeChatPayError,
    )
    from wxrecon.wechatpay.hosts import BACKUP_URL, PRIMARY_URL
    from wxrecon.wechatpay.keys import CredentialError, Credentials, mask
    from wxrecon.wechatpay.resources import (
        BillState,
        ChannelBalance,
        CompensationBill,
        FailReason,
        ReductionState,
        ReductionType,
        SpecialReduction,
        SpecialReductionRequest,
    )

# name -> the submodule that defines it
_HOMES = {
    "Endpoint": "client",
    "RetryPolicy": "client",
    "Timeouts": "client",
    "WeChatPayClient": "client",
    "AlreadyExists": "errors",
    "GarbledResponse": "errors",
    "InvalidRequest": "errors",
    "NetworkError": "errors",
    "NotEnough": "errors",
    "NotFound": "errors",
    "OutcomeUnknown": "errors",
    "ProviderBusy": "errors",
    "Rejected": "errors",
    "Throttled": "errors",
    "TransientError": "errors",
    "UnexpectedAnswer": "errors",
    "UnverifiedResponse": "errors",
    "WeChatPayError": "errors",
    "BACKUP_URL": "hosts",
    "PRIMARY_URL": "hosts",
    "CredentialError": "keys",
    "Credentials": "keys",
    "mask": "keys",
    "BillState": "resources",
    "ChannelBalance": "resources",
    "CompensationBill": "resources",
    "FailReason": "resources",
    "ReductionState": "resources",
    "ReductionType": "resources",
    "SpecialReduction": "resources",
    "SpecialReductionRequest": "resources",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


__all__ = [
    "BACKUP_URL",
    "PRIMARY_URL",
    "AlreadyExists",
    "BillState",
    "ChannelBalance",
    "CompensationBill",
    "CredentialError",
    "Credentials",
    "Endpoint",
    "FailReason",
    "GarbledResponse",
    "InvalidRequest",
    "NetworkError",
    "NotEnough",
    "NotFound",
    "OutcomeUnknown",
    "ProviderBusy",
    "ReductionState",
    "ReductionType",
    "Rejected",
    "RetryPolicy",
    "SpecialReduction",
    "SpecialReductionRequest",
    "Throttled",
    "Timeouts",
    "TransientError",
    "UnexpectedAnswer",
    "UnverifiedResponse",
    "WeChatPayClient",
    "WeChatPayError",
    "mask",
]
