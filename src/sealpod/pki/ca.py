"""The coordinator's certificate authority.

Hierarchy (DESIGN.md, "Coordinator state"; issue 3 §2)::

    root CA  (ECDSA P-384, self-signed, lives as long as the deployment)
      └─ mesh CA, generation g  (P-384 or P-256, pathLen 1; a new one on every manifest update)
           ├─ service leaves  (CN = service; SAN: DNS service name, sealpod://service/NAME/ID)
           └─ certificate secrets of the manifest whose issuer is the mesh CA (a secret may
              itself be a CA, pathLen 0, and issue further certificate secrets)

Invariants:

* Every mesh intermediate, current or previous, is signed by the same root, so a verifier that
  trusts only the root accepts leaves of any generation.
* The *trust bundle* is the current mesh intermediate followed by the ``keep_previous`` most
  recent earlier ones. Services get it so that, during a rollout after a manifest update,
  services activated before the update (old generation) and after it (new generation) keep
  trusting each other; a leaf of a generation that has left the bundle no longer verifies
  under :func:`~sealpod.pki.certificates.verify_chain` with that bundle.
* A leaf is issued only for a CSR whose self-signature verifies and whose key is ECDSA
  (P-256/P-384/P-521), RSA (>= 2048 bits) or Ed25519.
* Leaves of simulated services carry the simulated mark (see
  :mod:`sealpod.pki.certificates`); others never do.
* Time is always a parameter; certificates start :data:`BACKDATE` before ``now`` to tolerate
  clock skew between the coordinator and its clients, and never outlive their issuer.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from cryptography import x509
from cryptography.exceptions import InvalidSignature as InvalidSignatureError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sealpod.errors import ConfigError, VerificationError
from sealpod.pki.certificates import (
    SIMULATED_EXTENSION_OID,
    SIMULATED_EXTENSION_VALUE,
    SIMULATED_OU,
    CertifiedKey,
    KeyType,
    PrivateKey,
    PublicKey,
    build_key_usage,
    generate_private_key,
    parse_ip_addresses,
    signature_hash_for,
)

_logger = logging.getLogger(__name__)

#: Certificates are valid from this long before ``now`` (clock skew between machines).
BACKDATE = datetime.timedelta(minutes=5)
DEFAULT_ROOT_VALIDITY = datetime.timedelta(days=3650)
DEFAULT_MESH_VALIDITY = datetime.timedelta(days=730)
DEFAULT_LEAF_VALIDITY = datetime.timedelta(days=30)

_FORMAT = "sealpod-coordinator-ca-v1"
_ORGANIZATION = "sealpod"
# Service names: what a manifest key may be; a DNS SAN is added when the name is a DNS label.
_SERVICE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_DNS_LABEL_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
# Instance ids end up in a URI path segment: keep them to unreserved characters (RFC 3986).
_INSTANCE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.~-]{0,127}$")
_ACCEPTED_CURVES = frozenset({"secp256r1", "secp384r1", "secp521r1"})


def _utc(now: datetime.datetime) -> datetime.datetime:
    if now.tzinfo is None:
        raise ConfigError("time must be timezone-aware")
    return now.astimezone(datetime.UTC)


def service_uri(service: str, instance: str) -> str:
    """The URI SAN of a service leaf: ``sealpod://service/<service>/<instance>``."""
    return f"sealpod://service/{service}/{instance}"


def _name(common_name: str, *, simulated: bool) -> x509.Name:
    attributes = [
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
    ]
    if simulated:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, SIMULATED_OU))
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def _ca_extensions(
    builder: x509.CertificateBuilder, public_key: PublicKey, path_length: int | None
) -> x509.CertificateBuilder:
    key_usage, _ = build_key_usage(["digital_signature"], is_ca=True)
    return (
        builder.add_extension(x509.BasicConstraints(ca=True, path_length=path_length), True)
        .add_extension(key_usage, True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False)
    )


def _authority_key_id(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _sign(builder: x509.CertificateBuilder, key: PrivateKey) -> x509.Certificate:
    return builder.sign(key, signature_hash_for(key))


def _mark_simulated(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    return builder.add_extension(
        x509.UnrecognizedExtension(SIMULATED_EXTENSION_OID, SIMULATED_EXTENSION_VALUE), False
    )


def _validity(
    now: datetime.datetime, validity: datetime.timedelta, issuer: x509.Certificate | None
) -> tuple[datetime.datetime, datetime.datetime]:
    if validity <= datetime.timedelta(0):
        raise ConfigError("validity must be positive")
    moment = _utc(now)
    not_before = moment - BACKDATE
    not_after = moment + validity
    if issuer is not None:
        if moment > issuer.not_valid_after_utc or moment < issuer.not_valid_before_utc:
            raise ConfigError("the issuing CA certificate is not valid at this time")
        not_before = max(not_before, issuer.not_valid_before_utc)
        not_after = min(not_after, issuer.not_valid_after_utc)
    return not_before, not_after


def _ca_certificate(
    *,
    subject: x509.Name,
    key: PrivateKey,
    issuer: CertifiedKey | None,
    now: datetime.datetime,
    validity: datetime.timedelta,
    path_length: int | None,
    simulated: bool,
) -> x509.Certificate:
    not_before, not_after = _validity(now, validity, issuer.certificate if issuer else None)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.certificate.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    builder = _ca_extensions(builder, key.public_key(), path_length)
    if issuer is not None:
        builder = builder.add_extension(_authority_key_id(issuer.certificate), False)
    if simulated:
        builder = _mark_simulated(builder)
    return _sign(builder, issuer.private_key if issuer else key)


def _mesh_key(key_size: int) -> ec.EllipticCurvePrivateKey:
    if key_size not in (256, 384):
        raise ConfigError("the mesh CA key must be ECDSA P-256 or P-384")
    key = generate_private_key("ecdsa", key_size)
    if not isinstance(key, ec.EllipticCurvePrivateKey):  # pragma: no cover - by construction
        raise TypeError("expected an EC key")
    return key


def _check_csr_key(public_key: object) -> None:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if public_key.curve.name not in _ACCEPTED_CURVES:
            raise VerificationError("csr_key_unsupported", "the CSR's curve is not accepted")
        return
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < 2048:
            raise VerificationError("csr_key_unsupported", "the CSR's RSA key is too short")
        return
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return
    raise VerificationError("csr_key_unsupported", "the CSR's key type is not accepted")


@dataclass(frozen=True)
class CoordinatorCA:
    """The coordinator's root CA, current mesh CA and earlier mesh intermediates.

    Immutable: :meth:`rotate_mesh` returns a new object. Create one with :meth:`create`, keep
    it in sealed state with :meth:`to_bytes` / :meth:`from_bytes`.
    """

    root: CertifiedKey
    mesh: CertifiedKey
    previous_mesh: tuple[x509.Certificate, ...] = ()
    generation: int = 1
    name: str = "sealpod coordinator"
    simulated: bool = False

    @classmethod
    def create(
        cls,
        *,
        now: datetime.datetime,
        name: str = "sealpod coordinator",
        root_validity: datetime.timedelta = DEFAULT_ROOT_VALIDITY,
        mesh_validity: datetime.timedelta = DEFAULT_MESH_VALIDITY,
        mesh_key_size: int = 384,
        simulated: bool = False,
    ) -> CoordinatorCA:
        """Create a new root CA (ECDSA P-384) and the first mesh intermediate.

        ``simulated`` marks the coordinator's own certificates (a coordinator running on the
        simulated platform).

        Raises:
            ConfigError: for a non-positive validity, a naive ``now`` or a mesh key size other
                than 256 or 384.
        """
        root_key = generate_private_key("ecdsa", 384)
        root_cert = _ca_certificate(
            subject=_name(f"{name} root CA", simulated=simulated),
            key=root_key,
            issuer=None,
            now=now,
            validity=root_validity,
            path_length=None,
            simulated=simulated,
        )
        root = CertifiedKey(certificate=root_cert, private_key=root_key)
        mesh = cls._new_mesh(
            root,
            name=name,
            generation=1,
            now=now,
            validity=mesh_validity,
            key_size=mesh_key_size,
            simulated=simulated,
        )
        _logger.info("created coordinator CA %r (simulated=%s)", name, simulated)
        return cls(root=root, mesh=mesh, name=name, simulated=simulated)

    @staticmethod
    def _new_mesh(
        root: CertifiedKey,
        *,
        name: str,
        generation: int,
        now: datetime.datetime,
        validity: datetime.timedelta,
        key_size: int,
        simulated: bool,
    ) -> CertifiedKey:
        key = _mesh_key(key_size)
        certificate = _ca_certificate(
            subject=_name(f"{name} mesh CA {generation}", simulated=simulated),
            key=key,
            issuer=root,
            now=now,
            validity=validity,
            path_length=1,
            simulated=simulated,
        )
        return CertifiedKey(certificate=certificate, private_key=key, chain=(root.certificate,))

    def rotate_mesh(
        self,
        *,
        now: datetime.datetime,
        validity: datetime.timedelta = DEFAULT_MESH_VALIDITY,
        key_size: int = 384,
        keep_previous: int = 1,
    ) -> CoordinatorCA:
        """A new mesh intermediate (on a manifest update); the current one becomes previous.

        ``keep_previous`` earlier intermediates stay in the trust bundle (at least 1, so the
        rollout across one update keeps working).

        Raises:
            ConfigError: for ``keep_previous < 1``, a bad validity or key size.
        """
        if keep_previous < 1:
            raise ConfigError("keep_previous must be at least 1")
        generation = self.generation + 1
        mesh = self._new_mesh(
            self.root,
            name=self.name,
            generation=generation,
            now=now,
            validity=validity,
            key_size=key_size,
            simulated=self.simulated,
        )
        previous = (self.mesh.certificate, *self.previous_mesh)[:keep_previous]
        _logger.info("rotated the mesh CA to generation %d", generation)
        return replace(self, mesh=mesh, previous_mesh=previous, generation=generation)

    @property
    def root_certificate(self) -> x509.Certificate:
        """The root CA certificate (what clients pin)."""
        return self.root.certificate

    def trust_bundle(self) -> tuple[x509.Certificate, ...]:
        """The current mesh intermediate, then the previous ones (newest first)."""
        return (self.mesh.certificate, *self.previous_mesh)

    def trust_bundle_pem(self) -> bytes:
        """:meth:`trust_bundle` as concatenated PEM."""
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.trust_bundle())

    def issue_leaf(
        self,
        csr: x509.CertificateSigningRequest,
        *,
        service: str,
        instance: str,
        dns_names: Sequence[str] = (),
        ips: Iterable[str | ipaddress.IPv4Address | ipaddress.IPv6Address] = (),
        validity: datetime.timedelta = DEFAULT_LEAF_VALIDITY,
        simulated: bool,
        now: datetime.datetime,
    ) -> x509.Certificate:
        """Issue a service's leaf certificate from the current mesh CA.

        Subject: ``O=sealpod[, OU=SIMULATED], CN=<service>`` (the CSR's subject is ignored).
        SANs: the service name as a DNS name (when it is a DNS label), ``dns_names``, ``ips``
        and the URI ``sealpod://service/<service>/<instance>``. Extended key usages: server and
        client authentication (mesh mutual TLS). ``simulated`` adds the simulated mark.

        Raises:
            VerificationError: ``csr_signature_invalid`` when the CSR's self-signature does not
                verify, ``csr_key_unsupported`` for a key type or size we do not accept.
            ConfigError: for an invalid service name, instance id, DNS name, IP address or
                validity, or a mesh CA not valid at ``now``.
        """
        if not _SERVICE_RE.fullmatch(service):
            raise ConfigError(f"invalid service name {service!r}")
        if not _INSTANCE_RE.fullmatch(instance):
            raise ConfigError("invalid instance id (letters, digits and _.~- only)")
        if not csr.is_signature_valid:
            raise VerificationError("csr_signature_invalid", "the CSR's signature does not verify")
        public_key = csr.public_key()
        _check_csr_key(public_key)
        names: list[x509.GeneralName] = []
        if _DNS_LABEL_RE.fullmatch(service):
            names.append(x509.DNSName(service.lower()))
        names.extend(self._dns_names(dns_names))
        try:
            names.extend(x509.IPAddress(ip) for ip in parse_ip_addresses(ips))
        except ValueError as exc:
            raise ConfigError(f"invalid IP address: {exc}") from exc
        names.append(x509.UniformResourceIdentifier(service_uri(service, instance)))
        not_before, not_after = _validity(now, validity, self.mesh.certificate)
        key_usage, _ = build_key_usage(
            ["digital_signature"]
            + (["key_encipherment"] if isinstance(public_key, rsa.RSAPublicKey) else []),
            is_ca=False,
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(service, simulated=simulated))
            .issuer_name(self.mesh.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
            .add_extension(key_usage, True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                False,
            )
            .add_extension(x509.SubjectAlternativeName(names), False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False)
            .add_extension(_authority_key_id(self.mesh.certificate), False)
        )
        if simulated:
            builder = _mark_simulated(builder)
        certificate = _sign(builder, self.mesh.private_key)
        _logger.info(
            "issued leaf serial=%x for service %s instance %s (simulated=%s)",
            certificate.serial_number,
            service,
            instance,
            simulated,
        )
        return certificate

    @staticmethod
    def _dns_names(dns_names: Sequence[str]) -> list[x509.GeneralName]:
        result: list[x509.GeneralName] = []
        for dns_name in dns_names:
            if not dns_name or not dns_name.isascii() or any(c in dns_name for c in " /\\@:"):
                raise ConfigError(f"invalid DNS name {dns_name!r}")
            result.append(x509.DNSName(dns_name))
        return result

    def leaf_chain(self, leaf: x509.Certificate) -> tuple[x509.Certificate, ...]:
        """``leaf`` followed by the bundle intermediate that issued it (what a service presents).

        Raises:
            VerificationError: ``certificate_issuer_unknown`` when no bundle member issued it.
        """
        for intermediate in self.trust_bundle():
            if intermediate.subject == leaf.issuer:
                try:
                    leaf.verify_directly_issued_by(intermediate)
                except (ValueError, TypeError, InvalidSignatureError) as exc:
                    _logger.debug("leaf not issued by %s: %s", intermediate.subject, exc)
                    continue
                return (leaf, intermediate)
        raise VerificationError(
            "certificate_issuer_unknown", "no mesh intermediate in the bundle issued this leaf"
        )

    def issue_secret_cert(
        self,
        *,
        key_type: KeyType,
        key_size: int | None = None,
        common_name: str,
        dns_names: Sequence[str] = (),
        ips: Iterable[str | ipaddress.IPv4Address | ipaddress.IPv6Address] = (),
        key_usage: Iterable[str] = ("digital_signature",),
        validity: datetime.timedelta = DEFAULT_MESH_VALIDITY,
        is_ca: bool = False,
        issuer: CertifiedKey | None = None,
        simulated: bool = False,
        now: datetime.datetime,
    ) -> CertifiedKey:
        """Generate a key and a certificate for a manifest certificate secret.

        ``issuer`` is another certificate secret (which must be a CA) or ``None`` for the
        current mesh CA. ``key_usage`` names come from
        :data:`~sealpod.pki.certificates.KEY_USAGE_NAMES` (``server_auth`` etc. become the
        extended key usage). The result's ``chain`` is the issuer and its chain, root excluded.

        Raises:
            ConfigError: for an unknown key type, size or key usage, an empty common name, a
                bad DNS name or IP address, a non-positive validity, or an issuer that is not a
                CA or not valid at ``now``.
        """
        if not common_name:
            raise ConfigError("the common name must not be empty")
        signer = issuer if issuer is not None else self.mesh
        try:
            constraints = signer.certificate.extensions.get_extension_for_class(
                x509.BasicConstraints
            ).value
        except x509.ExtensionNotFound:
            constraints = x509.BasicConstraints(ca=False, path_length=None)
        if not constraints.ca:
            raise ConfigError("the issuer of a certificate secret must be a CA certificate")
        if is_ca and constraints.path_length == 0:
            raise ConfigError("the issuer may not issue CA certificates (path length 0)")
        try:
            key = generate_private_key(key_type, key_size)
            usage, extended = build_key_usage(key_usage, is_ca=is_ca)
            ip_list = parse_ip_addresses(ips)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        not_before, not_after = _validity(now, validity, signer.certificate)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name, simulated=simulated))
            .issuer_name(signer.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=is_ca, path_length=0 if is_ca else None), True)
            .add_extension(usage, True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(_authority_key_id(signer.certificate), False)
        )
        names = self._dns_names(dns_names) + [x509.IPAddress(ip) for ip in ip_list]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), False)
        if extended is not None:
            builder = builder.add_extension(extended, False)
        if simulated:
            builder = _mark_simulated(builder)
        certificate = _sign(builder, signer.private_key)
        chain = (signer.certificate, *signer.chain)
        if chain and chain[-1].subject == chain[-1].issuer:
            chain = chain[:-1]  # leave the self-signed root out, as TLS does
        return CertifiedKey(certificate=certificate, private_key=key, chain=chain)

    def to_bytes(self) -> bytes:
        """Serialise for *sealed* storage (private keys are in the clear inside)."""
        document = {
            "format": _FORMAT,
            "name": self.name,
            "simulated": self.simulated,
            "generation": self.generation,
            "root": self.root.to_dict(),
            "mesh": self.mesh.to_dict(),
            "previous_mesh": [
                c.public_bytes(serialization.Encoding.PEM).decode() for c in self.previous_mesh
            ],
        }
        return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> CoordinatorCA:
        """Inverse of :meth:`to_bytes`; checks that every intermediate chains to the root.

        Raises:
            VerificationError: ``pki_state_malformed`` when ``data`` is not a coordinator CA.
        """
        try:
            document = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise VerificationError("pki_state_malformed", "not JSON") from exc
        if not isinstance(document, dict) or document.get("format") != _FORMAT:
            raise VerificationError("pki_state_malformed", "not a sealpod coordinator CA")
        name = document.get("name")
        generation = document.get("generation")
        simulated = document.get("simulated")
        previous = document.get("previous_mesh")
        if (
            not isinstance(name, str)
            or not isinstance(generation, int)
            or isinstance(generation, bool)
            or generation < 1
            or not isinstance(simulated, bool)
            or not isinstance(previous, list)
            or not all(isinstance(p, str) for p in previous)
        ):
            raise VerificationError("pki_state_malformed", "bad CA document fields")
        root = CertifiedKey.from_dict(document.get("root"))
        mesh_key = CertifiedKey.from_dict(document.get("mesh"))
        mesh = replace(mesh_key, chain=(root.certificate,))
        try:
            previous_certs = tuple(x509.load_pem_x509_certificate(p.encode()) for p in previous)
        except ValueError as exc:
            raise VerificationError("pki_state_malformed", "bad previous mesh CA") from exc
        for certificate in (mesh.certificate, *previous_certs):
            try:
                certificate.verify_directly_issued_by(root.certificate)
            except (ValueError, TypeError, InvalidSignatureError) as exc:
                raise VerificationError(
                    "pki_state_malformed", "a mesh CA is not issued by the root"
                ) from exc
        return cls(
            root=root,
            mesh=mesh,
            previous_mesh=previous_certs,
            generation=generation,
            name=name,
            simulated=simulated,
        )
