#!/usr/bin/env python3
"""Build (or reuse) a cached Debian root filesystem and optionally pack it as an image.

    scripts/build_rootfs.py python -p python3-minimal
    scripts/build_rootfs.py python -p python3-minimal --oci out/oci --entrypoint /usr/bin/python3
    scripts/build_rootfs.py python -p python3-minimal --docker-archive out/image.tar --json

Prints the root filesystem's path (and the images written). Needs root and debootstrap for the
first build; later runs reuse ``$SEALPOD_CACHE_DIR/rootfs``.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from sealpod.errors import SealpodError
from sealpod.image import ImageConfig, build_debian_rootfs, rootfs_to_image


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("name")
@click.option("-p", "--package", "packages", multiple=True, help="Debian package to include.")
@click.option("--suite", default="bookworm", show_default=True, envvar="SEALPOD_DEBIAN_SUITE")
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="SEALPOD_CACHE_DIR",
    help="Cache root (default: the user's cache dir for sealpod).",
)
@click.option("--oci", "oci_dir", type=click.Path(path_type=Path), help="Write an OCI layout here.")
@click.option(
    "--docker-archive",
    "archive",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write a docker-archive tarball here.",
)
@click.option("--entrypoint", multiple=True, help="Image entrypoint (repeat for each word).")
@click.option("--cmd", multiple=True, help="Image Cmd (repeat for each word).")
@click.option("--env", "env", multiple=True, help="Image environment entry K=V.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.option("-v", "--verbose", is_flag=True, help="Log progress on stderr.")
def main(
    name: str,
    packages: tuple[str, ...],
    suite: str,
    cache_dir: Path | None,
    oci_dir: Path | None,
    archive: Path | None,
    entrypoint: tuple[str, ...],
    cmd: tuple[str, ...],
    env: tuple[str, ...],
    as_json: bool,
    verbose: bool,
) -> None:
    """Build the cached Debian root filesystem NAME."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr)
    try:
        rootfs = build_debian_rootfs(name, packages, cache_dir, suite)
        config = ImageConfig(entrypoint=entrypoint or None, cmd=cmd or None, env=env)
        written: dict[str, str] = {}
        if oci_dir is not None:
            written["oci"] = str(rootfs_to_image(rootfs, config, oci_dir))
        if archive is not None:
            path = rootfs_to_image(rootfs, config, archive, image_format="docker-archive")
            written["docker_archive"] = str(path)
    except SealpodError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    if as_json:
        click.echo(json.dumps({"rootfs": str(rootfs), **written}, indent=2))
    else:
        click.echo(f"rootfs: {rootfs}")
        for kind, path in written.items():
            click.echo(f"{kind}: {path}")


if __name__ == "__main__":
    main()
