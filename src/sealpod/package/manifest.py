"""The enclave manifest (``/.sealpod/enclave.json``): everything a package's identity covers.

Invariants:

* the document is a frozen pydantic model that refuses unknown fields; every path in it is
  absolute and normalised, hashes are 64 lowercase hex digits;
* :meth:`EnclaveManifest.canonical_bytes` (sorted keys, no whitespace, UTF-8) is what gets
  measured into MRENCLAVE (:mod:`sealpod.package.measure`), so any change of a trusted file,
  argv, env, mount or identity field changes the measurement;
* trusted paths never lie below a tmpfs, volume or allowed path (those would hide them or
  pass them through unchecked), so the manifest always makes a valid
  :class:`sealpod.runtime.ShieldPolicy`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sealpod.errors import ManifestError
from sealpod.package._rules import (
    ENV_NAME,
    SHA256,
    VOLUME_NAME,
    canonical_json,
    check_path,
    is_under,
)

__all__ = [
    "ENCLAVE_SCHEMA_VERSION",
    "EnclaveManifest",
    "EnclaveUser",
    "TrustedFile",
    "canonical_json",
    "check_path",
    "is_under",
    "parse_env",
]

#: Version of the enclave.json schema; part of the measured bytes.
ENCLAVE_SCHEMA_VERSION = 1

_SHA256 = SHA256
_VOLUME_NAME = VOLUME_NAME
_ENV_NAME = ENV_NAME
_U16 = Annotated[int, Field(ge=0, le=0xFFFF, strict=True)]


class _Document(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class TrustedFile(_Document):
    """A trusted path: a regular file (SHA-256 of its content) or a symbolic link (SHA-256 of
    its target string's bytes, which is also what the runtime's shield checks)."""

    sha256: str
    size: Annotated[int, Field(ge=0)]
    mode: Annotated[int, Field(ge=0, le=0o7777)]
    type: Literal["file", "symlink"]

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str) -> str:
        if not _SHA256.fullmatch(value):
            raise ValueError("sha256 must be 64 lowercase hex digits")
        return value


class EnclaveUser(_Document):
    """The numeric user and group the entrypoint runs as."""

    uid: Annotated[int, Field(ge=0, lt=1 << 32)]
    gid: Annotated[int, Field(ge=0, lt=1 << 32)]


class EnclaveManifest(_Document):
    """The measured policy of one confidential package."""

    schema_version: Literal[1] = 1
    #: The executable started first (absolute path inside the image; a trusted path).
    entrypoint: str
    #: The full argv, argv[0] included.
    argv: tuple[str, ...]
    env: dict[str, str]
    working_dir: str = "/"
    user: EnclaveUser = EnclaveUser(uid=0, gid=0)
    trusted_files: dict[str, TrustedFile]
    #: Paths (and everything below them) passed through read-write, unchecked.
    allowed_files: tuple[str, ...] = ()
    #: In-memory directories.
    tmpfs: tuple[str, ...] = ()
    #: Encrypted volume name -> mount path.
    volumes: dict[str, str] = {}
    isv_prod_id: _U16 = 0
    isv_svn: _U16 = 0
    debug: bool = False

    @field_validator("entrypoint", "working_dir")
    @classmethod
    def _absolute(cls, value: str) -> str:
        return check_path(value, "path")

    @field_validator("argv")
    @classmethod
    def _argv(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("argv must not be empty")
        if any("\x00" in arg for arg in value):
            raise ValueError("argv must not contain NUL bytes")
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for name, item in value.items():
            if not _ENV_NAME.fullmatch(name) or "\x00" in item:
                raise ValueError(f"env: {name!r} is not a valid variable")
        return value

    @field_validator("trusted_files")
    @classmethod
    def _trusted(cls, value: dict[str, TrustedFile]) -> dict[str, TrustedFile]:
        for path in value:
            check_path(path, "trusted_files")
            if path == "/":
                raise ValueError("trusted_files: '/' cannot be a trusted file")
        return value

    @field_validator("allowed_files", "tmpfs")
    @classmethod
    def _paths(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for path in value:
            check_path(path, "path")
        if len(set(value)) != len(value):
            raise ValueError("a path is listed twice")
        return value

    @field_validator("volumes")
    @classmethod
    def _volumes(cls, value: dict[str, str]) -> dict[str, str]:
        for name, path in value.items():
            if not _VOLUME_NAME.fullmatch(name):
                raise ValueError(f"volumes: {name!r} is not a valid volume name")
            check_path(path, f"volumes.{name}")
            if path == "/":
                raise ValueError(f"volumes.{name}: '/' cannot be a volume")
        if len(set(value.values())) != len(value):
            raise ValueError("volumes: two volumes share a mount path")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> EnclaveManifest:
        if "/" in self.tmpfs:
            raise ValueError("tmpfs: '/' cannot be a tmpfs")
        for what, mounts in (
            ("tmpfs", self.tmpfs),
            ("volumes", tuple(self.volumes.values())),
            ("allowed_files", self.allowed_files),
        ):
            for mount in mounts:
                hidden = next((t for t in self.trusted_files if is_under(t, mount)), None)
                if hidden is not None:
                    raise ValueError(f"{what}: {mount} covers the trusted file {hidden}")
        if self.entrypoint not in self.trusted_files:
            raise ValueError(f"entrypoint {self.entrypoint} is not a trusted file")
        return self

    # -- serialisation ------------------------------------------------------------------------

    def canonical_bytes(self) -> bytes:
        """The measured encoding: JSON with sorted keys, no whitespace, UTF-8."""
        return canonical_json(self.model_dump(mode="json"))

    @classmethod
    def from_bytes(cls, data: bytes) -> EnclaveManifest:
        """Parse an enclave.json document.

        Raises:
            ManifestError: not JSON, or not a valid enclave manifest (the path names the field).
        """
        try:
            document = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ManifestError(f"enclave.json is not valid JSON: {exc}") from exc
        return cls.from_document(document)

    @classmethod
    def from_document(cls, document: Any) -> EnclaveManifest:
        """Validate a parsed enclave.json document (JSON types: lists for tuples).

        Raises:
            ManifestError: the document is not a valid enclave manifest.
        """
        try:
            return cls.model_validate(document, strict=False)
        except ValidationError as exc:
            error = exc.errors()[0]
            path = ".".join(str(p) for p in error["loc"])
            raise ManifestError(error["msg"], path=path or "enclave.json") from exc

    # -- views for the runtime ----------------------------------------------------------------

    def trusted_digests(self) -> dict[str, str]:
        """Trusted path -> SHA-256 hex, the shape :class:`~sealpod.runtime.ShieldPolicy` takes."""
        return {path: entry.sha256 for path, entry in self.trusted_files.items()}

    @property
    def trusted_bytes(self) -> int:
        """The summed size of the trusted regular files."""
        return sum(e.size for e in self.trusted_files.values() if e.type == "file")


def parse_env(entries: Mapping[str, str] | list[str] | tuple[str, ...]) -> dict[str, str]:
    """``["K=V", ...]`` (an image's Env) as a dict; later entries win.

    Raises:
        ManifestError: an entry without ``=`` or with an empty name.
    """
    if isinstance(entries, Mapping):
        return dict(entries)
    env: dict[str, str] = {}
    for entry in entries:
        name, sep, value = entry.partition("=")
        if not sep or not name:
            raise ManifestError(f"{entry!r} is not NAME=VALUE", path="env")
        env[name] = value
    return env
