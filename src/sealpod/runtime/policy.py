"""The shield's policy: what exists for the application, what is trusted, allowed or in memory.

Kept apart from :mod:`sealpod.runtime.shield` so that a policy can be built and validated
without the FUSE binding installed.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from sealpod.errors import ConfigError
from sealpod.runtime.volumes import VolumeProvider

_SHA256_HEX = frozenset("0123456789abcdef")


def _normalise(path: str, what: str) -> str:
    """Check that ``path`` is absolute and normalised; return it.

    Raises:
        ConfigError: it is not.
    """
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
        raise ConfigError(f"{what}: {path!r} is not an absolute path")
    if posixpath.normpath(path) != path or path.startswith("//"):
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

    def __post_init__(self) -> None:
        object.__setattr__(self, "backing_root", Path(self.backing_root))
        trusted = {}
        for path, digest in self.trusted.items():
            _normalise(path, "trusted")
            if path == "/":
                raise ConfigError("trusted: '/' cannot be a trusted file")
            if len(digest) != 64 or not set(digest) <= _SHA256_HEX:
                raise ConfigError(f"trusted: {path}: not a lowercase hex SHA-256")
            trusted[path] = digest
        object.__setattr__(self, "trusted", MappingProxyType(trusted))
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
        for what, paths in (("tmpfs", self.tmpfs), ("volumes", tuple(volumes))):
            for mount in paths:
                if mount == "/":
                    raise ConfigError(f"{what}: '/' cannot be replaced")
                if any(is_under(t, mount) for t in trusted):
                    raise ConfigError(f"{what}: {mount} would hide trusted files")
        for path in memory:
            if any(is_under(t, path) for t in trusted):
                raise ConfigError(f"memory_files: {path} overlaps a trusted path")
            if any(is_under(path, v) for v in volumes):
                raise ConfigError(f"memory_files: {path} is inside a volume")
