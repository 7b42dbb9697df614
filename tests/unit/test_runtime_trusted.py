"""Trusted-file verification without FUSE: whole-file hash, per-chunk checks, the stat-key cache."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sealpod.errors import VerificationError
from sealpod.runtime import _trusted
from sealpod.runtime._trusted import (
    CHUNK_SIZE,
    TrustedFileModifiedError,
    TrustedReader,
    VerificationCache,
    verify_descriptor,
)

# 2.5 chunks of random bytes; the expected hash is computed here, independently of the code.
_CONTENT = os.urandom(CHUNK_SIZE * 5 // 2)
_SHA = hashlib.sha256(_CONTENT).hexdigest()


@pytest.fixture
def trusted_file(tmp_path: Path) -> Path:
    path = tmp_path / "lib.so"
    path.write_bytes(_CONTENT)
    return path


@pytest.fixture
def fd(trusted_file: Path) -> Iterator[int]:
    descriptor = os.open(trusted_file, os.O_RDONLY)
    yield descriptor
    try:
        os.close(descriptor)
    except OSError:
        pass


def _flip_byte_keep_times(path: Path, offset: int) -> None:
    """The attacker's in-place edit: one byte, same size, timestamps put back."""
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(offset)
        old = f.read(1)
        f.seek(offset)
        f.write(bytes([old[0] ^ 0x01]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_matching_file_is_verified_and_served_exactly(fd: int) -> None:
    content = verify_descriptor(fd, _SHA, path="/lib.so")
    reader = TrustedReader(fd, content, path="/lib.so")
    got = b"".join(reader.read(off, 300_000) for off in range(0, len(_CONTENT), 300_000))
    assert got == _CONTENT
    # A read straddling two chunk boundaries.
    assert (
        reader.read(CHUNK_SIZE - 10, CHUNK_SIZE + 20)
        == _CONTENT[CHUNK_SIZE - 10 : 2 * CHUNK_SIZE + 10]
    )
    assert reader.read(len(_CONTENT), 10) == b""


def test_one_flipped_byte_before_open_is_refused(trusted_file: Path) -> None:
    _flip_byte_keep_times(trusted_file, 12345)
    descriptor = os.open(trusted_file, os.O_RDONLY)
    try:
        with pytest.raises(VerificationError) as info:
            verify_descriptor(descriptor, _SHA, path="/lib.so")
    finally:
        os.close(descriptor)
    assert info.value.reason == "trusted_file_mismatch"


def test_in_place_edit_after_verification_is_never_served(trusted_file: Path, fd: int) -> None:
    content = verify_descriptor(fd, _SHA, path="/lib.so")
    reader = TrustedReader(fd, content, path="/lib.so")
    assert reader.read(0, 100) == _CONTENT[:100]
    offset = 2 * CHUNK_SIZE + 77
    _flip_byte_keep_times(trusted_file, offset)
    with pytest.raises(TrustedFileModifiedError):
        reader.read(offset - 5, 10)
    # The untouched chunk is still served, from verified bytes.
    assert reader.read(CHUNK_SIZE, 10) == _CONTENT[CHUNK_SIZE : CHUNK_SIZE + 10]


def test_path_replaced_after_open_keeps_serving_the_verified_inode(
    trusted_file: Path, fd: int
) -> None:
    content = verify_descriptor(fd, _SHA, path="/lib.so")
    reader = TrustedReader(fd, content, path="/lib.so")
    evil = trusted_file.with_name("evil")
    evil.write_bytes(b"\xcc" * len(_CONTENT))
    os.replace(evil, trusted_file)
    assert reader.read(CHUNK_SIZE * 2, 64) == _CONTENT[CHUNK_SIZE * 2 : CHUNK_SIZE * 2 + 64]


def test_truncated_file_after_verification_is_refused(trusted_file: Path, fd: int) -> None:
    reader = TrustedReader(fd, verify_descriptor(fd, _SHA, path="/lib.so"), path="/lib.so")
    os.truncate(trusted_file, CHUNK_SIZE + 5)
    with pytest.raises(TrustedFileModifiedError):
        reader.read(CHUNK_SIZE, 100)


def test_cache_skips_rehash_only_for_the_same_stat_key(trusted_file: Path, fd: int) -> None:
    cache = VerificationCache()
    first = cache.verify(fd, _SHA, path="/lib.so")
    assert cache.verify(fd, _SHA, path="/lib.so") is first
    # Any change of the stat key (here mtime) forces a fresh whole-file check.
    os.utime(trusted_file, ns=(1, 1))
    assert cache.verify(fd, _SHA, path="/lib.so") is not first
    _flip_byte_keep_times(trusted_file, 3)
    os.utime(trusted_file, ns=(2, 2))
    with pytest.raises(TrustedFileModifiedError):
        cache.verify(fd, _SHA, path="/lib.so")


def test_non_regular_file_is_refused(tmp_path: Path) -> None:
    descriptor = os.open(tmp_path, os.O_RDONLY)
    try:
        with pytest.raises(TrustedFileModifiedError):
            verify_descriptor(descriptor, hashlib.sha256(b"").hexdigest(), path="/dir")
    finally:
        os.close(descriptor)


def test_empty_file_verifies(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    descriptor = os.open(path, os.O_RDONLY)
    try:
        content = verify_descriptor(descriptor, hashlib.sha256(b"").hexdigest(), path="/empty")
        assert TrustedReader(descriptor, content, path="/empty").read(0, 10) == b""
    finally:
        os.close(descriptor)


# -- chunks kept from the verification at open (start-up: no second read) -------------------


def test_kept_chunks_are_served_while_the_file_is_unchanged(fd: int) -> None:
    content, chunks = VerificationCache().verify_keeping(
        fd, _SHA, path="/lib.so", keep_limit=len(_CONTENT)
    )
    assert b"".join(chunks) == _CONTENT
    reader = TrustedReader(fd, content, path="/lib.so", verified_chunks=chunks)
    assert reader.held_bytes == len(_CONTENT)
    assert reader.read(0, 100) == _CONTENT[:100]
    assert reader.read(50, 100) == _CONTENT[50:150]
    assert reader.read(CHUNK_SIZE, 10) == _CONTENT[CHUNK_SIZE : CHUNK_SIZE + 10]
    assert reader.read(0, 10) == _CONTENT[:10]
    assert reader.held_bytes == len(_CONTENT)  # kept until close or a change


def test_in_place_edit_after_open_is_refused_despite_kept_chunks(
    trusted_file: Path, fd: int
) -> None:
    content, chunks = VerificationCache().verify_keeping(
        fd, _SHA, path="/lib.so", keep_limit=len(_CONTENT)
    )
    reader = TrustedReader(fd, content, path="/lib.so", verified_chunks=chunks)
    _flip_byte_keep_times(trusted_file, 10)  # chunk 0, after the verification (ctime moves)
    with pytest.raises(TrustedFileModifiedError):
        reader.read(0, 100)
    assert reader.held_bytes == 0


def test_kept_chunks_are_dropped_on_a_change_and_reread_against_their_tags(
    trusted_file: Path, fd: int
) -> None:
    content, chunks = VerificationCache().verify_keeping(
        fd, _SHA, path="/lib.so", keep_limit=len(_CONTENT)
    )
    reader = TrustedReader(fd, content, path="/lib.so", verified_chunks=chunks)
    assert reader.read(0, 10) == _CONTENT[:10]
    assert reader.read(CHUNK_SIZE, 10) == _CONTENT[CHUNK_SIZE : CHUNK_SIZE + 10]
    _flip_byte_keep_times(trusted_file, 5)
    with pytest.raises(TrustedFileModifiedError):
        reader.read(0, 10)  # the file changed: chunk 0 is read again and checked
    assert reader.held_bytes == 0


def test_no_chunks_are_kept_above_the_limit_or_from_the_cache(fd: int) -> None:
    cache = VerificationCache()
    _, chunks = cache.verify_keeping(fd, _SHA, path="/lib.so", keep_limit=len(_CONTENT) - 1)
    assert chunks == ()
    _, again = cache.verify_keeping(fd, _SHA, path="/lib.so", keep_limit=len(_CONTENT))
    assert again == ()  # a cached verification read nothing now


def test_kept_chunks_of_another_file_are_refused(fd: int) -> None:
    content = verify_descriptor(fd, _SHA, path="/lib.so")
    with pytest.raises(ValueError, match="verified_chunks"):
        TrustedReader(fd, content, path="/lib.so", verified_chunks=(b"x",))


def test_tampered_file_is_refused_when_keeping_chunks(trusted_file: Path) -> None:
    _flip_byte_keep_times(trusted_file, CHUNK_SIZE + 1)
    descriptor = os.open(trusted_file, os.O_RDONLY)
    try:
        with pytest.raises(TrustedFileModifiedError):
            VerificationCache().verify_keeping(
                descriptor, _SHA, path="/lib.so", keep_limit=len(_CONTENT)
            )
    finally:
        os.close(descriptor)


def test_prefetched_chunks_go_to_the_first_open_of_the_same_version_only(
    trusted_file: Path, fd: int
) -> None:
    cache = VerificationCache()
    cache.prefetch(fd, _SHA, path="/lib.so", keep_limit=len(_CONTENT))
    content, chunks = cache.verify_keeping(fd, _SHA, path="/lib.so", keep_limit=len(_CONTENT))
    assert b"".join(chunks) == _CONTENT and content.sha256 == _SHA
    _, again = cache.verify_keeping(fd, _SHA, path="/lib.so", keep_limit=len(_CONTENT))
    assert again == ()  # handed over once
    cache.prefetch(fd, _SHA, path="/lib.so", keep_limit=len(_CONTENT))  # cached: keeps nothing
    assert cache.verify_keeping(fd, _SHA, path="/lib.so", keep_limit=len(_CONTENT))[1] == ()


def test_prefetched_chunks_of_a_file_changed_since_are_not_served(
    trusted_file: Path, fd: int
) -> None:
    other = VerificationCache()
    other.prefetch(fd, _SHA, path="/lib.so", keep_limit=len(_CONTENT))
    _flip_byte_keep_times(trusted_file, 10)  # in place: the stat key moves (ctime)
    with pytest.raises(TrustedFileModifiedError):
        other.verify_keeping(fd, _SHA, path="/lib.so", keep_limit=len(_CONTENT))


def test_a_file_hashed_by_two_threads_at_once_is_hashed_once(fd: int) -> None:
    import threading

    cache = VerificationCache()
    calls: list[int] = []
    real = _trusted._verify

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    _trusted._verify = counting  # type: ignore[assignment]
    try:
        results: list[object] = []
        threads = [
            threading.Thread(target=lambda: results.append(cache.verify(fd, _SHA, path="/lib.so")))
            for _ in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        _trusted._verify = real
    assert len(calls) == 1 and len(results) == 4 and len({id(r) for r in results}) == 1
