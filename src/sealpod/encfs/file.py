"""Random access to one Gramine encrypted file.

Invariants:

* Nothing is returned that has not been authenticated: every node read from the host is
  checked against the tag in its parent before its bytes are used, up to the metadata node,
  whose tag (the *root MAC*) therefore covers the whole tree. After a failed check the handle
  refuses every further operation (as Gramine's ``PF_STATUS_CORRUPTED``).
* Every (re-)encryption of a node or of the metadata draws a fresh random key (and a fresh KDF
  nonce): AES-GCM runs with a zero IV, so a key must never be used twice.
* Decrypted nodes live in an LRU cache. Dirty nodes are never evicted; when only dirty nodes
  are left over the cache limit, the handle commits (as upstream does).

Commit order and crashes. :meth:`EncryptedFile.flush` re-encrypts the dirty data nodes, then
the dirty MHT nodes bottom-up, then the root MHT node; writes them in physical order; makes
them durable (``fsync``, a barrier); only then writes the metadata node, the single place that
refers to the new tree; makes it durable; and finally cuts the host file if it shrank. So:

* a crash before the metadata write leaves the old metadata, whose tags do not match the nodes
  that were already overwritten: reading those nodes fails with ``encfs_bad_mac`` (untouched
  nodes still read correctly); the file is damaged but never yields wrong plaintext;
* a torn metadata write fails its tag: the whole file is refused (``encfs_bad_mac``);
* a crash after the metadata write but before the host file was cut leaves surplus whole
  nodes at the end, which readers ignore (as Gramine does).

Like Gramine without its recovery journal, a crash mid-flush can lose the file; it cannot make
it lie.
"""

from __future__ import annotations

import hmac
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sealpod.encfs import _format as fmt
from sealpod.encfs._store import FileNodeStore, MemoryNodeStore, NodeStore
from sealpod.errors import ConfigError, VerificationError

_logger = logging.getLogger(__name__)

_DATA = "data"
_MHT = "mht"
_DEFAULT_CACHE_NODES = 256
#: Sequential reads fetch and open this many nodes (128 KiB) with one host read.
_READ_AHEAD_NODES = 32


@dataclass(eq=False, repr=False)
class _Node:
    kind: str
    index: int
    physical: int
    plain: bytearray
    dirty: bool = False


class EncryptedFile:
    """One encrypted file, opened for reading or reading and writing.

    Use :meth:`open` (an existing host file), :meth:`create` (a new one) or
    :meth:`from_store`; close it (or leave its ``with`` block normally) to commit; leaving the
    block by an exception drops the uncommitted writes instead. A handle is not thread-safe:
    callers that share one (a FUSE server) serialise their calls. Only one writable handle
    may exist per host file.
    """

    def __init__(
        self,
        store: NodeStore,
        key: bytes,
        *,
        path: str | bytes | None,
        create: bool = False,
        writable: bool = False,
        cache_nodes: int = _DEFAULT_CACHE_NODES,
        expected_root_mac: bytes | None = None,
        owned_fd: int | None = None,
    ) -> None:
        """Open (or with ``create`` initialise) the encrypted file held by ``store``.

        ``path`` is the bound path: written into a new file, compared byte for byte with the
        one in an existing file; None (opening only) accepts any bound path, which is then in
        :attr:`path`. ``expected_root_mac`` refuses a file whose root MAC differs (a rolled-back
        or replaced file). ``owned_fd`` is closed with the handle.

        Raises:
            ConfigError: bad key, bound path, cache size; ``create`` without a path.
            VerificationError: the file fails a check (see :func:`sealpod.encfs.verify_file`
                for the reasons), or ``encfs_root_mac_mismatch``.
        """
        self._key = fmt.check_key(key)
        if cache_nodes < 4:
            raise ConfigError("cache_nodes must be at least 4")
        self._store = store
        self._writable = writable or create
        self._cache_nodes = cache_nodes
        self._cache: OrderedDict[int, _Node] = OrderedDict()
        self._dirty_nodes = 0  # dirty nodes in the cache (the root is not in it)
        self._last_index = -2  # last data node used, to detect sequential access
        self._failure: VerificationError | None = None
        self._closed = False
        self._fds = [] if owned_fd is None else [owned_fd]
        self._root = _Node(_MHT, 0, fmt.mht_node_physical(0), bytearray(fmt.NODE_SIZE))
        if create:
            if path is None:
                raise ConfigError("a new encrypted file needs a bound path")
            self._path = fmt.encode_path(path)
            self._size = 0
            self._data = bytearray(fmt.METADATA_DATA_SIZE)
            self._root_key, self._root_tag = fmt.ZERO_KEY, fmt.ZERO_TAG
            self._meta_dirty = True
            self._root_mac = b""
            self._commit(durable=False)
            return
        expected = None if path is None else os.fsencode(path)
        length = store.length()
        fmt.check_host_length(length)
        meta = fmt.open_metadata(store.read(0, fmt.NODE_SIZE), self._key, expected, length)
        if expected_root_mac is not None and not hmac.compare_digest(meta.tag, expected_root_mac):
            raise VerificationError(
                "encfs_root_mac_mismatch", "file is not the expected version (root MAC differs)"
            )
        self._path = meta.path
        self._size = meta.size
        self._data = bytearray(meta.data)
        self._root_key, self._root_tag = meta.root_key, meta.root_tag
        self._root_mac = meta.tag
        # Commit rewrites a legacy (1.x) header as 2.0.
        self._meta_dirty = meta.major_version != fmt.MAJOR_VERSION and self._writable
        if self._size > fmt.METADATA_DATA_SIZE:
            raw = store.read(fmt.NODE_SIZE * self._root.physical, fmt.NODE_SIZE)
            self._root.plain = self._unseal(raw, self._root_key, self._root_tag, "root MHT node")

    # -- constructors ---------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        host_path: str | os.PathLike[str],
        key: bytes,
        *,
        path: str | bytes | None,
        writable: bool = False,
        cache_nodes: int = _DEFAULT_CACHE_NODES,
        expected_root_mac: bytes | None = None,
    ) -> EncryptedFile:
        """Open the existing encrypted file at ``host_path``.

        Raises:
            ConfigError: the host file cannot be opened, bad key.
            VerificationError: the file fails a check.
        """
        fd = _open_fd(host_path, os.O_RDWR if writable else os.O_RDONLY)
        try:
            return cls(
                FileNodeStore(fd, name=str(host_path)),
                key,
                path=path,
                writable=writable,
                cache_nodes=cache_nodes,
                expected_root_mac=expected_root_mac,
                owned_fd=fd,
            )
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def create(
        cls,
        host_path: str | os.PathLike[str],
        key: bytes,
        *,
        path: str | bytes,
        overwrite: bool = False,
        cache_nodes: int = _DEFAULT_CACHE_NODES,
    ) -> EncryptedFile:
        """Create an empty encrypted file at ``host_path`` bound to ``path``.

        Raises:
            ConfigError: the host file exists (unless ``overwrite``) or cannot be created.
        """
        flags = os.O_RDWR | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
        fd = _open_fd(host_path, flags)
        try:
            return cls(
                FileNodeStore(fd, name=str(host_path)),
                key,
                path=path,
                create=True,
                cache_nodes=cache_nodes,
                owned_fd=fd,
            )
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def from_store(
        cls,
        store: NodeStore,
        key: bytes,
        *,
        path: str | bytes | None,
        create: bool = False,
        writable: bool = False,
        cache_nodes: int = _DEFAULT_CACHE_NODES,
        expected_root_mac: bytes | None = None,
    ) -> EncryptedFile:
        """Open or create an encrypted file on any :class:`NodeStore` (e.g. in memory).

        Raises:
            ConfigError: bad arguments.
            VerificationError: the file fails a check.
        """
        return cls(
            store,
            key,
            path=path,
            create=create,
            writable=writable,
            cache_nodes=cache_nodes,
            expected_root_mac=expected_root_mac,
        )

    # -- properties -----------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Plaintext size in bytes (including unflushed writes)."""
        return self._size

    @property
    def path(self) -> str:
        """The bound path (decoded like a filesystem path)."""
        return os.fsdecode(self._path)

    @property
    def root_mac(self) -> bytes:
        """The metadata node's GCM tag as of the last commit or open.

        It authenticates the metadata record, which holds the root MHT node's key and tag, so
        it covers the whole Merkle tree: any change to any node changes it. Call :meth:`flush`
        first to include pending writes.
        """
        return self._root_mac

    @property
    def dirty(self) -> bool:
        """Whether there are writes not yet committed."""
        return self._meta_dirty or self._root.dirty

    @property
    def writable(self) -> bool:
        """Whether the handle accepts writes."""
        return self._writable

    def __repr__(self) -> str:
        return f"EncryptedFile(path={self.path!r}, size={self._size}, writable={self._writable})"

    def __enter__(self) -> EncryptedFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self._release()

    # -- public operations ----------------------------------------------------------------

    def read(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` (fewer at the end of the file).

        Raises:
            ConfigError: negative offset or size, closed handle.
            VerificationError: a node fails authentication (``encfs_bad_mac``).
        """
        self._check_usable()
        if offset < 0 or size < 0:
            raise ConfigError("offset and size must not be negative")
        end = min(offset + size, self._size)
        if offset >= end:
            return b""
        out = bytearray()
        pos = offset
        if pos < fmt.METADATA_DATA_SIZE:
            stop = min(end, fmt.METADATA_DATA_SIZE)
            out += self._data[pos:stop]
            pos = stop
        while pos < end:
            index = (pos - fmt.METADATA_DATA_SIZE) // fmt.NODE_SIZE
            node = self._data_node(index)
            start = fmt.data_node_start(index)
            stop = min(end, start + fmt.NODE_SIZE)
            out += node.plain[pos - start : stop - start]
            pos = stop
            self._trim_cache()
        return bytes(out)

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> int:
        """Write ``data`` at ``offset``; a gap past the end is filled with zeros.

        Returns the number of bytes written (all of them).

        Raises:
            ConfigError: read-only or closed handle, negative offset.
            VerificationError: a node that must be updated fails authentication.
        """
        self._check_writable()
        if offset < 0:
            raise ConfigError("offset must not be negative")
        view = memoryview(data).cast("B")
        if not view:
            return 0
        if offset > self._size:
            self._write_at(self._size, None, offset - self._size)
        self._write_at(offset, view, len(view))
        return len(view)

    def append(self, data: bytes | bytearray | memoryview) -> int:
        """Write ``data`` at the end; returns the offset it was written at.

        Raises:
            ConfigError: read-only or closed handle.
            VerificationError: the last node fails authentication.
        """
        offset = self._size
        self.write(offset, data)
        return offset

    def truncate(self, size: int) -> None:
        """Shrink the file to ``size`` bytes or extend it with zeros.

        Bytes cut from the last remaining node are zeroed; whole nodes past the end are
        dropped and cut from the host file at the next commit (after the metadata is written).

        Raises:
            ConfigError: read-only or closed handle, negative size.
            VerificationError: the new last node fails authentication.
        """
        self._check_writable()
        if size < 0:
            raise ConfigError("size must not be negative")
        if size > self._size:
            self._write_at(self._size, None, size - self._size)
            return
        if size == self._size:
            return
        old = self._size
        # Zero the cut part of the node that stays last, so a later extension reads zeros
        # and the cut bytes do not linger in the ciphertext.
        if size < fmt.METADATA_DATA_SIZE:
            self._data[size:] = bytes(fmt.METADATA_DATA_SIZE - size)
        elif (size - fmt.METADATA_DATA_SIZE) % fmt.NODE_SIZE:
            index = (size - fmt.METADATA_DATA_SIZE) // fmt.NODE_SIZE
            node = self._data_node(index)
            cut = size - fmt.data_node_start(index)
            node.plain[cut:] = bytes(fmt.NODE_SIZE - cut)
            self._mark_dirty(node)
        self._size = size
        self._meta_dirty = True
        for physical, node in list(self._cache.items()):
            start = (
                fmt.data_node_start(node.index)
                if node.kind == _DATA
                else fmt.mht_node_start(node.index)
            )
            if start >= size:
                del self._cache[physical]
        self._dirty_nodes = sum(1 for node in self._cache.values() if node.dirty)
        if size <= fmt.METADATA_DATA_SIZE:
            self._root.plain = bytearray(fmt.NODE_SIZE)
            self._root.dirty = False
        _logger.debug("truncated %d -> %d bytes", old, size)

    def flush(self) -> bytes:
        """Commit pending writes durably (see the module docstring for the order).

        Returns the new root MAC.

        Raises:
            ConfigError: closed handle, I/O failure.
        """
        self._check_usable()
        if self._writable:
            self._commit(durable=True)
        return self._root_mac

    def close(self) -> None:
        """Commit (if writable) and release the host file. Closing twice is harmless.

        Raises:
            ConfigError: I/O failure while committing (the host file is released anyway).
        """
        if self._closed:
            return
        try:
            if self._writable and self._failure is None:
                self._commit(durable=True)
        finally:
            self._release()

    # -- internals ------------------------------------------------------------------------

    def _release(self) -> None:
        self._closed = True
        self._cache.clear()
        self._data = bytearray()
        self._root.plain = bytearray()
        for fd in self._fds:
            os.close(fd)
        self._fds = []

    def _check_usable(self) -> None:
        if self._closed:
            raise ConfigError("encrypted file is closed")
        if self._failure is not None:
            raise self._failure

    def _check_writable(self) -> None:
        self._check_usable()
        if not self._writable:
            raise ConfigError("encrypted file is open read-only")

    def _unseal(self, raw: bytes, key: bytes, tag: bytes, what: str) -> bytearray:
        if len(raw) != fmt.NODE_SIZE:
            failure = VerificationError("encfs_truncated", f"{what} is missing from the file")
        else:
            try:
                return bytearray(AESGCM(key).decrypt(fmt.ZERO_IV, raw + tag, None))
            except InvalidTag:
                failure = VerificationError("encfs_bad_mac", f"{what} failed authentication")
        self._failure = failure
        raise failure

    def _mht_node(self, index: int) -> _Node:
        if index == 0:
            return self._root
        physical = fmt.mht_node_physical(index)
        node = self._cache.get(physical)
        if node is not None:
            self._cache.move_to_end(physical)
            return node
        parent_index, entry = fmt.mht_parent(index)
        parent = self._mht_node(parent_index)
        if fmt.mht_node_start(index) >= self._size:
            plain = bytearray(fmt.NODE_SIZE)  # past the end: a new node
        else:
            raw = self._store.read(fmt.NODE_SIZE * physical, fmt.NODE_SIZE)
            key = bytes(parent.plain[entry : entry + fmt.KEY_SIZE])
            tag = bytes(parent.plain[entry + fmt.KEY_SIZE : entry + fmt.ENTRY_SIZE])
            plain = self._unseal(raw, key, tag, f"MHT node {index}")
        node = _Node(_MHT, index, physical, plain)
        self._cache[physical] = node
        return node

    def _data_node(self, index: int) -> _Node:
        physical = fmt.data_node_physical(index)
        sequential = index == self._last_index + 1
        self._last_index = index
        node = self._cache.get(physical)
        if node is not None:
            self._cache.move_to_end(physical)
            return node
        mht_index, entry = fmt.data_parent(index)
        parent = self._mht_node(mht_index)
        if fmt.data_node_start(index) >= self._size:
            node = _Node(_DATA, index, physical, bytearray(fmt.NODE_SIZE))
            self._cache[physical] = node
            return node
        count = self._read_ahead(index, mht_index) if sequential else 1
        raw = self._store.read(fmt.NODE_SIZE * physical, fmt.NODE_SIZE * count)
        view = memoryview(raw)
        for ahead in range(count):
            piece = view[ahead * fmt.NODE_SIZE : (ahead + 1) * fmt.NODE_SIZE].tobytes()
            at = entry + ahead * fmt.ENTRY_SIZE
            key = bytes(parent.plain[at : at + fmt.KEY_SIZE])
            tag = bytes(parent.plain[at + fmt.KEY_SIZE : at + fmt.ENTRY_SIZE])
            if ahead == 0:
                plain = self._unseal(piece, key, tag, f"data node {index}")
            else:
                # Read ahead: a node that fails here is reported when it is actually read.
                try:
                    plain = bytearray(AESGCM(key).decrypt(fmt.ZERO_IV, piece + tag, None))
                except InvalidTag:
                    break
            self._cache[physical + ahead] = _Node(_DATA, index + ahead, physical + ahead, plain)
        return self._cache[physical]

    def _read_ahead(self, index: int, mht_index: int) -> int:
        """How many nodes from ``index`` to read at once on a sequential access."""
        limit = min(
            _READ_AHEAD_NODES,
            self._cache_nodes // 4,
            (mht_index + 1) * fmt.DATA_ENTRIES_PER_MHT - index,  # same MHT group: contiguous
            fmt.data_node_count(self._size) - index,
        )
        count = 1
        while count < limit and fmt.data_node_physical(index + count) not in self._cache:
            count += 1
        return count

    def _mark_dirty(self, node: _Node) -> None:
        if node.dirty:
            return
        node.dirty = True
        self._dirty_nodes += 1
        index = node.index
        parent = fmt.data_parent(index)[0] if node.kind == _DATA else None
        while parent is not None:
            mht = self._mht_node(parent)
            if mht.dirty:
                break
            mht.dirty = True
            if mht.index:
                self._dirty_nodes += 1
            parent = fmt.mht_parent(mht.index)[0] if mht.index else None
        self._meta_dirty = True

    def _write_at(self, offset: int, view: memoryview | None, length: int) -> None:
        """Write ``view`` (or ``length`` zeros) at ``offset`` <= size."""
        pos, done = offset, 0
        if pos < fmt.METADATA_DATA_SIZE:
            count = min(length, fmt.METADATA_DATA_SIZE - pos)
            self._data[pos : pos + count] = bytes(count) if view is None else view[:count]
            pos += count
            done = count
            self._size = max(self._size, pos)
            self._meta_dirty = True
        while done < length:
            index = (pos - fmt.METADATA_DATA_SIZE) // fmt.NODE_SIZE
            node = self._data_node(index)
            start = pos - fmt.data_node_start(index)
            count = min(length - done, fmt.NODE_SIZE - start)
            if view is None:
                node.plain[start : start + count] = bytes(count)
            else:
                node.plain[start : start + count] = view[done : done + count]
            self._mark_dirty(node)
            pos += count
            done += count
            self._size = max(self._size, pos)
            self._trim_cache()

    def _trim_cache(self) -> None:
        if len(self._cache) <= self._cache_nodes:
            return
        if self._dirty_nodes > self._cache_nodes // 2:
            # Mostly dirty nodes: commit (not durably) so they become evictable.
            self._commit(durable=False)
        cache = self._cache
        while len(cache) > self._cache_nodes:
            physical, node = next(iter(cache.items()))
            if node.dirty:
                cache.move_to_end(physical)  # never evicted; at most half the cache
            else:
                del cache[physical]

    def _commit(self, *, durable: bool) -> None:
        if not self.dirty:
            return
        dirty = [node for node in self._cache.values() if node.dirty]
        data_nodes = [node for node in dirty if node.kind == _DATA]
        mht_nodes = sorted((n for n in dirty if n.kind == _MHT), key=lambda n: -n.index)
        keys = os.urandom(fmt.KEY_SIZE * (len(dirty) + 1))
        sealed: list[tuple[int, memoryview]] = []
        for number, node in enumerate(data_nodes + mht_nodes):
            key = keys[number * fmt.KEY_SIZE : (number + 1) * fmt.KEY_SIZE]
            ciphertext = AESGCM(key).encrypt(fmt.ZERO_IV, node.plain, None)
            if node.kind == _DATA:
                parent_index, entry = fmt.data_parent(node.index)
            else:
                parent_index, entry = fmt.mht_parent(node.index)
            parent = (
                self._root
                if parent_index == 0
                else self._cache[fmt.mht_node_physical(parent_index)]
            )
            parent.plain[entry : entry + fmt.ENTRY_SIZE] = key + ciphertext[fmt.NODE_SIZE :]
            sealed.append((node.physical, memoryview(ciphertext)[: fmt.NODE_SIZE]))
        if self._size > fmt.METADATA_DATA_SIZE:
            if self._root.dirty:
                key = keys[-fmt.KEY_SIZE :]
                ciphertext = AESGCM(key).encrypt(fmt.ZERO_IV, self._root.plain, None)
                self._root_key, self._root_tag = key, ciphertext[fmt.NODE_SIZE :]
                sealed.append((self._root.physical, memoryview(ciphertext)[: fmt.NODE_SIZE]))
        else:
            self._root_key, self._root_tag = fmt.ZERO_KEY, fmt.ZERO_TAG
        sealed.sort(key=lambda item: item[0])
        _write_runs(self._store, sealed)
        if durable and sealed:
            self._store.sync()  # barrier: the nodes are on disk before the metadata names them
        node0, tag = fmt.seal_metadata(
            self._key, self._path, self._size, self._root_key, self._root_tag, bytes(self._data)
        )
        self._store.write(0, node0)
        if durable:
            self._store.sync()
        needed = fmt.host_size(self._size)
        if self._store.length() > needed:
            # Only after the metadata no longer names the nodes that go.
            self._store.truncate(needed)
            if durable:
                self._store.sync()
        for node in dirty:
            node.dirty = False
        self._dirty_nodes = 0
        self._root.dirty = False
        self._meta_dirty = False
        self._root_mac = tag


def _write_runs(store: NodeStore, sealed: list[tuple[int, memoryview]]) -> None:
    """Write (physical, ciphertext) pairs, sorted, coalescing contiguous nodes."""
    run: list[memoryview] = []
    first = previous = -2
    for physical, ciphertext in sealed:
        if physical != previous + 1 and run:
            store.write(first * fmt.NODE_SIZE, b"".join(run))
            run = []
        if not run:
            first = physical
        run.append(ciphertext)
        previous = physical
    if run:
        store.write(first * fmt.NODE_SIZE, b"".join(run))


def _open_fd(host_path: str | os.PathLike[str], flags: int) -> int:
    try:
        return os.open(host_path, flags | getattr(os, "O_CLOEXEC", 0), 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot open {Path(host_path)}: {exc.strerror or exc}") from exc


def memory_file(key: bytes, *, path: str | bytes) -> tuple[EncryptedFile, MemoryNodeStore]:
    """A new, empty encrypted file in memory and its store (for tests and small blobs).

    Raises:
        ConfigError: bad key or path.
    """
    store = MemoryNodeStore()
    return EncryptedFile.from_store(store, key, path=path, create=True), store
