"""pydantic models of the deployment manifest (format version 1).

The models check *shape*: types, formats, ranges and whatever one field can check on its own
(a hex measurement, a PEM that must parse, an IP address). Rules that involve several fields or
sections (a service's package must exist, a role may only name existing secrets, issuer cycles,
thresholds) live in :mod:`sealpod.manifest._checks`, which reports each problem at its exact
path. A :class:`Manifest` that came out of :func:`sealpod.manifest.load_manifest` or
:func:`sealpod.manifest.validate_manifest` has passed both, plus a dry run of every template;
one built with ``Manifest.model_validate`` directly has only passed the first.

Every model is ``frozen`` and ``extra="forbid"`` (an unknown field is a typo until proven
otherwise) and validates in strict mode: ``"3"`` is not an integer and ``yes`` is not a
boolean, so the document means exactly what it says.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, Final, Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Strict

__all__ = [
    "ACTIONS_BY_RESOURCE",
    "DEFAULT_SECRET_SIZES",
    "RESERVED_ISSUER",
    "SECRET_SIZES",
    "Action",
    "CertificateTemplate",
    "CollateralSource",
    "ExtendedKeyUsage",
    "Governance",
    "KeyUsage",
    "Manifest",
    "Package",
    "Policy",
    "Recovery",
    "Resource",
    "Role",
    "Secret",
    "SecretScope",
    "SecretType",
    "Service",
    "TCBStatus",
    "User",
    "Volume",
]

#: The only ``issuer`` value that is not a secret name: the coordinator's mesh CA.
RESERVED_ISSUER = "mesh"

# Names of packages, secrets, users, roles, volumes and TLS tags: short, printable, no leading
# dot/dash/underscore (a leading underscore would look like an internal to the template sandbox).
_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
# Service names end up in certificate SANs (DNS names), so they are DNS labels (RFC 1123).
_SERVICE_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
# POSIX portable environment variable names (IEEE Std 1003.1, 8.1), which shells accept.
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ADVISORY_PATTERN = r"^INTEL-SA-[0-9]{5}$"
_DNS_LABEL_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")

_STRICT = ConfigDict(extra="forbid", frozen=True, strict=True)


#: A 32-byte measurement (MRENCLAVE, MRSIGNER) as 64 hex digits; stored lower case.
Hex64 = Annotated[
    str,
    Field(pattern=r"^[0-9a-fA-F]{64}$", description="32 bytes as 64 hex digits"),
    AfterValidator(str.lower),
]
Name = Annotated[str, Field(pattern=_NAME_PATTERN)]
ServiceName = Annotated[str, Field(pattern=_SERVICE_PATTERN)]
Template = Annotated[str, Field(max_length=65536, description="a Jinja2 template")]


def _absolute_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f'"{value}" is not an absolute path')
    parts = value.split("/")[1:]
    if value != "/" and any(part in ("", ".", "..") for part in parts):
        raise ValueError(f'"{value}" is not a normalised path (no "//", ".", ".." or trailing "/")')
    if "\0" in value:
        raise ValueError("a path cannot contain a NUL character")
    return value


#: An absolute, normalised path inside the service's file system.
AbsolutePath = Annotated[
    str,
    Field(pattern=r"^/", max_length=4096, description="absolute, normalised path"),
    AfterValidator(_absolute_path),
]


def _env_name(value: str) -> str:
    if not ENV_NAME_RE.fullmatch(value):
        raise ValueError(f'"{value}" is not a valid environment variable name')
    return value


EnvName = Annotated[str, Field(pattern=ENV_NAME_RE.pattern), AfterValidator(_env_name)]

TCBStatus = Literal[
    # The statuses of Intel's TCB Info v3 ("Revoked" can never be accepted, so it is not here).
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
]
SecretType = Literal["symmetric-key", "cert-ecdsa", "cert-rsa", "cert-ed25519", "plain"]
SecretScope = Literal["shared", "per-instance"]
Resource = Literal["manifest", "secrets", "packages", "volumes"]
Action = Literal["read", "write", "update", "reset"]
KeyUsage = Literal[
    # RFC 5280 4.2.1.3 bits, named as in cryptography's x509.KeyUsage.
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
]
ExtendedKeyUsage = Literal[
    "server_auth",
    "client_auth",
    "code_signing",
    "email_protection",
    "time_stamping",
    "ocsp_signing",
]
CollateralSource = Literal["evidence", "pccs"]

#: What each resource of a role can be granted.
ACTIONS_BY_RESOURCE: Final[Mapping[str, frozenset[str]]] = MappingProxyType(
    {
        "manifest": frozenset({"update"}),
        "secrets": frozenset({"read", "write"}),
        "packages": frozenset({"update"}),
        "volumes": frozenset({"reset"}),
    }
)

#: Allowed ``size`` (bits) per secret type; ``None`` means no size may be given.
SECRET_SIZES: Final[Mapping[str, frozenset[int] | None]] = MappingProxyType(
    {
        "symmetric-key": frozenset({128, 192, 256, 384, 512}),
        "cert-ecdsa": frozenset({256, 384, 521}),  # NIST P-256, P-384, P-521
        "cert-rsa": frozenset({2048, 3072, 4096}),
        "cert-ed25519": frozenset({256}),
        "plain": None,
    }
)
#: The size used when a secret gives none.
DEFAULT_SECRET_SIZES: Final[Mapping[str, int | None]] = MappingProxyType(
    {
        "symmetric-key": 256,
        "cert-ecdsa": 256,
        "cert-rsa": 3072,
        "cert-ed25519": 256,
        "plain": None,
    }
)


def _single_pem_block(value: str) -> None:
    # The manifest is public (the coordinator serves it): a pasted private key must not get in.
    if "PRIVATE KEY" in value:
        raise ValueError("contains a private key: give only the public part")
    if value.count("-----BEGIN ") != 1:
        raise ValueError("expected exactly one PEM block")


def _public_key_pem(value: str) -> str:
    _single_pem_block(value)
    try:
        key = serialization.load_pem_public_key(value.encode("utf-8"))
    except (ValueError, TypeError) as exc:
        raise ValueError("not a PEM public key (-----BEGIN PUBLIC KEY-----)") from exc
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        raise ValueError("unsupported key type (use RSA, ECDSA or Ed25519)")
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048:
        raise ValueError(f"RSA key of {key.key_size} bits is too small (at least 2048)")
    return value


def _certificate_pem(value: str) -> str:
    _single_pem_block(value)
    try:
        cert = x509.load_pem_x509_certificate(value.encode("utf-8"))
        key = cert.public_key()
    except ValueError as exc:
        raise ValueError("not a PEM X.509 certificate (-----BEGIN CERTIFICATE-----)") from exc
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        raise ValueError("certificate key type unsupported (use RSA, ECDSA or Ed25519)")
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048:
        raise ValueError(f"RSA key of {key.key_size} bits is too small (at least 2048)")
    return value


def _rsa_public_key_pem(value: str) -> str:
    _single_pem_block(value)
    try:
        key = serialization.load_pem_public_key(value.encode("utf-8"))
    except (ValueError, TypeError) as exc:
        raise ValueError("not a PEM public key (-----BEGIN PUBLIC KEY-----)") from exc
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("recovery keys must be RSA keys (shares are RSA-OAEP encrypted)")
    if key.key_size < 2048:
        raise ValueError(f"RSA key of {key.key_size} bits is too small (at least 2048)")
    return value


PublicKeyPEM = Annotated[
    str,
    Field(pattern="-----BEGIN PUBLIC KEY-----", description="PEM SubjectPublicKeyInfo"),
    AfterValidator(_public_key_pem),
]
CertificatePEM = Annotated[
    str,
    Field(pattern="-----BEGIN CERTIFICATE-----", description="PEM X.509 certificate"),
    AfterValidator(_certificate_pem),
]
RSAPublicKeyPEM = Annotated[
    str,
    Field(pattern="-----BEGIN PUBLIC KEY-----", description="PEM RSA public key"),
    AfterValidator(_rsa_public_key_pem),
]


def _dns_name(value: str) -> str:
    labels = value.split(".")
    if labels[0] == "*" and len(labels) > 1:
        labels = labels[1:]
    if len(value) > 253 or not all(_DNS_LABEL_RE.fullmatch(label) for label in labels):
        raise ValueError(f'"{value}" is not a DNS name')
    return value.lower()


def _ip_address(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError as exc:
        raise ValueError(f'"{value}" is not an IPv4 or IPv6 address') from exc


DNSName = Annotated[str, AfterValidator(_dns_name)]
IPAddress = Annotated[str, AfterValidator(_ip_address)]
Advisory = Annotated[str, Field(pattern=_ADVISORY_PATTERN)]

# Lists are stored as tuples (the models are frozen all the way down). ``Strict(False)`` lets a
# JSON/YAML list become a tuple; the items themselves stay strict.
MeasurementList = Annotated[tuple[Hex64, ...], Strict(False), Field(min_length=1)]
TCBStatusList = Annotated[tuple[TCBStatus, ...], Strict(False), Field(min_length=1)]
AdvisoryList = Annotated[tuple[Advisory, ...], Strict(False)]
TemplateList = Annotated[tuple[Template, ...], Strict(False)]
NameList = Annotated[tuple[Name, ...], Strict(False)]
DNSNameList = Annotated[tuple[DNSName, ...], Strict(False)]
IPAddressList = Annotated[tuple[IPAddress, ...], Strict(False)]
KeyUsageList = Annotated[tuple[KeyUsage, ...], Strict(False)]
ExtendedKeyUsageList = Annotated[tuple[ExtendedKeyUsage, ...], Strict(False)]
ActionList = Annotated[tuple[Action, ...], Strict(False), Field(min_length=1)]


class Package(BaseModel):
    """Which enclaves may claim to be this package: by MRENCLAVE, or by signer and product."""

    model_config = _STRICT

    mrenclave: MeasurementList | None = Field(
        default=None, description="accepted MRENCLAVE values (exclusive with mrsigner)"
    )
    mrsigner: Hex64 | None = Field(default=None, description="accepted MRSIGNER")
    isv_prod_id: int | None = Field(
        default=None, ge=0, le=0xFFFF, description="ISVPRODID (required with mrsigner)"
    )
    min_isv_svn: int | None = Field(
        default=None, ge=0, le=0xFFFF, description="lowest accepted ISVSVN (with mrsigner)"
    )
    debug: bool = Field(default=False, description="accept debug enclaves (insecure)")
    accepted_tcb_statuses: TCBStatusList = (
        "UpToDate",
        "SWHardeningNeeded",
    )
    accepted_advisories: AdvisoryList | None = Field(
        default=None,
        description="if given, only these advisories may be open; otherwise any not rejected",
    )
    rejected_advisories: AdvisoryList = ()


class Service(BaseModel):
    """One service: the package it runs and what it receives when it activates."""

    model_config = _STRICT

    package: Name
    max_instances: int | None = Field(
        default=None, ge=1, description="concurrent activated instances (none = no limit)"
    )
    files: dict[AbsolutePath, Template] = Field(
        default_factory=dict, description="absolute path -> template of its content"
    )
    env: dict[EnvName, Template] = Field(
        default_factory=dict, description="variable name -> template of its value"
    )
    argv: TemplateList | None = Field(
        default=None, description="replaces the package's argv when given"
    )
    volumes: dict[Name, AbsolutePath] = Field(
        default_factory=dict, description="volume name -> mount path"
    )
    tls: NameList = ()


class CertificateTemplate(BaseModel):
    """What a generated certificate says and who signs it."""

    model_config = _STRICT

    common_name: Annotated[str, Field(min_length=1, max_length=64)] | None = Field(
        default=None, description="subject CN (default: the secret's name); RFC 5280 ub 64"
    )
    dns_names: DNSNameList = ()
    ip_addresses: IPAddressList = ()
    key_usage: KeyUsageList = ("digital_signature",)
    extended_key_usage: ExtendedKeyUsageList = ()
    ca: bool = Field(default=False, description="may sign other certificate secrets")
    issuer: Name = Field(
        default=RESERVED_ISSUER,
        description='"mesh" (the coordinator\'s mesh CA) or the name of a cert secret',
    )


class Secret(BaseModel):
    """A secret the coordinator generates (or a user uploads) and hands to services."""

    model_config = _STRICT

    type: SecretType
    size: int | None = Field(default=None, description="bits; allowed values depend on type")
    scope: SecretScope = "shared"
    user_defined: bool = Field(default=False, description="set by a user instead of generated")
    validity: int | None = Field(
        default=None, ge=1, le=3650, description="days a generated certificate is valid"
    )
    certificate: CertificateTemplate | None = None

    @property
    def effective_size(self) -> int | None:
        """``size``, or the type's default when none is given (``None`` for plain secrets)."""
        return self.size if self.size is not None else DEFAULT_SECRET_SIZES[self.type]


class User(BaseModel):
    """A person or program that administers the deployment, identified by a key."""

    model_config = _STRICT

    certificate: CertificatePEM | None = None
    public_key: PublicKeyPEM | None = None
    roles: NameList = ()


class Role(BaseModel):
    """Permission to perform ``actions`` on the named ``resource`` items."""

    model_config = _STRICT

    resource: Resource
    names: NameList = ()
    actions: ActionList


class Volume(BaseModel):
    """An encrypted volume services can mount."""

    model_config = _STRICT

    rollback_protected: bool = Field(
        default=True, description="the coordinator pins the volume's latest root hash"
    )


class Recovery(BaseModel):
    """Who can restore the sealed state when the sealing key is gone: k of these RSA keys."""

    model_config = _STRICT

    keys: dict[Name, RSAPublicKeyPEM] = Field(min_length=1)
    threshold: int = Field(ge=1)


class Governance(BaseModel):
    """How many users holding the manifest ``update`` role must approve an update."""

    model_config = _STRICT

    update_threshold: int = Field(default=1, ge=1)


class Policy(BaseModel):
    """Deployment-wide appraisal policy."""

    model_config = _STRICT

    allow_simulation: bool = Field(
        default=False, description="accept simulated (insecure, no memory isolation) evidence"
    )
    collateral_source: CollateralSource = Field(
        default="evidence",
        description="'evidence': the collateral the service sends; 'pccs': fetch from pccs_url",
    )
    pccs_url: Annotated[str, Field(pattern=r"^https://[^\s]+$")] | None = None


class Manifest(BaseModel):
    """The whole deployment manifest."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        strict=True,
        title="sealpod deployment manifest",
    )

    version: Literal[1]
    packages: dict[Name, Package] = Field(min_length=1)
    services: dict[ServiceName, Service] = Field(default_factory=dict)
    secrets: dict[Name, Secret] = Field(default_factory=dict)
    users: dict[Name, User] = Field(default_factory=dict)
    roles: dict[Name, Role] = Field(default_factory=dict)
    volumes: dict[Name, Volume] = Field(default_factory=dict)
    recovery: Recovery | None = None
    governance: Governance | None = None
    policy: Policy = Field(default_factory=Policy)
