"""``sealpod quote verify``: verify a DCAP quote against collateral and an appraisal policy."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from sealpod.attestation.collateral import Collateral
from sealpod.attestation.policy import AppraisalPolicy
from sealpod.attestation.verify import load_trust_root, verify_quote
from sealpod.cli._common import TimeParam, emit, json_option, read_bytes
from sealpod.errors import QuoteFormatError, VerificationError

__all__ = ["verify"]


def _load_collateral(path: str) -> Collateral:
    raw = read_bytes(path, "collateral")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise VerificationError(
            "malformed_collateral", f"collateral {path} is not JSON: {exc}"
        ) from exc
    if isinstance(data, dict) and "tcbInfo" in data:
        raise VerificationError(
            "malformed_collateral",
            f"{path} is a bare PCS TCB info response; give dcap-qvl collateral JSON "
            "(it also needs the QE identity, the CRLs and the issuer chains)",
        )
    return Collateral.from_mapping(data)


@click.command()
@click.argument("quote_file", metavar="QUOTE", type=click.Path(dir_okay=False))
@click.option(
    "--collateral",
    "collateral_file",
    required=True,
    envvar="SEALPOD_COLLATERAL",
    type=click.Path(dir_okay=False),
    help="Collateral in dcap-qvl QuoteCollateralV3 JSON form.",
)
@click.option(
    "--at",
    "at",
    type=TimeParam(),
    default=None,
    envvar="SEALPOD_VERIFY_AT",
    help="Verification time, ISO-8601 or epoch seconds (default: now).",
)
@click.option(
    "--trust-root",
    "trust_root_file",
    envvar="SEALPOD_TRUST_ROOT",
    type=click.Path(dir_okay=False),
    help="Pin this root (PEM or DER) instead of the Intel SGX Root CA; "
    "a non-Intel root makes the evidence simulated.",
)
@click.option(
    "--allow-simulation",
    is_flag=True,
    envvar="SEALPOD_ALLOW_SIMULATION",
    help="INSECURE: accept evidence verified under a non-Intel (simulated) root.",
)
@click.option(
    "--policy",
    "policy_file",
    envvar="SEALPOD_POLICY",
    type=click.Path(dir_okay=False),
    help="Appraisal policy (JSON or YAML); default: UpToDate/SWHardeningNeeded, no debug.",
)
@json_option
def verify(
    quote_file: str,
    collateral_file: str,
    at: int | None,
    trust_root_file: str | None,
    allow_simulation: bool,
    policy_file: str | None,
    as_json: bool,
) -> None:
    """Verify QUOTE (signatures, chain to the pinned root, collateral, TCB) and appraise it.

    Exit 0 when the quote verifies and satisfies the policy; otherwise exit 1 with one line
    ``error: <reason>: <message>``.
    """
    quote = read_bytes(quote_file, "quote")
    collateral = _load_collateral(collateral_file)
    policy = AppraisalPolicy.from_file(policy_file) if policy_file else AppraisalPolicy()
    if allow_simulation and not policy.allow_simulation:
        policy = policy.model_copy(update={"allow_simulation": True})
    trust_root = (
        load_trust_root(read_bytes(trust_root_file, "trust root")) if trust_root_file else None
    )
    when = int(time.time()) if at is None else at
    try:
        evidence = verify_quote(
            quote, collateral, at=when, policy=policy, trust_root_der=trust_root
        )
    except QuoteFormatError as exc:
        raise VerificationError("malformed_quote", str(exc)) from exc
    data: dict[str, Any] = evidence.to_dict()

    def human() -> None:
        click.echo(f"status: {data['status']}")
        advisories = data["advisory_ids"]
        click.echo(f"advisories: {', '.join(advisories) if advisories else '(none)'}")
        click.echo(f"tee: {data['tee']}")
        for key in (
            "mr_enclave",
            "mr_signer",
            "isv_prod_id",
            "isv_svn",
            "mr_td",
            "rtmr0",
            "rtmr1",
            "rtmr2",
            "rtmr3",
        ):
            if key in data:
                click.echo(f"{key}: {data[key]}")
        click.echo(f"debug: {str(data['debug']).lower()}")
        click.echo(f"report_data: {data['report_data']}")
        click.echo(f"fmspc: {data['fmspc']}")
        click.echo(f"simulated: {str(data['simulated']).lower()}")

    emit(data, as_json, human)
