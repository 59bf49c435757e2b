"""The cryptographic floor of one order: the RSA and AES work a special reduction cannot do
without from intake to SUCCESS, measured with ``cryptography`` alone in this process, with
the run's own keys, so the worker's CPU per order can be divided by it in the same run.

What one order needs in the worker, per provider request (a submit, then one or more
queries): an RSA-2048 PKCS#1 v1.5 signature of the request, an RSA-OAEP encryption of
``bal_account_no`` for it, and a verification of the answer's signature. Per order: two
RSA-OAEP decryptions of the answer's ``bal_account_no`` (the POST's answer and the SUCCESS
are compared with our ledger number) and two AES-GCM openings of the sealed ledger number
(one per step that loads the row). Intake's sealing (AES-GCM and the look-up HMAC) runs in
the benchmark's own process, not the worker's, and is reported beside the floor.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from wxrecon.simulator import SimDir

# The provider mandates OAEP with SHA-1 for encrypted fields.
_OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)  # noqa: S303
DECRYPTS_PER_ORDER = 1  # the SUCCESS answer's ledger number (the only one compared)
OPENS_PER_ORDER = 2  # the submit step's load and the query step's


@dataclass
class Floor:
    ms: dict[str, float]  # median CPU ms of one operation
    repeats: int

    @property
    def per_request_ms(self) -> float:
        return self.ms["sign"] + self.ms["oaep_encrypt"] + self.ms["verify"]

    def per_order_ms(self, requests_per_order: float) -> float:
        return (
            requests_per_order * self.per_request_ms
            + DECRYPTS_PER_ORDER * self.ms["oaep_decrypt"]
            + OPENS_PER_ORDER * self.ms["aes_gcm_open"]
        )

    def to_json(self, requests_per_order: float | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "operation_ms": {k: round(v, 4) for k, v in self.ms.items()},
            "repeats": self.repeats,
            "per_request_ms": round(self.per_request_ms, 4),
            "decrypts_per_order": DECRYPTS_PER_ORDER,
            "aes_opens_per_order": OPENS_PER_ORDER,
        }
        if requests_per_order is not None:
            out["requests_per_order"] = round(requests_per_order, 3)
            out["per_order_ms"] = round(self.per_order_ms(requests_per_order), 4)
        return out


def _median_cpu_ms(op: Callable[[], Any], repeats: int, batch: int = 10) -> float:
    """Median over ``repeats // batch`` batches of the process CPU of ``batch`` calls."""
    op()  # warm
    found = []
    for _ in range(max(1, repeats // batch)):
        t0 = time.process_time()
        for _ in range(batch):
            op()
        found.append((time.process_time() - t0) / batch)
    return 1000 * statistics.median(found)


def measure(sim_dir: SimDir, repeats: int = 300) -> Floor:
    """Each operation with the keys the worker uses (its private key, the provider's public
    key), single-threaded, CPU time of this process."""
    return Floor({name: _median_cpu_ms(op, repeats) for name, op in _ops(sim_dir).items()}, repeats)


class During:
    """The floor sampled while a phase runs: every ``every`` seconds a thread times ``batch``
    calls of each operation by its own CPU clock; ``stop`` gives the medians. Measured after
    the phase instead, it read 1.15–1.66 ms per order on this shared virtual machine within
    minutes, with the worker's CPU per order moving apart from it: the ratio of the two is
    only sound on the same minutes. It costs a few ms of CPU a second."""

    def __init__(self, sim_dir: SimDir, every: float = 1.0, batch: int = 4) -> None:
        self._ops = _ops(sim_dir)
        self._every, self._batch = every, batch
        self._found: dict[str, list[float]] = {name: [] for name in self._ops}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="crypto-floor", daemon=True)

    def start(self) -> During:
        for op in self._ops.values():
            op()  # warm
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            for name, op in self._ops.items():
                t0 = time.thread_time()
                for _ in range(self._batch):
                    op()
                self._found[name].append((time.thread_time() - t0) / self._batch)

    def stop(self) -> Floor | None:
        """The medians, or None when the phase was too short for a sample."""
        self._stop.set()
        self._thread.join(5)
        if not all(self._found.values()):
            return None
        ms = {name: 1000 * statistics.median(v) for name, v in self._found.items()}
        return Floor(ms, self._batch * len(next(iter(self._found.values()))))


def _ops(sim_dir: SimDir) -> dict[str, Callable[[], Any]]:
    creds = sim_dir.credentials()
    private = creds.private_key
    public = creds.encrypt_key
    answer_public = private.public_key()  # answers' ledger numbers are encrypted for us
    ledger = b"621719000040088"
    message = (
        b"GET\n/v3/aggracct/special-reductions/B0000000001?mchid=1900004000&bal_account_no="
        + base64.b64encode(public.encrypt(ledger, _OAEP))
        + b"\n1764720000\n0123456789abcdef0123456789abcdef\n\n"
    )
    body = b'{"out_request_no":"B0000000001","state":"SUCCESS","amount":1000}' * 4
    signed = b"1764720000\n0123456789abcdef0123456789abcdef\n" + body + b"\n"
    signature = private.sign(signed, padding.PKCS1v15(), hashes.SHA256())
    answer_ciphertext = answer_public.encrypt(ledger, _OAEP)
    aes = AESGCM(os.urandom(32))
    nonce = os.urandom(12)
    aad = b"1900004000\x00B0000000001"
    sealed = aes.encrypt(nonce, ledger, aad)
    lookup_key = os.urandom(32)
    return {
        "sign": lambda: private.sign(message, padding.PKCS1v15(), hashes.SHA256()),
        "oaep_encrypt": lambda: public.encrypt(ledger, _OAEP),
        "verify": lambda: answer_public.verify(
            signature, signed, padding.PKCS1v15(), hashes.SHA256()
        ),
        "oaep_decrypt": lambda: private.decrypt(answer_ciphertext, _OAEP),
        "aes_gcm_open": lambda: aes.decrypt(nonce, sealed, aad),
        # intake's part, in the benchmark's process: reported, not in the worker's floor
        "aes_gcm_seal": lambda: aes.encrypt(os.urandom(12), ledger, aad),
        "lookup_hmac": lambda: hmac.new(lookup_key, ledger, hashlib.sha256).digest(),
    }
