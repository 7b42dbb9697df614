"""Authenticated reads of a committed encrypted file, tuned for large sequential requests.

:class:`~sealpod.encfs.EncryptedFile` serves reads node by node through its LRU cache. A mounted
volume mostly reads whole runs of nodes (the shield passes up to 1 MiB per request), so this
reader fetches each run of contiguous data nodes (one MHT group, up to 96 nodes) with one host
read and decrypts every node straight into the output buffer (``AESGCM.decrypt_into``).

It checks exactly what the file reader checks, in the same order: the metadata node against
the key, the bound path and the expected root MAC; every MHT node against the key and tag in its
parent, from the root down; every data node against its entry in its MHT node, before any of
its bytes reach the caller. A failed check raises and returns nothing. Only authenticated MHT
nodes are cached.
"""

from __future__ import annotations

import hmac
from typing import Protocol, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sealpod.encfs import _format as fmt
from sealpod.encfs import _read_worker
from sealpod.encfs._store import NodeStore
from sealpod.errors import VerificationError

_NODE = fmt.NODE_SIZE
_ENTRY = fmt.ENTRY_SIZE
_KEY = fmt.KEY_SIZE
_GROUP = fmt.DATA_ENTRIES_PER_MHT
_META = fmt.METADATA_DATA_SIZE
_MAX_CACHED_MHT = 2048
#: Nodes in one read from which its later groups go to the helper process (256 KiB and up).
_SHARE_FROM = 64
_HELPER_SHARE = 55  # percent


@runtime_checkable
class _DirectStore(Protocol):
    def direct_fd(self) -> int | None:
        """The descriptor reads go straight to (no journal overlay), or None."""
        ...


class TreeReader:
    """Read-only view of the file in ``store`` as of its current (committed) metadata."""

    def __init__(
        self, store: NodeStore, key: bytes, *, path: bytes, expected_root_mac: bytes
    ) -> None:
        """Open and check the metadata (and root MHT node).

        Raises:
            VerificationError: as :class:`~sealpod.encfs.EncryptedFile`, including
                ``encfs_root_mac_mismatch``.
        """
        self._store = store
        length = store.length()
        meta = fmt.open_metadata(store.read(0, _NODE), fmt.check_key(key), path, length)
        if not hmac.compare_digest(meta.tag, expected_root_mac):
            raise VerificationError(
                "encfs_root_mac_mismatch", "file is not the expected version (root MAC differs)"
            )
        self.size = meta.size
        self._data = meta.data
        self._mht: dict[int, bytes] = {}
        if self.size > _META:
            raw = store.read(_NODE * fmt.mht_node_physical(0), _NODE)
            self._root = self._open(raw, meta.root_key, meta.root_tag, "root MHT node")

    @staticmethod
    def _open(raw: bytes | memoryview, key: bytes, tag: bytes, what: str) -> bytes:
        if len(raw) != _NODE:
            raise VerificationError("encfs_truncated", f"{what} is missing from the file")
        try:
            return AESGCM(key).decrypt(fmt.ZERO_IV, bytes(raw) + tag, None)
        except InvalidTag:
            raise VerificationError("encfs_bad_mac", f"{what} failed authentication") from None

    def _mht_node(self, index: int) -> bytes:
        if index == 0:
            return self._root
        node = self._mht.get(index)
        if node is not None:
            return node
        parent_index, entry = fmt.mht_parent(index)
        parent = self._mht_node(parent_index)
        raw = self._store.read(_NODE * fmt.mht_node_physical(index), _NODE)
        node = self._open(
            raw,
            parent[entry : entry + _KEY],
            parent[entry + _KEY : entry + _ENTRY],
            f"MHT node {index}",
        )
        if len(self._mht) >= _MAX_CACHED_MHT:
            self._mht.clear()
        self._mht[index] = node
        return node

    def read(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` (fewer at the end of the file).

        Raises:
            VerificationError: a node fails authentication or is missing.
        """
        end = min(offset + size, self.size)
        if offset >= end:
            return b""
        out = bytearray(end - offset)
        view = memoryview(out)
        try:
            pos = offset
            if pos < _META:
                stop = min(end, _META)
                view[: stop - offset] = self._data[pos:stop]
                pos = stop
            groups = []
            while pos < end:
                first = (pos - _META) // _NODE
                last = min((end - 1 - _META) // _NODE, (first // _GROUP + 1) * _GROUP - 1)
                stop = min(end, _META + (last + 1) * _NODE)
                groups.append((pos, stop))
                pos = stop
            self._read_groups(groups, view, offset)
        except BaseException:
            # decrypt_into may have written unauthenticated bytes: never hand them out (wiped
            # in place: views of the buffer may still be alive in the traceback).
            out[:] = bytes(len(out))
            raise
        view.release()
        # The bytearray itself (bytes-like): copying a 1 MiB answer costs as much as a tenth of
        # decrypting it.
        return out  # type: ignore[return-value]

    def _read_groups(self, groups: list[tuple[int, int]], view: memoryview, offset: int) -> None:
        """Fill ``view`` for each (start, stop) of ``groups`` (one MHT group each); with a
        helper process up and enough nodes, the later groups' whole nodes are decrypted there
        while this thread does the rest."""
        worker = None
        if not groups:
            return
        fd = self._store.direct_fd() if isinstance(self._store, _DirectStore) else None
        total = (groups[-1][1] - groups[0][0]) // _NODE
        if fd is not None and total >= _SHARE_FROM and len(groups) > 1:
            worker = _read_worker.helper()
        handed: list[tuple[int, int, int]] = []  # (group, first whole node, nodes)
        requests: list[_read_worker.GroupRequest] = []
        if worker is not None and worker.available() and fd is not None:
            runs = []
            nodes = 0
            # Whole groups, the largest first, up to about half the nodes: a node costs the
            # helper more (the hand-over), the reader has the reply to send (measured best at
            # 55% through the shield; bench_volume_mount).
            share = total * _HELPER_SHARE // 100
            candidates = sorted(
                range(1, len(groups)),
                key=lambda n: -(groups[n][1] - groups[n][0]),
            )
            for number in candidates:
                start, stop = groups[number]
                whole = self._whole_nodes(start, stop)
                if whole is None or nodes + whole[1] > min(share, _read_worker.MAX_NODES):
                    continue
                first, count = whole
                self._edges(start, stop, view, offset, first, count)
                mht = self._mht_node(first // _GROUP)
                at = (first % _GROUP) * _ENTRY
                o = _META + first * _NODE - offset
                runs.append(
                    (
                        _NODE * fmt.data_node_physical(first),
                        memoryview(mht)[at : at + count * _ENTRY],
                        view[o : o + count * _NODE],
                    )
                )
                handed.append((number, first, count))
                nodes += count
            if runs:
                try:
                    requests = worker.send(fd, runs)
                except OSError:
                    handed = []
        done = {number for number, _, _ in handed}
        try:
            for number, (start, stop) in enumerate(groups):
                if number not in done:
                    self._read_group(start, stop, view, offset)
        except BaseException:
            if requests and worker is not None:
                worker.collect(requests)  # its answers must still be taken (and it freed)
            raise
        if not requests or worker is None:
            return
        for (number, first, _), status in zip(handed, worker.collect(requests), strict=True):
            if status == _read_worker.UNREADABLE:
                self._read_group(*groups[number], view, offset)
            elif status >= 0:
                raise VerificationError(
                    "encfs_bad_mac", f"data node {first + status} failed authentication"
                )

    @staticmethod
    def _whole_nodes(start: int, stop: int) -> tuple[int, int] | None:
        """(first, count) of the whole nodes in [start, stop), or None if there are none."""
        first = (start - _META + _NODE - 1) // _NODE
        end = (stop - _META) // _NODE
        return (first, end - first) if end > first else None

    def _edges(
        self, start: int, stop: int, view: memoryview, offset: int, first: int, count: int
    ) -> None:
        """Decrypt the cut nodes at either edge of [start, stop) (outside the whole nodes
        ``first`` .. ``first + count - 1``) into ``view``."""
        for index in {(start - _META) // _NODE, (stop - 1 - _META) // _NODE}:
            if first <= index < first + count:
                continue
            raw = self._store.read(_NODE * fmt.data_node_physical(index), _NODE)
            if len(raw) != _NODE:
                raise VerificationError("encfs_truncated", f"data node {index} is missing")
            plain = self._node(raw, 0, self._mht_node(index // _GROUP), index)
            node_start = _META + index * _NODE
            lo, hi = max(start, node_start), min(stop, node_start + _NODE)
            view[lo - offset : hi - offset] = plain[lo - node_start : hi - node_start]

    def _read_group(self, pos: int, end: int, view: memoryview, offset: int) -> int:
        """Fill ``view`` (which starts at file ``offset``) from ``pos`` to ``end`` or to the end
        of the MHT group holding ``pos``; return where it stopped."""
        first = (pos - _META) // _NODE
        mht_index = first // _GROUP
        last = min((end - 1 - _META) // _NODE, (mht_index + 1) * _GROUP - 1)
        count = last - first + 1
        raw = self._store.read(_NODE * fmt.data_node_physical(first), _NODE * count)
        if len(raw) != _NODE * count:
            raise VerificationError("encfs_truncated", f"data node {first}+ is missing")
        mht = self._mht_node(mht_index)
        stop = min(end, _META + (last + 1) * _NODE)
        # Whole nodes inside [pos, stop) are decrypted in place; a cut node at either edge
        # goes through a temporary.
        full_first = first if (pos - _META) % _NODE == 0 else first + 1
        full_last = last if (stop - _META) % _NODE == 0 else last - 1
        for index in {first, last}:
            if not full_first <= index <= full_last:
                start = _META + index * _NODE
                plain = self._node(raw, index - first, mht, index)
                lo, hi = max(pos, start), min(stop, start + _NODE)
                view[lo - offset : hi - offset] = plain[lo - start : hi - start]
        if full_first <= full_last:
            at = (full_first % _GROUP) * _ENTRY
            r = (full_first - first) * _NODE
            o = _META + full_first * _NODE - offset
            iv = fmt.ZERO_IV
            try:
                for _ in range(full_last - full_first + 1):
                    AESGCM(mht[at : at + _KEY]).decrypt_into(
                        iv,
                        raw[r : r + _NODE] + mht[at + _KEY : at + _ENTRY],
                        None,
                        view[o : o + _NODE],
                    )
                    at += _ENTRY
                    r += _NODE
                    o += _NODE
            except InvalidTag:
                index = first + r // _NODE
                raise VerificationError(
                    "encfs_bad_mac", f"data node {index} failed authentication"
                ) from None
        return stop

    @staticmethod
    def _node(raw: bytes, number: int, mht: bytes, index: int) -> bytes:
        at = (index % _GROUP) * _ENTRY
        sealed = raw[number * _NODE : (number + 1) * _NODE] + mht[at + _KEY : at + _ENTRY]
        try:
            return AESGCM(mht[at : at + _KEY]).decrypt(fmt.ZERO_IV, sealed, None)
        except InvalidTag:
            raise VerificationError(
                "encfs_bad_mac", f"data node {index} failed authentication"
            ) from None
