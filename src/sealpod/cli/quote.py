"""``sealpod quote``: look at and verify DCAP quotes."""

from __future__ import annotations

from typing import Any

import click
from cryptography import x509

from sealpod.attestation.quote import DCAPQuote, parse_quote
from sealpod.cli._common import emit, json_option, read_bytes


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


@quote.command()
@click.argument("quote_file", metavar="QUOTE", type=click.Path(dir_okay=False))
@json_option
def inspect(quote_file: str, as_json: bool) -> None:
    """Show the fields of a quote (nothing is verified)."""
    parsed = parse_quote(read_bytes(quote_file, "quote"))
    data = parsed.to_dict()
    data["pck_chain"] = _chain_summary(parsed)
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
