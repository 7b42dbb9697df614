"""Single-use, expiring activation nonces that every replica can check.

A nonce is 32 bytes: ``expiry (u64, big-endian epoch seconds) ‖ random (8) ‖
HMAC-SHA256(K, "sealpod-nonce-v1" ‖ expiry ‖ random)[:16]``, where ``K`` is a random key kept in
the sealed state (so all replicas sharing the state share it, and nobody outside the enclave has
it). Issuing writes nothing; checking needs no memory of issued nonces:

* a nonce whose MAC does not verify was not issued by us (``nonce_unknown``): its expiry cannot
  be forged or extended;
* a nonce past its expiry is refused (``nonce_expired``);
* *single use* is enforced by the store: the coordinator records ``USED_NAMESPACE /
  used_key(nonce)`` in the same transaction as the activation (or as the audit entry of a
  refusal) and checks it inside that transaction, so a replay is refused (``nonce_reused``)
  even when it reaches another replica. Records of expired nonces are pruned as activations go.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
from dataclasses import dataclass

from sealpod.errors import VerificationError

__all__ = [
    "NONCE_BYTES",
    "USED_NAMESPACE",
    "IssuedNonce",
    "NonceIssuer",
    "expiry_of_used_key",
    "used_key",
]

NONCE_BYTES = 32
#: Store namespace of used nonces; keys sort by expiry (see :func:`used_key`).
USED_NAMESPACE = "nonce-used"
_LABEL = b"sealpod-nonce-v1"
_MAC_BYTES = 16
_HEADER = struct.Struct(">Q8s")


@dataclass(frozen=True)
class IssuedNonce:
    """A nonce and the time (epoch seconds) after which it is refused."""

    value: bytes
    expires_at: int


def used_key(nonce: bytes, expiry: int) -> str:
    """The store key recording that ``nonce`` was used: ``<expiry hex>/<nonce hex>``."""
    return f"{expiry:016x}/{bytes(nonce).hex()}"


def expiry_of_used_key(key: str) -> int:
    """The expiry a :func:`used_key` names (``-1`` when the key is not one)."""
    head, _, _ = key.partition("/")
    try:
        return int(head, 16)
    except ValueError:
        return -1


class NonceIssuer:
    """Makes and checks nonces under one key (thread-safe: it holds no mutable state)."""

    def __init__(self, key: bytes, *, ttl: float) -> None:
        if len(key) < 32 or ttl <= 0:
            raise ValueError("a 32-byte key and a positive ttl are needed")
        self._key = bytes(key)
        self._ttl = ttl

    def __repr__(self) -> str:
        return f"NonceIssuer(ttl={self._ttl})"

    def _mac(self, header: bytes) -> bytes:
        return hmac.new(self._key, _LABEL + header, hashlib.sha256).digest()[:_MAC_BYTES]

    def issue(self, now: float) -> IssuedNonce:
        """A fresh nonce, valid until ``now + ttl`` (rounded up to a whole second)."""
        expiry = int(now + self._ttl) + 1
        header = _HEADER.pack(expiry, secrets.token_bytes(8))
        return IssuedNonce(value=header + self._mac(header), expires_at=expiry)

    def check(self, nonce: bytes, now: float) -> int:
        """Check that we issued ``nonce`` and that it has not expired; return its expiry.

        Whether it was used already is the store's part (see the module docstring).

        Raises:
            VerificationError: ``nonce_unknown`` or ``nonce_expired``.
        """
        raw = bytes(nonce)
        if len(raw) != NONCE_BYTES:
            raise VerificationError("nonce_unknown", "the nonce was not issued by us")
        header, mac = raw[: _HEADER.size], raw[_HEADER.size :]
        if not hmac.compare_digest(mac, self._mac(header)):
            raise VerificationError("nonce_unknown", "the nonce was not issued by us")
        expiry, _ = _HEADER.unpack(header)
        if now > expiry:
            raise VerificationError("nonce_expired", "the nonce has expired")
        return int(expiry)
