"""Enclave signing keys: RSA-3072 with public exponent 3.

Intel SDM Vol. 3D, 38.13 (SIGSTRUCT): the MODULUS is a 3072-bit integer, the EXPONENT is 3 and
the SIGNATURE uses EMSA-PKCS1-v1_5 with SHA-256. A key of any other size or exponent can never
produce a SIGSTRUCT that EINIT accepts, so loading such a key is refused up front.

The private key never appears in ``repr``, logs or error messages.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from sealpod._internal.fsutil import write_file_atomic
from sealpod.errors import ConfigError

_logger = logging.getLogger(__name__)

#: Modulus size SGX requires, in bits and bytes (Intel SDM 38.13).
SGX_RSA_KEY_BITS = 3072
SGX_RSA_KEY_BYTES = SGX_RSA_KEY_BITS // 8
#: Public exponent SGX requires.
SGX_RSA_EXPONENT = 3


def mr_signer_from_modulus(modulus_le: bytes) -> bytes:
    """MRSIGNER: SHA-256 of the modulus exactly as SIGSTRUCT stores it (384 bytes, little-endian).

    Raises:
        ValueError: ``modulus_le`` is not 384 bytes.
    """
    if len(modulus_le) != SGX_RSA_KEY_BYTES:
        raise ValueError(f"modulus must be {SGX_RSA_KEY_BYTES} bytes, got {len(modulus_le)}")
    return hashlib.sha256(modulus_le).digest()


def _check_key(key: object, source: str) -> rsa.RSAPrivateKey:
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError(f"{source}: not an RSA private key ({type(key).__name__})")
    if key.key_size != SGX_RSA_KEY_BITS:
        raise ConfigError(
            f"{source}: SGX needs an RSA-{SGX_RSA_KEY_BITS} key, this one has {key.key_size} bits"
        )
    exponent = key.public_key().public_numbers().e
    if exponent != SGX_RSA_EXPONENT:
        raise ConfigError(f"{source}: SGX needs public exponent 3, this key has {exponent}")
    return key


@dataclass(frozen=True)
class EnclaveSigningKey:
    """An RSA-3072, e=3 private key that signs SIGSTRUCTs.

    Build one with :meth:`generate`, :meth:`from_pem` or :meth:`load`; the constructor checks the
    key size and exponent too.
    """

    private_key: rsa.RSAPrivateKey = field(repr=False)

    def __post_init__(self) -> None:
        _check_key(self.private_key, "signing key")

    def __repr__(self) -> str:
        return f"EnclaveSigningKey(mr_signer={self.mr_signer.hex()})"

    @classmethod
    def generate(cls) -> EnclaveSigningKey:
        """Generate a fresh RSA-3072 key with public exponent 3."""
        key = rsa.generate_private_key(public_exponent=SGX_RSA_EXPONENT, key_size=SGX_RSA_KEY_BITS)
        return cls(key)

    @classmethod
    def from_pem(
        cls, data: bytes, *, password: bytes | None = None, source: str = "signing key"
    ) -> EnclaveSigningKey:
        """Load a PEM private key (PKCS#1 or PKCS#8, optionally encrypted).

        Raises:
            ConfigError: not a PEM private key, wrong password, not RSA-3072 or exponent != 3.
        """
        try:
            key = serialization.load_pem_private_key(data, password=password)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            # The exception text can echo key material in odd cases; keep only a fixed message.
            raise ConfigError(
                f"{source}: not a readable PEM private key (or wrong password)"
            ) from exc
        return cls(_check_key(key, source))

    @classmethod
    def load(cls, path: str | Path, *, password: bytes | None = None) -> EnclaveSigningKey:
        """Load a PEM private key from ``path``.

        Raises:
            ConfigError: the file cannot be read or does not hold a usable SGX signing key.
        """
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read signing key {path}: {exc.strerror or exc}") from exc
        return cls.from_pem(data, password=password, source=str(path))

    def to_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM (the caller protects the file)."""
        return self.private_key.private_bytes(
            encoding=serialization.Encoding.PEM,
            format=serialization.PrivateFormat.PKCS8,
            encryption_algorithm=serialization.NoEncryption(),
        )

    @property
    def modulus(self) -> int:
        """The public modulus N."""
        return self.private_key.public_key().public_numbers().n

    @property
    def modulus_le(self) -> bytes:
        """The modulus as SIGSTRUCT stores it: 384 bytes, little-endian."""
        return self.modulus.to_bytes(SGX_RSA_KEY_BYTES, "little")

    @property
    def mr_signer(self) -> bytes:
        """MRSIGNER of every enclave this key signs."""
        return mr_signer_from_modulus(self.modulus_le)

    def sign(self, data: bytes) -> int:
        """RSASSA-PKCS1-v1_5 / SHA-256 signature over ``data``, as an integer."""
        signature = self.private_key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        return int.from_bytes(signature, "big")


def write_signing_key(path: str | Path, key: EnclaveSigningKey, *, force: bool = False) -> None:
    """Write ``key`` as PEM to ``path`` with mode 0600.

    Without ``force`` an existing file is never touched. The file is created with mode 0600 from
    the start (never world-readable, not even briefly).

    Raises:
        ConfigError: the file exists and ``force`` is false, or it cannot be written.
    """
    target = Path(path)
    try:
        write_file_atomic(target, key.to_pem(), mode=0o600, overwrite=force)
    except FileExistsError as exc:
        raise ConfigError(f"{target} already exists (use --force to overwrite)") from exc
    except OSError as exc:
        raise ConfigError(f"cannot write {target}: {exc.strerror or exc}") from exc
    if force:
        _logger.info("wrote signing key %s (existing file replaced if any)", target)
