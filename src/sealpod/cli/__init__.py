"""The ``sealpod`` command line: a thin layer over library calls.

Sub-command groups live in one module each and are imported lazily, so ``sealpod --help`` and
short commands start fast. Every :class:`~sealpod.errors.SealpodError` becomes one line on
stderr and its exit code; usage errors exit 2; tracebacks only with ``--debug``.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import click

from sealpod import __version__
from sealpod.cli._lazy import LazyGroup
from sealpod.errors import SealpodError

_logger = logging.getLogger(__name__)

# name -> "module:attribute" of a click command or group, imported on first use.
_COMMANDS: dict[str, str] = {
    "quote": "sealpod.cli.quote:quote",
    "sim": "sealpod.cli.sim:sim",
    "key": "sealpod.cli.sigstruct:key",
    "sigstruct": "sealpod.cli.sigstruct:sigstruct",
    "fs": "sealpod.cli.fs:fs",
    "volume": "sealpod.cli.volume:volume",
    "manifest": "sealpod.cli.manifest:manifest",
    "coordinator": "sealpod.cli.coordinator:coordinator",
    "build": "sealpod.cli.build:build",
    "inspect": "sealpod.cli.inspect:inspect",
    "run": "sealpod.cli.run:run",
    "premain": "sealpod.cli.premain:premain",
    # Client commands talking to a coordinator (TLS pinned to its attested root).
    "verify": "sealpod.cli.coordinator:verify_command",
    "status": "sealpod.cli.coordinator:status_command",
    "activate": "sealpod.cli.coordinator:activate_command",
    "secret": "sealpod.cli.coordinator:secret_group",
    "audit": "sealpod.cli.coordinator:audit_group",
    "certificate": "sealpod.cli.coordinator:certificate_group",
    "recover": "sealpod.cli.coordinator:recover_command",
}


@click.group(
    cls=LazyGroup,
    lazy_commands=_COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, prog_name="sealpod")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for debug).")
@click.option(
    "--debug",
    is_flag=True,
    envvar="SEALPOD_DEBUG",
    help="Show tracebacks for errors (never needed in normal use).",
)
@click.pass_context
def cli(ctx: click.Context, verbose: int, debug: bool) -> None:
    """sealpod: run unmodified containers as attested confidential services."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    level_name = os.environ.get("SEALPOD_LOG_LEVEL")
    if level_name:
        level = logging.getLevelName(level_name.upper())
        if not isinstance(level, int):
            raise click.UsageError(f"SEALPOD_LOG_LEVEL: unknown level {level_name!r}")
    else:
        level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


def main(argv: list[str] | None = None) -> Any:
    """Entry point of the ``sealpod`` console script."""
    args = sys.argv[1:] if argv is None else argv
    # Only the global --debug (before the sub-command) turns on tracebacks; sub-commands may
    # have flags of the same name with another meaning (``sigstruct sign --debug``).
    leading = []
    for arg in args:
        if not arg.startswith("-"):
            break
        leading.append(arg)
    debug = "--debug" in leading or os.environ.get("SEALPOD_DEBUG") not in (None, "", "0")
    try:
        return cli.main(args=args, prog_name="sealpod", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except SealpodError as exc:
        if debug:
            _logger.exception("failed")
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        # A bug, not an input problem: still one line unless --debug.
        if debug:
            raise
        click.echo(
            f"error: internal error ({type(exc).__name__}: {exc}); rerun with --debug", err=True
        )
        sys.exit(70)
