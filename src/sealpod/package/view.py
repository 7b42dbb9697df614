"""A fast, pydantic-free reader of ``enclave.json`` for the run path.

:func:`read_canonical` accepts a document only if it is a *complete, canonical* enclave
manifest: every field of :class:`~sealpod.package.manifest.EnclaveManifest` present (defaults
included) with exactly the JSON type the model dumps, every value passing the model's rules
(shared through :mod:`sealpod.package._rules`), and the bytes equal to the canonical
re-encoding of the parsed document (checked without re-encoding the trusted files: see
:func:`read_canonical`). Such a document validates under the pydantic model and
dumps back to exactly the same bytes, so accepting it here is the same decision as the
model's parse-and-compare, at a fraction of its cost (no model classes, no re-serialisation
of thousands of sub-models).

Anything it does not accept returns ``None``: the caller then falls back to the pydantic
model, which gives the precise error (``package_manifest_invalid``) or finds the document
valid but not canonical (``package_manifest_not_canonical``). The fast path can only ever
accept less than the model, never more.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import compress
from operator import itemgetter
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, NamedTuple, cast

from sealpod.package._rules import (
    ENV_NAME,
    VOLUME_NAME,
    all_normal_paths,
    canonical_json,
    canonical_text,
    check_path,
    covers_any,
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
_TOP_ORDER: Final = tuple(sorted(_TOP))
_TRUSTED_ORDER: Final = ("mode", "sha256", "size", "type")
_TRUSTED_FIELDS: Final = itemgetter(*_TRUSTED_ORDER)
_KINDS: Final = frozenset({"file", "symlink"})
#: Where ``trusted_files`` starts in a canonical manifest, and what follows its end.
_TRUSTED_KEY: Final = '"trusted_files":{'
_AFTER_TRUSTED: Final = '}},"user":'
#: The pieces of ``"PATH":{"mode":M,"sha256":"H","size":S,"type":"T"}`` split at ``"`` that
#: are the same in every entry: (index in the 14 pieces of an entry, text).
_ENTRY_TOKENS: Final = (
    (2, ":{"),
    (3, "mode"),
    (5, "sha256"),
    (6, ":"),
    (8, ","),
    (9, "size"),
    (11, "type"),
    (12, ":"),
)
#: The characters of the integer pieces of the entries (see :func:`_canonical_ints`).
_INT_CHARACTERS: Final = b'0123456789:,"'
#: What the hash and path columns may not hold (as bytes.translate deletions).
_HEX_DIGITS: Final = b"0123456789abcdef"
_CONTROL: Final = bytes(range(32))
_USER_ORDER: Final = ("gid", "uid")
_USER: Final = frozenset(_USER_ORDER)


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


class _Trusted(NamedTuple):
    """The checked ``trusted_files``: paths in sorted order, path -> SHA-256, the links and
    the regular files' total size."""

    ordered: list[str]
    digests: dict[str, str]
    links: frozenset[str]
    total: int


def _checked_trusted(
    paths: list[str],
    modes: Sequence[object],
    digests: Sequence[object],
    sizes: Sequence[object],
    kinds: Sequence[object],
) -> _Trusted:
    """Check the trusted entries column by column (a package lists thousands).

    Paths must be strictly increasing: sorted (canonical) and unique.
    """
    if not paths:
        return _Trusted([], {}, frozenset(), 0)
    if set(map(type, modes)) != {int} or set(map(type, sizes)) != {int}:
        raise _RefusedError
    ints = cast("Sequence[int]", modes), cast("Sequence[int]", sizes)
    if min(ints[1]) < 0 or min(ints[0]) < 0 or max(ints[0]) > 0o7777:
        raise _RefusedError
    if not set(kinds) <= _KINDS:
        raise _RefusedError
    # 64 lowercase hex digits each (join refuses anything but strings, encode anything but
    # ASCII).
    hashes = cast("Sequence[str]", digests)
    if set(map(len, hashes)) != {64} or "".join(hashes).encode("ascii").translate(
        None, _HEX_DIGITS
    ):
        raise _RefusedError
    if not all_normal_paths(paths) or not all(map(str.__lt__, paths, paths[1:])):
        raise _RefusedError
    links = frozenset(compress(paths, map("symlink".__eq__, kinds)))
    total = sum(compress(ints[1], map("file".__eq__, kinds)))
    return _Trusted(paths, dict(zip(paths, hashes, strict=True)), links, total)


def _trusted_from_json(value: object) -> _Trusted:
    """The trusted entries of a parsed document."""
    entries = _dict(value)
    values = entries.values()
    # Every entry lists exactly these keys (in this order, as the canonical form does).
    if not all(map(_TRUSTED_ORDER.__eq__, map(tuple, values))):
        raise _RefusedError
    columns = tuple(zip(*map(_TRUSTED_FIELDS, values), strict=True)) or ((), (), (), ())
    return _checked_trusted(list(entries), *columns)


def _canonical_ints(tokens: list[str]) -> list[int]:
    """``[":511,", ":0,"]`` (values as the canonical form writes them) -> ``[511, 0]``.

    Checked in bulk on the pieces joined with ``"`` (which none of them holds): only digits,
    ``:``, ``,`` and ``"``; one ``:`` and one ``,`` per piece, each piece starting with ``:``
    (the text and every ``"`` but the last are followed by ``:``) and ending with ``,`` (every
    ``"`` follows a ``,``); so each piece is ``:DIGITS,``, with at least one digit and no
    leading zero.
    """
    count = len(tokens)
    joined = '"'.join(tokens) + '"'
    if (
        joined.encode("ascii").translate(None, _INT_CHARACTERS)
        or joined.count(":") != count
        or joined.count(",") != count
        or not joined.startswith(":")
        or joined.count('":') != count - 1
        or joined.count(',"') != count
        or ":," in joined
        or joined.count(":0") != joined.count(":0,")
    ):
        raise _RefusedError
    return list(map(int, joined[1:-2].split(',":')))


def _trusted_from_text(section: str) -> _Trusted:
    """The trusted entries from the canonical text of ``trusted_files`` (no backslash in it).

    Without escapes every ``"`` delimits a string, so splitting at ``"`` cuts each canonical
    entry ``"PATH":{"mode":M,"sha256":"H","size":S,"type":"T"}`` into the same 14 pieces;
    anything else (another key order, whitespace, a nested value) does not fit and is refused.
    """
    tokens = section.split('"')
    count, extra = divmod(len(tokens) - 1, 14)
    if extra or not count or tokens[0] != "{" or tokens[-1] != "}}":
        raise _RefusedError
    for index, constant in _ENTRY_TOKENS:
        if tokens[index::14].count(constant) != count:
            raise _RefusedError
    if tokens[14:-1:14].count("},") != count - 1:
        raise _RefusedError
    paths = tokens[1::14]
    # JSON forbids raw control characters in strings (json.loads refuses them too).
    joined = "".join(paths).encode("utf-8")
    if len(joined.translate(None, _CONTROL)) != len(joined):
        raise _RefusedError
    return _checked_trusted(
        paths,
        _canonical_ints(tokens[4::14]),
        tokens[7::14],
        _canonical_ints(tokens[10::14]),
        tokens[13::14],
    )


def _view(doc: dict[str, Any], trusted: _Trusted) -> EnclaveView:
    """The view of a parsed document whose ``trusted_files`` were checked into ``trusted``.

    Refuses (:class:`_RefusedError`) anything invalid, and dictionaries whose keys are not in
    sorted order (never canonical)."""
    if tuple(doc) != _TOP_ORDER:
        raise _RefusedError
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
    if list(env) != sorted(env):
        raise _RefusedError
    for name, item in env.items():
        if not ENV_NAME.fullmatch(name) or "\x00" in _str(item):
            raise _RefusedError
    user = _dict(doc["user"], _USER)
    if tuple(user) != _USER_ORDER:
        raise _RefusedError
    if not _is_int(user["uid"], 0, (1 << 32) - 1) or not _is_int(user["gid"], 0, (1 << 32) - 1):
        raise _RefusedError
    allowed = _paths(doc["allowed_files"])
    tmpfs = _paths(doc["tmpfs"])
    volumes = _dict(doc["volumes"])
    if list(volumes) != sorted(volumes):
        raise _RefusedError
    for name, path in volumes.items():
        if not VOLUME_NAME.fullmatch(name) or check_path(_str(path), "volumes") == "/":
            raise _RefusedError
    if len(set(volumes.values())) != len(volumes) or "/" in tmpfs:
        raise _RefusedError
    mounts = (*tmpfs, *volumes.values(), *allowed)
    if any(covers_any(mount, trusted.ordered) for mount in mounts):
        raise _RefusedError
    if entrypoint not in trusted.digests:
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
        trusted=MappingProxyType(trusted.digests),
        trusted_links=trusted.links,
        allowed_files=allowed,
        tmpfs=tmpfs,
        volumes=MappingProxyType(dict(volumes)),
        isv_prod_id=prod,
        isv_svn=svn,
        debug=debug,
        trusted_bytes=trusted.total,
    )


def _read_split(text: str) -> EnclaveView:
    """The fast path of :func:`read_canonical`, for a text without a backslash.

    The text is cut into the ``trusted_files`` object and the rest, with ``{}`` in its place.
    Without escapes, strings cannot contain ``"``, so the first ``"trusted_files":{`` and the
    first ``}},"user":`` after it are where a canonical manifest has them (a path cannot be
    ``user``), and the cut of any other text is refused below: the rest must be a valid manifest
    in canonical form whose ``trusted_files`` is that ``{}``, and the object must consist of
    canonical entries only. Then the text is the canonical encoding of the rest with the
    entries in place of ``{}``, and ``json.loads`` would read exactly the document checked here.
    """
    start = text.index(_TRUSTED_KEY) + len(_TRUSTED_KEY) - 1
    end = text.index(_AFTER_TRUSTED, start) + 2
    trusted = _trusted_from_text(text[start:end])
    rest = text[:start] + "{}" + text[end:]
    doc = _dict(json.loads(rest), _TOP)
    if doc["trusted_files"] != {}:
        raise _RefusedError
    view = _view(doc, trusted)
    # The rest holds no escape, so only whitespace, duplicate keys or "-0" could make it
    # differ from its canonical form besides key order (checked by _view), and each of those
    # makes it longer.
    if len(rest) != len(canonical_text(doc)):
        raise _RefusedError
    return view


def read_canonical(data: bytes) -> EnclaveView | None:
    """The view of ``data`` if it is a complete, valid, canonical enclave manifest, else None.

    ``None`` says nothing about *why*: the caller asks the pydantic model
    (:meth:`~sealpod.package.manifest.EnclaveManifest.from_bytes`) for the error.

    Canonical means ``data == canonical_json(json.loads(data))``. Re-encoding (or even parsing
    into dictionaries) the thousands of trusted files of a real image costs more than the rest
    of verification, so a document without a backslash, which is every manifest sealpod
    builds from ordinary paths and values, is read by :func:`_read_split`. A document with a
    backslash, or one the fast path does not take, is parsed, checked, re-encoded and compared.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeError:
        return None
    if "\\" not in text:
        try:
            return _read_split(text)
        except (_RefusedError, ValueError, TypeError, RecursionError):
            pass  # not in the fast path's form: the general path decides
    try:
        document = _dict(json.loads(text), _TOP)
        view = _view(document, _trusted_from_json(document["trusted_files"]))
        if canonical_json(document) != data:
            return None
    except (_RefusedError, ValueError, TypeError, UnicodeError, RecursionError):
        return None
    return view
