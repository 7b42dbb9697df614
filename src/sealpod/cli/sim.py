"""``sealpod sim ...``: the simulated SGX platform (INSECURE: no memory isolation).

Every command prints ``simulated: true``: evidence from this platform verifies only under the
simulated root and only policies that explicitly allow simulation accept it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click
from cryptography.hazmat.primitives import hashes, serialization

from sealpod.cli._common import HexParam, TimeParam, emit, json_option, write_bytes_atomic
from sealpod.tee.simulation import (
    DEFAULT_COLLATERAL_VALIDITY,
    SimulatedPlatform,
    default_platform_dir,
)

_DAY = 24 * 3600
_U16 = click.IntRange(0, 0xFFFF)

dir_option = click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="SEALPOD_SIM_DIR",
    default=None,
    help="Platform directory [env SEALPOD_SIM_DIR; default: <user data dir>/sealpod/sim].",
)
at_option = click.option(
    "--at",
    "at",
    type=TimeParam(),
    envvar="SEALPOD_SIM_AT",
    default=None,
    help="The time to act at (ISO-8601 or epoch seconds; default: now).",
)
validity_option = click.option(
    "--validity-days",
    type=click.IntRange(min=1, max=3650),
    envvar="SEALPOD_SIM_VALIDITY_DAYS",
    default=None,
    help=f"Collateral lifetime in days (default {DEFAULT_COLLATERAL_VALIDITY // _DAY}).",
)


def _resolve(directory: Path | None) -> Path:
    return default_platform_dir() if directory is None else directory


def _show(data: Mapping[str, Any], as_json: bool) -> None:
    """Emit ``data`` with ``simulated: true`` first, booleans in lowercase for humans."""
    out = {"simulated": True, **data}

    def human() -> None:
        for key, value in out.items():
            if isinstance(value, bool):
                value = "true" if value else "false"
            elif isinstance(value, list | tuple):
                value = ", ".join(str(v) for v in value) if value else "(none)"
            click.echo(f"{key}: {value}")

    emit(out, as_json, human)


def _iso(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


@click.group()
def sim() -> None:
    """The simulated SGX platform (INSECURE: for development and CI, no memory isolation)."""


@sim.command("init")
@dir_option
@click.option("--force", is_flag=True, envvar="SEALPOD_FORCE", help="Replace an existing platform.")
@validity_option
@at_option
@json_option
def init(
    directory: Path | None,
    force: bool,
    validity_days: int | None,
    at: int | None,
    as_json: bool,
) -> None:
    """Create a simulated platform: simulated Intel PKI, quoting key, collateral, secret."""
    validity = DEFAULT_COLLATERAL_VALIDITY if validity_days is None else validity_days * _DAY
    platform = SimulatedPlatform.init(
        _resolve(directory), now=at, collateral_validity=validity, force=force
    )
    _show(_summary(platform, at), as_json)


@sim.command("quote")
@click.option(
    "--report-data",
    required=True,
    type=HexParam(),
    help="Report data, hex (at most 64 bytes; zero-padded).",
)
@click.option("--mrenclave", type=HexParam(32), default="00" * 32, help="MRENCLAVE, hex.")
@click.option("--mrsigner", type=HexParam(32), default="00" * 32, help="MRSIGNER, hex.")
@click.option("--isv-prod-id", type=_U16, default=0, show_default=True, help="ISVPRODID.")
@click.option("--isv-svn", type=_U16, default=0, show_default=True, help="ISVSVN.")
@click.option(
    "--debug",
    "--debug-enclave",
    "debug_enclave",
    is_flag=True,
    help="Quote a debug enclave (ATTRIBUTES.DEBUG; verifiers refuse these by default).",
)
@dir_option
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the quote (binary).",
)
@json_option
def quote(
    report_data: bytes,
    mrenclave: bytes,
    mrsigner: bytes,
    isv_prod_id: int,
    isv_svn: int,
    debug_enclave: bool,
    directory: Path | None,
    output: Path,
    as_json: bool,
) -> None:
    """Write a simulated DCAP v3 quote for an enclave identity."""
    platform = SimulatedPlatform.load(_resolve(directory))
    raw = platform.quote(
        report_data,
        mr_enclave=mrenclave,
        mr_signer=mrsigner,
        isv_prod_id=isv_prod_id,
        isv_svn=isv_svn,
        debug=debug_enclave,
    )
    write_bytes_atomic(output, raw)
    _show(
        {
            "quote": str(output),
            "bytes": len(raw),
            "mr_enclave": mrenclave.hex(),
            "mr_signer": mrsigner.hex(),
            "isv_prod_id": isv_prod_id,
            "isv_svn": isv_svn,
            "debug": debug_enclave,
            "report_data": report_data.ljust(64, b"\x00").hex(),
        },
        as_json,
    )


@sim.command("collateral")
@dir_option
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the collateral (dcap-qvl QuoteCollateralV3 JSON) here.",
)
@click.option("--renew", is_flag=True, help="Re-sign TCB info, QE identity and CRLs first.")
@validity_option
@at_option
@json_option
def collateral(
    directory: Path | None,
    output: Path | None,
    renew: bool,
    validity_days: int | None,
    at: int | None,
    as_json: bool,
) -> None:
    """Export (and with --renew, re-sign) the platform's signed collateral."""
    if output is None and not renew:
        raise click.UsageError("give -o FILE to export the collateral, or --renew")
    if validity_days is not None and not renew:
        raise click.UsageError("--validity-days only applies with --renew")
    platform = SimulatedPlatform.load(_resolve(directory))
    if renew:
        platform.renew_collateral(
            at, validity=None if validity_days is None else validity_days * _DAY
        )
    data: dict[str, Any] = {}
    if output is not None:
        document = json.dumps(platform.collateral(), indent=2) + "\n"
        write_bytes_atomic(output, document.encode())
        data["collateral"] = str(output)
    data["renewed"] = renew
    window = platform.collateral_window()
    now = int(time.time()) if at is None else at
    data.update(
        not_before=_iso(window.not_before),
        not_after=_iso(window.not_after),
        valid_now=window.contains(now),
    )
    _show(data, as_json)


@sim.command("root")
@dir_option
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the simulated root CA certificate.",
)
@click.option("--pem", is_flag=True, help="Write PEM instead of DER.")
@json_option
def root(directory: Path | None, output: Path, pem: bool, as_json: bool) -> None:
    """Export the simulated root CA certificate (the trust anchor for simulated quotes)."""
    platform = SimulatedPlatform.load(_resolve(directory))
    cert = platform.root_certificate
    encoding = serialization.Encoding.PEM if pem else serialization.Encoding.DER
    write_bytes_atomic(output, cert.public_bytes(encoding))
    _show(
        {
            "root_ca": str(output),
            "format": "pem" if pem else "der",
            "subject": cert.subject.rfc4514_string(),
            "sha256": cert.fingerprint(hashes.SHA256()).hex(),
        },
        as_json,
    )


@sim.command("show")
@dir_option
@at_option
@json_option
def show(directory: Path | None, at: int | None, as_json: bool) -> None:
    """Describe the simulated platform (never its secrets)."""
    platform = SimulatedPlatform.load(_resolve(directory))
    _show(_summary(platform, at), as_json)


def _summary(platform: SimulatedPlatform, at: int | None) -> dict[str, Any]:
    summary = platform.describe(at)
    summary.pop("simulated", None)
    return summary
