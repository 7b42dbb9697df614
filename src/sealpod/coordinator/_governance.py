"""Manifest updates by M-of-N approval, and package SVN raises."""

from __future__ import annotations

import datetime
import json
import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from sealpod.coordinator._base import (
    _CA_KEY,
    _MANIFEST_KEY,
    _MANIFEST_SHA_KEY,
    _MANIFEST_SIGNATURE_KEY,
    _NS,
    _PENDING_UPDATE_KEY,
    MESH_KEY_SIZE,
    CoordinatorBase,
    ManifestInfo,
    UpdateStatus,
)
from sealpod.coordinator._secrets import (
    SecretResolver,
    changed_secrets,
    forget_secrets,
)
from sealpod.coordinator.errors import RequestRefusedError
from sealpod.errors import SealpodError, VerificationError
from sealpod.manifest import (
    Manifest,
    canonical_json,
    manifest_digest,
    parse_manifest_document,
    validate_manifest,
)
from sealpod.pki import CoordinatorCA
from sealpod.store import (
    AuditLog,
    SealedStateStore,
    Transaction,
)

_logger = logging.getLogger(__name__)


class GovernanceMixin(CoordinatorBase):
    """Manifest updates by M-of-N approval, and package SVN raises."""

    # -- governance: manifest updates ---------------------------------------------------------

    @staticmethod
    def _threshold(manifest: Manifest) -> int:
        return manifest.governance.update_threshold if manifest.governance is not None else 1

    def _status_of(self, pending: Mapping[str, Any], threshold: int) -> UpdateStatus:
        return UpdateStatus(
            id=str(pending["id"]),
            manifest_sha256=bytes.fromhex(str(pending["sha256"])),
            proposer=str(pending["proposer"]),
            approvals=tuple(str(user) for user in pending["approvals"]),
            threshold=threshold,
        )

    def pending_update(self) -> UpdateStatus | None:
        """The pending manifest update, if any.

        Raises:
            RequestRefusedError: ``no_manifest`` (409), ``recovery_mode`` (503).
        """
        store = self._require_store()
        info = self._current_manifest()
        raw = store.get(_NS, _PENDING_UPDATE_KEY)
        if raw is None:
            return None
        return self._status_of(json.loads(raw), self._threshold(info.manifest))

    def propose_update(self, user: str, document: bytes) -> UpdateStatus:
        """Propose a new manifest as ``user`` (role ``manifest``/``update``); the proposal
        counts as the proposer's approval, so it applies at once when the threshold is 1.

        Raises:
            RequestRefusedError: ``permission_denied`` (403), ``update_pending`` and
                ``manifest_unchanged`` (409), ``no_manifest``, ``recovery_mode``.
            ManifestValidationError: the new manifest is invalid.
        """
        try:
            return self._propose_update(user, document)
        except SealpodError as exc:
            self._audit_refusal({"type": "update_refused", "user": user}, exc)
            raise

    def _propose_update(self, user: str, document: bytes) -> UpdateStatus:
        store = self._require_store()
        info = self._current_manifest()
        self._authorize(info.manifest, user, "manifest", "", "update")
        manifest = validate_manifest(parse_manifest_document(document))
        digest = manifest_digest(manifest)
        if digest == info.sha256:
            raise RequestRefusedError(
                "manifest_unchanged", "the proposal is the current manifest", status=409
            )
        threshold = self._threshold(info.manifest)
        pending = {
            "id": secrets.token_hex(16),
            "canonical": canonical_json(manifest).decode("utf-8"),
            "sha256": digest.hex(),
            "proposer": user,
            "approvals": [user],
            "proposed_at": self._now_datetime().isoformat(),
        }
        now = self._now_datetime()

        def body(
            tx: Transaction, applied: list[tuple[ManifestInfo, CoordinatorCA]]
        ) -> UpdateStatus:
            if tx.get(_NS, _PENDING_UPDATE_KEY) is not None:
                raise RequestRefusedError(
                    "update_pending", "another update is pending (cancel it first)", status=409
                )
            AuditLog.append(
                tx,
                {
                    "type": "update_proposed",
                    "user": user,
                    "id": pending["id"],
                    "sha256": digest.hex(),
                },
                now=now,
            )
            return self._approved(tx, info, pending, threshold, manifest, now, applied)

        return self._commit_update(store, body)

    def approve_update(self, user: str, update_id: str) -> UpdateStatus:
        """Approve the pending update as ``user``; applies it when the threshold is met.

        Raises:
            RequestRefusedError: ``no_such_update`` (404), ``permission_denied`` (403),
                ``already_approved`` (409), ``no_manifest``, ``recovery_mode``.
        """
        try:
            return self._approve_update(user, update_id)
        except SealpodError as exc:
            self._audit_refusal({"type": "update_refused", "user": user, "id": update_id}, exc)
            raise

    def _approve_update(self, user: str, update_id: str) -> UpdateStatus:
        store = self._require_store()
        info = self._current_manifest()
        self._authorize(info.manifest, user, "manifest", "", "update")
        threshold = self._threshold(info.manifest)
        now = self._now_datetime()

        def body(
            tx: Transaction, applied: list[tuple[ManifestInfo, CoordinatorCA]]
        ) -> UpdateStatus:
            pending = self._pending(tx, update_id)
            if user in pending["approvals"]:
                raise RequestRefusedError(
                    "already_approved", "you approved this update already", status=409
                )
            pending["approvals"].append(user)
            AuditLog.append(tx, {"type": "update_approved", "user": user, "id": update_id}, now=now)
            manifest = validate_manifest(json.loads(pending["canonical"]))
            return self._approved(tx, info, pending, threshold, manifest, now, applied)

        return self._commit_update(store, body)

    def cancel_update(self, user: str, update_id: str) -> None:
        """Withdraw the pending update (any user with role ``manifest``/``update``).

        Raises:
            RequestRefusedError: ``no_such_update`` (404), ``permission_denied`` (403).
        """
        try:
            store = self._require_store()
            info = self._current_manifest()
            self._authorize(info.manifest, user, "manifest", "", "update")
            now = self._now_datetime()

            def body(tx: Transaction) -> None:
                self._pending(tx, update_id)
                tx.delete(_NS, _PENDING_UPDATE_KEY)
                AuditLog.append(
                    tx, {"type": "update_cancelled", "user": user, "id": update_id}, now=now
                )

            self._transact(store, body)
        except SealpodError as exc:
            self._audit_refusal({"type": "update_refused", "user": user, "id": update_id}, exc)
            raise

    def raise_min_isv_svn(self, user: str, package: str, min_isv_svn: int) -> UpdateStatus:
        """Raise a package's ``min_isv_svn`` (role ``packages``/``update`` on ``package``),
        without the M-of-N approval of a full update: it can only shut out old enclave
        versions, never let new code in. Applied like an update (new manifest digest and
        signature, mesh rotation), audited as ``package_svn_raised``.

        Raises:
            RequestRefusedError: ``unknown_package`` (404), ``permission_denied`` (403),
                ``svn_not_raised`` and ``update_pending`` (409), ``no_manifest``.
        """
        try:
            return self._raise_min_isv_svn(user, package, min_isv_svn)
        except SealpodError as exc:
            self._audit_refusal(
                {"type": "package_update_refused", "user": user, "package": package}, exc
            )
            raise

    def _raise_min_isv_svn(self, user: str, package: str, min_isv_svn: int) -> UpdateStatus:
        store = self._require_store()
        info = self._current_manifest()
        current = info.manifest.packages.get(package)
        if current is None:
            raise RequestRefusedError(
                "unknown_package", "the manifest has no such package", status=404
            )
        self._authorize(info.manifest, user, "packages", package, "update")
        if not 0 <= min_isv_svn <= 0xFFFF or min_isv_svn <= (current.min_isv_svn or 0):
            raise RequestRefusedError(
                "svn_not_raised",
                f"min_isv_svn can only go up (now {current.min_isv_svn or 0})",
                status=409,
            )
        data = info.manifest.model_dump(mode="json")
        data["packages"][package]["min_isv_svn"] = min_isv_svn
        manifest = validate_manifest(data)
        now = self._now_datetime()
        pending = {
            "id": secrets.token_hex(16),
            "sha256": manifest_digest(manifest).hex(),
            "proposer": user,
            "approvals": [user],
        }

        def body(
            tx: Transaction, applied: list[tuple[ManifestInfo, CoordinatorCA]]
        ) -> UpdateStatus:
            if tx.get(_NS, _PENDING_UPDATE_KEY) is not None:
                raise RequestRefusedError(
                    "update_pending",
                    "a manifest update is pending: raise the SVN in it, or cancel it first",
                    status=409,
                )
            AuditLog.append(
                tx,
                {
                    "type": "package_svn_raised",
                    "user": user,
                    "package": package,
                    "min_isv_svn": min_isv_svn,
                },
                now=now,
            )
            return self._approved(tx, info, pending, 1, manifest, now, applied)

        return self._commit_update(store, body)

    @staticmethod
    def _pending(tx: Transaction, update_id: str) -> dict[str, Any]:
        raw = tx.get(_NS, _PENDING_UPDATE_KEY)
        pending: dict[str, Any] | None = None if raw is None else json.loads(raw)
        if pending is None or pending.get("id") != update_id:
            raise RequestRefusedError("no_such_update", "no pending update has this id", status=404)
        return pending

    def _commit_update(
        self,
        store: SealedStateStore,
        body: Callable[[Transaction, list[tuple[ManifestInfo, CoordinatorCA]]], UpdateStatus],
    ) -> UpdateStatus:
        # ``body`` appends the new (manifest, CA) when it applies the update; they replace the
        # served ones only once the transaction committed.
        applied: list[tuple[ManifestInfo, CoordinatorCA]] = []

        def wrapped(tx: Transaction) -> UpdateStatus:
            applied.clear()
            return body(tx, applied)

        status = self._transact(store, wrapped)
        if applied:
            info, ca = applied[-1]
            with self._lock:
                self._manifest, self._ca = info, ca
            _logger.info("manifest updated to %s", info.sha256.hex())
        return status

    def _approved(
        self,
        tx: Transaction,
        current: ManifestInfo,
        pending: dict[str, Any],
        threshold: int,
        manifest: Manifest,
        now: datetime.datetime,
        applied: list[tuple[ManifestInfo, CoordinatorCA]],
    ) -> UpdateStatus:
        status = self._status_of(pending, threshold)
        if len(pending["approvals"]) < threshold:
            tx.put(_NS, _PENDING_UPDATE_KEY, json.dumps(pending, sort_keys=True).encode())
            return status
        info, ca, shares = self._apply_update(tx, current, manifest, pending, now)
        applied.append((info, ca))
        return replace(status, applied=True, recovery_shares=shares)

    def _apply_update(
        self,
        tx: Transaction,
        current: ManifestInfo,
        manifest: Manifest,
        pending: Mapping[str, Any],
        now: datetime.datetime,
    ) -> tuple[ManifestInfo, CoordinatorCA, dict[str, bytes]]:
        if tx.get(_NS, _MANIFEST_SHA_KEY) != current.sha256:
            raise RequestRefusedError(
                "manifest_changed", "the manifest changed meanwhile; retry", status=503
            )
        raw_ca = tx.get(_NS, _CA_KEY)
        if raw_ca is None:  # pragma: no cover - written on first start
            raise VerificationError("pki_state_malformed", "the coordinator CA is missing")
        ca = CoordinatorCA.from_bytes(raw_ca).rotate_mesh(now=now, key_size=MESH_KEY_SIZE)
        canonical = canonical_json(manifest)
        digest = manifest_digest(manifest)
        signature = self._sign(ca, canonical)
        changed = changed_secrets(current.manifest, manifest)
        forget_secrets(tx, changed, sorted(current.manifest.services))
        tx.put(_NS, _CA_KEY, ca.to_bytes())
        tx.put(_NS, _MANIFEST_KEY, canonical)
        tx.put(_NS, _MANIFEST_SIGNATURE_KEY, signature)
        tx.put(_NS, _MANIFEST_SHA_KEY, digest)
        tx.delete(_NS, _PENDING_UPDATE_KEY)
        generated = SecretResolver(
            tx, manifest, ca, now=now, simulated=self.simulated
        ).generate_shared()
        shares: dict[str, bytes] = {}
        if manifest.recovery is not None and manifest.recovery != current.manifest.recovery:
            shares = self._split_recovery(tx, manifest)
        AuditLog.append(
            tx,
            {
                "type": "manifest_updated",
                "id": pending["id"],
                "sha256": digest.hex(),
                "previous_sha256": current.sha256.hex(),
                "approvals": list(pending["approvals"]),
                "mesh_generation": ca.generation,
                "secrets_reset": sorted(changed),
                "secrets_generated": sorted(generated),
                "recovery_keys": sorted(shares),
            },
            now=now,
        )
        info = ManifestInfo(
            manifest=manifest, canonical=canonical, sha256=digest, signature=signature
        )
        return info, ca, shares
