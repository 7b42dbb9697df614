"""``sealpod key ...`` and ``sealpod sigstruct ...``: enclave signing keys and SIGSTRUCTs."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

import click

from sealpod.cli._common import HexParam, emit, json_option, read_bytes, write_bytes_atomic
from sealpod.errors import VerificationError
from sealpod.sgx.keys import EnclaveSigningKey, write_signing_key
from sealpod.sgx.sigstruct import SIGSTRUCT, new_sigstruct, sign_sigstruct, verify_sigstruct

_U16 = click.IntRange(0, 0xFFFF)
_PASSWORD_ENV = "SEALPOD_SIGNING_KEY_PASSWORD"  # noqa: S105 (a variable name)


def _load_key(path: str) -> EnclaveSigningKey:
    password = os.environ.get(_PASSWORD_ENV)
    return EnclaveSigningKey.load(path, password=password.encode() if password else None)


@click.group()
def key() -> None:
    """Enclave signing keys (RSA-3072, public exponent 3)."""


@key.command("generate")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, writable=True),
    envvar="SEALPOD_SIGNING_KEY",
    help="Where to write the PEM private key (mode 0600).",
)
@click.option("--force", is_flag=True, envvar="SEALPOD_FORCE", help="Overwrite an existing file.")
@json_option
def generate(output: str, force: bool, as_json: bool) -> None:
    """Generate a new enclave signing key."""
    signing_key = EnclaveSigningKey.generate()
    write_signing_key(output, signing_key, force=force)
    emit({"key": output, "mr_signer": signing_key.mr_signer.hex()}, as_json)


@key.command("show")
@click.argument("key_file", type=click.Path(dir_okay=False), envvar="SEALPOD_SIGNING_KEY")
@json_option
def show(key_file: str, as_json: bool) -> None:
    """Print the MRSIGNER of a signing key (never the key itself)."""
    signing_key = _load_key(key_file)
    emit(
        {
            "key": key_file,
            "mr_signer": signing_key.mr_signer.hex(),
            "key_bits": signing_key.private_key.key_size,
            "exponent": 3,
        },
        as_json,
    )


@click.group()
def sigstruct() -> None:
    """Sign, inspect and verify SGX SIGSTRUCTs (enclave.sig)."""


@sigstruct.command("sign")
@click.option(
    "--key",
    "key_file",
    required=True,
    type=click.Path(dir_okay=False),
    envvar="SEALPOD_SIGNING_KEY",
    help=f"PEM signing key (RSA-3072, e=3); password from ${_PASSWORD_ENV} if encrypted.",
)
@click.option(
    "--mrenclave",
    required=True,
    type=HexParam(32),
    envvar="SEALPOD_MRENCLAVE",
    help="The enclave measurement to sign (64 hex digits).",
)
@click.option(
    "--isv-prod-id", type=_U16, default=0, show_default=True, envvar="SEALPOD_ISV_PROD_ID"
)
@click.option("--isv-svn", type=_U16, default=0, show_default=True, envvar="SEALPOD_ISV_SVN")
@click.option(
    "--debug-enclave",
    "--debug",
    "debug_enclave",
    is_flag=True,
    envvar="SEALPOD_DEBUG_ENCLAVE",
    help="Set ATTRIBUTES.DEBUG: the host can read the enclave. Never for production.",
)
@click.option(
    "--date",
    "date",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    default=None,
    envvar="SEALPOD_SIGSTRUCT_DATE",
    help="DATE field, YYYY-MM-DD (default: today, UTC).",
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False),
    help="Where to write the 1808-byte SIGSTRUCT.",
)
@json_option
def sign(
    key_file: str,
    mrenclave: bytes,
    isv_prod_id: int,
    isv_svn: int,
    debug_enclave: bool,
    date: dt.datetime | None,
    output: str,
    as_json: bool,
) -> None:
    """Sign a SIGSTRUCT for MRENCLAVE with an enclave signing key."""
    signing_key = _load_key(key_file)
    day = date.date() if date is not None else dt.datetime.now(dt.UTC).date()
    unsigned = new_sigstruct(
        mr_enclave=mrenclave,
        date=day,
        isv_prod_id=isv_prod_id,
        isv_svn=isv_svn,
        debug=debug_enclave,
    )
    signed = sign_sigstruct(unsigned, signing_key)
    write_bytes_atomic(output, signed.to_bytes())
    emit({"sigstruct": output, **signed.view()}, as_json)


def _read_sigstruct(path: str) -> bytes:
    return read_bytes(Path(path), "SIGSTRUCT")


@sigstruct.command("inspect")
@click.argument("sig_file", type=click.Path(dir_okay=False))
@json_option
def inspect(sig_file: str, as_json: bool) -> None:
    """Show a SIGSTRUCT's fields (gramine-sgx-sigstruct-view names) and check its signature.

    Exits 1 when the signature (or Q1/Q2, headers, exponent) is invalid.
    """
    parsed = SIGSTRUCT.from_bytes(_read_sigstruct(sig_file))
    error: VerificationError | None = None
    try:
        verify_sigstruct(parsed)
    except VerificationError as exc:
        error = exc
    data: dict[str, Any] = parsed.view()
    data["signature_valid"] = error is None
    data["verification_error"] = error.reason if error is not None else None
    if as_json:
        emit(data, True)
    else:
        for name, value in parsed.view().items():
            click.echo(f"{name}: {value}")
        click.echo("signature: valid" if error is None else f"signature: INVALID ({error.reason})")
    if error is not None:
        # The CLI entry point turns this into one line on stderr and exit code 1.
        raise error


@sigstruct.command("verify")
@click.argument("sig_file", type=click.Path(dir_okay=False))
@click.option(
    "--mrenclave",
    type=HexParam(32),
    default=None,
    envvar="SEALPOD_MRENCLAVE",
    help="Also require this MRENCLAVE.",
)
@click.option(
    "--mrsigner",
    type=HexParam(32),
    default=None,
    envvar="SEALPOD_MRSIGNER",
    help="Also require this MRSIGNER.",
)
@json_option
def verify(
    sig_file: str,
    mrenclave: bytes | None,
    mrsigner: bytes | None,
    as_json: bool,
) -> None:
    """Verify a SIGSTRUCT (signature, Q1/Q2, constants); exit 1 if it is invalid."""
    raw = _read_sigstruct(sig_file)
    try:
        checked = verify_sigstruct(raw, expected_mr_enclave=mrenclave, expected_mr_signer=mrsigner)
    except VerificationError as exc:
        if as_json:
            emit({"valid": False, "reason": exc.reason, "message": str(exc)}, True)
        raise
    result = {
        "valid": True,
        "mr_enclave": checked.mr_enclave.hex(),
        "mr_signer": checked.mr_signer.hex(),
        "isv_prod_id": checked.isv_prod_id,
        "isv_svn": checked.isv_svn,
        "debug_enclave": checked.debug,
    }
    emit(result, as_json)
