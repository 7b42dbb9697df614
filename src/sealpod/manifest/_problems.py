"""Problems found in a manifest, their paths, and the error that lists all of them."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from sealpod.errors import ManifestError

__all__ = ["ManifestProblem", "ManifestValidationError", "format_path", "problems_from_pydantic"]

Loc = tuple[str | int, ...]

_PLAIN_SEGMENT = re.compile(r"^[A-Za-z0-9_-]+$")


def format_path(loc: Loc) -> str:
    """``("services", "api", "env", "DB_URL")`` -> ``services.api.env.DB_URL``.

    Integers become ``[i]``; a key that is not a plain word (``/etc/app.conf``, ``a.b``) is
    quoted as a JSON string in brackets so the path stays unambiguous:
    ``services.web.files["/etc/app.conf"]``.
    """
    out = ""
    for segment in loc:
        if isinstance(segment, int):
            out += f"[{segment}]"
        elif _PLAIN_SEGMENT.fullmatch(segment):
            out += f".{segment}" if out else segment
        else:
            out += f"[{json.dumps(segment, ensure_ascii=False)}]"
    return out


@dataclass(frozen=True, slots=True)
class ManifestProblem:
    """One thing wrong with a manifest, at ``loc`` (see :func:`format_path`)."""

    loc: Loc
    message: str

    @property
    def path(self) -> str:
        """The location as a string, e.g. ``services.api.env.DB_URL``."""
        return format_path(self.loc)

    def __str__(self) -> str:
        path = self.path
        return f"{path}: {self.message}" if path else self.message

    def to_json(self) -> dict[str, str]:
        """``{"path": ..., "message": ...}`` for ``--json`` output and API bodies."""
        return {"path": self.path, "message": self.message}


class ManifestValidationError(ManifestError):
    """A manifest has one or more problems; ``problems`` lists every one with its path."""

    def __init__(self, problems: Sequence[ManifestProblem]) -> None:
        if not problems:
            raise ValueError("ManifestValidationError needs at least one problem")
        self.problems: tuple[ManifestProblem, ...] = tuple(problems)
        if len(self.problems) == 1:
            only = self.problems[0]
            super().__init__(only.message, path=only.path)
        else:
            lines = [f"invalid manifest ({len(self.problems)} problems):"]
            lines += [f"  {problem}" for problem in self.problems]
            super().__init__("\n".join(lines))
            self.path = self.problems[0].path


# Friendlier words for the patterns the models use (pydantic would print the regex).
_PATTERN_MESSAGES = {
    r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$": (
        "invalid name (1-64 letters, digits, '_', '.', '-'; starting with a letter or digit)"
    ),
    r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$": (
        "invalid service name (a DNS label: lower-case letters, digits and '-', at most 63)"
    ),
    r"^[A-Za-z_][A-Za-z0-9_]*$": (
        "invalid environment variable name (letters, digits and '_', not starting with a digit)"
    ),
    r"^[0-9a-fA-F]{64}$": "expected 64 hex digits (32 bytes)",
    r"^/": "not an absolute path",
    "-----BEGIN PUBLIC KEY-----": "not a PEM public key (-----BEGIN PUBLIC KEY-----)",
    "-----BEGIN CERTIFICATE-----": "not a PEM X.509 certificate (-----BEGIN CERTIFICATE-----)",
    r"^INTEL-SA-[0-9]{5}$": "expected an Intel advisory ID like INTEL-SA-00615",
    r"^https://[^\s]+$": "expected an https:// URL",
}

_MESSAGES_BY_TYPE = {
    "extra_forbidden": "unknown field",
    "missing": "required field is missing",
    "tuple_type": "expected a list",
    "list_type": "expected a list",
    "string_type": "expected a string",
    "int_type": "expected an integer",
    "bool_type": "expected true or false",
    "dict_type": "expected a mapping",
    "model_type": "expected a mapping",
    "model_attributes_type": "expected a mapping",
}


def _message(error: Any) -> str:
    kind = error.get("type", "")
    if kind in _MESSAGES_BY_TYPE:
        return _MESSAGES_BY_TYPE[kind]
    if kind == "string_pattern_mismatch":
        pattern = (error.get("ctx") or {}).get("pattern", "")
        if pattern in _PATTERN_MESSAGES:
            return _PATTERN_MESSAGES[pattern]
    if kind == "literal_error":
        expected = (error.get("ctx") or {}).get("expected", "")
        return f"expected {expected}"
    message = str(error.get("msg", "invalid value"))
    return message.removeprefix("Value error, ")


def problems_from_pydantic(exc: ValidationError, prefix: Loc = ()) -> list[ManifestProblem]:
    """Turn every pydantic error into a :class:`ManifestProblem` with a clean path.

    pydantic marks an invalid *key* of a mapping with a trailing ``"[key]"`` segment; the
    problem is then reported at the key itself.
    """
    problems: list[ManifestProblem] = []
    for error in exc.errors(include_url=False, include_input=False):
        loc: list[str | int] = list(prefix)
        for segment in error["loc"]:
            if segment == "[key]":
                continue
            loc.append(segment)
        problems.append(ManifestProblem(tuple(loc), _message(error)))
    return problems


def sorted_unique(problems: Iterable[ManifestProblem]) -> list[ManifestProblem]:
    """Drop exact duplicates, keep the first-seen order otherwise."""
    seen: set[ManifestProblem] = set()
    out: list[ManifestProblem] = []
    for problem in problems:
        if problem not in seen:
            seen.add(problem)
            out.append(problem)
    return out
