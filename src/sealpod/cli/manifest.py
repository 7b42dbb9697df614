"""``sealpod manifest``: the deployment manifest's JSON Schema and offline validation."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from sealpod.cli._common import LazyGroup, emit, json_option, read_bytes, write_bytes_atomic
from sealpod.manifest import (
    ManifestValidationError,
    check_manifest,
    manifest_digest,
    manifest_json_schema,
    parse_manifest_document,
)


@click.group(
    cls=LazyGroup,
    lazy_commands={
        # Talking to a coordinator; defined with the other client commands.
        "set": "sealpod.cli.coordinator:manifest_set",
        "get": "sealpod.cli.coordinator:manifest_get",
        "verify": "sealpod.cli.coordinator:manifest_verify",
        "update": "sealpod.cli.coordinator:manifest_update",
    },
)
def manifest() -> None:
    """The deployment manifest: schema, offline checks, and the coordinator's manifest (set, get, verify, update)."""


@manifest.command()
@click.option(
    "-o",
    "--output",
    "output",
    type=click.Path(dir_okay=False, writable=True),
    envvar="SEALPOD_SCHEMA_OUTPUT",
    help="Write the schema to FILE instead of stdout.",
)
def schema(output: str | None) -> None:
    """Print the manifest's JSON Schema (draft 2020-12)."""
    text = json.dumps(manifest_json_schema(), indent=2, sort_keys=True) + "\n"
    if output is None:
        click.echo(text, nl=False)
    else:
        write_bytes_atomic(output, text.encode("utf-8"))


@manifest.command()
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@json_option
def check(file: str, as_json: bool) -> None:
    """Validate manifest FILE (YAML or JSON, "-" for stdin) offline.

    Checks the schema, every cross-reference and a dry run of every template; prints each
    problem with its path and exits 1 when there is any.
    """
    source = sys.stdin.buffer.read() if file == "-" else read_bytes(file, "manifest")
    try:
        result = check_manifest(parse_manifest_document(source))
    except ManifestValidationError as exc:
        problems: tuple[Any, ...] = exc.problems
        warnings: tuple[Any, ...] = ()
        manifest_obj = None
    else:
        problems, warnings, manifest_obj = result.problems, result.warnings, result.manifest

    data: dict[str, Any] = {
        "valid": manifest_obj is not None,
        "errors": [problem.to_json() for problem in problems],
        "warnings": [warning.to_json() for warning in warnings],
    }
    if manifest_obj is not None:
        data["sha256"] = manifest_digest(manifest_obj).hex()
        data["packages"] = sorted(manifest_obj.packages)
        data["services"] = sorted(manifest_obj.services)
        data["secrets"] = sorted(manifest_obj.secrets)
        data["users"] = sorted(manifest_obj.users)

    def human() -> None:
        for problem in problems:
            click.echo(f"error: {problem}")
        for warning in warnings:
            click.echo(f"warning: {warning}", err=True)
        if manifest_obj is None:
            count = len(problems)
            click.echo(f"{file}: invalid ({count} problem{'s' if count != 1 else ''})")
            return
        click.echo(
            f"{file}: valid; {len(manifest_obj.packages)} packages, "
            f"{len(manifest_obj.services)} services, {len(manifest_obj.secrets)} secrets, "
            f"{len(manifest_obj.users)} users; sha256 {data['sha256']}"
        )

    emit(data, as_json, human)
    if manifest_obj is None:
        sys.exit(1)
