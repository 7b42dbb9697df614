"""Loading, validating, canonicalising and hashing deployment manifests.

Invariant: :func:`load_manifest` and :func:`validate_manifest` return a :class:`Manifest` only
after all three checks passed — the schema (pydantic), the cross-references
(:func:`reference_problems`) and a dry run of every template. Otherwise they raise
:class:`ManifestValidationError` listing every problem with its path. Schema problems are
reported first: the later checks need a well-formed document, so they run once it is.

Parsing is conservative: JSON (a document starting with ``{``) is read by :mod:`json`; anything
else by a YAML safe loader that refuses duplicate keys and aliases (a duplicate key would let two
readers see different manifests; aliases allow "billion laughs" expansion).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml
from pydantic import ValidationError

from sealpod.errors import ConfigError
from sealpod.manifest._checks import manifest_warnings, reference_problems
from sealpod.manifest._problems import (
    ManifestProblem,
    ManifestValidationError,
    problems_from_pydantic,
    sorted_unique,
)
from sealpod.manifest.models import Manifest
from sealpod.manifest.templates import dry_run_problems, template_problems

__all__ = [
    "MAX_MANIFEST_BYTES",
    "CheckResult",
    "canonical_json",
    "check_manifest",
    "load_manifest",
    "manifest_digest",
    "manifest_json_schema",
    "parse_manifest_document",
    "validate_manifest",
]

_logger = logging.getLogger(__name__)

#: Larger documents are refused before parsing.
MAX_MANIFEST_BYTES: Final = 4 << 20

_SCHEMA_ID: Final = "https://sealpod.dev/schemas/manifest-v1.json"


class _StrictYAMLLoader(yaml.SafeLoader):
    """SafeLoader without aliases and without duplicate mapping keys."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.constructor.ConstructorError(
                None, None, "YAML aliases (*name) are not allowed in a manifest", event.start_mark
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _value in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    raise yaml.constructor.ConstructorError(
                        None, None, "YAML merge keys (<<) are not allowed", key_node.start_mark
                    )
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                except TypeError:
                    duplicate = False
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark
                    )
                try:
                    seen.add(key)
                except TypeError:
                    pass
        return super().construct_mapping(node, deep=deep)


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _problem(message: str) -> ManifestValidationError:
    return ManifestValidationError([ManifestProblem((), message)])


def parse_manifest_document(source: str | bytes) -> Any:
    """Parse YAML or JSON text into plain Python data (no validation).

    Raises:
        ManifestValidationError: too large, not UTF-8, or not parseable (the problem names
            the line and column).
    """
    raw = source.encode("utf-8") if isinstance(source, str) else source
    if len(raw) > MAX_MANIFEST_BYTES:
        raise _problem(f"manifest is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _problem(f"manifest is not UTF-8 (byte {exc.start})") from exc
    try:
        return _parse_text(text)
    except RecursionError as exc:
        raise _problem("manifest is nested too deeply") from exc


def _parse_text(text: str) -> Any:
    if text.lstrip().startswith("{"):
        try:
            return json.loads(text, object_pairs_hook=_reject_duplicates)
        except json.JSONDecodeError as exc:
            raise _problem(
                f"invalid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}"
            ) from exc
        except ValueError as exc:  # duplicate key
            raise _problem(f"invalid JSON: {exc}") from exc
    try:
        return yaml.load(text, Loader=_StrictYAMLLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise _problem(f"invalid YAML{where}: {exc.problem or exc.context}") from exc
    except yaml.YAMLError as exc:
        raise _problem(f"invalid YAML: {exc}") from exc


@dataclass(frozen=True, slots=True)
class CheckResult:
    """Outcome of :func:`check_manifest`: the manifest (if valid), problems and warnings."""

    manifest: Manifest | None
    problems: tuple[ManifestProblem, ...]
    warnings: tuple[ManifestProblem, ...]

    @property
    def valid(self) -> bool:
        """True when there are no problems."""
        return not self.problems


def _semantic_problems(manifest: Manifest) -> list[ManifestProblem]:
    """Cross-references, static template checks and the dry run of a schema-valid manifest."""
    problems = reference_problems(manifest)
    static = template_problems(manifest)
    # A template with static problems is not worth rendering: its dry-run failure would only
    # repeat them.
    broken = {problem.loc for problem in static}
    dynamic = [problem for problem in dry_run_problems(manifest) if problem.loc not in broken]
    return [*problems, *static, *dynamic]


_ENTRY_SECTIONS: Final = frozenset({"packages", "services", "secrets", "users", "roles", "volumes"})
_OPTIONAL_SECTIONS: Final = frozenset({"recovery", "governance", "policy"})


def _salvage(
    data: Mapping[str, Any], schema_problems: list[ManifestProblem]
) -> tuple[Manifest | None, set[tuple[str | int, ...]]]:
    """Drop the entries with schema problems; validate what is left.

    Returns the partial manifest (or ``None`` when nothing sensible remains) and the locations
    dropped, so that the later checks can still report problems elsewhere in the document.
    """
    salvaged: dict[str, Any] = {
        key: dict(value) if key in _ENTRY_SECTIONS and isinstance(value, Mapping) else value
        for key, value in data.items()
    }
    dropped: set[tuple[str | int, ...]] = set()
    for problem in schema_problems:
        loc = problem.loc
        if not loc or not isinstance(loc[0], str):
            return None, dropped
        section = loc[0]
        if section in _ENTRY_SECTIONS and len(loc) >= 2 and isinstance(salvaged.get(section), dict):
            salvaged[section].pop(loc[1], None)
            dropped.add(loc[:2])
        elif section in _ENTRY_SECTIONS or section in _OPTIONAL_SECTIONS:
            salvaged.pop(section, None)
            dropped.add((section,))
        elif section == "version":
            salvaged["version"] = 1
        else:  # an unknown top-level field
            salvaged.pop(section, None)
    try:
        return Manifest.model_validate(salvaged), dropped
    except ValidationError:
        return None, dropped


def _involves(problem: ManifestProblem, dropped: set[tuple[str | int, ...]]) -> bool:
    """Whether ``problem`` may only be a consequence of dropping ``dropped`` entries."""
    if problem.loc[:1] in dropped or problem.loc[:2] in dropped:
        return True
    dropped_sections = {loc[0] for loc in dropped}
    if problem.loc[:1] == ("governance",) and dropped_sections & {"users", "roles"}:
        return True
    for loc in dropped:
        # A whole section was dropped: "unknown secret" and the like may be false alarms.
        singular = str(loc[0]).removesuffix("s")
        if len(loc) == 1 and f'unknown {singular} "' in problem.message:
            return True
    names = {str(loc[1]) for loc in dropped if len(loc) > 1}
    return any(f'"{name}"' in problem.message for name in names)


def check_manifest(data: Any) -> CheckResult:
    """Run every check on parsed manifest data and collect all problems (never raises).

    When the document has schema problems, the entries that have them are set aside and the
    later checks run on the rest, so that one pass reports as much as it can; problems that
    could only be consequences of the entries set aside are left out.
    """
    if not isinstance(data, Mapping):
        kind = "empty" if data is None else type(data).__name__
        return CheckResult(None, (ManifestProblem((), f"a manifest is a mapping, not {kind}"),), ())
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        schema_problems = problems_from_pydantic(exc)
        partial, dropped = _salvage(data, schema_problems)
        more = []
        if partial is not None:
            more = [p for p in _semantic_problems(partial) if not _involves(p, dropped)]
        return CheckResult(None, tuple(sorted_unique([*schema_problems, *more])), ())
    problems = sorted_unique(_semantic_problems(manifest))
    if problems:
        return CheckResult(None, tuple(problems), ())
    return CheckResult(manifest, (), tuple(manifest_warnings(manifest)))


def validate_manifest(data: Any) -> Manifest:
    """Validate parsed manifest data (a mapping, e.g. from JSON) completely.

    Raises:
        ManifestValidationError: every problem found, each with its path.
    """
    result = check_manifest(data)
    if result.manifest is None:
        raise ManifestValidationError(result.problems)
    for warning in result.warnings:
        _logger.warning("manifest: %s", warning)
    return result.manifest


def load_manifest(source: str | bytes | os.PathLike[str]) -> Manifest:
    """Load a manifest from YAML/JSON text (``str`` or ``bytes``) or a file (a ``Path``).

    A ``str`` is always the document itself, never a file name: pass a :class:`~pathlib.Path`
    to read a file.

    Raises:
        ManifestValidationError: the document does not parse or is invalid (every problem).
        ConfigError: the file cannot be read.
    """
    if isinstance(source, os.PathLike):
        path = Path(source)
        try:
            source = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read manifest {path}: {exc.strerror or exc}") from exc
    return validate_manifest(parse_manifest_document(source))


def canonical_json(manifest: Manifest) -> bytes:
    """The manifest as canonical JSON: defaults filled in, keys sorted, no whitespace, UTF-8.

    Two documents that validate to the same manifest (YAML or JSON, any key order, defaults
    written or omitted) have the same canonical form.
    """
    data = manifest.model_dump(mode="json")
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


def manifest_digest(manifest: Manifest) -> bytes:
    """SHA-256 of :func:`canonical_json` (32 bytes)."""
    return hashlib.sha256(canonical_json(manifest)).digest()


def _close_pattern_properties(node: Any) -> None:
    # pydantic describes a mapping with constrained keys by "patternProperties" alone, which
    # lets keys that do not match through; the models refuse them, so the schema must too.
    if isinstance(node, dict):
        if "patternProperties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for value in node.values():
            _close_pattern_properties(value)
    elif isinstance(node, list):
        for item in node:
            _close_pattern_properties(item)


def manifest_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the manifest format."""
    schema = Manifest.model_json_schema(mode="validation")
    _close_pattern_properties(schema)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": _SCHEMA_ID, **schema}
