"""``sealpod quote``: look at and verify DCAP quotes."""

from __future__ import annotations

from typing import Any

import click
from cryptography import x509

from sealpod.attestation.pck import PCKExtensions
from sealpod.attestation.quote import DCAPQuote, parse_quote
from sealpod.cli._common import emit, json_option, read_bytes
from sealpod.errors import QuoteFormatError


@click.group()
def quote() -> None:
    """Inspect and verify Intel SGX/TDX DCAP quotes."""


def _chain_summary(parsed: DCAPQuote) -> list[dict[str, Any]]:
    summary = []
    for pem in parsed.certification_data.pck_chain_certificates():
        try:
            cert = x509.load_pem_x509_certificate(pem)
        except ValueError:
            summary.append({"subject": "(unparsable certificate)"})
            continue
        summary.append(
            {
                "subject": cert.subject.rfc4514_string(),
                "issuer": cert.issuer.rfc4514_string(),
                "not_before": cert.not_valid_before_utc.isoformat(),
                "not_after": cert.not_valid_after_utc.isoformat(),
            }
        )
    return summary


def _pck_summary(parsed: DCAPQuote) -> dict[str, Any] | str:
    pem = parsed.pck_chain_pem
    if not pem:
        return "(no PCK certificate in the quote)"
    try:
        ext = PCKExtensions.from_pem_chain(pem)
    except QuoteFormatError as exc:
        return f"(unreadable: {exc})"
    chain = _chain_summary(parsed)
    issuer = chain[0].get("issuer", "") if chain else ""
    ca = "processor" if "Processor" in issuer else "platform" if "Platform" in issuer else "unknown"
    return {
        "fmspc": ext.fmspc.hex().upper(),
        "pck_ca": ca,
        "pce_id": ext.pce_id.hex(),
        "pce_svn": ext.pce_svn,
        "cpu_svn": ext.cpu_svn.hex(),
        "tcb_component_svns": list(ext.tcb_component_svns),
        "sgx_type": ext.sgx_type,
    }


@quote.command()
@click.argument("quote_file", metavar="QUOTE", type=click.Path(dir_okay=False))
@json_option
def inspect(quote_file: str, as_json: bool) -> None:
    """Show the fields of a quote (nothing is verified)."""
    parsed = parse_quote(read_bytes(quote_file, "quote"))
    data = parsed.to_dict()
    data["pck_chain"] = _chain_summary(parsed)
    data["pck"] = _pck_summary(parsed)
    data["verified"] = False

    def human() -> None:
        for key, value in data.items():
            if key == "pck_chain":
                click.echo("pck_chain:")
                for cert in value:
                    click.echo(f"  - {cert['subject']}")
            elif isinstance(value, dict):
                click.echo(f"{key}:")
                for sub_key, sub_value in value.items():
                    click.echo(f"  {sub_key}: {sub_value}")
            else:
                click.echo(f"{key}: {value}")

    emit(data, as_json, human)


def _attach_verify() -> None:
    from sealpod.cli.quote_verify import verify

    quote.add_command(verify, "verify")


_attach_verify()
