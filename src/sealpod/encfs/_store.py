"""Where the ciphertext nodes live: a host file (by descriptor) or memory."""

from __future__ import annotations

import os
from typing import Protocol

from sealpod.errors import ConfigError


class NodeStore(Protocol):
    """Byte storage under an encrypted file. Offsets are host-file offsets."""

    def length(self) -> int:
        """Current length in bytes."""
        ...

    def read(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` (fewer only at the end)."""
        ...

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write all of ``data`` at ``offset`` (growing the store if needed)."""
        ...

    def truncate(self, length: int) -> None:
        """Cut (or zero-extend) the store to ``length`` bytes."""
        ...

    def sync(self) -> None:
        """Make everything written so far durable (a write barrier)."""
        ...


class MemoryNodeStore:
    """A store in a ``bytearray`` (tests, :func:`~sealpod.encfs.encrypt_bytes`)."""

    def __init__(self, data: bytes | bytearray | memoryview = b"") -> None:
        self.buffer = bytearray(data)

    def length(self) -> int:
        return len(self.buffer)

    def read(self, offset: int, size: int) -> bytes:
        return bytes(self.buffer[offset : offset + size])

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        end = offset + len(data)
        if end > len(self.buffer):
            self.buffer.extend(bytes(end - len(self.buffer)))
        self.buffer[offset:end] = data

    def truncate(self, length: int) -> None:
        if length < len(self.buffer):
            del self.buffer[length:]
        else:
            self.buffer.extend(bytes(length - len(self.buffer)))

    def sync(self) -> None:
        return None


class FileNodeStore:
    """A store on an open file descriptor (``pread``/``pwrite``; the caller owns the fd)."""

    def __init__(self, fd: int, *, name: str = "") -> None:
        self.fd = fd
        self.name = name

    def _fail(self, what: str, exc: OSError) -> ConfigError:
        return ConfigError(f"cannot {what} {self.name or 'encrypted file'}: {exc.strerror or exc}")

    def direct_fd(self) -> int | None:
        """The descriptor reads go to."""
        return self.fd

    def length(self) -> int:
        try:
            return os.fstat(self.fd).st_size
        except OSError as exc:
            raise self._fail("stat", exc) from exc

    def read(self, offset: int, size: int) -> bytes:
        chunks: list[bytes] = []
        try:
            while size > 0:
                chunk = os.pread(self.fd, size, offset)
                if not chunk:
                    break
                chunks.append(chunk)
                size -= len(chunk)
                offset += len(chunk)
        except OSError as exc:
            raise self._fail("read", exc) from exc
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        try:
            while view:
                written = os.pwrite(self.fd, view, offset)
                view = view[written:]
                offset += written
        except OSError as exc:
            raise self._fail("write", exc) from exc

    def truncate(self, length: int) -> None:
        try:
            os.ftruncate(self.fd, length)
        except OSError as exc:
            raise self._fail("truncate", exc) from exc

    def sync(self) -> None:
        try:
            os.fsync(self.fd)
        except OSError as exc:
            raise self._fail("sync", exc) from exc
