"""``sealpod volume``: create, inspect and verify encrypted volumes (records and tags).

The key file holds the 16 raw bytes of the volume key (as ``sealpod fs keygen`` writes it).
``verify`` exits 1 with ``rollback_detected: <path> ...`` (or another stable reason) when the
directory does not match its record or the record does not match ``--expect-tag``.
"""

from __future__ import annotations

import logging

import click

from sealpod.cli._common import HexParam, emit, json_option, read_bytes
from sealpod.encfs import KEY_SIZE
from sealpod.encfs.volume import Volume, inspect_volume
from sealpod.errors import ConfigError

_logger = logging.getLogger(__name__)

_key_option = click.option(
    "-k",
    "--key",
    "key_file",
    required=True,
    envvar="SEALPOD_VOLUME_KEY",
    type=click.Path(dir_okay=False),
    help="File with the 16-byte raw volume key. Env: SEALPOD_VOLUME_KEY.",
)


def _load_key(key_file: str) -> bytes:
    key = read_bytes(key_file, "key file")
    if len(key) != KEY_SIZE:
        raise ConfigError(f"key file {key_file} must hold exactly {KEY_SIZE} raw bytes")
    return key


@click.group()
def volume() -> None:
    """Encrypted volumes with rollback protection."""


@volume.command()
@click.argument("directory", type=click.Path(file_okay=False))
@_key_option
@click.option("--name", required=True, envvar="SEALPOD_VOLUME_NAME", help="Volume name.")
@json_option
def create(directory: str, key_file: str, name: str, as_json: bool) -> None:
    """Create an empty volume in DIRECTORY (new or empty); print its first tag."""
    key = _load_key(key_file)
    with Volume.create(directory, key, name) as created:
        info = created.inspect()
    emit({"name": info.name, "version": info.version, "tag": info.tag.hex()}, as_json)


@volume.command()
@click.argument("directory", type=click.Path(file_okay=False))
@_key_option
@json_option
def inspect(directory: str, key_file: str, as_json: bool) -> None:
    """Show the authenticated record of the volume in DIRECTORY (files are not checked)."""
    info = inspect_volume(directory, _load_key(key_file))
    data = info.to_json()

    def human() -> None:
        click.echo(f"name: {info.name}")
        click.echo(f"version: {info.version}")
        click.echo(f"tag: {info.tag.hex()}")
        if info.pending_version is not None:
            click.echo(f"unfinished commit: version {info.pending_version}")
        click.echo(f"files: {len(info.files)}")
        for path, entry in sorted(info.files.items()):
            click.echo(f"  {path}  {entry.size} bytes  mode {entry.mode:o}")

    emit(data, as_json, human)


@volume.command()
@click.argument("directory", type=click.Path(file_okay=False))
@_key_option
@click.option(
    "--expect-tag",
    type=HexParam(32),
    envvar="SEALPOD_VOLUME_EXPECT_TAG",
    help="The latest tag (64 hex digits), e.g. from the coordinator.",
)
@click.option("--name", envvar="SEALPOD_VOLUME_NAME", help="Expected volume name.")
@json_option
def verify(
    directory: str, key_file: str, expect_tag: bytes | None, name: str | None, as_json: bool
) -> None:
    """Check every file and node of the volume in DIRECTORY against its record (read-only)."""
    key = _load_key(key_file)
    if name is None:
        name = inspect_volume(directory, key).name
    if expect_tag is None:
        click.echo(
            "warning: no --expect-tag: a rollback of the whole volume cannot be detected",
            err=True,
        )
    with Volume.open(directory, key, name, expect_tag, writable=False, deep=True) as opened:
        info = opened.inspect()
    emit(
        {
            "ok": True,
            "name": info.name,
            "version": info.version,
            "tag": info.tag.hex(),
            "files": len(info.files),
        },
        as_json,
    )
