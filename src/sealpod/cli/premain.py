"""``sealpod premain``: the first program inside a Gramine-SGX enclave (hidden from ``--help``).

The package's Gramine manifest starts it as ``python3 -I -m sealpod.cli.premain [OPTIONS] --
ENTRYPOINT [ARG...]`` (see :mod:`sealpod.runtime.premain`). Its options are the *measured*
policy, so on purpose none of them can be set from the environment; the environment carries
only the host's settings (``SEALPOD_COORDINATOR``, ``SEALPOD_COORDINATOR_ROOT``,
``SEALPOD_SERVICE``, ``SEALPOD_INSTANCE``, ``SEALPOD_PCCS_URL``). On success the process becomes
the application; on failure it prints one line and exits non-zero without starting it.
"""

from __future__ import annotations

import os
import sys

import click

from sealpod.runtime.premain import DEFAULT_ATTESTATION_DIR, PremainPolicy, run_premain


@click.command(
    "premain",
    hidden=True,
    context_settings={"allow_interspersed_args": False},
)
@click.option(
    "--tmpfs",
    "tmpfs",
    multiple=True,
    metavar="PATH",
    help="An in-enclave tmpfs mount where received files may go (repeatable).",
)
@click.option(
    "--encrypted",
    "encrypted",
    multiple=True,
    metavar="NAME=PATH",
    help="An encrypted mount of volume NAME; its key is provisioned and files may go there.",
)
@click.option(
    "--coordinator-root-sha256",
    metavar="HEX",
    help="Refuse any coordinator root but the one with this SHA-256 (of its DER).",
)
@click.option(
    "--attestation-dir",
    default=DEFAULT_ATTESTATION_DIR,
    show_default=True,
    metavar="DIR",
    help="Gramine's attestation pseudo-filesystem (another directory only for tests).",
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def premain(
    tmpfs: tuple[str, ...],
    encrypted: tuple[str, ...],
    coordinator_root_sha256: str | None,
    attestation_dir: str,
    command: tuple[str, ...],
) -> None:
    """Activate inside the enclave, put the secrets in place, exec ENTRYPOINT."""
    policy = PremainPolicy.from_options(
        command,
        tmpfs=tmpfs,
        encrypted=encrypted,
        coordinator_root_sha256=coordinator_root_sha256,
        attestation_dir=attestation_dir,
    )
    run_premain(policy, dict(os.environ))


if __name__ == "__main__":
    # ``python3 -I -m sealpod.cli.premain ...``: the same error handling as ``sealpod premain``.
    from sealpod.cli import main

    main(["premain", *sys.argv[1:]])
