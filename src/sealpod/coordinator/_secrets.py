"""Manifest secrets in the sealed store: generation, encoding, lookup.

Records: shared secrets at ``("secret", NAME)``; per-instance secrets at
``("instance-secret/SERVICE", "INSTANCE/NAME")``. A value is JSON: ``{"type": T, "data": HEX}``
for keys and plain secrets, ``{"type": T, "certified_key": {...}}`` for certificates (private
key included: the store is sealed). Generated secrets are made on first need inside the
caller's transaction, so concurrent activations agree on one value; user-defined secrets are
never generated (``None`` until a user sets them).
"""

from __future__ import annotations

import datetime
import json
import secrets as _random
from typing import Any, Literal

from sealpod.errors import VerificationError
from sealpod.manifest import (
    Certificate,
    CertificateSecret,
    CertificateTemplate,
    Manifest,
    PrivateKey,
    Secret,
    SecretBytes,
)
from sealpod.pki import CertifiedKey, CoordinatorCA, KeyType
from sealpod.store import Transaction

__all__ = [
    "SHARED_NAMESPACE",
    "SecretResolver",
    "SecretValue",
    "changed_secrets",
    "decode_secret",
    "encode_secret",
    "forget_secrets",
]

SecretValue = SecretBytes | CertificateSecret

SHARED_NAMESPACE = "secret"
_KEY_TYPES: dict[str, KeyType] = {
    "cert-ecdsa": "ecdsa",
    "cert-rsa": "rsa",
    "cert-ed25519": "ed25519",
}
_DEFAULT_CERT_DAYS = 365
_MESH: Literal["mesh"] = "mesh"


def _instance_namespace(service: str) -> str:
    return f"instance-secret/{service}"


def _malformed(name: str) -> VerificationError:
    return VerificationError("secret_record_malformed", f"stored secret {name!r} does not parse")


class SecretResolver:
    """Looks up (and generates on first need) the secrets one transaction works with."""

    def __init__(
        self,
        tx: Transaction,
        manifest: Manifest,
        ca: CoordinatorCA,
        *,
        now: datetime.datetime,
        simulated: bool,
        service: str | None = None,
        instance: str | None = None,
    ) -> None:
        self._tx = tx
        self._manifest = manifest
        self._ca = ca
        self._now = now
        self._simulated = simulated
        self._service = service
        self._instance = instance
        self._cache: dict[str, tuple[SecretValue, CertifiedKey | None]] = {}

    def _location(self, name: str, secret: Secret) -> tuple[str, str] | None:
        if secret.scope == "shared":
            return SHARED_NAMESPACE, name
        if self._service is None or self._instance is None:
            return None
        return _instance_namespace(self._service), f"{self._instance}/{name}"

    def generate_shared(self) -> list[str]:
        """Generate every shared, non-user-defined secret not stored yet; return their names.

        Raises:
            ConfigError: a certificate template the PKI refuses.
        """
        made = []
        for name, secret in self._manifest.secrets.items():
            if secret.scope != "shared" or secret.user_defined:
                continue
            if self._tx.get(SHARED_NAMESPACE, name) is None and self._resolve(name) is not None:
                made.append(name)
        return made

    def get(self, name: str) -> SecretValue | None:
        """The value of secret ``name`` (generated now when needed), or ``None`` when it is
        user-defined and not set yet (or issued by such a secret).

        Raises:
            KeyError: ``name`` is not a secret of the manifest.
            ConfigError: a certificate template the PKI refuses.
            VerificationError: ``secret_record_malformed``.
        """
        resolved = self._resolve(name)
        return None if resolved is None else resolved[0]

    def _resolve(self, name: str) -> tuple[SecretValue, CertifiedKey | None] | None:
        if name in self._cache:
            return self._cache[name]
        secret = self._manifest.secrets[name]
        location = self._location(name, secret)
        if location is None:
            return None
        stored = self._tx.get(*location)
        if stored is not None:
            resolved = self._decode(name, stored)
        elif secret.user_defined:
            return None
        else:
            generated = self._generate(name, secret)
            if generated is None:
                return None
            resolved = generated
            self._tx.put(*location, self._encode(secret, resolved))
        self._cache[name] = resolved
        return resolved

    def _generate(
        self, name: str, secret: Secret
    ) -> tuple[SecretValue, CertifiedKey | None] | None:
        if secret.type == "symmetric-key":
            size = secret.effective_size or 256
            return SecretBytes(_random.token_bytes(size // 8), kind="symmetric-key"), None
        key_type = _KEY_TYPES.get(secret.type)
        if key_type is None:  # plain secrets are always user-defined (manifest checks)
            return None
        template = secret.certificate or CertificateTemplate()
        issuer: CertifiedKey | None = None
        if template.issuer != _MESH:
            issuer_resolved = self._resolve(template.issuer)
            if issuer_resolved is None or issuer_resolved[1] is None:
                return None
            issuer = issuer_resolved[1]
        certified = self._ca.issue_secret_cert(
            key_type=key_type,
            key_size=secret.effective_size,
            common_name=template.common_name or name,
            dns_names=template.dns_names,
            ips=template.ip_addresses,
            key_usage=(*template.key_usage, *template.extended_key_usage),
            validity=datetime.timedelta(days=secret.validity or _DEFAULT_CERT_DAYS),
            is_ca=template.ca,
            issuer=issuer,
            simulated=self._simulated,
            now=self._now,
        )
        return _certificate_secret(certified), certified

    @staticmethod
    def _encode(secret: Secret, resolved: tuple[SecretValue, CertifiedKey | None]) -> bytes:
        return encode_secret(secret, resolved)

    @staticmethod
    def _decode(name: str, raw: bytes) -> tuple[SecretValue, CertifiedKey | None]:
        return decode_secret(name, raw)


def changed_secrets(old: Manifest, new: Manifest) -> set[str]:
    """Secrets of ``old`` whose value cannot be kept under ``new``: removed, redefined, or
    issued (directly or not) by such a secret."""
    changed = {
        name
        for name, secret in old.secrets.items()
        if name not in new.secrets or new.secrets[name] != secret
    }
    grew = True
    while grew:
        grew = False
        for name, secret in old.secrets.items():
            template = secret.certificate
            if name in changed or template is None or template.issuer == _MESH:
                continue
            if template.issuer in changed:
                changed.add(name)
                grew = True
    return changed


def forget_secrets(tx: Transaction, names: set[str], services: list[str]) -> None:
    """Delete the stored values of ``names`` (shared, and per instance of ``services``)."""
    for name in sorted(names):
        tx.delete(SHARED_NAMESPACE, name)
    for service in services:
        namespace = _instance_namespace(service)
        for key in tx.keys(namespace):
            if key.partition("/")[2] in names:
                tx.delete(namespace, key)


def encode_secret(secret: Secret, resolved: tuple[SecretValue, CertifiedKey | None]) -> bytes:
    """The stored form of a secret value (see the module docstring)."""
    value, certified = resolved
    document: dict[str, Any] = {"type": secret.type}
    if certified is not None:
        document["certified_key"] = certified.to_dict()
    elif isinstance(value, SecretBytes):
        document["data"] = value.data.hex()
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def decode_secret(name: str, raw: bytes) -> tuple[SecretValue, CertifiedKey | None]:
    """Inverse of :func:`encode_secret`.

    Raises:
        VerificationError: ``secret_record_malformed``.
    """
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _malformed(name) from exc
    if not isinstance(document, dict) or not isinstance(document.get("type"), str):
        raise _malformed(name)
    if "certified_key" in document:
        try:
            certified = CertifiedKey.from_dict(document["certified_key"])
        except VerificationError as exc:
            raise _malformed(name) from exc
        return _certificate_secret(certified), certified
    data = document.get("data")
    if not isinstance(data, str):
        raise _malformed(name)
    try:
        value = bytes.fromhex(data)
    except ValueError as exc:
        raise _malformed(name) from exc
    return SecretBytes(value, kind=str(document["type"])), None


def _certificate_secret(certified: CertifiedKey) -> CertificateSecret:
    return CertificateSecret(
        cert=Certificate(certified.certificate), private_key=PrivateKey(certified.private_key)
    )
