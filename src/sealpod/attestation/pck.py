"""The Intel SGX extension of PCK certificates (OID 1.2.840.113741.1.13.1).

Intel's *PCK Certificate and CRL Profile Specification* defines one non-critical X.509 extension
that carries the platform's provisioning data::

    SGXExtensions ::= SEQUENCE OF SEQUENCE { sgxExtensionId OBJECT IDENTIFIER, value ANY }

with these entries (all under ``1.2.840.113741.1.13.1``):

====  =========================  =============================================================
``.1``  PPID                     OCTET STRING (16)
``.2``  TCB                      SEQUENCE OF { OID, value }: ``.2.1`` .. ``.2.16`` the 16 SGX TCB
                                 component SVNs (INTEGER 0..255), ``.2.17`` PCESVN (INTEGER
                                 0..65535), ``.2.18`` CPUSVN (OCTET STRING (16))
``.3``  PCE-ID                   OCTET STRING (2)
``.4``  FMSPC                    OCTET STRING (6)
``.5``  SGX Type                 ENUMERATED (0 standard, 1 scalable, 2 scalable with integrity)
``.6``  Platform Instance ID     OCTET STRING (16), Platform CA certificates only
``.7``  Configuration            SEQUENCE OF { OID, BOOLEAN }: ``.7.1`` dynamic platform,
                                 ``.7.2`` cached keys, ``.7.3`` SMT enabled (each optional)
====  =========================  =============================================================

This module encodes and decodes that value with a small, strict DER codec (definite lengths,
minimal encodings). Decoding never trusts a length: every malformed value is a
:class:`~sealpod.errors.QuoteFormatError`. Unknown top-level entries are ignored (Intel may add
some); duplicated or missing mandatory ones are errors.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

from cryptography import x509

from sealpod.errors import QuoteFormatError

_logger = logging.getLogger(__name__)

#: OID of the Intel SGX extension in PCK certificates.
SGX_EXTENSION_OID = "1.2.840.113741.1.13.1"

_PPID = SGX_EXTENSION_OID + ".1"
_TCB = SGX_EXTENSION_OID + ".2"
_PCESVN = _TCB + ".17"
_CPUSVN = _TCB + ".18"
_PCE_ID = SGX_EXTENSION_OID + ".3"
_FMSPC = SGX_EXTENSION_OID + ".4"
_SGX_TYPE = SGX_EXTENSION_OID + ".5"
_PLATFORM_INSTANCE_ID = SGX_EXTENSION_OID + ".6"
_CONFIGURATION = SGX_EXTENSION_OID + ".7"
_DYNAMIC_PLATFORM = _CONFIGURATION + ".1"
_CACHED_KEYS = _CONFIGURATION + ".2"
_SMT_ENABLED = _CONFIGURATION + ".3"

# OCTET STRING entries: OID -> (name, exact size).
_OCTET_ENTRIES = {
    _PPID: ("PPID", 16),
    _PCE_ID: ("PCE-ID", 2),
    _FMSPC: ("FMSPC", 6),
    _PLATFORM_INSTANCE_ID: ("Platform Instance ID", 16),
}

#: Number of SGX TCB component SVNs in the TCB entry.
TCB_COMPONENT_COUNT = 16

#: SGX Type values (PCK Certificate and CRL Profile Specification).
SGX_TYPE_STANDARD = 0
SGX_TYPE_SCALABLE = 1
SGX_TYPE_SCALABLE_WITH_INTEGRITY = 2

# DER universal tags used here (X.690 8.x).
_TAG_BOOLEAN = 0x01
_TAG_INTEGER = 0x02
_TAG_OCTET_STRING = 0x04
_TAG_OID = 0x06
_TAG_ENUMERATED = 0x0A
_TAG_SEQUENCE = 0x30

_MAX_EXTENSION_BYTES = 1 << 16  # the extension is a few hundred bytes; refuse anything absurd


# --------------------------------------------------------------------------------------------
# A minimal DER codec: enough for the SGX extension, strict on what it accepts.
# --------------------------------------------------------------------------------------------


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    body = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _der_tlv(tag: int, value: bytes) -> bytes:
    return bytes([tag]) + _der_length(len(value)) + value


def _der_oid(dotted: str) -> bytes:
    arcs = [int(part) for part in dotted.split(".")]
    body = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body.extend(reversed(chunk))
    return _der_tlv(_TAG_OID, bytes(body))


def _der_unsigned(tag: int, value: int) -> bytes:
    # Minimal two's complement of a non-negative number: a leading 0x00 only when the top bit
    # of the first byte would otherwise make it negative (X.690 8.3.2).
    body = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big")
    return _der_tlv(tag, body)


def _der_sequence(*items: bytes) -> bytes:
    return _der_tlv(_TAG_SEQUENCE, b"".join(items))


def _der_entry(oid: str, value: bytes) -> bytes:
    return _der_sequence(_der_oid(oid), value)


def _der_boolean(value: bool) -> bytes:
    return _der_tlv(_TAG_BOOLEAN, b"\xff" if value else b"\x00")


class _DERError(ValueError):
    pass


def _read_tlv(data: bytes, offset: int) -> tuple[int, bytes, int]:
    """One TLV at ``offset``: (tag, value, offset after it)."""
    if offset + 2 > len(data):
        raise _DERError("truncated TLV header")
    tag = data[offset]
    if tag & 0x1F == 0x1F:
        raise _DERError("multi-byte tags are not used in the SGX extension")
    first = data[offset + 1]
    pos = offset + 2
    if first < 0x80:
        length = first
    elif first == 0x80:
        raise _DERError("indefinite length is not DER")
    else:
        count = first & 0x7F
        if count > 3 or pos + count > len(data):
            raise _DERError("bad length of length")
        length = int.from_bytes(data[pos : pos + count], "big")
        if length < 0x80 or data[pos] == 0:
            raise _DERError("non-minimal length encoding")
        pos += count
    end = pos + length
    if end > len(data):
        raise _DERError("value runs past the end of its container")
    return tag, data[pos:end], end


def _iter_tlvs(data: bytes) -> Iterator[tuple[int, bytes]]:
    offset = 0
    while offset < len(data):
        tag, value, offset = _read_tlv(data, offset)
        yield tag, value


def _expect(tag: int, value: bytes, wanted: int, what: str) -> bytes:
    if tag != wanted:
        raise _DERError(f"{what}: expected tag 0x{wanted:02x}, got 0x{tag:02x}")
    return value


def _decode_oid(body: bytes) -> str:
    if not body or body[-1] & 0x80:
        raise _DERError("malformed OBJECT IDENTIFIER")
    arcs: list[int] = []
    current = 0
    start = True
    for byte in body:
        if start and byte == 0x80:
            raise _DERError("non-minimal OBJECT IDENTIFIER arc")
        current = (current << 7) | (byte & 0x7F)
        start = False
        if not byte & 0x80:
            arcs.append(current)
            current = 0
            start = True
    first = arcs[0]
    head = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    return ".".join(str(arc) for arc in head + arcs[1:])


def _decode_unsigned(body: bytes, what: str, maximum: int) -> int:
    if not body:
        raise _DERError(f"{what}: empty INTEGER")
    if len(body) > 1 and (
        (body[0] == 0 and not body[1] & 0x80) or (body[0] == 0xFF and body[1] & 0x80)
    ):
        raise _DERError(f"{what}: non-minimal INTEGER")
    if body[0] & 0x80:
        raise _DERError(f"{what}: negative value")
    value = int.from_bytes(body, "big")
    if value > maximum:
        raise _DERError(f"{what}: {value} is larger than {maximum}")
    return value


def _decode_octets(body: bytes, what: str, size: int) -> bytes:
    if len(body) != size:
        raise _DERError(f"{what}: expected {size} bytes, got {len(body)}")
    return body


def _decode_boolean(body: bytes, what: str) -> bool:
    if body == b"\xff":
        return True
    if body == b"\x00":
        return False
    raise _DERError(f"{what}: malformed BOOLEAN")


def _decode_entries(body: bytes, what: str) -> list[tuple[str, int, bytes]]:
    """A ``SEQUENCE OF SEQUENCE { OID, value }`` body -> [(oid, value tag, value body)]."""
    entries: list[tuple[str, int, bytes]] = []
    seen: set[str] = set()
    for tag, item in _iter_tlvs(body):
        _expect(tag, item, _TAG_SEQUENCE, what)
        parts = list(_iter_tlvs(item))
        if len(parts) != 2:
            raise _DERError(f"{what}: an entry must hold exactly an OID and a value")
        oid = _decode_oid(_expect(parts[0][0], parts[0][1], _TAG_OID, what))
        if oid in seen:
            raise _DERError(f"{what}: duplicated entry {oid}")
        seen.add(oid)
        entries.append((oid, parts[1][0], parts[1][1]))
    return entries


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PCKConfiguration:
    """The optional Configuration entry (``.7``) of Platform CA PCK certificates."""

    dynamic_platform: bool | None = None
    cached_keys: bool | None = None
    smt_enabled: bool | None = None


@dataclass(frozen=True)
class PCKExtensions:
    """The decoded Intel SGX extension of one PCK certificate.

    ``cpu_svn`` is the CPUSVN as Intel writes it (16 bytes); in Intel's certificates it equals
    the 16 component SVNs, which is what a verifier compares against TCB info levels.
    """

    ppid: bytes
    tcb_component_svns: tuple[int, ...]
    pce_svn: int
    cpu_svn: bytes
    pce_id: bytes
    fmspc: bytes
    sgx_type: int = SGX_TYPE_STANDARD
    platform_instance_id: bytes | None = None
    configuration: PCKConfiguration | None = None

    def __post_init__(self) -> None:
        checks: list[tuple[bool, str]] = [
            (len(self.ppid) == 16, "ppid must be 16 bytes"),
            (
                len(self.tcb_component_svns) == TCB_COMPONENT_COUNT
                and all(0 <= svn <= 0xFF for svn in self.tcb_component_svns),
                "tcb_component_svns must be 16 values in 0..255",
            ),
            (0 <= self.pce_svn <= 0xFFFF, "pce_svn must be in 0..65535"),
            (len(self.cpu_svn) == 16, "cpu_svn must be 16 bytes"),
            (len(self.pce_id) == 2, "pce_id must be 2 bytes"),
            (len(self.fmspc) == 6, "fmspc must be 6 bytes"),
            (0 <= self.sgx_type <= 0xFF, "sgx_type must be in 0..255"),
            (
                self.platform_instance_id is None or len(self.platform_instance_id) == 16,
                "platform_instance_id must be 16 bytes",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @classmethod
    def from_der(cls, ext_value: bytes) -> PCKExtensions:
        """Decode the DER value of the SGX extension (the extnValue contents).

        Raises:
            QuoteFormatError: the value is not a well-formed SGX extension.
        """
        try:
            return cls._decode(bytes(ext_value))
        except _DERError as exc:
            raise QuoteFormatError(f"malformed SGX extension in PCK certificate: {exc}") from exc
        except ValueError as exc:
            raise QuoteFormatError(f"invalid SGX extension in PCK certificate: {exc}") from exc

    @classmethod
    def from_certificate(cls, cert: x509.Certificate) -> PCKExtensions:
        """Decode the SGX extension of a PCK certificate.

        Raises:
            QuoteFormatError: the certificate has no (or a malformed) SGX extension.
        """
        try:
            extension = cert.extensions.get_extension_for_oid(
                x509.ObjectIdentifier(SGX_EXTENSION_OID)
            )
        except x509.ExtensionNotFound as exc:
            raise QuoteFormatError("PCK certificate has no Intel SGX extension") from exc
        except ValueError as exc:  # duplicated or unparsable extensions
            raise QuoteFormatError(f"PCK certificate extensions do not parse: {exc}") from exc
        value = extension.value
        if not isinstance(value, x509.UnrecognizedExtension):
            raise QuoteFormatError("unexpected decoding of the Intel SGX extension")
        return cls.from_der(value.value)

    @classmethod
    def from_pem_chain(cls, pem: bytes) -> PCKExtensions:
        """Decode the SGX extension of the first (leaf) certificate of a PEM chain.

        Raises:
            QuoteFormatError: no certificate, or the leaf has no valid SGX extension.
        """
        try:
            certs = x509.load_pem_x509_certificates(pem)
        except ValueError as exc:
            raise QuoteFormatError(f"PCK certificate chain does not parse: {exc}") from exc
        if not certs:
            raise QuoteFormatError("PCK certificate chain is empty")
        return cls.from_certificate(certs[0])

    @classmethod
    def _decode(cls, data: bytes) -> PCKExtensions:
        if len(data) > _MAX_EXTENSION_BYTES:
            raise _DERError("extension value is too large")
        tag, body, end = _read_tlv(data, 0)
        _expect(tag, body, _TAG_SEQUENCE, "SGX extension")
        if end != len(data):
            raise _DERError("trailing bytes after the SGX extension")
        octets: dict[str, bytes] = {}
        tcb: tuple[tuple[int, ...], int, bytes] | None = None
        sgx_type: int | None = None
        configuration: PCKConfiguration | None = None
        for oid, value_tag, value in _decode_entries(body, "SGX extension"):
            if oid in _OCTET_ENTRIES:
                name, size = _OCTET_ENTRIES[oid]
                octets[name] = _decode_octets(
                    _expect(value_tag, value, _TAG_OCTET_STRING, name), name, size
                )
            elif oid == _TCB:
                tcb = _decode_tcb(_expect(value_tag, value, _TAG_SEQUENCE, "TCB"))
            elif oid == _SGX_TYPE:
                sgx_type = _decode_unsigned(
                    _expect(value_tag, value, _TAG_ENUMERATED, "SGX Type"), "SGX Type", 0xFF
                )
            elif oid == _CONFIGURATION:
                configuration = _decode_configuration(
                    _expect(value_tag, value, _TAG_SEQUENCE, "Configuration")
                )
            else:
                _logger.debug("ignoring unknown SGX extension entry %s", oid)
        missing = [name for name in ("PPID", "PCE-ID", "FMSPC") if name not in octets]
        if tcb is None:
            missing.append("TCB")
        if sgx_type is None:
            missing.append("SGX Type")
        if missing or tcb is None or sgx_type is None:
            raise _DERError(f"missing mandatory entries: {', '.join(missing)}")
        components, pce_svn, cpu_svn = tcb
        return cls(
            ppid=octets["PPID"],
            tcb_component_svns=components,
            pce_svn=pce_svn,
            cpu_svn=cpu_svn,
            pce_id=octets["PCE-ID"],
            fmspc=octets["FMSPC"],
            sgx_type=sgx_type,
            platform_instance_id=octets.get("Platform Instance ID"),
            configuration=configuration,
        )

    def to_der(self) -> bytes:
        """Encode as the DER value of the SGX extension (Intel's entry order)."""
        tcb_entries = [
            _der_entry(f"{_TCB}.{index}", _der_unsigned(_TAG_INTEGER, svn))
            for index, svn in enumerate(self.tcb_component_svns, start=1)
        ]
        tcb_entries.append(_der_entry(_PCESVN, _der_unsigned(_TAG_INTEGER, self.pce_svn)))
        tcb_entries.append(_der_entry(_CPUSVN, _der_tlv(_TAG_OCTET_STRING, self.cpu_svn)))
        entries = [
            _der_entry(_PPID, _der_tlv(_TAG_OCTET_STRING, self.ppid)),
            _der_entry(_TCB, _der_sequence(*tcb_entries)),
            _der_entry(_PCE_ID, _der_tlv(_TAG_OCTET_STRING, self.pce_id)),
            _der_entry(_FMSPC, _der_tlv(_TAG_OCTET_STRING, self.fmspc)),
            _der_entry(_SGX_TYPE, _der_unsigned(_TAG_ENUMERATED, self.sgx_type)),
        ]
        if self.platform_instance_id is not None:
            entries.append(
                _der_entry(
                    _PLATFORM_INSTANCE_ID, _der_tlv(_TAG_OCTET_STRING, self.platform_instance_id)
                )
            )
        if self.configuration is not None:
            config_entries = [
                _der_entry(oid, _der_boolean(flag))
                for oid, flag in (
                    (_DYNAMIC_PLATFORM, self.configuration.dynamic_platform),
                    (_CACHED_KEYS, self.configuration.cached_keys),
                    (_SMT_ENABLED, self.configuration.smt_enabled),
                )
                if flag is not None
            ]
            entries.append(_der_entry(_CONFIGURATION, _der_sequence(*config_entries)))
        return _der_sequence(*entries)

    def to_extension(self) -> x509.UnrecognizedExtension:
        """This value as a ``cryptography`` extension, for certificate builders."""
        return x509.UnrecognizedExtension(x509.ObjectIdentifier(SGX_EXTENSION_OID), self.to_der())


def _decode_tcb(body: bytes) -> tuple[tuple[int, ...], int, bytes]:
    components: dict[int, int] = {}
    pce_svn: int | None = None
    cpu_svn: bytes | None = None
    prefix = _TCB + "."
    for oid, tag, value in _decode_entries(body, "TCB"):
        if not oid.startswith(prefix) or not oid[len(prefix) :].isdigit():
            raise _DERError(f"TCB: unexpected entry {oid}")
        index = int(oid[len(prefix) :])
        if 1 <= index <= TCB_COMPONENT_COUNT:
            components[index] = _decode_unsigned(
                _expect(tag, value, _TAG_INTEGER, "TCB component"), f"TCB component {index}", 0xFF
            )
        elif oid == _PCESVN:
            pce_svn = _decode_unsigned(
                _expect(tag, value, _TAG_INTEGER, "PCESVN"), "PCESVN", 0xFFFF
            )
        elif oid == _CPUSVN:
            cpu_svn = _decode_octets(_expect(tag, value, _TAG_OCTET_STRING, "CPUSVN"), "CPUSVN", 16)
        else:
            raise _DERError(f"TCB: unexpected entry {oid}")
    if len(components) != TCB_COMPONENT_COUNT or pce_svn is None or cpu_svn is None:
        raise _DERError("TCB: needs 16 component SVNs, PCESVN and CPUSVN")
    ordered = tuple(components[index] for index in range(1, TCB_COMPONENT_COUNT + 1))
    return ordered, pce_svn, cpu_svn


def _decode_configuration(body: bytes) -> PCKConfiguration:
    flags: dict[str, bool] = {}
    names = {
        _DYNAMIC_PLATFORM: "dynamic_platform",
        _CACHED_KEYS: "cached_keys",
        _SMT_ENABLED: "smt_enabled",
    }
    for oid, tag, value in _decode_entries(body, "Configuration"):
        name = names.get(oid)
        if name is None:
            _logger.debug("ignoring unknown SGX configuration entry %s", oid)
            continue
        flags[name] = _decode_boolean(_expect(tag, value, _TAG_BOOLEAN, name), name)
    return PCKConfiguration(**flags)


__all__ = [
    "SGX_EXTENSION_OID",
    "SGX_TYPE_SCALABLE",
    "SGX_TYPE_SCALABLE_WITH_INTEGRITY",
    "SGX_TYPE_STANDARD",
    "TCB_COMPONENT_COUNT",
    "PCKConfiguration",
    "PCKExtensions",
]
