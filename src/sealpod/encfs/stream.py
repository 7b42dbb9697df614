"""Whole-file encryption and decryption, streamed in large blocks.

These helpers do not go through :class:`~sealpod.encfs.EncryptedFile`: they walk the file in
physical order one MHT group (an MHT node and its 96 data nodes, 388 KiB) at a time, with one
``read``/``write`` per group and one ``os.urandom`` call per group for the node keys.

Large regular files are shared among worker processes by :func:`encrypt_file` and
:func:`decrypt_file` (see ``_parallel``); the in-process path below serves the rest.

Encryption keeps the decrypted MHT nodes in memory until the end (an MHT node is finished only
when its child MHT nodes, which come later in the file, are): about 1% of the plaintext size.
Decryption keeps the child-entry quarter of the MHT nodes that have child MHT nodes (under
0.01%). Files written to a path appear atomically (temporary file, ``fsync``, rename): a reader
never sees half an output, and a failed decryption leaves no plaintext behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sealpod.encfs import _format as fmt
from sealpod.encfs._parallel import (
    Progress,
    decrypt_parallel,
    default_workers,
    encrypt_parallel,
    seal_tree,
)
from sealpod.encfs._store import FileNodeStore, MemoryNodeStore, NodeStore
from sealpod.errors import ConfigError, VerificationError

_logger = logging.getLogger(__name__)

_NODE = fmt.NODE_SIZE
_GROUP_NODES = fmt.DATA_ENTRIES_PER_MHT
_GROUP_BYTES = _GROUP_NODES * _NODE

Emit = Callable[[memoryview], None]
Fill = Callable[[memoryview], int]


@dataclass(frozen=True)
class EncryptedFileInfo:
    """What a whole-file operation learned about an (authenticated) encrypted file."""

    path: str
    size: int
    root_mac: bytes
    host_size: int
    plaintext_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (MAC in hex)."""
        data: dict[str, Any] = {
            "bound_path": self.path,
            "size": self.size,
            "host_size": self.host_size,
            "root_mac": self.root_mac.hex(),
        }
        if self.plaintext_sha256 is not None:
            data["plaintext_sha256"] = self.plaintext_sha256
        return data


# -- cores --------------------------------------------------------------------------------


def _encrypt_stream(key: bytes, path: bytes, fill: Fill, store: NodeStore) -> EncryptedFileInfo:
    aesgcm, iv, node = AESGCM, fmt.ZERO_IV, _NODE
    data = bytearray(fmt.METADATA_DATA_SIZE)
    size = fill(memoryview(data))
    mhts: list[bytearray] = []
    if size == fmt.METADATA_DATA_SIZE:
        plain = bytearray(_GROUP_BYTES)
        plain_view = memoryview(plain)
        sealed = bytearray(_GROUP_BYTES)
        sealed_view = memoryview(sealed)
        while True:
            got = fill(plain_view)
            if not got:
                break
            count = -(-got // node)
            if got % node:
                plain[got : count * node] = bytes(count * node - got)
            keys = os.urandom(fmt.KEY_SIZE * count)
            entries: list[bytes] = []
            offset = 0
            for number in range(count):
                node_key = keys[number * 16 : number * 16 + 16]
                ciphertext = aesgcm(node_key).encrypt(iv, plain_view[offset : offset + node], None)
                sealed_view[offset : offset + node] = memoryview(ciphertext)[:node]
                entries.append(node_key)
                entries.append(ciphertext[node:])
                offset += node
            mht = bytearray(node)
            mht[: fmt.ENTRY_SIZE * count] = b"".join(entries)
            store.write(node * (fmt.mht_node_physical(len(mhts)) + 1), sealed_view[:offset])
            mhts.append(mht)
            size += got
            if got < _GROUP_BYTES:
                break
    tag = seal_tree(key, path, size, bytes(data), mhts, store)
    return EncryptedFileInfo(
        path=os.fsdecode(path), size=size, root_mac=tag, host_size=fmt.host_size(size)
    )


def _decrypt_stream(
    key: bytes, expected_path: bytes | None, store: NodeStore, emit: Emit
) -> EncryptedFileInfo:
    aesgcm, iv, node, join = AESGCM, fmt.ZERO_IV, _NODE, b"".join
    length = store.length()
    fmt.check_host_length(length)
    meta = fmt.open_metadata(store.read(0, node), key, expected_path, length)
    size = meta.size
    emit(memoryview(meta.data)[: min(size, fmt.METADATA_DATA_SIZE)])
    data_nodes = fmt.data_node_count(size)
    children: dict[int, bytes] = {}
    out = bytearray(_GROUP_BYTES)
    out_view = memoryview(out)
    groups = fmt.mht_node_count(size)
    for index in range(groups):
        first = index * _GROUP_NODES
        count = min(_GROUP_NODES, data_nodes - first)
        start = fmt.mht_node_physical(index)
        raw = store.read(node * start, node * (count + 1))
        if len(raw) != node * (count + 1):
            raise VerificationError("encfs_truncated", f"MHT group {index} is incomplete")
        if index == 0:
            mht_key, mht_tag = meta.root_key, meta.root_tag
        else:
            parent, entry = fmt.mht_parent(index)
            entry -= fmt.METADATA_DATA_SIZE
            parent_children = children[parent]
            mht_key = parent_children[entry : entry + 16]
            mht_tag = parent_children[entry + 16 : entry + 32]
            if (index - 1) % fmt.CHILD_ENTRIES_PER_MHT == fmt.CHILD_ENTRIES_PER_MHT - 1:
                del children[parent]
        raw_view = memoryview(raw)
        try:
            mht = aesgcm(mht_key).decrypt(iv, raw_view[:node].tobytes() + mht_tag, None)
        except InvalidTag:
            raise VerificationError(
                "encfs_bad_mac", f"MHT node {index} failed authentication"
            ) from None
        if index * fmt.CHILD_ENTRIES_PER_MHT + 1 < groups:  # it has child MHT nodes
            children[index] = mht[fmt.METADATA_DATA_SIZE :]
        offset = 0
        for number in range(count):
            entry = number * 32
            try:
                aesgcm(mht[entry : entry + 16]).decrypt_into(
                    iv,
                    join(
                        (
                            raw_view[node + offset : node + offset + node],
                            mht[entry + 16 : entry + 32],
                        )
                    ),
                    None,
                    out_view[offset : offset + node],
                )
            except InvalidTag:
                raise VerificationError(
                    "encfs_bad_mac", f"data node {first + number} failed authentication"
                ) from None
            offset += node
        remaining = size - fmt.data_node_start(first)
        emit(out_view[: min(offset, remaining)])
    return EncryptedFileInfo(
        path=os.fsdecode(meta.path), size=size, root_mac=meta.tag, host_size=length
    )


# -- bytes --------------------------------------------------------------------------------


def _filler(source: io.RawIOBase | io.BufferedIOBase, progress: Progress | None = None) -> Fill:
    def fill(view: memoryview) -> int:
        total = 0
        while total < len(view):
            got = source.readinto(view[total:])
            if not got:
                break
            total += got
        if progress is not None:
            progress(total)
        return total

    return fill


def encrypt_bytes(key: bytes, path: str | bytes, data: bytes | bytearray | memoryview) -> bytes:
    """Encrypt ``data`` as a Gramine encrypted file bound to ``path``; returns the file.

    Raises:
        ConfigError: bad key or path.
    """
    raw_key, raw_path = fmt.check_key(key), fmt.encode_path(path)
    store = MemoryNodeStore()
    _encrypt_stream(raw_key, raw_path, _filler(io.BytesIO(data)), store)
    return bytes(store.buffer)


def decrypt_bytes(
    key: bytes, path: str | bytes | None, blob: bytes | bytearray | memoryview
) -> bytes:
    """Authenticate and decrypt a whole encrypted file held in memory.

    ``path`` is the bound path the file must carry; None accepts any (like
    ``gramine-sgx-pf-crypt decrypt`` without ``-V``).

    Raises:
        ConfigError: bad key.
        VerificationError: ``encfs_bad_header``, ``encfs_unsupported_version``,
            ``encfs_bad_mac``, ``encfs_bad_metadata``, ``encfs_path_mismatch``,
            ``encfs_truncated``.
    """
    raw_key = fmt.check_key(key)
    expected = None if path is None else os.fsencode(path)
    out = bytearray()
    _decrypt_stream(raw_key, expected, MemoryNodeStore(blob), out.extend)
    return bytes(out)


# -- files --------------------------------------------------------------------------------


@contextlib.contextmanager
def _atomic_output(target: Path, mode: int) -> Iterator[tuple[int, Path]]:
    """A descriptor on a temporary file beside ``target``, renamed over it on success."""
    tmp = target.with_name(f".{target.name}.{os.urandom(4).hex()}.tmp")
    try:
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except OSError as exc:
        raise ConfigError(f"cannot write {target}: {exc.strerror or exc}") from exc
    try:
        yield fd, tmp
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, target)
    except OSError as exc:
        raise ConfigError(f"cannot write {target}: {exc.strerror or exc}") from exc
    finally:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _open_input(source: str | os.PathLike[str]) -> io.FileIO:
    try:
        return open(source, "rb", buffering=0)
    except OSError as exc:
        raise ConfigError(f"cannot read {source}: {exc.strerror or exc}") from exc


def encrypt_file(
    key: bytes,
    source: str | os.PathLike[str],
    target: str | os.PathLike[str],
    *,
    path: str | bytes,
    mode: int = 0o644,
    workers: int | None = None,
    progress: Progress | None = None,
) -> EncryptedFileInfo:
    """Encrypt the plaintext file ``source`` into ``target`` (atomically), bound to ``path``.

    ``workers`` processes share a large regular file (default: by size and CPU count; 1 keeps
    everything in this process). ``progress`` is called with each count of plaintext bytes
    done.

    Raises:
        ConfigError: bad key or path, unreadable source, unwritable target.
    """
    raw_key, raw_path = fmt.check_key(key), fmt.encode_path(path)
    with _open_input(source) as plain, _atomic_output(Path(target), mode) as (fd, tmp):
        status = os.fstat(plain.fileno())
        count = workers if workers is not None else default_workers(status.st_size)
        if count > 1 and stat.S_ISREG(status.st_mode):
            size, tag = encrypt_parallel(
                raw_key, raw_path, str(source), str(tmp), fd, count, progress
            )
            info = EncryptedFileInfo(
                path=os.fsdecode(raw_path), size=size, root_mac=tag, host_size=fmt.host_size(size)
            )
        else:
            try:
                info = _encrypt_stream(
                    raw_key, raw_path, _filler(plain, progress), FileNodeStore(fd)
                )
            except OSError as exc:
                raise ConfigError(f"cannot read {source}: {exc.strerror or exc}") from exc
    _logger.info("encrypted %s -> %s (%d bytes)", source, target, info.size)
    return info


def decrypt_file(
    key: bytes,
    source: str | os.PathLike[str],
    target: str | os.PathLike[str],
    *,
    path: str | bytes | None,
    mode: int = 0o600,
    workers: int | None = None,
    progress: Progress | None = None,
) -> EncryptedFileInfo:
    """Authenticate and decrypt ``source`` into ``target`` (atomically; nothing on failure).

    ``path`` is the bound path to require; None accepts any (it is in the result).
    ``workers`` and ``progress`` as for :func:`encrypt_file`.

    Raises:
        ConfigError: bad key, unreadable source, unwritable target.
        VerificationError: see :func:`decrypt_bytes`.
    """
    raw_key = fmt.check_key(key)
    expected = None if path is None else os.fsencode(path)
    with _open_input(source) as sealed, _atomic_output(Path(target), mode) as (fd, tmp):
        status = os.fstat(sealed.fileno())
        count = workers if workers is not None else default_workers(status.st_size)
        if count > 1 and stat.S_ISREG(status.st_mode):
            meta = decrypt_parallel(
                raw_key, expected, str(source), sealed.fileno(), str(tmp), fd, count, progress
            )
            info = EncryptedFileInfo(
                path=os.fsdecode(meta.path),
                size=meta.size,
                root_mac=meta.tag,
                host_size=status.st_size,
            )
        else:
            out = FileNodeStore(fd, name=str(target))
            position = 0

            def emit(view: memoryview) -> None:
                nonlocal position
                out.write(position, view)
                position += len(view)
                if progress is not None:
                    progress(len(view))

            info = _decrypt_stream(
                raw_key, expected, FileNodeStore(sealed.fileno(), name=str(source)), emit
            )
    _logger.info("decrypted %s -> %s (%d bytes)", source, target, info.size)
    return info


def verify_file(
    key: bytes,
    source: str | os.PathLike[str],
    *,
    path: str | bytes | None,
    progress: Progress | None = None,
) -> EncryptedFileInfo:
    """Authenticate every node of ``source`` without writing plaintext anywhere.

    The result carries the plaintext's SHA-256. ``progress`` as for :func:`encrypt_file`.

    Raises:
        ConfigError: bad key, unreadable source.
        VerificationError: see :func:`decrypt_bytes`.
    """
    raw_key = fmt.check_key(key)
    expected = None if path is None else os.fsencode(path)
    digest = hashlib.sha256()

    def emit(view: memoryview) -> None:
        digest.update(view)
        if progress is not None:
            progress(len(view))

    with _open_input(source) as sealed:
        info = _decrypt_stream(
            raw_key, expected, FileNodeStore(sealed.fileno(), name=str(source)), emit
        )
    return _with_digest(info, digest)


def _with_digest(info: EncryptedFileInfo, digest: Any) -> EncryptedFileInfo:
    return EncryptedFileInfo(
        path=info.path,
        size=info.size,
        root_mac=info.root_mac,
        host_size=info.host_size,
        plaintext_sha256=digest.hexdigest(),
    )
