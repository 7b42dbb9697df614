"""Content-addressed blobs: digest syntax, hashing streams, decompression."""

from __future__ import annotations

import hashlib
import importlib
import io
import re
from typing import IO, Any, cast

from sealpod.errors import ConfigError, VerificationError
from sealpod.image.model import Compression

# OCI image spec, descriptor.md: registered algorithms and their encoded forms.
_DIGEST_RE = {
    "sha256": re.compile(r"[a-f0-9]{64}"),
    "sha512": re.compile(r"[a-f0-9]{128}"),
}

_CHUNK = 1 << 20


def parse_digest(digest: object, where: str) -> tuple[str, str]:
    """Split ``algorithm:hex`` after checking it strictly (it becomes a file name).

    Raises:
        VerificationError: ``malformed_digest`` for anything but a sha256/sha512 digest.
    """
    if isinstance(digest, str):
        algorithm, sep, encoded = digest.partition(":")
        pattern = _DIGEST_RE.get(algorithm)
        if sep and pattern is not None and pattern.fullmatch(encoded):
            return algorithm, encoded
    raise VerificationError("malformed_digest", f"{where}: {digest!r} is not a sha256 digest")


def new_hash(digest: str) -> Any:
    """A hashlib object for the algorithm of ``digest`` (already parsed)."""
    return hashlib.new(digest.partition(":")[0])


class HashingReader(io.RawIOBase):
    """Reads through to ``inner`` and hashes everything read."""

    def __init__(self, inner: IO[bytes], algorithm: str = "sha256") -> None:
        super().__init__()
        self._inner = inner
        self.hash = hashlib.new(algorithm)
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._inner.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.hash.update(data)
        self.count += n
        return n

    def drain(self) -> None:
        """Read (and hash) whatever is left."""
        while self.read(_CHUNK):
            pass

    def digest(self) -> str:
        """``algorithm:hex`` of what was read so far."""
        return f"{self.hash.name}:{self.hash.hexdigest()}"


def decompressor(stream: IO[bytes], compression: Compression) -> IO[bytes]:
    """A reader of the uncompressed bytes of ``stream``.

    Raises:
        ConfigError: zstd is needed but the optional ``zstandard`` module is missing.
    """
    if compression == "none":
        return stream
    if compression == "gzip":
        import gzip  # extraction only (not a cache hit)

        return cast(IO[bytes], gzip.GzipFile(fileobj=stream, mode="rb"))
    try:
        zstandard = importlib.import_module("zstandard")
    except ImportError as exc:
        raise ConfigError(
            "this image has zstd-compressed layers; install the optional 'zstandard' package"
        ) from exc
    reader: IO[bytes] = zstandard.ZstdDecompressor().stream_reader(stream, read_across_frames=True)
    return reader


def sniff_compression(head: bytes) -> Compression:
    """Guess a blob's compression from its first bytes (docker-archive has no media types)."""
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd"
    return "none"


def read_exact_blob(stream: IO[bytes], limit: int, where: str) -> bytes:
    """Read a whole (small, JSON) blob, refusing more than ``limit`` bytes.

    Raises:
        VerificationError: ``blob_too_large``.
    """
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise VerificationError("blob_too_large", f"{where} is larger than {limit} bytes")
    return data


def check_digest(data: bytes, digest: str, where: str) -> None:
    """Check ``data`` hashes to ``digest``.

    Raises:
        VerificationError: ``malformed_digest`` or ``blob_digest_mismatch``.
    """
    algorithm, encoded = parse_digest(digest, where)
    if hashlib.new(algorithm, data).hexdigest() != encoded:
        raise VerificationError("blob_digest_mismatch", f"{where} does not match {digest}")
