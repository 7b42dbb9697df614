"""The shield's policy: what exists for the application, what is trusted, allowed or in memory.

Kept apart from :mod:`sealpod.runtime.shield` so that a policy can be built and validated
without the FUSE binding installed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from sealpod.errors import ConfigError
from sealpod.package._rules import all_normal_paths, covers_any, is_normal_path
from sealpod.runtime.volumes import VolumeProvider

_SHA256_RUN = re.compile(r"[0-9a-f]*")
_HEX_DIGITS = b"0123456789abcdef"


def _all_trusted_valid(trusted: dict[str, str]) -> bool:
    """The common case, in bulk: string paths, absolute, normalised, not "/", and 64 lowercase
    hex digits per hash (per-entry checks of thousands of files cost milliseconds)."""
    try:
        digests = list(trusted.values())
        return (
            all_normal_paths(list(trusted))
            and set(map(len, digests)) <= {64}
            and not "".join(digests).encode("ascii").translate(None, _HEX_DIGITS)
        )
    except (TypeError, UnicodeError):  # not all strings: the slow path names the culprit
        return False


def _normalise(path: str, what: str) -> str:
    """Check that ``path`` is absolute and normalised; return it.

    Raises:
        ConfigError: it is not.
    """
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
        raise ConfigError(f"{what}: {path!r} is not an absolute path")
    if not is_normal_path(path):
        raise ConfigError(f"{what}: {path!r} is not normalised")
    return path


def is_under(path: str, prefix: str) -> bool:
    """Whether ``path`` is ``prefix`` or below it ("/" is above everything)."""
    return prefix == "/" or path == prefix or path.startswith(prefix + "/")


@dataclass(frozen=True, kw_only=True)
class ShieldPolicy:
    """What the shield serves. Paths are absolute, as the application sees them.

    ``memory_files`` hold secrets: they are excluded from ``repr`` and never logged.
    ``owner`` (uid, gid) owns the in-memory nodes (tmpfs directories, memory files).
    ``trusted_links`` are the trusted paths served as symbolic links (from the measured
    manifest); ``None`` takes them from the backing tree when the shield is mounted.
    ``preverify`` names trusted files to hash ahead of their first open (order kept).

    Raises:
        ConfigError: a path is not absolute/normalised, a hash is not 64 lowercase hex digits,
            "/" is a tmpfs or volume, or a tmpfs, volume or memory file overlaps a trusted path.
    """

    backing_root: Path
    trusted: Mapping[str, str]
    allowed: frozenset[str] = frozenset()
    tmpfs: tuple[str, ...] = ()
    memory_files: Mapping[str, bytes] = field(default_factory=dict, repr=False)
    volumes: Mapping[str, VolumeProvider] = field(default_factory=dict)
    owner: tuple[int, int] = (0, 0)
    #: Empty read-only directories where the sandbox mounts /proc, /dev and the like.
    mountpoints: tuple[str, ...] = ("/proc", "/dev")
    trusted_links: frozenset[str] | None = None
    #: Trusted files to verify in the background as soon as the shield starts (a hint: the
    #: files a program's start opens first); each open still checks as always.
    preverify: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "backing_root", Path(self.backing_root))
        trusted = dict(self.trusted)
        # Thousands of entries at every start: the common case is checked in bulk, an entry
        # failing it is then found (and named) one by one.
        if not _all_trusted_valid(trusted):
            for path, digest in trusted.items():
                _normalise(path, "trusted")
                if path == "/":
                    raise ConfigError("trusted: '/' cannot be a trusted file")
                if not isinstance(digest, str) or not _SHA256_RUN.fullmatch(digest):
                    raise ConfigError(f"trusted: {path}: not a lowercase hex SHA-256")
                if len(digest) != 64:
                    raise ConfigError(f"trusted: {path}: not a lowercase hex SHA-256")
        object.__setattr__(self, "trusted", MappingProxyType(trusted))
        if self.trusted_links is not None:
            links = frozenset(self.trusted_links)
            stray = sorted(links - trusted.keys())
            if stray:
                raise ConfigError(f"trusted_links: {stray[0]} is not a trusted path")
            object.__setattr__(self, "trusted_links", links)
        object.__setattr__(
            self, "allowed", frozenset(_normalise(p, "allowed") for p in self.allowed)
        )
        object.__setattr__(self, "tmpfs", tuple(_normalise(p, "tmpfs") for p in self.tmpfs))
        object.__setattr__(
            self, "mountpoints", tuple(_normalise(p, "mountpoints") for p in self.mountpoints)
        )
        memory = {_normalise(p, "memory_files"): bytes(v) for p, v in self.memory_files.items()}
        object.__setattr__(self, "memory_files", MappingProxyType(memory))
        volumes = {_normalise(p, "volumes"): v for p, v in self.volumes.items()}
        object.__setattr__(self, "volumes", MappingProxyType(volumes))
        ordered = sorted(trusted) if self.tmpfs or volumes or memory else []
        for what, paths in (("tmpfs", self.tmpfs), ("volumes", tuple(volumes))):
            for mount in paths:
                if mount == "/":
                    raise ConfigError(f"{what}: '/' cannot be replaced")
                if covers_any(mount, ordered):
                    raise ConfigError(f"{what}: {mount} would hide trusted files")
        for path in memory:
            if covers_any(path, ordered):
                raise ConfigError(f"memory_files: {path} overlaps a trusted path")
            if any(is_under(path, v) for v in volumes):
                raise ConfigError(f"memory_files: {path} is inside a volume")
