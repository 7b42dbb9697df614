"""Rollback protection of encrypted volumes: the coordinator pins each volume's latest tag.

A service instance that mounts a ``rollback_protected`` volume reads the pinned tag (its
volume's root hash, or whatever state digest the volume layer uses: 1-64 opaque bytes) before
trusting the volume, and moves it forward with compare-and-swap after every commit: ``PUT`` names
the version it read, and a stale version is refused (``volume_tag_conflict``), so neither an old
copy of the volume nor a fork written by a second instance can be passed off as current. Requests
are signed with the instance's activation key (``Sealpod-Service-Signature``). A user with the
``volumes``/``reset`` role may clear the pin (a restored backup, a lost volume). Every change
and refusal is audited.

Record: ``(TAG_NAMESPACE, volume) -> {"version", "tag", "by", "at"}``; version 0 = never set.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from sealpod.coordinator._base import CoordinatorBase
from sealpod.coordinator.errors import RequestRefusedError
from sealpod.errors import SealpodError
from sealpod.store import AuditLog, Snapshot, Transaction

__all__ = ["MAX_TAG_BYTES", "TAG_NAMESPACE", "VolumeTag", "VolumesMixin"]

_logger = logging.getLogger(__name__)

TAG_NAMESPACE = "volume-tag"
MAX_TAG_BYTES = 64


@dataclass(frozen=True)
class VolumeTag:
    """The pinned state of one volume: ``version`` 0 and no tag until first set."""

    volume: str
    version: int
    tag: bytes | None


def _read(tx: Transaction | Snapshot, volume: str) -> VolumeTag:
    raw = tx.get(TAG_NAMESPACE, volume)
    if raw is None:
        return VolumeTag(volume=volume, version=0, tag=None)
    document = json.loads(raw)
    tag = document.get("tag")
    return VolumeTag(
        volume=volume,
        version=int(document["version"]),
        tag=None if tag is None else bytes.fromhex(str(tag)),
    )


def _write(tx: Transaction, volume: str, version: int, tag: bytes | None, by: str, at: str) -> None:
    document = {"version": version, "tag": None if tag is None else tag.hex(), "by": by, "at": at}
    tx.put(TAG_NAMESPACE, volume, json.dumps(document, sort_keys=True).encode())


class VolumesMixin(CoordinatorBase):
    """Pinned volume tags (rollback protection), read and moved by the services that mount
    the volume, reset by users with the ``volumes``/``reset`` role."""

    def _check_mount(self, service: str, volume: str) -> None:
        info = self._current_manifest()
        spec = info.manifest.services.get(service)
        if spec is None or volume not in spec.volumes:
            raise RequestRefusedError(
                "volume_not_mounted", f"service {service} does not mount {volume}", status=403
            )
        definition = info.manifest.volumes.get(volume)
        if definition is not None and not definition.rollback_protected:
            raise RequestRefusedError(
                "not_rollback_protected",
                f"volume {volume} is not rollback-protected",
                status=409,
            )

    def volume_tag(self, service: str, instance: str, volume: str) -> VolumeTag:
        """The pinned tag of ``volume``, for an instance of a service that mounts it.

        Raises:
            RequestRefusedError: ``volume_not_mounted`` (403), ``not_rollback_protected``
                (409), ``no_manifest``, ``recovery_mode``.
        """
        try:
            self._check_mount(service, volume)
            with self._require_store().snapshot() as view:
                return _read(view, volume)
        except SealpodError as exc:
            self._audit_refusal(
                {"type": "volume_tag_refused", "service": service, "instance": instance,
                 "volume": volume},
                exc,
            )  # fmt: skip
            raise

    def set_volume_tag(
        self, service: str, instance: str, volume: str, *, expected_version: int, tag: bytes
    ) -> VolumeTag:
        """Move ``volume``'s pin from ``expected_version`` to ``tag`` (version + 1).

        Raises:
            RequestRefusedError: ``volume_tag_conflict`` (409: the pin moved since it was
                read), ``invalid_tag`` (400), ``volume_not_mounted`` (403),
                ``not_rollback_protected`` (409), ``no_manifest``, ``recovery_mode``.
        """
        who = f"{service}/{instance}"
        try:
            if not 1 <= len(tag) <= MAX_TAG_BYTES:
                raise RequestRefusedError(
                    "invalid_tag", f"a tag is 1-{MAX_TAG_BYTES} bytes", status=400
                )
            self._check_mount(service, volume)
            store = self._require_store()
            now = self._now_datetime()

            def body(tx: Transaction) -> VolumeTag:
                current = _read(tx, volume)
                if current.version != expected_version:
                    raise RequestRefusedError(
                        "volume_tag_conflict",
                        f"the pin is at version {current.version}, not {expected_version}",
                        status=409,
                    )
                version = current.version + 1
                _write(tx, volume, version, tag, who, now.isoformat())
                AuditLog.append(
                    tx,
                    {"type": "volume_tag_set", "service": service, "instance": instance,
                     "volume": volume, "version": version},
                    now=now,
                )  # fmt: skip
                return VolumeTag(volume=volume, version=version, tag=tag)

            return self._transact(store, body)
        except SealpodError as exc:
            self._audit_refusal(
                {"type": "volume_tag_refused", "service": service, "instance": instance,
                 "volume": volume},
                exc,
            )  # fmt: skip
            raise

    def reset_volume(self, user: str, volume: str) -> VolumeTag:
        """Clear ``volume``'s pin (role ``volumes``/``reset``); the version still goes up.

        Raises:
            RequestRefusedError: ``unknown_volume`` (404), ``permission_denied`` (403),
                ``no_manifest``, ``recovery_mode``.
        """
        try:
            info = self._current_manifest()
            if volume not in info.manifest.volumes:
                raise RequestRefusedError(
                    "unknown_volume", "the manifest has no such volume", status=404
                )
            self._authorize(info.manifest, user, "volumes", volume, "reset")
            store = self._require_store()
            now = self._now_datetime()

            def body(tx: Transaction) -> VolumeTag:
                version = _read(tx, volume).version + 1
                _write(tx, volume, version, None, f"user:{user}", now.isoformat())
                AuditLog.append(
                    tx,
                    {"type": "volume_reset", "user": user, "volume": volume, "version": version},
                    now=now,
                )
                return VolumeTag(volume=volume, version=version, tag=None)

            return self._transact(store, body)
        except SealpodError as exc:
            self._audit_refusal(
                {"type": "volume_reset_refused", "user": user, "volume": volume}, exc
            )
            raise
