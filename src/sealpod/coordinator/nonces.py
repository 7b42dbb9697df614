"""Single-use, expiring activation nonces.

Invariants: a nonce is 32 random bytes from the OS CSPRNG; it is accepted at most once and only
before it expires; a nonce that was used is remembered until it would have expired, so a replay
is reported as such (``nonce_reused``) rather than as unknown. The registry is bounded: when
``capacity`` unexpired nonces are outstanding, new ones are refused until some expire.

Nonces live in memory: a restarted coordinator forgets them, which only makes services ask for a
new one. (Several coordinator replicas behind one address need them in the shared store: later.)
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass

from sealpod.coordinator.errors import RequestRefusedError
from sealpod.errors import VerificationError

__all__ = ["NONCE_BYTES", "IssuedNonce", "NonceRegistry"]

NONCE_BYTES = 32


@dataclass(frozen=True)
class IssuedNonce:
    """A nonce and the time (epoch seconds) after which it is refused."""

    value: bytes
    expires_at: float


class NonceRegistry:
    """Issues nonces and consumes each at most once (thread-safe)."""

    def __init__(self, *, ttl: float, capacity: int) -> None:
        if ttl <= 0 or capacity < 1:
            raise ValueError("ttl must be positive and capacity at least 1")
        self._ttl = ttl
        self._capacity = capacity
        self._lock = threading.Lock()
        # nonce -> (expiry, used)
        self._nonces: dict[bytes, tuple[float, bool]] = {}

    def _purge(self, now: float) -> None:
        expired = [nonce for nonce, (expiry, _) in self._nonces.items() if expiry < now]
        for nonce in expired:
            del self._nonces[nonce]

    def issue(self, now: float) -> IssuedNonce:
        """A fresh nonce valid for the registry's TTL from ``now``.

        Raises:
            RequestRefusedError: ``too_many_nonces`` (503) when ``capacity`` nonces are outstanding.
        """
        with self._lock:
            if len(self._nonces) >= self._capacity:
                self._purge(now)
                if len(self._nonces) >= self._capacity:
                    raise RequestRefusedError(
                        "too_many_nonces", "too many activations in progress", status=503
                    )
            value = secrets.token_bytes(NONCE_BYTES)
            expiry = now + self._ttl
            self._nonces[value] = (expiry, False)
            return IssuedNonce(value=value, expires_at=expiry)

    def consume(self, nonce: bytes, now: float) -> None:
        """Use ``nonce`` once.

        Raises:
            VerificationError: ``nonce_unknown`` (never issued, or forgotten after expiry),
                ``nonce_reused`` (already used) or ``nonce_expired``.
        """
        with self._lock:
            entry = self._nonces.get(bytes(nonce))
            if entry is None:
                raise VerificationError("nonce_unknown", "the nonce was not issued by us")
            expiry, used = entry
            if used:
                raise VerificationError("nonce_reused", "the nonce was already used")
            # Marked used before the expiry check: an expired nonce is refused either way.
            self._nonces[bytes(nonce)] = (expiry, True)
            if now > expiry:
                raise VerificationError("nonce_expired", "the nonce has expired")
