"""``sealpod run``: run a confidential package's unmodified entrypoint in the shield, attested."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from sealpod.runtime.run import run_package


def _notify(line: str) -> None:
    click.echo(line, err=True)


@click.command()
@click.argument("package", type=click.Path(path_type=Path), envvar="SEALPOD_PACKAGE")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option(
    "--coordinator",
    envvar="SEALPOD_COORDINATOR",
    metavar="URL",
    help="Activate at this coordinator (https://HOST:PORT) before starting; without it the "
    "package runs with its static environment only, no attestation, no secrets "
    "[env SEALPOD_COORDINATOR].",
)
@click.option(
    "--coordinator-root",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="SEALPOD_COORDINATOR_ROOT",
    metavar="FILE",
    help="PEM root certificate the coordinator's TLS is pinned to [env "
    "SEALPOD_COORDINATOR_ROOT; default: the root `sealpod verify` pinned for that URL].",
)
@click.option(
    "--service",
    envvar="SEALPOD_SERVICE",
    metavar="NAME",
    help="The deployment manifest's service this instance is [env SEALPOD_SERVICE].",
)
@click.option(
    "--instance",
    envvar="SEALPOD_INSTANCE",
    metavar="ID",
    help="This instance's id [env SEALPOD_INSTANCE; default: HOSTNAME-SERVICE, stable across "
    "restarts; give replicas on one host distinct ids].",
)
@click.option(
    "--tee",
    type=click.Choice(["simulation", "gramine"]),
    envvar="SEALPOD_TEE",
    default="simulation",
    show_default=True,
    help="simulation: the simulated SGX platform claims the package's identity (no memory "
    "isolation); gramine: Gramine-SGX on SGX hardware [env SEALPOD_TEE].",
)
@click.option(
    "--sim-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="SEALPOD_SIM_DIR",
    help="Simulated platform directory [env SEALPOD_SIM_DIR; default: "
    "<user data dir>/sealpod/sim].",
)
@click.option(
    "--publish",
    "-p",
    multiple=True,
    envvar="SEALPOD_PUBLISH",
    metavar="HOST_PORT:PORT",
    help="The sandbox shares the host's network, so a service listening on PORT is already "
    "reachable on the host's PORT: this only checks that the port is free before starting "
    "(HOST_PORT must equal PORT; no port mapping) [env SEALPOD_PUBLISH, space-separated].",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="SEALPOD_CACHE_DIR",
    help="Where packages are unpacked, keyed by layer digests [env SEALPOD_CACHE_DIR; "
    "default: the user's cache dir].",
)
@click.option(
    "--volume-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="SEALPOD_VOLUME_DIR",
    help="Where encrypted volumes keep their ciphertext, one directory per volume "
    "[env SEALPOD_VOLUME_DIR; default: <user data dir>/sealpod/volumes].",
)
@click.option(
    "--gramine-key",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="SEALPOD_GRAMINE_KEY",
    help="--tee gramine: the enclave key gramine-sgx-sign signs the Gramine manifest with "
    "[env SEALPOD_GRAMINE_KEY].",
)
@click.pass_context
def run(
    ctx: click.Context,
    package: Path,
    args: tuple[str, ...],
    coordinator: str | None,
    coordinator_root: Path | None,
    service: str | None,
    instance: str | None,
    tee: str,
    sim_dir: Path | None,
    publish: tuple[str, ...],
    cache_dir: Path | None,
    volume_dir: Path | None,
    gramine_key: Path | None,
) -> None:
    """Run the confidential PACKAGE (from `sealpod build`) unmodified.

    The package is verified first (signature, MRENCLAVE of enclave.json) and refused
    otherwise; its rootfs is served through the shield (trusted files only while they match
    their hashes, secrets in memory) as / of a bubblewrap sandbox. ARGS after `--` are appended
    to the entrypoint's argv (host input, not measured). The exit status is the application's.
    """
    if coordinator is not None and coordinator_root is None:
        # The root `sealpod verify --coordinator URL` pinned for this coordinator, if any.
        from sealpod.cli.coordinator import pinned_root_path

        pinned = pinned_root_path(coordinator)
        coordinator_root = pinned if pinned.is_file() else None
    status = run_package(
        package,
        coordinator=coordinator,
        coordinator_root=coordinator_root,
        service=service,
        instance=instance,
        tee="gramine" if tee == "gramine" else "simulation",
        sim_dir=sim_dir,
        publish=publish,
        extra_args=args,
        cache_dir=cache_dir,
        gramine_key=gramine_key,
        volume_dir=volume_dir,
        notify=_notify,
    )
    if Path(sys.argv[0]).name == "sealpod":
        # The console script: everything is cleaned up already (shield unmounted, volumes
        # committed), so skip the interpreter's teardown of the large verified manifest and
        # the FUSE machinery (about 100 ms of start-to-exit time; bench_startup).
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    ctx.exit(status)
