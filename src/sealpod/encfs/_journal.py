"""The redo journal under a volume: committed nodes are never overwritten before a commit counts.

Invariant: between two volume commits, the bytes of every node that the last committed volume
record refers to stay exactly as committed. A node write at a host offset below the object's
*committed length* goes to the volume's journal instead; a write at or past it (appending, new
files) goes straight to the object file, where no committed metadata refers to it. Reads see
the journal's node over the file's. A commit makes the journal durable, names its length in
the pending record and, only once the new tag is accepted, copies the journal into the objects
(see :mod:`sealpod.encfs.volume` for the whole order). The journal holds ciphertext nodes only,
so it reveals nothing the object files would not.

Journal entry (fixed size): magic ``SPVJNL01`` (8) || object id (16) || node number, u64 LE (8)
|| the 4096-byte node as it goes to the host file.
"""

from __future__ import annotations

import fcntl
import os
import struct
from collections.abc import Iterator

from sealpod.encfs import _format as fmt
from sealpod.errors import ConfigError, VerificationError

_MAGIC = b"SPVJNL01"
_HEAD = struct.Struct("<8s16sQ")
ENTRY_SIZE = _HEAD.size + fmt.NODE_SIZE
OBJECT_ID_SIZE = 16


def _fail(what: str, name: str, exc: OSError) -> ConfigError:
    return ConfigError(f"cannot {what} {name}: {exc.strerror or exc}")


def pread_all(fd: int, size: int, offset: int, name: str) -> bytes:
    """Up to ``size`` bytes at ``offset`` (fewer only at the end of the file).

    Raises:
        ConfigError: the read fails.
    """
    chunks: list[bytes] = []
    try:
        while size > 0:
            chunk = os.pread(fd, size, offset)
            if not chunk:
                break
            chunks.append(chunk)
            size -= len(chunk)
            offset += len(chunk)
    except OSError as exc:
        raise _fail("read", name, exc) from exc
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int, name: str) -> None:
    """Write all of ``data`` at ``offset``.

    Raises:
        ConfigError: the write fails.
    """
    view = memoryview(data).cast("B")
    try:
        while view:
            written = os.pwrite(fd, view, offset)
            view = view[written:]
            offset += written
    except OSError as exc:
        raise _fail("write", name, exc) from exc


def fsync(fd: int, name: str) -> None:
    """``fsync`` with a one-line error.

    Raises:
        ConfigError: the sync fails.
    """
    try:
        os.fsync(fd)
    except OSError as exc:
        raise _fail("sync", name, exc) from exc


class Journal:
    """The append-only redo journal of one volume (one host file, opened once)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """Open (creating) and lock the journal file; its old content stays until :meth:`reset`.

        Raises:
            ConfigError: it cannot be opened, or another writer holds the volume.
        """
        self.name = os.fspath(path)
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise _fail("open", self.name, exc) from exc
        try:
            # One writer per volume: a second runtime on the same directory would interleave
            # its commits with ours.
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self.fd)
            self.fd = -1
            raise ConfigError(f"the volume is open for writing elsewhere ({self.name})") from exc
        self.length = 0

    def append(self, object_id: bytes, node: int, data: bytes | memoryview) -> int:
        """Add a node image; return its entry offset.

        Raises:
            ConfigError: the write fails.
        """
        offset = self.length
        pwrite_all(self.fd, _HEAD.pack(_MAGIC, object_id, node) + bytes(data), offset, self.name)
        self.length += ENTRY_SIZE
        return offset

    def rewrite(self, offset: int, data: bytes | memoryview) -> None:
        """Replace the node image of the entry at ``offset`` (same object and node).

        Raises:
            ConfigError: the write fails.
        """
        pwrite_all(self.fd, data, offset + _HEAD.size, self.name)

    def read_node(self, offset: int) -> bytes:
        """The node image of the entry at ``offset``.

        Raises:
            ConfigError: the read fails.
        """
        return pread_all(self.fd, fmt.NODE_SIZE, offset + _HEAD.size, self.name)

    def entries(self, length: int) -> Iterator[tuple[bytes, int, bytes]]:
        """(object id, node number, node image) of every entry in the first ``length`` bytes.

        Raises:
            VerificationError: ``volume_journal_damaged`` (short or malformed journal).
            ConfigError: the read fails.
        """
        if length % ENTRY_SIZE:
            raise VerificationError("volume_journal_damaged", "journal length is not whole")
        block = 256 * ENTRY_SIZE
        for start in range(0, length, block):
            raw = pread_all(self.fd, min(block, length - start), start, self.name)
            if len(raw) != min(block, length - start):
                raise VerificationError("volume_journal_damaged", "journal is shorter than named")
            for at in range(0, len(raw), ENTRY_SIZE):
                magic, object_id, node = _HEAD.unpack_from(raw, at)
                if magic != _MAGIC:
                    raise VerificationError("volume_journal_damaged", "malformed journal entry")
                yield object_id, node, raw[at + _HEAD.size : at + ENTRY_SIZE]

    def sync(self) -> None:
        """Make the journal durable.

        Raises:
            ConfigError: the sync fails.
        """
        fsync(self.fd, self.name)

    def reset(self) -> None:
        """Empty the journal (after its entries were applied or discarded).

        Raises:
            ConfigError: the truncation fails.
        """
        try:
            os.ftruncate(self.fd, 0)
        except OSError as exc:
            raise _fail("truncate", self.name, exc) from exc
        self.length = 0

    def close(self) -> None:
        """Close the journal file (idempotent)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class JournaledNodeStore:
    """A :class:`~sealpod.encfs.NodeStore` over one object file and the volume's journal.

    Writes must be whole nodes at node offsets (what :class:`~sealpod.encfs.EncryptedFile`
    does). :meth:`sync` is deliberately empty: durability is the volume commit's job.
    """

    def __init__(
        self, fd: int, object_id: bytes, journal: Journal, *, committed_length: int, name: str
    ) -> None:
        self.fd = fd
        self.object_id = object_id
        self.name = name
        self._journal = journal
        self._committed = committed_length
        self._overlay: dict[int, int] = {}  # node number -> journal entry offset
        try:
            self._length = os.fstat(fd).st_size
        except OSError as exc:
            raise _fail("stat", name, exc) from exc
        self.direct_dirty = False

    @property
    def committed_length(self) -> int:
        """Host length as of the last volume commit (0 for an object new since then)."""
        return self._committed

    def length(self) -> int:
        return self._length

    def direct_fd(self) -> int | None:
        """The object file's descriptor while no journal entry overlays it (reads then go
        straight to it), else None."""
        return None if self._overlay else self.fd

    def read(self, offset: int, size: int) -> bytes:
        end = min(offset + size, self._length)
        if offset >= end:
            return b""
        if not self._overlay:
            return pread_all(self.fd, end - offset, offset, self.name)
        out = bytearray()
        pos = offset
        while pos < end:
            node, within = divmod(pos, fmt.NODE_SIZE)
            stop = min(end, (node + 1) * fmt.NODE_SIZE)
            entry = self._overlay.get(node)
            if entry is not None:
                out += self._journal.read_node(entry)[within : within + stop - pos]
            else:
                # Coalesce a run of nodes that are not in the journal into one read.
                while stop < end and (stop // fmt.NODE_SIZE) not in self._overlay:
                    stop = min(end, stop + fmt.NODE_SIZE)
                out += pread_all(self.fd, stop - pos, pos, self.name)
            pos = stop
        return bytes(out)

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        if offset % fmt.NODE_SIZE or len(view) % fmt.NODE_SIZE:
            raise ConfigError("journaled stores take whole nodes at node offsets")
        first = offset // fmt.NODE_SIZE
        count = len(view) // fmt.NODE_SIZE
        # Nodes past the committed length go to the object file in one run.
        direct_from = max(0, min(count, -(-(self._committed - offset) // fmt.NODE_SIZE)))
        for number in range(direct_from):
            piece = view[number * fmt.NODE_SIZE : (number + 1) * fmt.NODE_SIZE]
            entry = self._overlay.get(first + number)
            if entry is None:
                self._overlay[first + number] = self._journal.append(
                    self.object_id, first + number, piece
                )
            else:
                self._journal.rewrite(entry, piece)
        if direct_from < count:
            start = offset + direct_from * fmt.NODE_SIZE
            pwrite_all(self.fd, view[direct_from * fmt.NODE_SIZE :], start, self.name)
            self.direct_dirty = True
        self._length = max(self._length, offset + len(view))

    def truncate(self, length: int) -> None:
        self._length = length
        for node in [n for n in self._overlay if n * fmt.NODE_SIZE >= length]:
            del self._overlay[node]
        # Cut only what is past the committed length; the committed bytes stay until commit.
        try:
            os.ftruncate(self.fd, max(length, self._committed))
        except OSError as exc:
            raise _fail("truncate", self.name, exc) from exc
        self.direct_dirty = True

    def sync(self) -> None:
        return None

    def sync_direct(self) -> None:
        """Make the writes that went straight to the object file durable.

        Raises:
            ConfigError: the sync fails.
        """
        if self.direct_dirty:
            fsync(self.fd, self.name)
            self.direct_dirty = False

    def mark_committed(self) -> None:
        """The journal was applied: the object file now holds everything."""
        self._overlay.clear()
        self._committed = self._length
