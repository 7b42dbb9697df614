"""Certificates, keys and chain verification shared by the coordinator's PKI.

The pieces here are independent of any one CA: a :class:`CertifiedKey` (a certificate with
its private key, serialisable for sealed storage), key generation for the key types the
deployment manifest names, the *simulated* mark and :func:`verify_chain`.

The simulated mark
==================

A certificate issued to a service whose evidence came from the simulated SGX platform carries
two marks, so that nobody can mistake it for one backed by hardware (DESIGN.md, "Two TEE
modes"):

* ``OU=SIMULATED`` in its subject, visible in every certificate viewer;
* a non-critical extension with OID :data:`SIMULATED_EXTENSION_OID` whose value is the DER
  encoding of ``UTF8String "simulation"``. The OID lives under sealpod's private arc
  ``2.25.273459792432434875720578354600975782186`` (a UUID-derived OID, ITU-T X.667, so no
  registration is needed); ``.1`` under it is this extension. It is non-critical so that
  ordinary TLS stacks still accept the certificate; sealpod's own clients look for it with
  :func:`is_simulated`.

Certificates issued to hardware-backed services carry neither mark.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sealpod.errors import VerificationError

_logger = logging.getLogger(__name__)

#: sealpod's private OID arc (ITU-T X.667: ``2.25.<UUID as an integer>``).
SEALPOD_OID_ARC = "2.25.273459792432434875720578354600975782186"
#: Non-critical extension present only on certificates issued to simulated services.
SIMULATED_EXTENSION_OID = x509.ObjectIdentifier(SEALPOD_OID_ARC + ".1")
#: DER ``UTF8String "simulation"`` (tag 0x0c, length 10): the extension's value.
SIMULATED_EXTENSION_VALUE = b"\x0c\x0asimulation"
#: The organisational unit that marks simulated certificates.
SIMULATED_OU = "SIMULATED"

KeyType = Literal["ecdsa", "rsa", "ed25519"]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey

_CURVES: dict[int, ec.EllipticCurve] = {
    256: ec.SECP256R1(),
    384: ec.SECP384R1(),
    521: ec.SECP521R1(),
}
_RSA_SIZES = frozenset({2048, 3072, 4096})

_KEY_USAGE_FLAGS = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
)
_EXTENDED_KEY_USAGES: dict[str, x509.ObjectIdentifier] = {
    "server_auth": ExtendedKeyUsageOID.SERVER_AUTH,
    "client_auth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "code_signing": ExtendedKeyUsageOID.CODE_SIGNING,
    "email_protection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "time_stamping": ExtendedKeyUsageOID.TIME_STAMPING,
    "ocsp_signing": ExtendedKeyUsageOID.OCSP_SIGNING,
}
#: Every key-usage name :func:`build_key_usage` understands (``-`` and ``_`` are equivalent).
KEY_USAGE_NAMES = frozenset(_KEY_USAGE_FLAGS) | frozenset(_EXTENDED_KEY_USAGES)

_FORMAT = "sealpod-certified-key-v1"


@dataclass(frozen=True)
class CertifiedKey:
    """A certificate with its private key and issuer chain. The key never appears in ``repr``.

    ``chain`` holds the certificates above ``certificate`` (nearest issuer first), without the
    self-signed root.
    """

    certificate: x509.Certificate
    private_key: PrivateKey = field(repr=False)
    chain: tuple[x509.Certificate, ...] = ()

    def to_dict(self) -> dict[str, object]:
        """The PEM forms (certificate, unencrypted PKCS#8 key) for sealed storage only."""
        return {
            "chain": [c.public_bytes(serialization.Encoding.PEM).decode() for c in self.chain],
            "certificate": self.certificate.public_bytes(serialization.Encoding.PEM).decode(),
            "private_key": self.private_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ).decode(),
        }

    def to_bytes(self) -> bytes:
        """Serialise for *sealed* storage (the private key is in the clear inside)."""
        document = {"format": _FORMAT, **self.to_dict()}
        return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_dict(cls, document: object) -> CertifiedKey:
        """Inverse of :meth:`to_dict`.

        Raises:
            VerificationError: ``pki_state_malformed`` when the document does not parse or
                the key does not belong to the certificate.
        """
        if not isinstance(document, dict):
            raise VerificationError("pki_state_malformed", "a certified key must be an object")
        cert_pem = document.get("certificate")
        key_pem = document.get("private_key")
        chain_pem = document.get("chain", [])
        if (
            not isinstance(cert_pem, str)
            or not isinstance(key_pem, str)
            or not isinstance(chain_pem, list)
            or not all(isinstance(c, str) for c in chain_pem)
        ):
            raise VerificationError("pki_state_malformed", "certificate or private key missing")
        try:
            chain = tuple(x509.load_pem_x509_certificate(c.encode()) for c in chain_pem)
            certificate = x509.load_pem_x509_certificate(cert_pem.encode())
            key = serialization.load_pem_private_key(key_pem.encode(), password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise VerificationError(
                "pki_state_malformed", "certificate or private key does not parse"
            ) from exc
        if not isinstance(
            key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
        ):
            raise VerificationError("pki_state_malformed", "unsupported private key type")
        if public_key_der(key.public_key()) != public_key_der(certificate.public_key()):
            raise VerificationError(
                "pki_state_malformed", "the private key does not match the certificate"
            )
        return cls(certificate=certificate, private_key=key, chain=chain)

    @classmethod
    def from_bytes(cls, data: bytes) -> CertifiedKey:
        """Inverse of :meth:`to_bytes`.

        Raises:
            VerificationError: ``pki_state_malformed`` when ``data`` is not a certified key.
        """
        document = _load_json(data)
        if document.get("format") != _FORMAT:
            raise VerificationError("pki_state_malformed", "not a sealpod certified key")
        return cls.from_dict(document)


def _load_json(data: bytes) -> dict[str, object]:
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise VerificationError("pki_state_malformed", "not JSON") from exc
    if not isinstance(document, dict):
        raise VerificationError("pki_state_malformed", "not a JSON object")
    return document


def public_key_der(key: object) -> bytes:
    """The DER SubjectPublicKeyInfo of a public key.

    Raises:
        TypeError: when ``key`` is not a public key object.
    """
    public_bytes = getattr(key, "public_bytes", None)
    if public_bytes is None:
        raise TypeError("not a public key")
    der = public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if not isinstance(der, bytes):
        raise TypeError("not a public key")
    return der


def generate_private_key(key_type: KeyType, size: int | None = None) -> PrivateKey:
    """Generate a key of a type the manifest names.

    ``size`` is the curve size for ECDSA (256, 384, 521; default 256), the modulus size for RSA
    (2048, 3072, 4096; default 3072) and must be ``None`` or 256 for Ed25519.

    Raises:
        ValueError: for an unknown key type or unsupported size.
    """
    if key_type == "ecdsa":
        curve = _CURVES.get(size if size is not None else 256)
        if curve is None:
            raise ValueError(f"unsupported ECDSA key size {size} (use 256, 384 or 521)")
        return ec.generate_private_key(curve)
    if key_type == "rsa":
        bits = size if size is not None else 3072
        if bits not in _RSA_SIZES:
            raise ValueError(f"unsupported RSA key size {size} (use 2048, 3072 or 4096)")
        return rsa.generate_private_key(public_exponent=65537, key_size=bits)
    if key_type == "ed25519":
        if size not in (None, 256):
            raise ValueError("Ed25519 keys have a fixed size of 256 bits")
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unknown key type {key_type!r} (use ecdsa, rsa or ed25519)")


def signature_hash_for(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384 | None:
    """The hash a CA key signs with: SHA-384 for P-384/P-521, none for Ed25519, else SHA-256."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def build_key_usage(
    names: Iterable[str], *, is_ca: bool
) -> tuple[x509.KeyUsage, x509.ExtendedKeyUsage | None]:
    """Turn key-usage names into the KeyUsage and (if any) ExtendedKeyUsage extensions.

    Names are those of :data:`KEY_USAGE_NAMES`; ``server-auth`` and ``server_auth`` are the
    same. A CA certificate always gets ``key_cert_sign`` and ``crl_sign``.

    Raises:
        ValueError: for an unknown name.
    """
    flags = dict.fromkeys(_KEY_USAGE_FLAGS, False)
    extended: list[x509.ObjectIdentifier] = []
    for raw in names:
        name = raw.strip().lower().replace("-", "_")
        if name in flags:
            flags[name] = True
        elif name in _EXTENDED_KEY_USAGES:
            oid = _EXTENDED_KEY_USAGES[name]
            if oid not in extended:
                extended.append(oid)
        else:
            raise ValueError(f"unknown key usage {raw!r}")
    if is_ca:
        flags["key_cert_sign"] = True
        flags["crl_sign"] = True
    key_usage = x509.KeyUsage(
        digital_signature=flags["digital_signature"],
        content_commitment=flags["content_commitment"],
        key_encipherment=flags["key_encipherment"],
        data_encipherment=flags["data_encipherment"],
        key_agreement=flags["key_agreement"],
        key_cert_sign=flags["key_cert_sign"],
        crl_sign=flags["crl_sign"],
        encipher_only=False,
        decipher_only=False,
    )
    return key_usage, (x509.ExtendedKeyUsage(extended) if extended else None)


def parse_ip_addresses(
    ips: Iterable[str | ipaddress.IPv4Address | ipaddress.IPv6Address],
) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Parse IP addresses given as strings or address objects.

    Raises:
        ValueError: for a string that is not an IP address.
    """
    parsed: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for ip in ips:
        parsed.append(ip if not isinstance(ip, str) else ipaddress.ip_address(ip))
    return parsed


def is_simulated(certificate: x509.Certificate) -> bool:
    """Whether ``certificate`` carries the simulated mark (the extension or the OU).

    Either mark is enough: a certificate that carries one is never treated as hardware-backed.
    """
    for attribute in certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME):
        if attribute.value == SIMULATED_OU:
            return True
    try:
        certificate.extensions.get_extension_for_oid(SIMULATED_EXTENSION_OID)
    except x509.ExtensionNotFound:
        return False
    return True


def certificates_to_pem(certificates: Sequence[x509.Certificate]) -> bytes:
    """Concatenate certificates as PEM, in order."""
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def _as_utc(now: datetime.datetime) -> datetime.datetime:
    if now.tzinfo is None:
        raise ValueError("times must be timezone-aware")
    return now.astimezone(datetime.UTC)


def verify_chain(
    leaf: x509.Certificate,
    bundle: Sequence[x509.Certificate],
    root: x509.Certificate,
    now: datetime.datetime,
    *,
    dns_name: str | None = None,
    require_client_auth: bool = False,
) -> list[x509.Certificate]:
    """Verify that ``leaf`` chains through one of ``bundle`` up to ``root`` at time ``now``.

    Uses cryptography's RFC 5280/Web PKI path validation (``x509.verification``). With
    ``dns_name`` the leaf must also be valid for that server name and carry the ``serverAuth``
    extended key usage; with ``require_client_auth`` it must carry ``clientAuth`` and a subject
    alternative name; otherwise any extended key usage is accepted and the SAN is optional
    (certificate secrets may be issued for any purpose, with only a common name).

    Returns:
        The verified chain, leaf first, root last.

    Raises:
        VerificationError: ``certificate_chain_invalid`` when no valid path exists (wrong
            issuer, bad signature, expired, not yet valid, name mismatch, bad extensions).
        ValueError: when ``now`` is naive.
    """
    moment = _as_utc(now)
    builder = (
        verification.PolicyBuilder()
        .store(verification.Store([root]))
        .time(moment)
        .max_chain_depth(len(bundle) + 2)
    )
    if dns_name is None and not require_client_auth:
        # The default end-entity policy demands the EKU the verifier type implies; generic
        # verification accepts any EKU (or none) but keeps every other Web PKI rule.
        builder = builder.extension_policies(
            ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(),
            ee_policy=verification.ExtensionPolicy.webpki_defaults_ee()
            .may_be_present(x509.ExtendedKeyUsage, verification.Criticality.AGNOSTIC, None)
            .may_be_present(x509.SubjectAlternativeName, verification.Criticality.AGNOSTIC, None),
        )
    try:
        if dns_name is not None:
            server = builder.build_server_verifier(x509.DNSName(dns_name))
            return server.verify(leaf, list(bundle))
        client = builder.build_client_verifier()
        return client.verify(leaf, list(bundle)).chain
    except verification.VerificationError as exc:
        raise VerificationError("certificate_chain_invalid", str(exc)) from exc
