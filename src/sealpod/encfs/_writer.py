"""Fast sequential writing of a new encrypted file (what ``cp``, ``dd`` and ``>`` do).

:class:`~sealpod.encfs.EncryptedFile` handles any write through its node cache. A file that is
only appended to needs much less: every data node is sealed once, as soon as it is full, under
a fresh random key, straight into a run buffer (``AESGCM.encrypt_into``) that goes to the store
with one write per MHT group. The MHT nodes stay in memory (one 4 KiB node per 384 KiB of data)
and are sealed bottom-up, with the metadata node last, by :meth:`AppendWriter.flush`. The bytes
it produces are the Gramine format exactly as :class:`~sealpod.encfs.EncryptedFile` writes it,
so either can continue a file the other wrote.

The last, partial data node is kept in memory and sealed (zero-padded) at each flush; a later
append rewrites it under a new key. Nothing here is read back from the store, so nothing
unauthenticated is ever trusted.
"""

from __future__ import annotations

import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sealpod.encfs import _format as fmt
from sealpod.encfs._store import NodeStore

_NODE = fmt.NODE_SIZE
_KEY = fmt.KEY_SIZE
_TAG = fmt.TAG_SIZE
_ENTRY = fmt.ENTRY_SIZE
_GROUP = fmt.DATA_ENTRIES_PER_MHT
_META = fmt.METADATA_DATA_SIZE
#: Data nodes sealed per batch (one host write per MHT group within a batch).
_BATCH = 256


class AppendWriter:
    """Writes a new, empty encrypted file in ``store`` by appending only."""

    def __init__(self, store: NodeStore, key: bytes, *, path: str | bytes) -> None:
        """Start an empty file bound to ``path``.

        Raises:
            ConfigError: bad key or path.
        """
        self._store = store
        self._key = fmt.check_key(key)
        self._path = fmt.encode_path(path)
        self.size = 0
        self._meta = bytearray(_META)
        self._tail = bytearray()  # plaintext of the last, partial data node
        self._mht: list[bytearray] = []  # plaintext MHT nodes by index
        self.dirty = True

    @property
    def full_nodes(self) -> int:
        """Data nodes sealed so far (all but the partial tail)."""
        return 0 if self.size <= _META else (self.size - _META) // _NODE

    def _entry(self, index: int) -> memoryview:
        group = index // _GROUP
        while len(self._mht) <= group:
            self._mht.append(bytearray(_NODE))
        at = (index % _GROUP) * _ENTRY
        return memoryview(self._mht[group])[at : at + _ENTRY]

    def append(self, data: bytes | bytearray | memoryview) -> None:
        """Add ``data`` at the end.

        Raises:
            ConfigError: the store fails.
        """
        view = memoryview(data).cast("B")
        if not view:
            return
        self.dirty = True
        if self.size < _META:
            take = min(len(view), _META - self.size)
            self._meta[self.size : self.size + take] = view[:take]
            self.size += take
            view = view[take:]
        if self._tail and view:
            take = min(len(view), _NODE - len(self._tail))
            self._tail += view[:take]
            view = view[take:]
            if len(self._tail) == _NODE:
                first = self.full_nodes
                self.size += take
                self._seal([memoryview(self._tail)], first)
                self._tail = bytearray()
            else:
                self.size += take
                return
        whole = len(view) // _NODE
        done = 0
        while done < whole:
            count = min(_BATCH, whole - done)
            first = self.full_nodes
            chunks = [view[(done + j) * _NODE : (done + j + 1) * _NODE] for j in range(count)]
            self._seal(chunks, first)
            self.size += count * _NODE
            done += count
        rest = view[whole * _NODE :]
        if rest:
            self._tail = bytearray(rest)
            self.size += len(rest)

    def _seal(self, chunks: list[memoryview], first: int) -> None:
        """Seal full data nodes ``first``.. and write them, one run per MHT group."""
        keys = os.urandom(_KEY * len(chunks))
        start = 0
        while start < len(chunks):
            index = first + start
            count = min(len(chunks) - start, _GROUP - index % _GROUP)
            run = bytearray(count * _NODE + _TAG)
            with memoryview(run) as run_view:
                for j in range(count):
                    key = keys[(start + j) * _KEY : (start + j + 1) * _KEY]
                    # ciphertext || tag lands at j * NODE; the tag spills into the next
                    # node's place, so take it before that node is sealed.
                    end = (j + 1) * _NODE
                    AESGCM(key).encrypt_into(
                        fmt.ZERO_IV, chunks[start + j], None, run_view[j * _NODE : end + _TAG]
                    )
                    self._entry(index + j)[:] = key + run[end : end + _TAG]
                self._store.write(_NODE * fmt.data_node_physical(index), run_view[: count * _NODE])
            start += count

    def flush(self) -> bytes:
        """Seal the partial node, the MHT nodes and the metadata; return the root MAC.

        The file in the store is then complete and consistent (not yet durable: the caller
        syncs the store).

        Raises:
            ConfigError: the store fails.
        """
        if self._tail:
            index = self.full_nodes
            key = os.urandom(_KEY)
            sealed = AESGCM(key).encrypt(
                fmt.ZERO_IV, bytes(self._tail) + bytes(_NODE - len(self._tail)), None
            )
            self._entry(index)[:] = key + sealed[_NODE:]
            self._store.write(_NODE * fmt.data_node_physical(index), sealed[:_NODE])
        root_key, root_tag = fmt.ZERO_KEY, fmt.ZERO_TAG
        groups = fmt.mht_node_count(self.size)
        # Children have higher indices than their parents: seal from the last one down.
        for index in range(groups - 1, -1, -1):
            key = os.urandom(_KEY)
            sealed = AESGCM(key).encrypt(fmt.ZERO_IV, bytes(self._mht[index]), None)
            if index == 0:
                root_key, root_tag = key, sealed[_NODE:]
            else:
                parent, at = fmt.mht_parent(index)
                self._mht[parent][at : at + _ENTRY] = key + sealed[_NODE:]
            self._store.write(_NODE * fmt.mht_node_physical(index), sealed[:_NODE])
        node0, tag = fmt.seal_metadata(
            self._key, self._path, self.size, root_key, root_tag, bytes(self._meta)
        )
        self._store.write(0, node0)
        self.dirty = False
        return tag
