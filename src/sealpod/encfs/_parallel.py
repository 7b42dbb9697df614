"""Whole-file encryption and decryption on several cores.

The format seals every 4 KiB node under its own key, so Python pays a fixed cost per node; with
one MHT group (96 data nodes, contiguous on disk) per task, worker processes read their
plaintext or ciphertext straight from the files and write their result straight to the output,
and only the 3 KiB of MHT entries per group crosses a pipe. The parent process keeps what
needs the whole tree: the MHT nodes (sealed bottom-up at the end, or opened top-down first),
the metadata node and every check of the metadata.

Workers are forked when the process has a single thread (cheap, and safe then) and come from a
fork server otherwise.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sealpod.encfs import _format as fmt
from sealpod.encfs._store import FileNodeStore, NodeStore
from sealpod.errors import ConfigError, VerificationError

_NODE = fmt.NODE_SIZE
Progress = Callable[[int], None]
_GROUP_NODES = fmt.DATA_ENTRIES_PER_MHT
_GROUP_BYTES = _GROUP_NODES * _NODE

#: Below this many plaintext bytes the single-process path is faster (pool start-up).
PARALLEL_THRESHOLD = 16 << 20


def default_workers(size: int) -> int:
    """How many processes to use for a file of ``size`` plaintext bytes.

    One below :data:`PARALLEL_THRESHOLD`; otherwise the CPUs this process may use that are not
    busy with other work (1-minute load average, counting this process), at most 8.
    """
    if size < PARALLEL_THRESHOLD:
        return 1
    cpus = len(os.sched_getaffinity(0))
    busy_elsewhere = max(0.0, os.getloadavg()[0] - 1.0)
    return max(1, min(8, round(cpus - busy_elsewhere), size // (4 << 20)))


def _pool(workers: int, tasks: int) -> ProcessPoolExecutor:
    method = "fork" if threading.active_count() == 1 else "forkserver"
    context = multiprocessing.get_context(method)
    return ProcessPoolExecutor(max(1, min(workers, tasks)), mp_context=context)


def _pread_full(fd: int, size: int, offset: int) -> bytes:  # parent side: small reads
    chunks = []
    while size > 0:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _pwrite_full(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


# -- workers (run in child processes; return plain values, never raise our errors) ----------


_buffers: dict[str, bytearray] = {}


def _buffer(name: str) -> memoryview:
    """A per-process reusable group buffer (avoids an mmap/munmap per task)."""
    buffer = _buffers.get(name)
    if buffer is None:
        buffer = _buffers[name] = bytearray(_GROUP_BYTES)
    return memoryview(buffer)


def _preadv_full(fd: int, view: memoryview, offset: int) -> int:
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if not got:
            break
        done += got
    return done


def _pwritev_full(fd: int, views: list[memoryview], offset: int) -> None:
    written = os.pwritev(fd, views, offset)
    total = sum(len(v) for v in views)
    if written < total:  # rare for regular files: finish piece by piece
        joined = memoryview(b"".join(views))
        _pwrite_full(fd, joined[written:], offset + written)


def _encrypt_group(task: tuple[str, str, int, int, int]) -> bytes | str:
    source, target, index, offset, length = task
    aesgcm, iv, node = AESGCM, fmt.ZERO_IV, _NODE
    view = _buffer("plain")
    src = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        got = _preadv_full(src, view[:length], offset)
    finally:
        os.close(src)
    if got != length:
        return "source changed while it was being encrypted"
    count = -(-length // node)
    view[length : count * node] = bytes(count * node - length)
    keys = os.urandom(fmt.KEY_SIZE * count)
    sealed: list[memoryview] = []
    entries: list[bytes] = []
    for number in range(count):
        node_key = keys[number * 16 : number * 16 + 16]
        ciphertext = aesgcm(node_key).encrypt(iv, view[number * node : (number + 1) * node], None)
        sealed.append(memoryview(ciphertext)[:node])
        entries.append(node_key)
        entries.append(ciphertext[node:])
    dst = os.open(target, os.O_WRONLY | os.O_CLOEXEC)
    try:
        _pwritev_full(dst, sealed, node * (fmt.mht_node_physical(index) + 1))
    finally:
        os.close(dst)
    return b"".join(entries)


def _decrypt_group(task: tuple[str, str, int, bytes, int, int]) -> int:
    """Returns -1 on success, else the number of the data node that failed."""
    source, target, index, entries, plain_offset, plain_length = task
    aesgcm, iv, node = AESGCM, fmt.ZERO_IV, _NODE
    count = len(entries) // fmt.ENTRY_SIZE
    raw = _buffer("sealed")
    src = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        got = _preadv_full(src, raw[: node * count], node * (fmt.mht_node_physical(index) + 1))
    finally:
        os.close(src)
    if got != node * count:
        return index * _GROUP_NODES
    out = _buffer("plain")
    join = b"".join
    for number in range(count):
        entry = number * 32
        start = number * node
        try:
            aesgcm(entries[entry : entry + 16]).decrypt_into(
                iv,
                join((raw[start : start + node], entries[entry + 16 : entry + 32])),
                None,
                out[start : start + node],
            )
        except InvalidTag:
            return index * _GROUP_NODES + number
    dst = os.open(target, os.O_WRONLY | os.O_CLOEXEC)
    try:
        _pwrite_full(dst, out[:plain_length], plain_offset)
    finally:
        os.close(dst)
    return -1


# -- parent side ----------------------------------------------------------------------------


def encrypt_parallel(
    key: bytes,
    path: bytes,
    source: str,
    target: str,
    target_fd: int,
    workers: int,
    progress: Progress | None = None,
) -> tuple[int, bytes]:
    """Encrypt ``source`` into the (empty, open) ``target``; returns (size, root MAC).

    Raises:
        ConfigError: the source cannot be read or changed size meanwhile.
    """
    try:
        src = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(src).st_size
            data = _pread_full(src, fmt.METADATA_DATA_SIZE, 0)
        finally:
            os.close(src)
    except OSError as exc:
        raise ConfigError(f"cannot read {source}: {exc.strerror or exc}") from exc
    if len(data) != min(size, fmt.METADATA_DATA_SIZE):
        raise ConfigError(f"{source} changed while it was being encrypted")
    data += bytes(fmt.METADATA_DATA_SIZE - len(data))
    groups = fmt.mht_node_count(size)
    if progress is not None:
        progress(min(size, fmt.METADATA_DATA_SIZE))

    def tasks() -> Iterator[tuple[str, str, int, int, int]]:
        for index in range(groups):
            offset = fmt.mht_node_start(index)
            yield source, target, index, offset, min(_GROUP_BYTES, size - offset)

    mhts: list[bytearray] = []
    try:
        with _pool(workers, groups) as pool:
            for result in pool.map(_encrypt_group, tasks(), chunksize=4):
                if isinstance(result, str):
                    raise ConfigError(f"{source}: {result}")
                mht = bytearray(_NODE)
                mht[: len(result)] = result
                mhts.append(mht)
                if progress is not None:
                    progress(min(_GROUP_BYTES, size - fmt.mht_node_start(len(mhts) - 1)))
    except OSError as exc:
        raise ConfigError(f"cannot encrypt {source}: {exc.strerror or exc}") from exc
    store = FileNodeStore(target_fd, name=target)
    tag = seal_tree(key, path, size, bytes(data), mhts, store)
    return size, tag


def seal_tree(
    key: bytes, path: bytes, size: int, data: bytes, mhts: list[bytearray], store: NodeStore
) -> bytes:
    """Seal MHT nodes (whose data entries are filled) bottom-up and write the metadata node."""
    root_key, root_tag = fmt.ZERO_KEY, fmt.ZERO_TAG
    keys = os.urandom(fmt.KEY_SIZE * len(mhts))
    for index in range(len(mhts) - 1, -1, -1):
        node_key = keys[index * 16 : index * 16 + 16]
        ciphertext = AESGCM(node_key).encrypt(fmt.ZERO_IV, bytes(mhts[index]), None)
        mhts[index] = bytearray()
        store.write(_NODE * fmt.mht_node_physical(index), memoryview(ciphertext)[:_NODE])
        if index:
            parent, entry = fmt.mht_parent(index)
            mhts[parent][entry : entry + fmt.ENTRY_SIZE] = node_key + ciphertext[_NODE:]
        else:
            root_key, root_tag = node_key, ciphertext[_NODE:]
    metadata, tag = fmt.seal_metadata(key, path, size, root_key, root_tag, data)
    store.write(0, metadata)
    return tag


def decrypt_parallel(
    key: bytes,
    expected_path: bytes | None,
    source: str,
    source_fd: int,
    target: str,
    target_fd: int,
    workers: int,
    progress: Progress | None = None,
) -> fmt.Metadata:
    """Authenticate and decrypt ``source`` into the open ``target``.

    Raises:
        VerificationError: any check fails (see :func:`sealpod.encfs.decrypt_bytes`).
        ConfigError: I/O failure.
    """
    store = FileNodeStore(source_fd, name=source)
    length = store.length()
    fmt.check_host_length(length)
    meta = fmt.open_metadata(store.read(0, _NODE), key, expected_path, length)
    size = meta.size
    out = FileNodeStore(target_fd, name=target)
    out.truncate(size)
    out.write(0, meta.data[: min(size, fmt.METADATA_DATA_SIZE)])
    if progress is not None:
        progress(min(size, fmt.METADATA_DATA_SIZE))
    data_nodes = fmt.data_node_count(size)
    groups = fmt.mht_node_count(size)
    # Open every MHT node first (top-down: a parent comes before its children).
    children: dict[int, bytes] = {}
    entries: list[bytes] = []
    for index in range(groups):
        if index == 0:
            mht_key, mht_tag = meta.root_key, meta.root_tag
        else:
            parent, entry = fmt.mht_parent(index)
            entry -= fmt.METADATA_DATA_SIZE
            mht_key = children[parent][entry : entry + 16]
            mht_tag = children[parent][entry + 16 : entry + 32]
        raw = store.read(_NODE * fmt.mht_node_physical(index), _NODE)
        if len(raw) != _NODE:
            raise VerificationError("encfs_truncated", f"MHT node {index} is missing")
        try:
            mht = AESGCM(mht_key).decrypt(fmt.ZERO_IV, raw + mht_tag, None)
        except InvalidTag:
            raise VerificationError(
                "encfs_bad_mac", f"MHT node {index} failed authentication"
            ) from None
        if index * fmt.CHILD_ENTRIES_PER_MHT + 1 < groups:
            children[index] = mht[fmt.METADATA_DATA_SIZE :]
        count = min(_GROUP_NODES, data_nodes - index * _GROUP_NODES)
        entries.append(mht[: count * fmt.ENTRY_SIZE])
    children.clear()

    def tasks() -> Iterator[tuple[str, str, int, bytes, int, int]]:
        for index, group_entries in enumerate(entries):
            offset = fmt.mht_node_start(index)
            yield source, target, index, group_entries, offset, min(_GROUP_BYTES, size - offset)

    try:
        with _pool(workers, groups) as pool:
            for index, failed in enumerate(pool.map(_decrypt_group, tasks(), chunksize=4)):
                if failed >= 0:
                    pool.shutdown(cancel_futures=True)
                    raise VerificationError(
                        "encfs_bad_mac", f"data node {failed} failed authentication"
                    )
                if progress is not None:
                    progress(min(_GROUP_BYTES, size - fmt.mht_node_start(index)))
    except OSError as exc:
        raise ConfigError(f"cannot decrypt {source}: {exc.strerror or exc}") from exc
    return meta
