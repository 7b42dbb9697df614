"""Verification of trusted files: hash once from an open descriptor, then check every chunk served.

The shield serves a trusted file only from bytes it has checked against the manifest. The
invariants this module keeps:

* **One descriptor.** A trusted file is opened once (``O_RDONLY | O_NOFOLLOW``) and both the
  whole-file hash and every later read use that descriptor. Renaming or replacing the *path*
  afterwards cannot change what the descriptor reads: it keeps the inode it was opened on.
* **Every served byte is checked.** Verifying the whole file also records a Poly1305 tag of each
  1 MiB chunk, each under its own random key that never leaves this process. A read fetches the
  whole chunks that cover it from the descriptor, recomputes their tags and compares them (in
  constant time) with the recorded ones before returning anything. Poly1305 is about three times
  faster than SHA-256 here; with a secret one-time key per chunk and tags that are never
  revealed, producing different bytes with the recorded tag is a forgery against Poly1305
  (probability below 2^-80 per attempt for 1 MiB chunks), and every failed attempt is refused
  and logged. So an *in-place*
  modification of the inode after verification (``write``, a shared ``mmap``, ``truncate``,
  even one that restores mtime/ctime) is caught at the chunk it touches: the read fails with
  :class:`TrustedFileModifiedError`, never the tampered bytes.
* **Timestamps are an optimisation, not a check.** The whole-file verification is cached under
  the :class:`StatKey` (device, inode, size, mtime_ns, ctime_ns) of the descriptor and redone when
  the key changes; a modification that keeps the key only skips the *whole-file* check at open,
  and the chunk check still refuses its bytes at read time.

The window that stays open is therefore only one of *availability*: a file modified after an open
gives EIO on the modified chunk instead of EACCES at open.

Start-up: the chunks read by the whole-file verification at an open (or by a
:meth:`VerificationCache.prefetch` ahead of it, handed to the first open of that same file
version) may be kept (:meth:`VerificationCache.verify_keeping`) and served to that handle's reads
without a second read and tag check, while the descriptor's :class:`StatKey` is unchanged. Those
are the very bytes that matched the manifest hash, so even a modification that keeps the key
cannot bring tampered bytes through; any other modification drops them all and is refused as
above. They are held until the handle is closed (bounded per file and in total by the shield).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
import threading
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.poly1305 import Poly1305

from sealpod.errors import VerificationError

#: Size of the unit whose digest is recorded and checked on every read.
CHUNK_SIZE = 1 << 20


class TrustedFileModifiedError(VerificationError):
    """A trusted file's bytes no longer match what was verified (or the manifest)."""


@dataclass(frozen=True)
class StatKey:
    """What identifies one version of a file for the verification cache."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> StatKey:
        """The key of a ``stat`` result."""
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True)
class VerifiedContent:
    """A file version whose SHA-256 matched the manifest, with the digest of each chunk."""

    key: StatKey
    sha256: str
    chunk_keys: tuple[bytes, ...] = field(repr=False)
    chunk_tags: tuple[bytes, ...] = field(repr=False)

    @property
    def size(self) -> int:
        """The verified size in bytes."""
        return self.key.size


def verify_descriptor(fd: int, expected_sha256: str, *, path: str) -> VerifiedContent:
    """Hash the file open at ``fd`` and check it against ``expected_sha256``.

    Reads with ``pread`` so the descriptor's offset is irrelevant. The descriptor is
    ``fstat``-ed before and after; a change in between means the file was written while being
    hashed and is refused.

    Raises:
        TrustedFileModifiedError: the content does not match, the file changed while it was
            being hashed, or it is not a regular file (reason ``trusted_file_mismatch``).
    """
    return _verify(fd, expected_sha256, path, keep=False)[0]


def _verify(
    fd: int, expected_sha256: str, path: str, *, keep: bool
) -> tuple[VerifiedContent, tuple[bytes, ...]]:
    """:func:`verify_descriptor`, also returning the chunks it read when ``keep``: they are
    exactly the bytes that matched the manifest hash."""
    before = os.fstat(fd)
    if not stat.S_ISREG(before.st_mode):
        raise TrustedFileModifiedError("trusted_file_mismatch", f"{path} is not a regular file")
    whole = hashlib.sha256()
    keys: list[bytes] = []
    tags: list[bytes] = []
    kept: list[bytes] = []
    offset = 0
    while True:
        chunk = os.pread(fd, CHUNK_SIZE, offset)
        if not chunk:
            break
        if keep:
            kept.append(chunk)
        whole.update(chunk)
        chunk_key = os.urandom(32)
        keys.append(chunk_key)
        tags.append(Poly1305.generate_tag(chunk_key, chunk))
        offset += len(chunk)
        if len(chunk) < CHUNK_SIZE:
            # A short read is the end of the file unless the file grew; the size check below
            # refuses a file that changed meanwhile.
            break
    after = os.fstat(fd)
    key = StatKey.of(before)
    if StatKey.of(after) != key or offset != key.size:
        raise TrustedFileModifiedError(
            "trusted_file_mismatch", f"{path} changed while it was being verified"
        )
    if not hmac.compare_digest(whole.hexdigest(), expected_sha256.lower()):
        raise TrustedFileModifiedError(
            "trusted_file_mismatch", f"{path} does not match its manifest hash"
        )
    content = VerifiedContent(
        key=key, sha256=expected_sha256.lower(), chunk_keys=tuple(keys), chunk_tags=tuple(tags)
    )
    return content, tuple(kept)


class VerificationCache:
    """Whole-file verifications keyed by (path, expected hash, :class:`StatKey`). Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], VerifiedContent] = {}
        # One lock per file being hashed: a second caller waits for the first one's result
        # instead of hashing the same bytes again (the background pre-verification and the
        # application's open of the same file).
        self._busy: dict[tuple[str, str], threading.Lock] = {}
        # Chunks a prefetch read, waiting for the first open of that file version.
        self._kept: dict[tuple[str, str], tuple[StatKey, tuple[bytes, ...]]] = {}

    def _cached(self, slot: tuple[str, str], key: StatKey) -> VerifiedContent | None:
        with self._lock:
            cached = self._entries.get(slot)
        return cached if cached is not None and cached.key == key else None

    def _slot_lock(self, slot: tuple[str, str]) -> threading.Lock:
        with self._lock:
            return self._busy.setdefault(slot, threading.Lock())

    def verify(self, fd: int, expected_sha256: str, *, path: str) -> VerifiedContent:
        """Return the cached verification for ``fd``'s current version, or verify it now.

        Raises:
            TrustedFileModifiedError: as :func:`verify_descriptor`.
        """
        return self.verify_keeping(fd, expected_sha256, path=path, keep_limit=-1)[0]

    def verify_keeping(
        self, fd: int, expected_sha256: str, *, path: str, keep_limit: int
    ) -> tuple[VerifiedContent, tuple[bytes, ...]]:
        """:meth:`verify`, also returning the chunks read when the file was hashed now and is
        at most ``keep_limit`` bytes (for :class:`TrustedReader`: its first reads then need no
        second read and check); ``()`` otherwise.

        Raises:
            TrustedFileModifiedError: as :func:`verify_descriptor`.
        """
        st = os.fstat(fd)
        key = StatKey.of(st)
        slot = (path, expected_sha256.lower())
        cached = self._cached(slot, key)
        if cached is not None:
            return cached, self._take_kept(slot, key, keep_limit)
        with self._slot_lock(slot):
            cached = self._cached(slot, key)  # hashed by another caller meanwhile
            if cached is not None:
                return cached, self._take_kept(slot, key, keep_limit)
            verified, chunks = _verify(fd, expected_sha256, path, keep=st.st_size <= keep_limit)
            with self._lock:
                self._entries[slot] = verified
        return verified, chunks

    def prefetch(self, fd: int, expected_sha256: str, *, path: str, keep_limit: int) -> None:
        """Verify now, ahead of the first open, and hold the chunks read (files up to
        ``keep_limit`` bytes) for that open's :class:`TrustedReader`.

        Raises:
            TrustedFileModifiedError: as :func:`verify_descriptor`.
        """
        verified, chunks = self.verify_keeping(
            fd, expected_sha256, path=path, keep_limit=keep_limit
        )
        if chunks:
            with self._lock:
                self._kept[(path, expected_sha256.lower())] = (verified.key, chunks)

    def _take_kept(self, slot: tuple[str, str], key: StatKey, keep_limit: int) -> tuple[bytes, ...]:
        """The chunks a prefetch held for this very version of the file (handed over once)."""
        with self._lock:
            kept = self._kept.pop(slot, None)
        if kept is None or kept[0] != key or key.size > keep_limit:
            return ()
        return kept[1]

    def forget(self, path: str) -> None:
        """Drop every cached verification of ``path``."""
        with self._lock:
            for slot in [s for s in self._entries if s[0] == path]:
                del self._entries[slot]


class TrustedReader:
    """Serves reads of one open trusted file, checking every chunk before returning it.

    Not thread-safe; the shield serialises calls per handle.
    """

    def __init__(
        self,
        fd: int,
        content: VerifiedContent,
        *,
        path: str,
        verified_chunks: tuple[bytes, ...] = (),
    ) -> None:
        self._fd = fd
        self._content = content
        self._path = path
        # The last verified chunk: sequential reads smaller than a chunk hash it once.
        self._cached_index = -1
        self._cached = b""
        # Chunks read by the whole-file verification of this very open (the bytes that
        # matched the manifest hash): served from memory until the handle is closed or the
        # file changes (a program's loader faults the same chunk in again and again).
        if verified_chunks and len(verified_chunks) != len(content.chunk_tags):
            raise ValueError("verified_chunks do not match the verified content")
        self._fresh = dict(enumerate(verified_chunks))
        self._fresh_bytes = sum(map(len, verified_chunks))

    @property
    def held_bytes(self) -> int:
        """Bytes of verified chunks still held in memory for first reads."""
        return self._fresh_bytes

    @property
    def content(self) -> VerifiedContent:
        """What was verified when this file was opened."""
        return self._content

    def _chunk(self, index: int) -> bytes:
        if index == self._cached_index:
            return self._cached
        fresh = self._fresh.get(index)
        if fresh is not None:
            if StatKey.of(os.fstat(self._fd)) == self._content.key:
                self._cached_index, self._cached = index, fresh
                return fresh
            # The file changed since: check what it holds now (a change is refused as usual).
            self._fresh.clear()
            self._fresh_bytes = 0
        expected_len = min(CHUNK_SIZE, self._content.size - index * CHUNK_SIZE)
        data = os.pread(self._fd, expected_len, index * CHUNK_SIZE)
        if len(data) != expected_len or not hmac.compare_digest(
            Poly1305.generate_tag(self._content.chunk_keys[index], data),
            self._content.chunk_tags[index],
        ):
            raise TrustedFileModifiedError(
                "trusted_file_modified",
                f"{self._path} was modified after it was verified (chunk {index})",
            )
        self._cached_index, self._cached = index, data
        return data

    def read(self, offset: int, size: int) -> bytes | memoryview:
        """Up to ``size`` verified bytes from ``offset`` (fewer at the end of the file).

        Within one chunk the answer is a view of the verified chunk (no copy).

        Raises:
            TrustedFileModifiedError: a chunk covering the range no longer matches.
        """
        end = min(offset + size, self._content.size)
        if offset >= end:
            return b""
        first, last = offset // CHUNK_SIZE, (end - 1) // CHUNK_SIZE
        if first == last:
            base = first * CHUNK_SIZE
            return memoryview(self._chunk(first))[offset - base : end - base]
        parts = []
        for index in range(first, last + 1):
            base = index * CHUNK_SIZE
            chunk = self._chunk(index)
            parts.append(chunk[max(offset - base, 0) : min(end - base, len(chunk))])
        return b"".join(parts)

    def close(self) -> None:
        """Close the descriptor."""
        self._cached = b""
        self._fresh.clear()
        self._fresh_bytes = 0
        os.close(self._fd)


def symlink_target_digest(target: bytes) -> str:
    """The trusted-set hash of a symbolic link: SHA-256 of its target string's bytes."""
    return hashlib.sha256(target).hexdigest()
