"""The simulated platform's two JSON files, read and written without pydantic.

``sealpod run --coordinator`` loads the platform on every start, so these are plain frozen
dataclasses with an explicit, strict reader (exactly the listed keys, JSON types as written,
ranges and hex patterns checked): the pydantic import alone would cost more than the whole
activation should.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from typing import Any, Final, Self

__all__ = ["CollateralFile", "FileContentError", "PlatformFile"]

_HEX32: Final = re.compile(r"[0-9a-f]{32}")
_HEX64: Final = re.compile(r"[0-9a-f]{64}")
_HEX128: Final = re.compile(r"[0-9a-f]{128}")
_HEX_BYTES: Final = re.compile(r"(?:[0-9a-f]{2})+")
PLATFORM_FORMAT: Final = "sealpod-sim-platform/1"


class FileContentError(ValueError):
    """A platform file is not valid JSON of the expected shape (the message names the field)."""


def _document(data: bytes | str, fields: tuple[str, ...]) -> dict[str, Any]:
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FileContentError(f"not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise FileContentError("not a JSON object")
    if set(document) != set(fields):
        odd = sorted(set(document) ^ set(fields))
        raise FileContentError(f"unexpected or missing fields: {', '.join(odd)}")
    return document


def _int(document: dict[str, Any], name: str, low: int, high: int | None = None) -> None:
    value = document[name]
    if type(value) is not int or value < low or (high is not None and value > high):
        raise FileContentError(f"{name}: not an integer in range")


def _text(document: dict[str, Any], name: str, pattern: re.Pattern[str] | None = None) -> None:
    value = document[name]
    if not isinstance(value, str) or (pattern is not None and not pattern.fullmatch(value)):
        raise FileContentError(f"{name}: not a valid string")


class _JSONFile:
    """JSON (de)serialisation shared by the two files."""

    def to_json(self) -> bytes:
        """The file's content: indented JSON in field order, newline-terminated."""
        return json.dumps(self.to_dict(), indent=2).encode() + b"\n"

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return dataclasses.asdict(self)  # type: ignore[call-overload, no-any-return]


@dataclass(frozen=True)
class PlatformFile(_JSONFile):
    """``platform.json``: what is not already in the certificates."""

    format: str
    created_at: int
    collateral_validity_seconds: int
    qe_id: str
    qe_svn: int
    qe_isv_prod_id: int
    qe_mr_enclave: str
    qe_mr_signer: str
    tcb_evaluation_data_number: int

    @classmethod
    def from_json(cls, data: bytes | str) -> Self:
        """Read and check ``platform.json``.

        Raises:
            FileContentError: not this shape.
        """
        names = tuple(f.name for f in dataclasses.fields(cls))
        document = _document(data, names)
        if document["format"] != PLATFORM_FORMAT:
            raise FileContentError("format: not a sealpod simulated platform")
        _int(document, "created_at", 0)
        _int(document, "collateral_validity_seconds", 1)
        _text(document, "qe_id", _HEX32)
        _int(document, "qe_svn", 0, 0xFFFF)
        _int(document, "qe_isv_prod_id", 0, 0xFFFF)
        _text(document, "qe_mr_enclave", _HEX64)
        _text(document, "qe_mr_signer", _HEX64)
        _int(document, "tcb_evaluation_data_number", 0)
        return cls(**document)


@dataclass(frozen=True)
class CollateralFile(_JSONFile):
    """``collateral.json``: dcap-qvl ``QuoteCollateralV3`` JSON."""

    pck_crl_issuer_chain: str
    root_ca_crl: str
    pck_crl: str
    tcb_info_issuer_chain: str
    tcb_info: str
    tcb_info_signature: str
    qe_identity_issuer_chain: str
    qe_identity: str
    qe_identity_signature: str

    @classmethod
    def from_json(cls, data: bytes | str) -> Self:
        """Read and check ``collateral.json``.

        Raises:
            FileContentError: not this shape.
        """
        names = tuple(f.name for f in dataclasses.fields(cls))
        document = _document(data, names)
        for name in names:
            _text(document, name)
        for name in ("root_ca_crl", "pck_crl"):
            _text(document, name, _HEX_BYTES)
        for name in ("tcb_info_signature", "qe_identity_signature"):
            _text(document, name, _HEX128)
        return cls(**document)
