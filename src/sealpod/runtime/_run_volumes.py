"""Encrypted volumes for `sealpod run`: keys from activation, tags pinned at the coordinator.

For each volume the package's enclave manifest declares (name -> mount path), the activation
must have granted a key for the same name and mount path. The volume's ciphertext lives in
``VOLUME_DIR/<name>`` on the host (created empty on first use). A rollback-protected volume
uses the coordinator as its tag authority, asked as the activated instance over the pinned TLS
channel, so a host that restores an older copy of the directory is detected at open.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import platformdirs

from sealpod.errors import ConfigError, VerificationError

if TYPE_CHECKING:
    from sealpod.coordinator.client import ActivationResult
    from sealpod.runtime.encrypted_volume import EncryptedVolumeProvider

_logger = logging.getLogger(__name__)


def default_volume_dir() -> Path:
    """``<user data dir>/sealpod/volumes``."""
    return Path(platformdirs.user_data_dir("sealpod")) / "volumes"


class CoordinatorTagAuthority:
    """The coordinator's pin of each volume's tag, as a :class:`~sealpod.encfs.TagAuthority`.

    The pin is a compare-and-swap register: every report names the pin version it read last.
    """

    def __init__(self, url: str, root_pem: bytes, activation: ActivationResult) -> None:
        self._url = url
        self._root_pem = root_pem
        self._activation = activation
        self._versions: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"CoordinatorTagAuthority(url={self._url!r})"

    def current_tag(self, volume: str) -> bytes | None:
        """The pinned tag (None before the first commit).

        Raises:
            NetworkError: the coordinator cannot be reached.
            RequestRefusedError: the coordinator refuses (volume not granted, ...).
        """
        from sealpod.coordinator.client import get_volume_tag

        pinned = get_volume_tag(self._url, self._root_pem, self._activation, volume)
        self._versions[volume] = pinned.version
        return pinned.tag

    def report_tag(self, volume: str, version: int, tag: bytes) -> None:
        """Move the pin to ``tag`` (``version`` is the volume record's, for the log).

        Raises:
            NetworkError: the coordinator cannot be reached.
            RequestRefusedError: ``volume_tag_conflict`` when the pin moved meanwhile.
        """
        from sealpod.coordinator.client import get_volume_tag, set_volume_tag

        expected = self._versions.get(volume)
        if expected is None:
            expected = get_volume_tag(self._url, self._root_pem, self._activation, volume).version
        pinned = set_volume_tag(
            self._url,
            self._root_pem,
            self._activation,
            volume,
            expected_version=expected,
            tag=tag,
        )
        self._versions[volume] = pinned.version
        _logger.info("volume %s: record version %d pinned at the coordinator", volume, version)


def open_granted_volumes(
    declared: Mapping[str, str],
    activation: ActivationResult,
    *,
    url: str,
    root_pem: bytes,
    volume_dir: Path,
) -> dict[str, EncryptedVolumeProvider]:
    """Open (or create) every declared volume with its granted key; name -> provider.

    Raises:
        ConfigError: a declared volume has no grant, or its grant names another mount path.
        VerificationError: a volume fails verification (``rollback_detected``, also when the
            coordinator pins a state and the directory is gone).
        NetworkError: the coordinator cannot be reached for a tag.
    """
    from sealpod.encfs.volume import Volume
    from sealpod.runtime.encrypted_volume import EncryptedVolumeProvider

    opened: dict[str, EncryptedVolumeProvider] = {}
    try:
        for name, mount in sorted(declared.items()):
            grant = activation.volumes.get(name)
            if grant is None:
                raise ConfigError(
                    f"volume {name}: the coordinator granted no key (add it to the service's "
                    "volumes in the deployment manifest)"
                )
            if grant.mount != mount:
                raise ConfigError(
                    f"volume {name}: the package mounts it at {mount}, the deployment manifest "
                    f"at {grant.mount}"
                )
            authority = (
                CoordinatorTagAuthority(url, root_pem, activation)
                if grant.rollback_protected
                else None
            )
            directory = volume_dir / name
            if directory.is_dir() and any(directory.iterdir()):
                opened[name] = EncryptedVolumeProvider.open_volume(
                    directory, grant.key, name, tag_authority=authority
                )
            else:
                if authority is not None and authority.current_tag(name) is not None:
                    # The coordinator pins a committed state: an empty or missing directory is
                    # that state deleted, not a new volume.
                    raise VerificationError(
                        "rollback_detected",
                        f"volume {name}: the coordinator pins a committed state but "
                        f"{directory} is empty or missing",
                    )
                opened[name] = EncryptedVolumeProvider(
                    Volume.create(directory, grant.key, name, tag_authority=authority)
                )
            _logger.info("volume %s opened from %s at %s", name, directory, mount)
    except BaseException:
        close_volumes(opened)
        raise
    return opened


def close_volumes(providers: Mapping[str, EncryptedVolumeProvider]) -> None:
    """Commit and close every provider; failures are logged (the next open detects them)."""
    for name, provider in providers.items():
        try:
            provider.close()
        except Exception:
            _logger.exception("volume %s: the final commit failed", name)
