"""``sealpod inspect``: a package's identity and policy summary, with its signature checked."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import click

from sealpod.cli._common import emit, json_option
from sealpod.errors import VerificationError
from sealpod.package import open_package, package_info, verify_package


def show_package(data: Mapping[str, Any], as_json: bool) -> None:
    """Print a package description: JSON, or ``key: value`` lines (volumes as NAME:PATH)."""

    def human() -> None:
        for name, value in data.items():
            if isinstance(value, Mapping):
                value = ", ".join(f"{k}:{v}" for k, v in value.items()) or "(none)"
            elif isinstance(value, list | tuple):
                value = " ".join(str(v) for v in value) if value else "(none)"
            click.echo(f"{name}: {value}")

    emit(data, as_json, human)


@click.command()
@click.argument("package", type=click.Path(), envvar="SEALPOD_PACKAGE")
@json_option
def inspect(package: str, as_json: bool) -> None:
    """Show MRENCLAVE, MRSIGNER, ISV IDs, entrypoint and trusted files of PACKAGE.

    Exits 1 (after printing what it read, with signature_valid false) when the signature or
    the measurement does not check out.
    """
    opened = open_package(package)
    try:
        info = verify_package(opened)
        failure: VerificationError | None = None
    except VerificationError as exc:
        info = package_info(opened)
        failure = exc
    data = {"package": package, **info.to_dict(), "signature_valid": failure is None}
    show_package(data, as_json)
    if failure is not None:
        click.echo(f"error: {failure}", err=True)
        sys.exit(failure.exit_code)
