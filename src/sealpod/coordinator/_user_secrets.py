"""User-defined secrets: set and read by users with the right role."""

from __future__ import annotations

import logging
from typing import Any, cast

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from sealpod.coordinator._base import (
    CoordinatorBase,
    SecretRelease,
    UserSecretUpload,
)
from sealpod.coordinator._secrets import (
    SHARED_NAMESPACE,
    decode_secret,
    encode_secret,
)
from sealpod.coordinator.errors import RequestRefusedError
from sealpod.errors import SealpodError, VerificationError
from sealpod.manifest import (
    Certificate,
    CertificateSecret,
    PrivateKey,
    SecretBytes,
)
from sealpod.pki import CertifiedKey, certificates_to_pem, public_key_der
from sealpod.store import (
    AuditLog,
    Transaction,
)

_logger = logging.getLogger(__name__)

_CERT_KEY_TYPES: dict[str, type] = {
    "cert-ecdsa": ec.EllipticCurvePrivateKey,
    "cert-rsa": rsa.RSAPrivateKey,
    "cert-ed25519": ed25519.Ed25519PrivateKey,
}
_MAX_USER_SECRET = 64 * 1024


class UserSecretsMixin(CoordinatorBase):
    """User-defined secrets: set and read by users with the right role."""

    def set_secret(self, user: str, name: str, upload: UserSecretUpload) -> None:
        """Set a user-defined secret (role ``secrets``/``write`` on ``name``).

        Raises:
            RequestRefusedError: ``unknown_secret`` (404), ``permission_denied`` (403),
                ``secret_not_user_defined`` (409), ``invalid_secret`` (400), ``no_manifest``.
        """
        try:
            self._set_secret(user, name, upload)
        except SealpodError as exc:
            self._audit_refusal({"type": "secret_set_refused", "user": user, "secret": name}, exc)
            raise

    def _set_secret(self, user: str, name: str, upload: UserSecretUpload) -> None:
        store = self._require_store()
        info = self._current_manifest()
        secret = info.manifest.secrets.get(name)
        if secret is None:
            raise RequestRefusedError(
                "unknown_secret", "the manifest has no such secret", status=404
            )
        self._authorize(info.manifest, user, "secrets", name, "write")
        if not secret.user_defined:
            raise RequestRefusedError(
                "secret_not_user_defined", "the coordinator generates this secret", status=409
            )
        resolved = _user_secret_value(secret.type, secret.effective_size, upload)
        record = encode_secret(secret, resolved)
        now = self._now_datetime()

        def body(tx: Transaction) -> None:
            tx.put(SHARED_NAMESPACE, name, record)
            AuditLog.append(tx, {"type": "secret_set", "user": user, "secret": name}, now=now)

        self._transact(store, body)
        _logger.info("user %s set secret %s", user, name)

    def get_secret(self, user: str, name: str) -> SecretRelease:
        """Read a shared secret (role ``secrets``/``read`` on ``name``); audited.

        Raises:
            RequestRefusedError: ``unknown_secret`` (404), ``permission_denied`` (403),
                ``secret_per_instance`` (409), ``secret_not_set`` (404), ``no_manifest``.
        """
        try:
            return self._get_secret(user, name)
        except SealpodError as exc:
            self._audit_refusal({"type": "secret_read_refused", "user": user, "secret": name}, exc)
            raise

    def _get_secret(self, user: str, name: str) -> SecretRelease:
        store = self._require_store()
        info = self._current_manifest()
        secret = info.manifest.secrets.get(name)
        if secret is None:
            raise RequestRefusedError(
                "unknown_secret", "the manifest has no such secret", status=404
            )
        self._authorize(info.manifest, user, "secrets", name, "read")
        if secret.scope != "shared":
            raise RequestRefusedError(
                "secret_per_instance", "a per-instance secret has no single value", status=409
            )
        now = self._now_datetime()

        def body(tx: Transaction) -> bytes | None:
            raw = tx.get(SHARED_NAMESPACE, name)
            if raw is not None:
                AuditLog.append(tx, {"type": "secret_read", "user": user, "secret": name}, now=now)
            return raw

        raw = self._transact(store, body)
        if raw is None:
            raise RequestRefusedError("secret_not_set", "the secret has no value yet", status=404)
        value, certified = decode_secret(name, raw)
        if certified is not None:
            return SecretRelease(
                name=name,
                type=secret.type,
                certificate_pem=certificates_to_pem(
                    (certified.certificate, *certified.chain)
                ).decode("ascii"),
                private_key_pem=certified.private_key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ).decode("ascii"),
            )
        if not isinstance(value, SecretBytes):  # pragma: no cover - decode_secret's contract
            raise VerificationError("secret_record_malformed", f"stored secret {name!r}")
        return SecretRelease(name=name, type=secret.type, value=value.data)


def _invalid(message: str) -> RequestRefusedError:
    return RequestRefusedError("invalid_secret", message, status=400)


def _user_secret_value(
    secret_type: str, size: int | None, upload: UserSecretUpload
) -> tuple[SecretBytes | CertificateSecret, CertifiedKey | None]:
    """Check an uploaded value against the secret's type and size.

    Raises:
        RequestRefusedError: ``invalid_secret`` (400).
    """
    key_type = _CERT_KEY_TYPES.get(secret_type)
    if key_type is None:
        if upload.value is None or upload.certificate_pem or upload.private_key_pem:
            raise _invalid(f"a {secret_type} secret takes a value only")
        if len(upload.value) > _MAX_USER_SECRET:
            raise _invalid(f"the value is larger than {_MAX_USER_SECRET} bytes")
        is_key = secret_type == "symmetric-key"  # noqa: S105 (a type name, not a password)
        if is_key and size is not None and len(upload.value) * 8 != size:
            raise _invalid(f"the key must be {size} bits")
        return SecretBytes(upload.value, kind=secret_type), None
    if upload.value is not None or not upload.certificate_pem or not upload.private_key_pem:
        raise _invalid("a certificate secret takes a certificate and a private key")
    try:
        chain = x509.load_pem_x509_certificates(upload.certificate_pem.encode("ascii"))
        key = serialization.load_pem_private_key(upload.private_key_pem.encode("ascii"), None)
    except (ValueError, TypeError, UnicodeEncodeError) as exc:
        raise _invalid("the certificate or private key does not parse (unencrypted PEM)") from exc
    if not isinstance(key, key_type):
        raise _invalid(f"a {secret_type} secret needs a {secret_type.removeprefix('cert-')} key")
    if public_key_der(key.public_key()) != public_key_der(chain[0].public_key()):
        raise _invalid("the private key does not belong to the certificate")
    certified = CertifiedKey(
        certificate=chain[0], private_key=cast(Any, key), chain=tuple(chain[1:])
    )
    return (
        CertificateSecret(cert=Certificate(chain[0]), private_key=PrivateKey(cast(Any, key))),
        certified,
    )
