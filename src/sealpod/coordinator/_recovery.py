"""Recovery of sealed state from k-of-n shares."""

from __future__ import annotations

import hmac
import itertools
import logging
from collections.abc import Callable
from typing import Any

from sealpod.coordinator._base import CoordinatorBase
from sealpod.coordinator.errors import RequestRefusedError
from sealpod.errors import VerificationError
from sealpod.store import (
    AuditLog,
    SealedStateStore,
    recover_store,
)

_logger = logging.getLogger(__name__)

#: Subsets of received recovery shares tried per submitted share.
_MAX_RECOVERY_ATTEMPTS = 64
# A decrypted share: "SPRS" 0x01 | store id (16) | threshold (1) | x (1) | y (32)
# (sealpod.store.sealed); checked for shape here so garbage is refused on arrival.
_SHARE_MAGIC = b"SPRS\x01"
_SHARE_SIZE = len(_SHARE_MAGIC) + 16 + 2 + 32


class RecoveryMixin(CoordinatorBase):
    """Recovery of sealed state from k-of-n shares."""

    # -- recovery ---------------------------------------------------------------------------

    def on_unsealed(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the state has been recovered (e.g. to switch TLS to the root)."""
        self._unsealed_callbacks.append(callback)

    def submit_recovery_share(self, share: bytes) -> dict[str, Any]:
        """Take one decrypted recovery share; once ``threshold`` good ones are in, unseal.

        Shares are checked for shape on arrival (size, magic, threshold).
        When enough have arrived, every ``threshold``-subset that includes the newest share is
        tried (at most :data:`_MAX_RECOVERY_ATTEMPTS`), so a bad share sent by someone else
        cannot block the good ones: it only stays unused. At most twice as many shares as
        there are recovery keys are kept.

        Returns ``{"threshold", "received", "recovered"}``.

        Raises:
            RequestRefusedError: ``not_in_recovery`` (409), ``no_recovery_keys`` (409: the
                state is lost), ``duplicate_share`` (409), ``too_many_shares`` (409),
                ``invalid_share`` (400).
            VerificationError: enough shares arrived but no subset rebuilds the data key
                (``recovery_shares_invalid``, ``recovery_share_foreign``, ...); they are kept.
        """
        raw = bytes(share)
        with self._recovery_lock:
            with self._lock:
                error = self._sealed_error
                if error is None or self._store is not None:
                    raise RequestRefusedError(
                        "not_in_recovery", "the coordinator is not in recovery", status=409
                    )
            threshold = error.threshold
            if threshold < 1:
                raise RequestRefusedError(
                    "no_recovery_keys", "no recovery keys were configured", status=409
                )
            _check_share_shape(raw, threshold)
            # Equal bytes only: refusing a second share with the same x would let whoever
            # sends a forged share first shut out the genuine one.
            if any(hmac.compare_digest(raw, known) for known in self._recovery_shares):
                raise RequestRefusedError(
                    "duplicate_share", "this share was received already", status=409
                )
            if len(self._recovery_shares) >= 2 * max(len(error.recovery_keys), threshold):
                raise RequestRefusedError(
                    "too_many_shares", "too many shares received; restart to clear", status=409
                )
            self._recovery_shares.append(raw)
            received = len(self._recovery_shares)
            if received < threshold:
                return {"threshold": threshold, "received": received, "recovered": False}
            store, used = self._try_recovery(raw, threshold)
            self._recovery_shares = []
        self._load_or_initialise(store)
        with self._lock:
            self._store = store
            self._sealed_error = None
        now = self._now_datetime()
        self._transact(
            store,
            lambda tx: AuditLog.append(
                tx, {"type": "state_recovered", "shares": used, "received": received}, now=now
            ),
        )
        _logger.warning("sealed state recovered with %d of %d shares", used, received)
        for callback in self._unsealed_callbacks:
            callback()
        return {"threshold": threshold, "received": received, "recovered": True}

    def _try_recovery(self, newest: bytes, threshold: int) -> tuple[SealedStateStore, int]:
        if self._sealing_key is None:
            raise RequestRefusedError("no_sealing_key", "this TEE has no sealing key", status=409)
        others = [known for known in self._recovery_shares if known is not newest]
        last_error: VerificationError | None = None
        for attempt, subset in enumerate(itertools.combinations(others, threshold - 1)):
            if attempt >= _MAX_RECOVERY_ATTEMPTS:
                break
            try:
                store = recover_store(
                    self._settings.state_url, self._sealing_key, [*subset, newest]
                )
            except VerificationError as exc:
                last_error = exc
                continue
            return store, threshold
        _logger.warning("no subset of %d received shares opens the state", len(others) + 1)
        if last_error is None:  # pragma: no cover - at least one subset is tried
            raise VerificationError("recovery_shares_invalid", "no subset could be tried")
        raise last_error


def _check_share_shape(raw: bytes, threshold: int) -> None:
    """Refuse what cannot be a share of this store's recovery split.

    Raises:
        RequestRefusedError: ``invalid_share`` (400).
    """
    if len(raw) != _SHARE_SIZE or not raw.startswith(_SHARE_MAGIC):
        raise RequestRefusedError("invalid_share", "not a decrypted sealpod recovery share")
    at = len(_SHARE_MAGIC) + 16
    if raw[at] != threshold or raw[at + 1] == 0:
        raise RequestRefusedError("invalid_share", "the share is for another threshold")
