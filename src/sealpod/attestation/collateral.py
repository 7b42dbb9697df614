"""DCAP collateral: the signed objects a quote is verified against.

Collateral is TCB info, QE identity, the PCK CRL and the Intel SGX Root CA CRL, plus the issuer
chains of each. It is self-authenticating (everything is signed up to the root), so it may come
from anywhere: a file, a PCCS, Intel's PCS or the quoting service itself.

Invariants of this module:

* :class:`Collateral` holds exactly the fields of dcap-qvl's ``QuoteCollateralV3``. Nothing here
  checks a signature: that is :func:`sealpod.attestation.verify.verify_quote`'s job. What is
  checked is *structure*: the signed JSON parses and has its dates, CRLs are DER and parse,
  signatures are 64-byte ``r||s``, issuer chains hold PEM certificates. Anything else raises
  :class:`~sealpod.errors.VerificationError` with reason ``malformed_collateral`` and a message that
  names the field.
* ``tcb_info`` and ``qe_identity`` are the *exact* signed byte strings. When loading a PCS response
  (``{"tcbInfo":{...},"signature":"..."}``) the value is cut out of the body as it was sent, never
  re-serialised, because the signature covers those bytes.
* A :class:`Collateral` is immutable; its dcap-qvl form is built once and reused, so verifying many
  quotes against one collateral does not re-parse anything.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any, Literal
from urllib.parse import unquote

import dcap_qvl
from cryptography import x509
from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError, model_validator

from sealpod._internal.models import RevalidatingModel
from sealpod.errors import VerificationError

__all__ = [
    "Collateral",
    "CollateralValidity",
    "crl_to_der",
    "crl_validity",
    "issuer_chain_from_header",
    "signed_json_validity",
    "split_signed_body",
]

_logger = logging.getLogger(__name__)

_REASON = "malformed_collateral"
_PEM_CERT = "-----BEGIN CERTIFICATE-----"
_PEM_CRL_RE = re.compile(
    rb"-----BEGIN X509 CRL-----\s*([A-Za-z0-9+/=\s]+?)\s*-----END X509 CRL-----"
)
_HEX_RE = re.compile(rb"\A\s*([0-9a-fA-F]{2})+\s*\Z")
_SIGNATURE_SIZE = 64  # ECDSA P-256 r||s, Intel PCS API v4 "signature" fields

#: The JSON field names of dcap-qvl's ``QuoteCollateralV3`` (and of our JSON form).
_DCAP_QVL_FIELDS = (
    "pck_crl_issuer_chain",
    "root_ca_crl",
    "pck_crl",
    "tcb_info_issuer_chain",
    "tcb_info",
    "tcb_info_signature",
    "qe_identity_issuer_chain",
    "qe_identity",
    "qe_identity_signature",
)
_BYTES_FIELDS = frozenset({"root_ca_crl", "pck_crl", "tcb_info_signature", "qe_identity_signature"})
_OPTIONAL_FIELDS = ("pck_certificate_chain",)


def _malformed(field: str, message: str) -> VerificationError:
    return VerificationError(_REASON, f"{field}: {message}")


def _parse_rfc3339(value: Any, field: str) -> int:
    if not isinstance(value, str):
        raise _malformed(field, "missing or not a string date")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise _malformed(field, f"invalid date {value!r}") from exc
    if parsed.tzinfo is None:
        raise _malformed(field, f"date {value!r} has no time zone")
    return int(parsed.timestamp())


class CollateralValidity(BaseModel):
    """The validity window of one signed collateral item (epoch seconds)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    issued: int
    next_update: int
    #: Whether ``next_update`` itself is still valid. TCB info and QE identity: yes (their
    #: ``nextUpdate`` is checked as "expired when now > nextUpdate"). CRLs: no (RFC 5280 and
    #: webpki, used by dcap-qvl, treat a CRL as expired from its ``nextUpdate`` on).
    next_update_inclusive: bool = False

    @property
    def expires_at(self) -> int:
        """The first second at which this item is expired."""
        return self.next_update + 1 if self.next_update_inclusive else self.next_update


def signed_json_validity(text: str, field: str) -> tuple[CollateralValidity, dict[str, Any]]:
    """Parse a signed ``tcbInfo``/``enclaveIdentity`` JSON string and read its dates.

    Returns the validity (``issueDate`` .. ``nextUpdate``) and the parsed object.

    Raises:
        VerificationError: ``malformed_collateral``, naming ``field``.
    """
    try:
        parsed = json.loads(text)
    except ValueError as exc:
        raise _malformed(field, f"not JSON ({exc})") from exc
    if not isinstance(parsed, dict):
        raise _malformed(field, "not a JSON object")
    issued = _parse_rfc3339(parsed.get("issueDate"), f"{field}.issueDate")
    next_update = _parse_rfc3339(parsed.get("nextUpdate"), f"{field}.nextUpdate")
    return (
        CollateralValidity(issued=issued, next_update=next_update, next_update_inclusive=True),
        parsed,
    )


def crl_to_der(data: bytes, field: str) -> bytes:
    """Normalise a CRL given as DER, PEM or hex text (PCCS sends hex) to DER.

    Raises:
        VerificationError: ``malformed_collateral``, naming ``field``.
    """
    raw = bytes(data)
    if raw[:1] == b"\x30":
        return raw
    pem = _PEM_CRL_RE.search(raw)
    if pem is not None:
        try:
            return base64.b64decode(b"".join(pem.group(1).split()), validate=True)
        except binascii.Error as exc:
            raise _malformed(field, "bad base64 in PEM CRL") from exc
    if _HEX_RE.match(raw):
        return bytes.fromhex(raw.decode("ascii").strip())
    raise _malformed(field, "not a DER, PEM or hex CRL")


def crl_validity(der: bytes, field: str) -> CollateralValidity:
    """Parse a DER CRL and return ``thisUpdate`` .. ``nextUpdate``.

    Raises:
        VerificationError: ``malformed_collateral``, naming ``field``.
    """
    try:
        crl = x509.load_der_x509_crl(der)
    except ValueError as exc:
        raise _malformed(field, f"not a DER CRL ({exc})") from exc
    next_update = crl.next_update_utc
    if next_update is None:
        raise _malformed(field, "CRL has no nextUpdate")
    return CollateralValidity(
        issued=int(crl.last_update_utc.timestamp()), next_update=int(next_update.timestamp())
    )


def issuer_chain_from_header(value: str | bytes, field: str) -> str:
    """Decode an ``*-Issuer-Chain`` PCS response header (URL-encoded PEM) into PEM text.

    Already-decoded PEM passes through unchanged (``unquote`` leaves ``+`` and ``/`` alone).

    Raises:
        VerificationError: ``malformed_collateral``, naming ``field``.
    """
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    pem = unquote(text)
    if _PEM_CERT not in pem:
        raise _malformed(field, "no PEM certificate in the issuer chain")
    return pem


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def split_signed_body(body: str | bytes, key: str, field: str) -> tuple[str, bytes]:
    """Cut the signed JSON value of ``key`` and its hex ``signature`` out of a PCS body.

    ``body`` is ``{"<key>": {...}, "signature": "<hex>"}``. The returned string is the exact
    substring of the body that holds the value of ``key``, so the signature still covers it.

    Raises:
        VerificationError: ``malformed_collateral``, naming ``field``.
    """
    if isinstance(body, bytes):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _malformed(field, "body is not UTF-8") from exc
    else:
        text = body
    decoder = json.JSONDecoder()
    members: dict[str, tuple[int, int, Any]] = {}
    try:
        pos = _skip_ws(text, 0)
        if text[pos : pos + 1] != "{":
            raise _malformed(field, "body is not a JSON object")
        pos = _skip_ws(text, pos + 1)
        while True:
            name, pos = decoder.raw_decode(text, pos)
            if not isinstance(name, str):
                raise _malformed(field, "body has a non-string key")
            pos = _skip_ws(text, pos)
            if text[pos : pos + 1] != ":":
                raise _malformed(field, "body is not a JSON object")
            start = _skip_ws(text, pos + 1)
            value, end = decoder.raw_decode(text, start)
            if name in members:
                # Two values for one key: which one was signed is ambiguous, refuse.
                raise _malformed(field, f"body repeats the key {name!r}")
            members[name] = (start, end, value)
            pos = _skip_ws(text, end)
            if text[pos : pos + 1] == ",":
                pos = _skip_ws(text, pos + 1)
                continue
            if text[pos : pos + 1] == "}":
                break
            raise _malformed(field, "body is not a JSON object")
        if _skip_ws(text, pos + 1) != len(text):
            raise _malformed(field, "trailing data after the JSON body")
    except (ValueError, IndexError) as exc:
        raise _malformed(field, f"body is not JSON ({exc})") from exc
    if key not in members:
        raise _malformed(field, f"body has no {key!r}")
    if "signature" not in members:
        raise _malformed(field, "body has no 'signature'")
    start, end, value = members[key]
    if not isinstance(value, dict):
        raise _malformed(field, f"{key!r} is not a JSON object")
    signature_hex = members["signature"][2]
    if not isinstance(signature_hex, str):
        raise _malformed(f"{field}.signature", "not a hex string")
    return text[start:end], _decode_signature(signature_hex, f"{field}.signature")


def _decode_signature(value: str, field: str) -> bytes:
    try:
        raw = bytes.fromhex(value)
    except ValueError as exc:
        raise _malformed(field, "not hex") from exc
    if len(raw) != _SIGNATURE_SIZE:
        raise _malformed(field, f"expected {_SIGNATURE_SIZE} bytes (r||s), got {len(raw)}")
    return raw


@dataclass(frozen=True)
class _Facts:
    """Values derived from the collateral once (see ``Collateral._facts``)."""

    fmspc: str
    tee: Literal["sgx", "tdx"]
    tcb_evaluation_data_number: int | None
    validity: Mapping[str, CollateralValidity]
    not_before: int
    not_after: int
    expires_at: int


class Collateral(RevalidatingModel):
    """Quote collateral: the fields of dcap-qvl's ``QuoteCollateralV3``.

    Build it with :meth:`from_dcap_qvl_json`, :meth:`from_mapping` or :meth:`from_pcs_responses`;
    those turn malformed input into ``VerificationError("malformed_collateral", ...)``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    pck_crl_issuer_chain: str
    root_ca_crl: bytes
    pck_crl: bytes
    tcb_info_issuer_chain: str
    tcb_info: str
    tcb_info_signature: bytes
    qe_identity_issuer_chain: str
    qe_identity: str
    qe_identity_signature: bytes
    #: dcap-qvl >= 0.7 accepts the PCK chain in the collateral (for quotes that lack it).
    pck_certificate_chain: str | None = None

    _tcb_info_validity: CollateralValidity = PrivateAttr()
    _qe_identity_validity: CollateralValidity = PrivateAttr()
    _pck_crl_validity: CollateralValidity = PrivateAttr()
    _root_ca_crl_validity: CollateralValidity = PrivateAttr()
    _tcb_info_json: dict[str, Any] = PrivateAttr()
    _qe_identity_json: dict[str, Any] = PrivateAttr()
    _not_before: int = PrivateAttr()
    _not_after: int = PrivateAttr()

    @model_validator(mode="after")
    def _check_structure(self) -> Collateral:
        for name in ("pck_crl_issuer_chain", "tcb_info_issuer_chain", "qe_identity_issuer_chain"):
            if _PEM_CERT not in getattr(self, name):
                raise _malformed(name, "no PEM certificate")
        if self.pck_certificate_chain is not None and _PEM_CERT not in self.pck_certificate_chain:
            raise _malformed("pck_certificate_chain", "no PEM certificate")
        for name in ("tcb_info_signature", "qe_identity_signature"):
            size = len(getattr(self, name))
            if size != _SIGNATURE_SIZE:
                raise _malformed(name, f"expected {_SIGNATURE_SIZE} bytes (r||s), got {size}")
        self._tcb_info_validity, self._tcb_info_json = signed_json_validity(
            self.tcb_info, "tcb_info"
        )
        self._qe_identity_validity, self._qe_identity_json = signed_json_validity(
            self.qe_identity, "qe_identity"
        )
        fmspc = self._tcb_info_json.get("fmspc")
        if not isinstance(fmspc, str) or len(fmspc) != 12:
            raise _malformed("tcb_info.fmspc", "missing or not 6 bytes of hex")
        if self._tcb_info_json.get("id", "SGX") not in ("SGX", "TDX"):
            raise _malformed("tcb_info.id", f"unknown id {self._tcb_info_json.get('id')!r}")
        self._pck_crl_validity = crl_validity(self.pck_crl, "pck_crl")
        self._root_ca_crl_validity = crl_validity(self.root_ca_crl, "root_ca_crl")
        items = (
            self._tcb_info_validity,
            self._qe_identity_validity,
            self._pck_crl_validity,
            self._root_ca_crl_validity,
        )
        self._not_before = max(item.issued for item in items)
        self._not_after = min(item.next_update for item in items)
        return self

    def __repr__(self) -> str:
        return (
            f"Collateral(tee={self.tee!r}, fmspc={self.fmspc!r}, "
            f"not_before={self.not_before}, not_after={self.not_after})"
        )

    __str__ = __repr__

    # -- loaders ---------------------------------------------------------------------------

    @classmethod
    def _build(cls, fields: Mapping[str, Any]) -> Collateral:
        try:
            return cls.model_validate(dict(fields))
        except ValidationError as exc:
            # Type errors only: the structural checks raise VerificationError themselves
            # (pydantic lets non-ValueError exceptions through unchanged).
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "collateral"
            raise _malformed(where, first["msg"]) from exc

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Collateral:
        """Load dcap-qvl's JSON form already parsed into a mapping (bytes fields as hex).

        Raises:
            VerificationError: ``malformed_collateral``, naming the field.
        """
        if not isinstance(data, Mapping):
            raise _malformed("collateral", "not a JSON object")
        unknown = sorted(set(data) - set(_DCAP_QVL_FIELDS) - set(_OPTIONAL_FIELDS))
        if unknown:
            raise _malformed(unknown[0], "unknown field")
        fields: dict[str, Any] = {}
        for name in _DCAP_QVL_FIELDS:
            if name not in data:
                raise _malformed(name, "missing")
            value = data[name]
            if name in _BYTES_FIELDS:
                if isinstance(value, list) and all(isinstance(b, int) for b in value):
                    # serde's default for Vec<u8>: a list of numbers.
                    try:
                        value = bytes(value)
                    except ValueError as exc:
                        raise _malformed(name, "byte list out of range") from exc
                elif isinstance(value, str):
                    try:
                        value = bytes.fromhex(value)
                    except ValueError as exc:
                        raise _malformed(name, "not hex") from exc
                else:
                    raise _malformed(name, "expected a hex string")
            elif not isinstance(value, str):
                raise _malformed(name, "expected a string")
            fields[name] = value
        chain = data.get("pck_certificate_chain")
        if chain is not None:
            if not isinstance(chain, str):
                raise _malformed("pck_certificate_chain", "expected a string")
            fields["pck_certificate_chain"] = chain
        return cls._build(fields)

    @classmethod
    def from_dcap_qvl_json(cls, text: str | bytes) -> Collateral:
        """Load dcap-qvl's ``QuoteCollateralV3`` JSON (hex for DER and signatures).

        Raises:
            VerificationError: ``malformed_collateral``, naming the field.
        """
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _malformed("collateral", f"not JSON ({exc})") from exc
        return cls.from_mapping(data)

    @classmethod
    def from_dcap_qvl(cls, collateral: dcap_qvl.QuoteCollateralV3) -> Collateral:
        """Wrap a ``dcap_qvl.QuoteCollateralV3``.

        Raises:
            VerificationError: ``malformed_collateral``, naming the field.
        """
        fields = {name: getattr(collateral, name) for name in _DCAP_QVL_FIELDS}
        made = cls._build({k: bytes(v) if k in _BYTES_FIELDS else v for k, v in fields.items()})
        made.__dict__["_dcap_qvl_cache"] = collateral
        return made

    @classmethod
    def from_pcs_responses(
        cls,
        *,
        tcb_info_body: str | bytes,
        tcb_info_issuer_chain: str | bytes,
        qe_identity_body: str | bytes,
        qe_identity_issuer_chain: str | bytes,
        pck_crl: bytes,
        pck_crl_issuer_chain: str | bytes,
        root_ca_crl: bytes,
    ) -> Collateral:
        """Assemble collateral from Intel PCS v4 (or PCCS) responses.

        Args:
            tcb_info_body: body of ``/{sgx,tdx}/certification/v4/tcb?fmspc=``.
            tcb_info_issuer_chain: its ``TCB-Info-Issuer-Chain`` header (URL-encoded PEM).
            qe_identity_body: body of ``/{sgx,tdx}/certification/v4/qe/identity``.
            qe_identity_issuer_chain: its ``SGX-Enclave-Identity-Issuer-Chain`` header.
            pck_crl: body of ``/sgx/certification/v4/pckcrl`` (DER, PEM or hex).
            pck_crl_issuer_chain: its ``SGX-PCK-CRL-Issuer-Chain`` header.
            root_ca_crl: the Intel SGX Root CA CRL (DER, PEM or hex).

        Raises:
            VerificationError: ``malformed_collateral``, naming the response.
        """
        tcb_info, tcb_sig = split_signed_body(tcb_info_body, "tcbInfo", "tcb_info")
        qe_identity, qe_sig = split_signed_body(qe_identity_body, "enclaveIdentity", "qe_identity")
        return cls._build(
            {
                "pck_crl_issuer_chain": issuer_chain_from_header(
                    pck_crl_issuer_chain, "pck_crl_issuer_chain"
                ),
                "root_ca_crl": crl_to_der(root_ca_crl, "root_ca_crl"),
                "pck_crl": crl_to_der(pck_crl, "pck_crl"),
                "tcb_info_issuer_chain": issuer_chain_from_header(
                    tcb_info_issuer_chain, "tcb_info_issuer_chain"
                ),
                "tcb_info": tcb_info,
                "tcb_info_signature": tcb_sig,
                "qe_identity_issuer_chain": issuer_chain_from_header(
                    qe_identity_issuer_chain, "qe_identity_issuer_chain"
                ),
                "qe_identity": qe_identity,
                "qe_identity_signature": qe_sig,
            }
        )

    # -- conversions -----------------------------------------------------------------------

    def to_mapping(self) -> dict[str, str]:
        """dcap-qvl's JSON form as a dict (bytes as hex); ``from_mapping`` reads it back."""
        out = {
            name: (getattr(self, name).hex() if name in _BYTES_FIELDS else getattr(self, name))
            for name in _DCAP_QVL_FIELDS
        }
        if self.pck_certificate_chain is not None:
            out["pck_certificate_chain"] = self.pck_certificate_chain
        return out

    def to_dcap_qvl_json(self) -> str:
        """dcap-qvl's ``QuoteCollateralV3`` JSON text."""
        return json.dumps(self.to_mapping())

    @cached_property
    def _dcap_qvl_cache(self) -> dcap_qvl.QuoteCollateralV3:
        if self.pck_certificate_chain is not None:
            return dcap_qvl.QuoteCollateralV3.from_json(self.to_dcap_qvl_json())
        return dcap_qvl.QuoteCollateralV3(
            self.pck_crl_issuer_chain,
            self.root_ca_crl,
            self.pck_crl,
            self.tcb_info_issuer_chain,
            self.tcb_info,
            self.tcb_info_signature,
            self.qe_identity_issuer_chain,
            self.qe_identity,
            self.qe_identity_signature,
        )

    def to_dcap_qvl(self) -> dcap_qvl.QuoteCollateralV3:
        """The ``dcap_qvl.QuoteCollateralV3`` (built once per object, then reused).

        Raises:
            VerificationError: ``malformed_collateral`` if dcap-qvl refuses the fields.
        """
        try:
            return self._dcap_qvl_cache
        except ValueError as exc:
            raise _malformed("collateral", f"dcap-qvl refused it ({exc})") from exc

    # -- facts -----------------------------------------------------------------------------

    @cached_property
    def _facts(self) -> _Facts:
        # Read once from the private attributes (pydantic serves those through a slow
        # __getattr__); later reads are plain instance-dict lookups, which keeps the per-quote
        # cost of verify_quote low.
        tcb_info = self._tcb_info_json
        evaluation = tcb_info.get("tcbEvaluationDataNumber")
        return _Facts(
            fmspc=str(tcb_info["fmspc"]).upper(),
            tee="tdx" if tcb_info.get("id") == "TDX" else "sgx",
            tcb_evaluation_data_number=evaluation if isinstance(evaluation, int) else None,
            validity={
                "tcb_info": self._tcb_info_validity,
                "qe_identity": self._qe_identity_validity,
                "pck_crl": self._pck_crl_validity,
                "root_ca_crl": self._root_ca_crl_validity,
            },
            not_before=self._not_before,
            not_after=self._not_after,
            expires_at=min(
                item.expires_at
                for item in (
                    self._tcb_info_validity,
                    self._qe_identity_validity,
                    self._pck_crl_validity,
                    self._root_ca_crl_validity,
                )
            ),
        )

    @property
    def fmspc(self) -> str:
        """The FMSPC the TCB info is for (upper-case hex, 12 digits)."""
        return self._facts.fmspc

    @property
    def tee(self) -> Literal["sgx", "tdx"]:
        """Which TEE the TCB info is for (TCB info v2 has no ``id``: SGX)."""
        return self._facts.tee

    @property
    def tcb_evaluation_data_number(self) -> int | None:
        """The TCB info's ``tcbEvaluationDataNumber`` (None if absent)."""
        return self._facts.tcb_evaluation_data_number

    @property
    def validity(self) -> dict[str, CollateralValidity]:
        """Each item's validity window: tcb_info, qe_identity, pck_crl, root_ca_crl."""
        return dict(self._facts.validity)

    @property
    def not_before(self) -> int:
        """The latest ``issueDate``/``thisUpdate``: before it some item is not yet issued."""
        return self._facts.not_before

    @property
    def not_after(self) -> int:
        """The earliest ``nextUpdate``: from then on some item has expired."""
        return self._facts.not_after

    def expired_or_early_item(self, at: int) -> tuple[str, str] | None:
        """Which item makes ``at`` fall outside its validity, as (reason, message), or None.

        ``reason`` is ``collateral_not_yet_valid`` or ``collateral_expired``.
        """
        facts = self._facts
        if facts.not_before <= at < facts.expires_at:
            return None
        for name, item in facts.validity.items():
            if at < item.issued:
                return "collateral_not_yet_valid", f"{name} is issued after the verification time"
            if at >= item.expires_at:
                return "collateral_expired", f"{name} expired before the verification time"
        return None  # pragma: no cover - the window is derived from the items

    def is_valid_at(self, at: int) -> bool:
        """True when every item is issued and not yet expired at ``at`` (epoch seconds).

        That is ``not_before <= at`` and ``at`` before the earliest expiry: a CRL has expired
        at its ``nextUpdate`` (RFC 5280 section 5.1.2.5), TCB info and QE identity one second
        after theirs (as dcap-qvl checks them).
        """
        return self.expired_or_early_item(at) is None
