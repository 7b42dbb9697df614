"""The enclave manifest's value rules, free of pydantic.

Shared by the pydantic model (:mod:`sealpod.package.manifest`, used when building and
inspecting) and the fast reader of the run path (:mod:`sealpod.package.view`), so both apply
exactly the same checks to paths, names and hashes.
"""

from __future__ import annotations

import bisect
import json
import re
from typing import Any

SHA256 = re.compile(r"^[0-9a-f]{64}$")
VOLUME_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ENV_NAME = re.compile(r"^[^=\x00]+$")


def is_normal_path(path: str) -> bool:
    """Whether ``path`` is absolute, free of NUL bytes and equal to its
    :func:`posixpath.normpath` without a leading ``//``, in plain string tests (no empty,
    ``.`` or ``..`` component, no trailing slash): thousands of trusted paths are checked at
    every start."""
    if path == "/":
        return True
    return (
        path.startswith("/")
        and not path.endswith(("/", "/.", "/.."))
        and "//" not in path
        and "/./" not in path
        and "/../" not in path
        and "\x00" not in path
    )


def all_normal_paths(paths: list[str]) -> bool:
    """Whether every path is absolute, normalised, NUL-free and not ``/``, in bulk string tests
    (:func:`~sealpod.package._rules.is_normal_path` path by path costs milliseconds)."""
    if not paths:
        return True
    if min(map(len, paths)) < 2:  # "" and "/"
        return False
    # Each path with "/" appended, then a NUL. One NUL per path: none inside a path. Every path
    # starts with "/" (the first, and every one after a NUL). No empty, "." or ".." component
    # and no trailing "/" (appending "/" turns the trailing forms into these too).
    joined = "/\x00".join(paths) + "/\x00"
    return (
        joined.count("\x00") == len(paths)
        and joined.startswith("/")
        and joined.count("\x00/") == len(paths) - 1
        and "//" not in joined
        and "/./" not in joined
        and "/../" not in joined
    )


def covers_any(mount: str, ordered: list[str]) -> bool:
    """Whether ``mount`` is, or is above, a path of the sorted list ``ordered`` (bisection:
    :func:`is_under` over thousands of trusted paths costs milliseconds per mount)."""
    if mount == "/":
        return bool(ordered)
    i = bisect.bisect_left(ordered, mount)
    if i < len(ordered) and ordered[i] == mount:
        return True
    j = bisect.bisect_left(ordered, mount + "/")
    return j < len(ordered) and ordered[j].startswith(mount + "/")


def check_path(path: str, what: str) -> str:
    """Return ``path`` if it is absolute, normalised and free of NUL bytes.

    Raises:
        ValueError: it is not.
    """
    if not path.startswith("/") or "\x00" in path:
        raise ValueError(f"{what}: {path!r} is not an absolute path")
    if not is_normal_path(path):
        raise ValueError(f"{what}: {path!r} is not normalised")
    return path


def is_under(path: str, prefix: str) -> bool:
    """Whether ``path`` is ``prefix`` or below it ("/" is above everything)."""
    return prefix == "/" or path == prefix or path.startswith(prefix + "/")


def canonical_text(document: Any) -> str:
    """:func:`canonical_json` before its UTF-8 encoding."""
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def canonical_json(document: Any) -> bytes:
    """JSON with sorted keys, no whitespace and UTF-8 text (not ``\\u`` escapes)."""
    return canonical_text(document).encode("utf-8")
