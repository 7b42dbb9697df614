"""A fast, pydantic-free reader of ``enclave.json`` for the run path.

:func:`read_canonical` accepts a document only if it is a *complete, canonical* enclave
manifest: every field of :class:`~sealpod.package.manifest.EnclaveManifest` present (defaults
included) with exactly the JSON type the model dumps, every value passing the model's rules
(shared through :mod:`sealpod.package._rules`), and the bytes equal to the canonical
re-encoding of the parsed document. Such a document validates under the pydantic model and
dumps back to exactly the same bytes, so accepting it here is the same decision as the
model's parse-and-compare, at a fraction of its cost (no model classes, no re-serialisation
of thousands of sub-models).

Anything it does not accept returns ``None``: the caller then falls back to the pydantic
model, which gives the precise error (``package_manifest_invalid``) or finds the document
valid but not canonical (``package_manifest_not_canonical``). The fast path can only ever
accept less than the model, never more.
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

from sealpod.package._rules import (
    ENV_NAME,
    VOLUME_NAME,
    canonical_json,
    check_path,
    is_normal_path,
)

if TYPE_CHECKING:
    from sealpod.package.manifest import EnclaveManifest

__all__ = ["EnclaveView", "RunUser", "read_canonical"]

_TOP: Final = frozenset(
    {
        "schema_version",
        "entrypoint",
        "argv",
        "env",
        "working_dir",
        "user",
        "trusted_files",
        "allowed_files",
        "tmpfs",
        "volumes",
        "isv_prod_id",
        "isv_svn",
        "debug",
    }
)
_TRUSTED: Final = frozenset({"sha256", "size", "mode", "type"})
_USER: Final = frozenset({"uid", "gid"})
_HEX: Final = re.compile(r"[0-9a-f]*")


@dataclass(frozen=True)
class RunUser:
    """The numeric user and group the entrypoint runs as."""

    uid: int
    gid: int


@dataclass(frozen=True)
class EnclaveView:
    """What the runtime needs from a *validated* enclave manifest (read-only views).

    Built by :func:`read_canonical` or :meth:`from_model`; attribute names match
    :class:`~sealpod.package.manifest.EnclaveManifest` where the runtime reads them.
    """

    entrypoint: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    working_dir: str
    user: RunUser
    #: Trusted path -> SHA-256 hex.
    trusted: Mapping[str, str] = field(repr=False)
    #: The trusted paths that are symbolic links (their hash is of the target string).
    trusted_links: frozenset[str] = field(repr=False)
    allowed_files: tuple[str, ...]
    tmpfs: tuple[str, ...]
    volumes: Mapping[str, str]
    isv_prod_id: int
    isv_svn: int
    debug: bool
    trusted_bytes: int

    @property
    def trusted_count(self) -> int:
        """How many trusted paths (files and links) the manifest lists."""
        return len(self.trusted)

    def trusted_digests(self) -> dict[str, str]:
        """Trusted path -> SHA-256 hex, the shape :class:`~sealpod.runtime.ShieldPolicy` takes."""
        return dict(self.trusted)

    @classmethod
    def from_model(cls, manifest: EnclaveManifest) -> EnclaveView:
        """The view of a manifest the pydantic model validated."""
        return cls(
            entrypoint=manifest.entrypoint,
            argv=tuple(manifest.argv),
            env=MappingProxyType(dict(manifest.env)),
            working_dir=manifest.working_dir,
            user=RunUser(manifest.user.uid, manifest.user.gid),
            trusted=MappingProxyType(manifest.trusted_digests()),
            trusted_links=frozenset(
                p for p, e in manifest.trusted_files.items() if e.type == "symlink"
            ),
            allowed_files=tuple(manifest.allowed_files),
            tmpfs=tuple(manifest.tmpfs),
            volumes=MappingProxyType(dict(manifest.volumes)),
            isv_prod_id=manifest.isv_prod_id,
            isv_svn=manifest.isv_svn,
            debug=manifest.debug,
            trusted_bytes=manifest.trusted_bytes,
        )


class _RefusedError(Exception):
    """The document is not a complete, canonical, valid manifest (the reason does not matter:
    the pydantic model explains it)."""


def _is_int(value: object, low: int, high: int | None = None) -> bool:
    return type(value) is int and value >= low and (high is None or value <= high)


def _str(value: object) -> str:
    if type(value) is not str:
        raise _RefusedError
    return value


def _dict(value: object, keys: frozenset[str] | None = None) -> dict[str, Any]:
    if type(value) is not dict or (keys is not None and value.keys() != keys):
        raise _RefusedError
    return value


def _paths(value: object) -> tuple[str, ...]:
    if type(value) is not list:
        raise _RefusedError
    paths = tuple(check_path(_str(p), "path") for p in value)
    if len(set(paths)) != len(paths):
        raise _RefusedError
    return paths


def _trusted(value: object) -> tuple[dict[str, str], frozenset[str], int]:
    """Check every trusted entry (one tight loop: a package lists thousands)."""
    entries = _dict(value)
    digests: list[str] = []
    links: list[str] = []
    total = 0
    for path, entry in entries.items():
        if type(entry) is not dict or entry.keys() != _TRUSTED:
            raise _RefusedError
        digest, size, mode, kind = entry["sha256"], entry["size"], entry["mode"], entry["type"]
        if type(digest) is not str or type(size) is not int or type(mode) is not int:
            raise _RefusedError
        if size < 0 or not 0 <= mode <= 0o7777:
            raise _RefusedError
        if kind == "file":
            total += size
        elif kind == "symlink":
            links.append(path)
        else:
            raise _RefusedError
        digests.append(digest)
    # The hashes and paths are checked in bulk: 64 lowercase hex digits each; absolute,
    # normalised paths, never "/".
    if any(len(d) != 64 for d in digests) or not _HEX.fullmatch("".join(digests)):
        raise _RefusedError
    if "/" in entries or not all(map(is_normal_path, entries)):
        raise _RefusedError
    return dict(zip(entries, digests, strict=True)), frozenset(links), total


def _covers_trusted(mount: str, ordered: list[str]) -> bool:
    """Whether ``mount`` is, or is above, a path of the sorted list ``ordered``."""
    if mount == "/":
        return bool(ordered)
    i = bisect.bisect_left(ordered, mount)
    if i < len(ordered) and ordered[i] == mount:
        return True
    j = bisect.bisect_left(ordered, mount + "/")
    return j < len(ordered) and ordered[j].startswith(mount + "/")


def _view(document: object) -> EnclaveView:
    doc = _dict(document, _TOP)
    if not _is_int(doc["schema_version"], 1, 1):
        raise _RefusedError
    entrypoint = check_path(_str(doc["entrypoint"]), "entrypoint")
    working_dir = check_path(_str(doc["working_dir"]), "working_dir")
    raw_argv = doc["argv"]
    if type(raw_argv) is not list or not raw_argv:
        raise _RefusedError
    argv = tuple(_str(arg) for arg in raw_argv)
    if any("\x00" in arg for arg in argv):
        raise _RefusedError
    env = _dict(doc["env"])
    for name, item in env.items():
        if not ENV_NAME.fullmatch(name) or "\x00" in _str(item):
            raise _RefusedError
    user = _dict(doc["user"], _USER)
    if not _is_int(user["uid"], 0, (1 << 32) - 1) or not _is_int(user["gid"], 0, (1 << 32) - 1):
        raise _RefusedError
    trusted, links, trusted_bytes = _trusted(doc["trusted_files"])
    allowed = _paths(doc["allowed_files"])
    tmpfs = _paths(doc["tmpfs"])
    volumes = _dict(doc["volumes"])
    for name, path in volumes.items():
        if not VOLUME_NAME.fullmatch(name) or check_path(_str(path), "volumes") == "/":
            raise _RefusedError
    if len(set(volumes.values())) != len(volumes) or "/" in tmpfs:
        raise _RefusedError
    mounts = (*tmpfs, *volumes.values(), *allowed)
    if mounts:
        ordered = sorted(trusted)
        if any(_covers_trusted(mount, ordered) for mount in mounts):
            raise _RefusedError
    if entrypoint not in trusted:
        raise _RefusedError
    prod, svn, debug = doc["isv_prod_id"], doc["isv_svn"], doc["debug"]
    if not _is_int(prod, 0, 0xFFFF) or not _is_int(svn, 0, 0xFFFF) or type(debug) is not bool:
        raise _RefusedError
    return EnclaveView(
        entrypoint=entrypoint,
        argv=argv,
        env=MappingProxyType(dict(env)),
        working_dir=working_dir,
        user=RunUser(user["uid"], user["gid"]),
        trusted=MappingProxyType(trusted),
        trusted_links=links,
        allowed_files=allowed,
        tmpfs=tmpfs,
        volumes=MappingProxyType(dict(volumes)),
        isv_prod_id=prod,
        isv_svn=svn,
        debug=debug,
        trusted_bytes=trusted_bytes,
    )


def read_canonical(data: bytes) -> EnclaveView | None:
    """The view of ``data`` if it is a complete, valid, canonical enclave manifest, else None.

    ``None`` says nothing about *why*: the caller asks the pydantic model
    (:meth:`~sealpod.package.manifest.EnclaveManifest.from_bytes`) for the error.
    """
    try:
        document = json.loads(data)
        view = _view(document)
        if canonical_json(document) != data:
            return None
    except (_RefusedError, ValueError, TypeError, UnicodeError, RecursionError):
        return None
    return view
