"""Hashing the files of a root filesystem on all cores.

The work is split into batches of similar byte counts and handed to a pool of threads, one
per core; each opens every file of its batch with ``O_NOFOLLOW`` and streams it through
SHA-256 in 1 MiB blocks read into one reused buffer. Threads run in parallel here because
both ``readv(2)`` and ``hashlib``'s update of more than 2 KiB release the GIL; a process pool
measured no faster, and forking a process that has other threads (rich's refresh thread, a
server's) can deadlock the child. Small trees are hashed inline: a pool costs more than it
saves below a few MiB.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

from sealpod.errors import ConfigError

_logger = logging.getLogger(__name__)

_BLOCK = 1 << 20
#: Below this many bytes in total the tree is hashed in this process.
_INLINE_LIMIT = 8 << 20
#: Bytes per batch given to a worker (plus a per-file cost so tiny files batch together).
_BATCH_BYTES = 16 << 20
_FILE_COST = 16 << 10

#: Called with (bytes hashed so far, bytes in total).
HashProgress = Callable[[int, int], None]


def _hash_one(path: bytes, buffer: bytearray, view: memoryview) -> tuple[str, int]:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        digest = hashlib.sha256()
        size = 0
        while True:
            count = os.readv(fd, [buffer])
            if not count:
                break
            digest.update(view[:count])
            size += count
    finally:
        os.close(fd)
    return digest.hexdigest(), size


def _hash_batch(paths: Sequence[bytes]) -> list[tuple[str, int]]:
    buffer = bytearray(_BLOCK)
    view = memoryview(buffer)
    return [_hash_one(path, buffer, view) for path in paths]


def _batches(sizes: Sequence[int]) -> list[list[int]]:
    batches: list[list[int]] = []
    current: list[int] = []
    weight = 0
    for index, size in enumerate(sizes):
        current.append(index)
        weight += size + _FILE_COST
        if weight >= _BATCH_BYTES:
            batches.append(current)
            current, weight = [], 0
    if current:
        batches.append(current)
    return batches


def hash_files(
    paths: Sequence[str | Path],
    sizes: Sequence[int],
    *,
    workers: int | None = None,
    progress: HashProgress | None = None,
) -> list[tuple[str, int]]:
    """SHA-256 (hex) and byte count of each file, in the order given.

    Args:
        paths: regular files (opened with ``O_NOFOLLOW``: a symbolic link fails).
        sizes: their expected sizes (to balance the work and report progress).
        workers: threads to use (default: every core).
        progress: called with (bytes done, bytes total) as batches finish.

    Raises:
        ConfigError: a file cannot be read.
    """
    if len(paths) != len(sizes):
        raise ValueError("paths and sizes differ in length")
    raw = [os.fsencode(p) for p in paths]
    total = sum(sizes)
    count = workers if workers is not None else (os.cpu_count() or 1)
    try:
        if count <= 1 or total < _INLINE_LIMIT or len(raw) < 2:
            results = _hash_batch(raw)
            if progress is not None:
                progress(total, total)
            return results
        return _hash_in_pool(raw, sizes, count, total, progress)
    except OSError as exc:
        name = os.fsdecode(exc.filename) if exc.filename is not None else "a file"
        raise ConfigError(f"cannot hash {name}: {exc.strerror or exc}") from exc


def _hash_in_pool(
    raw: list[bytes],
    sizes: Sequence[int],
    workers: int,
    total: int,
    progress: HashProgress | None,
) -> list[tuple[str, int]]:
    results: list[tuple[str, int] | None] = [None] * len(raw)
    batches = _batches(sizes)
    done_bytes = 0
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sealpod-hash") as pool:
        pending: dict[Future[list[tuple[str, int]]], list[int]] = {
            pool.submit(_hash_batch, [raw[i] for i in batch]): batch for batch in batches
        }
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                batch = pending.pop(future)
                for index, result in zip(batch, future.result(), strict=True):
                    results[index] = result
                    done_bytes += sizes[index]
                if progress is not None:
                    progress(done_bytes, total)
    _logger.debug("hashed %d files (%d bytes) with %d threads", len(raw), total, workers)
    return [r for r in results if r is not None]
