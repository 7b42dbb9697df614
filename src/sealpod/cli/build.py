"""``sealpod build``: turn an existing container image into a signed confidential package."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import click

from sealpod.cli._common import byte_progress, json_option
from sealpod.cli.inspect import show_package
from sealpod.errors import ConfigError
from sealpod.package import build_package, parse_volume
from sealpod.package._hashing import HashProgress
from sealpod.sgx import EnclaveSigningKey

_U16 = click.IntRange(0, 0xFFFF)
_PASSWORD_ENV = "SEALPOD_SIGNING_KEY_PASSWORD"  # noqa: S105 (a variable name)


@contextlib.contextmanager
def _progress() -> Iterator[HashProgress | None]:
    """A byte progress bar for hashing on stderr, only when it is a terminal."""
    with byte_progress("hashing") as bar:
        yield None if bar is None else bar.update


def _env_pairs(values: tuple[str, ...]) -> dict[str, str]:
    env: dict[str, str] = {}
    for value in values:
        name, sep, item = value.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{value!r} is not K=V", param_hint="--env")
        env[name] = item
    return env


@click.command()
@click.argument("source", envvar="SEALPOD_BUILD_SOURCE")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(path_type=Path),
    envvar="SEALPOD_BUILD_OUTPUT",
    help="The package to create: an OCI image layout directory (must not exist).",
)
@click.option(
    "--key",
    "key_file",
    required=True,
    type=click.Path(dir_okay=False),
    envvar="SEALPOD_SIGNING_KEY",
    help=f"PEM signing key (RSA-3072, e=3); password from ${_PASSWORD_ENV} if encrypted.",
)
@click.option(
    "--isv-prod-id", type=_U16, default=0, envvar="SEALPOD_ISV_PROD_ID", show_default=True
)
@click.option("--isv-svn", type=_U16, default=0, envvar="SEALPOD_ISV_SVN", show_default=True)
@click.option(
    "--debug",
    is_flag=True,
    envvar="SEALPOD_ENCLAVE_DEBUG",
    help="A DEBUG enclave (the host can read its memory; never for production).",
)
@click.option(
    "--volume",
    "volumes",
    multiple=True,
    metavar="NAME:PATH",
    envvar="SEALPOD_BUILD_VOLUMES",
    help="An encrypted volume mounted at PATH (repeatable).",
)
@click.option(
    "--tmpfs",
    multiple=True,
    metavar="PATH",
    envvar="SEALPOD_BUILD_TMPFS",
    help="An in-memory directory (repeatable).",
)
@click.option(
    "--allow",
    multiple=True,
    metavar="PATH",
    envvar="SEALPOD_BUILD_ALLOW",
    help="A path passed through read-write and unchecked (repeatable).",
)
@click.option(
    "--exclude",
    multiple=True,
    metavar="GLOB",
    envvar="SEALPOD_BUILD_EXCLUDE",
    help="Leave paths matching GLOB (fnmatch; * also matches /) out of the trusted files (repeatable).",
)
@click.option(
    "--env",
    "env",
    multiple=True,
    metavar="K=V",
    envvar="SEALPOD_BUILD_ENV",
    help="Set an environment variable, overriding the image's (repeatable).",
)
@click.option(
    "--argv",
    multiple=True,
    metavar="ARG",
    envvar="SEALPOD_BUILD_ARGV",
    help="The command, one --argv per argument, replacing the image's Entrypoint and Cmd.",
)
@json_option
def build(
    source: str,
    output: Path,
    key_file: str,
    isv_prod_id: int,
    isv_svn: int,
    debug: bool,
    volumes: tuple[str, ...],
    tmpfs: tuple[str, ...],
    allow: tuple[str, ...],
    exclude: tuple[str, ...],
    env: tuple[str, ...],
    argv: tuple[str, ...],
    as_json: bool,
) -> None:
    """Build a confidential package from SOURCE (oci:DIR[:TAG], docker-archive:FILE, dir:ROOTFS)."""
    environment = _env_pairs(env)
    volume_map: dict[str, str] = {}
    for spec in volumes:
        name, path = parse_volume(spec)
        if name in volume_map:
            raise ConfigError(f"volume {name!r} is given twice")
        volume_map[name] = path
    password = os.environ.get(_PASSWORD_ENV)
    signing_key = EnclaveSigningKey.load(key_file, password=password.encode() if password else None)
    with _progress() as progress:
        info = build_package(
            source,
            output,
            signing_key,
            isv_prod_id=isv_prod_id,
            isv_svn=isv_svn,
            debug=debug,
            volumes=volume_map,
            tmpfs=tmpfs,
            allow=allow,
            exclude=exclude,
            env=environment,
            argv=argv or None,
            progress=progress,
        )
    show_package({"package": str(output), **info.to_dict()}, as_json)
