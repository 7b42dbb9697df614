"""``sealpod coordinator ...``: run the coordinator and show its identity.

``serve`` runs the HTTPS API (its TLS certificate is issued by the coordinator's own root for the
listen address, so clients pin the root after attesting it: ``sealpod verify``). ``identity``
prints the measurement the *simulated* coordinator claims: the MRENCLAVE of the installed
sealpod distribution, reproducible on any machine with the same release.
"""

from __future__ import annotations

import datetime
import json
import logging
import signal
import sys
from pathlib import Path
from types import FrameType

import click
from cryptography.hazmat.primitives import hashes
from pydantic import ValidationError

from sealpod.cli._common import emit, json_option
from sealpod.coordinator.identity import (
    COORDINATOR_ISV_PROD_ID,
    SIMULATED_COORDINATOR_MRSIGNER,
    measure_distribution,
)
from sealpod.coordinator.server import CoordinatorServer, parse_listen
from sealpod.coordinator.settings import CoordinatorSettings, default_state_url
from sealpod.errors import ConfigError

_logger = logging.getLogger(__name__)


@click.group()
def coordinator() -> None:
    """The coordinator: attested manifest, activation, PKI and audit (HTTPS API)."""


@coordinator.command()
@click.option(
    "--state",
    "state_url",
    envvar="SEALPOD_STATE",
    default=None,
    help="State URL: sqlite:///PATH or postgresql://... "
    "[env SEALPOD_STATE; default: sqlite in the user data dir].",
)
@click.option(
    "--listen",
    envvar="SEALPOD_LISTEN",
    default="127.0.0.1:8443",
    show_default=True,
    help="HOST:PORT to serve HTTPS on [env SEALPOD_LISTEN].",
)
@click.option(
    "--tee",
    type=click.Choice(["simulation", "gramine"]),
    envvar="SEALPOD_TEE",
    default="simulation",
    show_default=True,
    help="Where quotes and sealing keys come from [env SEALPOD_TEE].",
)
@click.option(
    "--sim-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="SEALPOD_SIM_DIR",
    default=None,
    help="Simulated platform directory [env SEALPOD_SIM_DIR; default: <user data dir>/sealpod/sim].",
)
@click.option(
    "--server-name",
    "server_names",
    multiple=True,
    envvar="SEALPOD_SERVER_NAMES",
    help="Extra DNS name or IP address for the TLS certificate (repeatable).",
)
@click.option(
    "--nonce-ttl",
    type=click.FloatRange(min=1, max=3600),
    envvar="SEALPOD_NONCE_TTL",
    default=120.0,
    show_default=True,
    help="Seconds an activation nonce stays valid [env SEALPOD_NONCE_TTL].",
)
@click.option(
    "--pccs-url",
    envvar="SEALPOD_PCCS_URL",
    default=None,
    help="PCCS (PCS API v4) for collateral services do not send [env SEALPOD_PCCS_URL].",
)
@click.option(
    "--pccs-ca-file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    envvar="SEALPOD_PCCS_CA_FILE",
    default=None,
    help="CA bundle for the PCCS's TLS certificate [env SEALPOD_PCCS_CA_FILE].",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    envvar="SEALPOD_LOG_FORMAT",
    default="text",
    show_default=True,
    help="Log lines on stderr as text or as one JSON object each [env SEALPOD_LOG_FORMAT].",
)
def serve(
    state_url: str | None,
    listen: str,
    tee: str,
    sim_dir: Path | None,
    server_names: tuple[str, ...],
    nonce_ttl: float,
    pccs_url: str | None,
    pccs_ca_file: Path | None,
    log_format: str,
) -> None:
    """Serve the coordinator API over HTTPS until interrupted."""
    if log_format == "json":
        _use_json_logs()
    host, port = parse_listen(listen)
    try:
        settings = CoordinatorSettings(
            state_url=state_url or default_state_url(),
            tee="gramine" if tee == "gramine" else "simulation",
            sim_dir=sim_dir,
            nonce_ttl=nonce_ttl,
            pccs_url=pccs_url,
            pccs_ca_file=pccs_ca_file,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ConfigError(f"{where}: {first['msg']}") from exc
    server = CoordinatorServer.build(
        settings, host=host, port=port, server_names_extra=server_names
    )
    status = server.coordinator.status()
    click.echo(
        f"sealpod coordinator on https://{listen} (state {status['state']}, "
        f"simulated: {str(status['simulated']).lower()})",
        err=True,
    )
    recovery = status.get("recovery")
    if recovery is not None:
        fingerprint = server.credentials.certificate.fingerprint(hashes.SHA256()).hex()
        click.echo(
            f"RECOVERY: the sealed state needs {recovery['threshold']} recovery share(s); "
            f"ephemeral TLS certificate SHA-256: {fingerprint}",
            err=True,
        )
    else:
        root = server.coordinator.ca.root_certificate
        click.echo(f"root certificate SHA-256: {root.fingerprint(hashes.SHA256()).hex()}", err=True)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it with the previous handler
    # installed: make that a clean exit (status 0) rather than death by signal.
    signal.signal(signal.SIGTERM, _exit_after_shutdown)
    server.run()
    click.echo("coordinator stopped", err=True)


class JSONLogFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message."""

    def format(self, record: logging.LogRecord) -> str:
        document = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, ensure_ascii=False)


def _use_json_logs() -> None:
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler(sys.stderr))
    for handler in root.handlers:
        handler.setFormatter(JSONLogFormatter())


def _exit_after_shutdown(_signum: int, _frame: FrameType | None) -> None:
    click.echo("coordinator stopped", err=True)
    sys.exit(0)


@coordinator.command()
@click.option(
    "--package-dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=None,
    help="Measure this sealpod package directory instead of the installed one.",
)
@click.option("--files", "show_files", is_flag=True, help="Also list the measured files.")
@json_option
def identity(package_dir: Path | None, show_files: bool, as_json: bool) -> None:
    """Print the simulated coordinator's enclave identity (MRENCLAVE of this release)."""
    measurement = measure_distribution(package_dir)
    data: dict[str, object] = {
        "mrenclave": measurement.mr_enclave.hex(),
        "mrsigner": SIMULATED_COORDINATOR_MRSIGNER.hex(),
        "isv_prod_id": COORDINATOR_ISV_PROD_ID,
        "isv_svn": 0,
        "simulated": True,
        "package_dir": str(measurement.root),
        "file_count": len(measurement.files),
    }
    if show_files:
        data["files"] = [{"path": path, "sha256": digest} for path, digest in measurement.files]

    def human() -> None:
        for key in ("mrenclave", "mrsigner", "isv_prod_id", "simulated", "package_dir"):
            value = data[key]
            click.echo(f"{key}: {str(value).lower() if isinstance(value, bool) else value}")
        click.echo(f"files measured: {len(measurement.files)}")
        if show_files:
            for path, digest in measurement.files:
                click.echo(f"  {digest}  {path}")

    emit(data, as_json, human)
