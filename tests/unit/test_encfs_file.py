"""``EncryptedFile``: random access, truncation, flush/reopen, caching, crash behaviour.

Expected contents come from a plain ``bytearray`` model and from the format geometry in the
vectors' README (sizes: 4096 if size <= 3072, else 4096 * (1 + D + ceil(D / 96))).
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sealpod.encfs import (
    EncryptedFile,
    MemoryNodeStore,
    decrypt_bytes,
    decrypt_file,
    encrypt_bytes,
    encrypt_file,
    memory_file,
    normalize_path,
    verify_file,
)
from sealpod.errors import ConfigError, VerificationError

KEY = bytes.fromhex("000102030405060708090a0b0c0d0e0f")


def readme_host_size(size: int) -> int:
    """Ciphertext size per the vectors' README."""
    if size <= 3072:
        return 4096
    data = -(-(size - 3072) // 4096)
    return 4096 * (1 + data + -(-data // 96))


def pattern(size: int, seed: int = 0) -> bytes:
    return bytes((i * 7 + seed) % 251 for i in range(size))


def test_new_file_is_one_node_and_empty() -> None:
    f, store = memory_file(KEY, path="/data/new")
    assert f.size == 0 and f.read(0, 10) == b""
    f.close()
    assert len(store.buffer) == 4096
    assert store.buffer[:8] == b"GRAFS_PF" and store.buffer[8:10] == b"\x02\x00"
    assert decrypt_bytes(KEY, "/data/new", store.buffer) == b""


@pytest.mark.parametrize("size", [0, 1, 3072, 3073, 7169, 396288, 396289, 401413])
def test_sequential_writes_round_trip_and_match_the_geometry(size: int) -> None:
    data = pattern(size)
    f, store = memory_file(KEY, path="/p")
    for offset in range(0, size, 10_000):
        f.write(offset, data[offset : offset + 10_000])
    f.close()
    assert len(store.buffer) == readme_host_size(size)
    assert decrypt_bytes(KEY, "/p", store.buffer) == data


def test_append_returns_the_offset_and_extends() -> None:
    f, _ = memory_file(KEY, path="/p")
    assert f.append(b"abc") == 0
    assert f.append(b"defg") == 3
    assert f.read(0, 100) == b"abcdefg"


def test_write_past_the_end_fills_the_gap_with_zeros() -> None:
    f, store = memory_file(KEY, path="/p")
    f.write(10_000, b"tail")
    assert f.size == 10_004
    assert f.read(0, 10_004) == bytes(10_000) + b"tail"
    f.close()
    assert decrypt_bytes(KEY, "/p", store.buffer) == bytes(10_000) + b"tail"


def test_truncate_shrinks_zeroes_and_extends() -> None:
    data = pattern(500_000)
    f, store = memory_file(KEY, path="/p")
    f.write(0, data)
    f.flush()
    f.truncate(5_000)
    assert f.size == 5_000
    f.truncate(9_000)
    assert f.read(0, 10_000) == data[:5_000] + bytes(4_000)
    f.close()
    assert len(store.buffer) == readme_host_size(9_000)
    assert decrypt_bytes(KEY, "/p", store.buffer) == data[:5_000] + bytes(4_000)


def test_truncate_to_small_size_clears_the_tree() -> None:
    f, store = memory_file(KEY, path="/p")
    f.write(0, pattern(50_000))
    f.truncate(100)
    f.close()
    assert len(store.buffer) == 4096
    assert decrypt_bytes(KEY, "/p", store.buffer) == pattern(100)


def test_reopen_for_writing_keeps_content_and_changes_root_mac() -> None:
    f, store = memory_file(KEY, path="/p")
    f.write(0, pattern(200_000))
    first_mac = f.flush()
    assert first_mac == bytes(store.buffer[42:58])
    f.close()
    g = EncryptedFile.from_store(store, KEY, path="/p", writable=True)
    assert g.root_mac == first_mac
    g.write(150_000, b"changed")
    second_mac = g.flush()
    g.close()
    assert second_mac != first_mac
    expected = bytearray(pattern(200_000))
    expected[150_000:150_007] = b"changed"
    assert decrypt_bytes(KEY, "/p", store.buffer) == expected


def test_flush_without_changes_keeps_the_file_and_root_mac() -> None:
    f, store = memory_file(KEY, path="/p")
    f.write(0, pattern(20_000))
    mac = f.flush()
    before = bytes(store.buffer)
    assert f.flush() == mac
    assert bytes(store.buffer) == before


def test_every_flush_reencrypts_with_fresh_keys() -> None:
    f, store = memory_file(KEY, path="/p")
    f.write(0, pattern(20_000))
    f.flush()
    first = bytes(store.buffer)
    f.write(0, pattern(20_000))  # same plaintext
    f.flush()
    second = bytes(store.buffer)
    # The nonce, the metadata and every rewritten node differ although the plaintext is equal.
    assert first[10:42] != second[10:42]
    assert all(
        first[n * 4096 : (n + 1) * 4096] != second[n * 4096 : (n + 1) * 4096] for n in range(4)
    )


def test_small_cache_evicts_and_commits_but_stays_correct() -> None:
    data = pattern(1_200_000, seed=3)
    f, store = memory_file(KEY, path="/p")
    f = EncryptedFile.from_store(store, KEY, path="/p", writable=True, cache_nodes=4)
    f.write(0, data)
    assert f.read(0, len(data)) == data
    f.write(700_000, b"X" * 50_000)
    f.close()
    expected = bytearray(data)
    expected[700_000:750_000] = b"X" * 50_000
    assert decrypt_bytes(KEY, "/p", store.buffer) == expected


def test_read_only_handle_refuses_writes() -> None:
    blob = encrypt_bytes(KEY, "/p", b"hello")
    f = EncryptedFile.from_store(MemoryNodeStore(blob), KEY, path="/p")
    with pytest.raises(ConfigError, match="read-only"):
        f.write(0, b"x")
    with pytest.raises(ConfigError):
        f.truncate(0)
    assert f.read(1, 3) == b"ell"


def test_closed_handle_refuses_everything() -> None:
    f, _ = memory_file(KEY, path="/p")
    f.close()
    f.close()
    with pytest.raises(ConfigError, match="closed"):
        f.read(0, 1)


def test_bad_key_and_path_arguments_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        encrypt_bytes(b"short", "/p", b"")
    with pytest.raises(ConfigError):
        encrypt_bytes(KEY, "", b"")
    with pytest.raises(ConfigError):
        encrypt_bytes(KEY, "/a\0b", b"")
    with pytest.raises(ConfigError):
        EncryptedFile.from_store(MemoryNodeStore(), KEY, path=None, create=True)


def test_repr_shows_no_key_or_data() -> None:
    f, _ = memory_file(KEY, path="/p")
    f.write(0, b"secret-plaintext")
    text = repr(f)
    assert KEY.hex() not in text and "secret" not in text and "/p" in text


def test_host_file_create_open_and_flush(tmp_path: Path) -> None:
    host = tmp_path / "f.enc"
    with EncryptedFile.create(host, KEY, path="/data/f") as f:
        f.write(0, pattern(100_000))
    with pytest.raises(ConfigError, match="exists"):
        EncryptedFile.create(host, KEY, path="/data/f")
    with EncryptedFile.open(host, KEY, path="/data/f", writable=True) as f:
        f.truncate(4_000)
        mac = f.flush()
    assert host.stat().st_size == readme_host_size(4_000)
    assert host.read_bytes()[42:58] == mac
    with EncryptedFile.open(host, KEY, path="/data/f") as f:
        assert f.read(0, 10_000) == pattern(4_000)


def test_streaming_helpers_round_trip_and_write_atomically(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_bytes(pattern(1_000_003))
    sealed = tmp_path / "sealed"
    info = encrypt_file(KEY, plain, sealed, path="/data/x")
    assert info.size == 1_000_003 and info.host_size == sealed.stat().st_size
    assert info.root_mac == sealed.read_bytes()[42:58]
    out = tmp_path / "out"
    back = decrypt_file(KEY, sealed, out, path="/data/x")
    assert out.read_bytes() == plain.read_bytes()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert back.root_mac == info.root_mac
    verified = verify_file(KEY, sealed, path=None)
    assert verified.plaintext_sha256 == hashlib.sha256(plain.read_bytes()).hexdigest()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "plain", "sealed"]


def test_failed_decryption_leaves_no_output(tmp_path: Path) -> None:
    sealed = tmp_path / "sealed"
    blob = bytearray(encrypt_bytes(KEY, "/p", pattern(50_000)))
    blob[-10] ^= 1
    sealed.write_bytes(blob)
    with pytest.raises(VerificationError):
        decrypt_file(KEY, sealed, tmp_path / "out", path="/p")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sealed"]


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("/data/./a//b/", "/data/a/b"),
        ("/../a", "/a"),
        ("a/../../b", "../b"),
        ("./x/y/..", "x"),
        (".", ""),
        ("//data/f", "/data/f"),
    ],
)
def test_normalize_path_follows_gramine(raw: str, normal: str) -> None:
    assert normalize_path(raw) == normal


# -- crash in the middle of a flush ----------------------------------------------------------


class _CrashingStore(MemoryNodeStore):
    """Accepts ``budget`` writes, then raises like a machine losing power."""

    def __init__(self, data: bytes, budget: int) -> None:
        super().__init__(data)
        self.budget = budget

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        if self.budget == 0:
            raise OSError("power lost")
        self.budget -= 1
        super().write(offset, data)


@pytest.mark.parametrize("budget", [0, 1, 2, 3, 4])
def test_crash_mid_flush_never_yields_wrong_plaintext(budget: int) -> None:
    old = pattern(800_000, seed=1)
    base = encrypt_bytes(KEY, "/p", old)
    store = _CrashingStore(base, budget)
    f = EncryptedFile.from_store(store, KEY, path="/p", writable=True)
    new = bytearray(old)
    # Three separate runs of dirty nodes (three writes) before the metadata write.
    for offset in (10_000, 420_000, 790_000):
        f.write(offset, b"N" * 5_000)
        new[offset : offset + 5_000] = b"N" * 5_000
    crashed = True
    try:
        f.flush()
        crashed = False
    except OSError:
        pass
    after = bytes(store.buffer)
    try:
        result = decrypt_bytes(KEY, "/p", after)
    except VerificationError as exc:
        assert crashed and exc.reason == "encfs_bad_mac"
        return
    assert result in (old, bytes(new))
    assert crashed == (result == old)


# -- property test against a bytearray model ------------------------------------------------

_ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("write"), st.integers(0, 450_000), st.integers(0, 20_000), st.integers(0, 250)
        ),
        st.tuples(st.just("truncate"), st.integers(0, 450_000)),
        st.tuples(st.just("flush")),
        st.tuples(st.just("reopen")),
        st.tuples(st.just("read"), st.integers(0, 460_000), st.integers(0, 30_000)),
    ),
    max_size=12,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_ops, cache_nodes=st.sampled_from([4, 16, 256]))
def test_random_operations_match_a_bytearray_model(
    ops: list[tuple[object, ...]], cache_nodes: int
) -> None:
    store = MemoryNodeStore()
    f = EncryptedFile.from_store(store, KEY, path="/m", create=True, cache_nodes=cache_nodes)
    model = bytearray()
    for op in ops:
        if op[0] == "write":
            _, offset, length, seed = op
            assert isinstance(offset, int) and isinstance(length, int) and isinstance(seed, int)
            data = pattern(length, seed)
            f.write(offset, data)
            if length and offset > len(model):  # an empty write changes nothing (POSIX)
                model.extend(bytes(offset - len(model)))
            model[offset : offset + length] = data
        elif op[0] == "truncate":
            size = op[1]
            assert isinstance(size, int)
            f.truncate(size)
            del model[size:]
            model.extend(bytes(size - len(model)))
        elif op[0] == "flush":
            f.flush()
        elif op[0] == "reopen":
            f.close()
            f = EncryptedFile.from_store(
                store, KEY, path="/m", writable=True, cache_nodes=cache_nodes
            )
        else:
            _, offset, length = op
            assert isinstance(offset, int) and isinstance(length, int)
            assert f.read(offset, length) == bytes(model[offset : offset + length])
        assert f.size == len(model)
    f.close()
    assert len(store.buffer) == readme_host_size(len(model))
    assert decrypt_bytes(KEY, "/m", store.buffer) == bytes(model)


@settings(max_examples=25, deadline=None)
@given(data=st.binary(max_size=20_000), extra=st.integers(0, 420_000))
def test_encrypt_bytes_round_trips_any_size(data: bytes, extra: int) -> None:
    payload = data + os.urandom(0) + pattern(extra)
    blob = encrypt_bytes(KEY, "/r", payload)
    assert len(blob) == readme_host_size(len(payload))
    assert decrypt_bytes(KEY, "/r", blob) == payload


# -- the multi-process path of the file helpers ---------------------------------------------


@pytest.fixture(scope="module")
def big_plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("parallel") / "plain"
    path.write_bytes(pattern(3072 + 4096 * 96 * 4 + 999, seed=9))  # five MHT groups
    return path


@pytest.mark.parametrize(("enc_workers", "dec_workers"), [(2, 1), (1, 2), (2, 2)])
def test_parallel_and_single_process_paths_agree(
    big_plain: Path, tmp_path: Path, enc_workers: int, dec_workers: int
) -> None:
    sealed, back = tmp_path / "sealed", tmp_path / "back"
    info = encrypt_file(KEY, big_plain, sealed, path="/data/big", workers=enc_workers)
    blob = sealed.read_bytes()
    assert len(blob) == readme_host_size(big_plain.stat().st_size) == info.host_size
    assert decrypt_bytes(KEY, "/data/big", blob) == big_plain.read_bytes()
    result = decrypt_file(KEY, sealed, back, path="/data/big", workers=dec_workers)
    assert back.read_bytes() == big_plain.read_bytes()
    assert result.root_mac == info.root_mac == blob[42:58]


@pytest.mark.parametrize(
    ("node", "reason"),
    [(0, "encfs_bad_mac"), (98, "encfs_bad_mac"), (300, "encfs_bad_mac"), (-1, "encfs_bad_mac")],
)
def test_parallel_decrypt_refuses_a_flipped_node_and_leaves_no_output(
    big_plain: Path, tmp_path: Path, node: int, reason: str
) -> None:
    sealed = tmp_path / "sealed"
    encrypt_file(KEY, big_plain, sealed, path="/data/big", workers=1)
    blob = bytearray(sealed.read_bytes())
    offset = 4096 * node + 100 if node >= 0 else len(blob) - 1
    blob[offset] ^= 1
    sealed.write_bytes(blob)
    with pytest.raises(VerificationError) as info:
        decrypt_file(KEY, sealed, tmp_path / "out", path="/data/big", workers=2)
    assert info.value.reason == reason
    assert not (tmp_path / "out").exists()


def test_parallel_decrypt_refuses_a_missing_node(big_plain: Path, tmp_path: Path) -> None:
    sealed = tmp_path / "sealed"
    encrypt_file(KEY, big_plain, sealed, path="/data/big", workers=1)
    sealed.write_bytes(sealed.read_bytes()[:-4096])
    with pytest.raises(VerificationError) as info:
        decrypt_file(KEY, sealed, tmp_path / "out", path="/data/big", workers=2)
    assert info.value.reason == "encfs_truncated"


@pytest.mark.parametrize("workers", [1, 2])
def test_progress_reports_every_plaintext_byte(
    big_plain: Path, tmp_path: Path, workers: int
) -> None:
    done: list[int] = []
    size = big_plain.stat().st_size
    sealed = tmp_path / "sealed"
    encrypt_file(KEY, big_plain, sealed, path="/p", workers=workers, progress=done.append)
    assert sum(done) == size and len(done) > 2
    done.clear()
    decrypt_file(KEY, sealed, tmp_path / "out", path="/p", workers=workers, progress=done.append)
    assert sum(done) == size
    done.clear()
    verify_file(KEY, sealed, path="/p", progress=done.append)
    assert sum(done) == size


@pytest.mark.parametrize("size", [0, 3072, 3073])
def test_parallel_path_handles_files_without_or_with_one_group(tmp_path: Path, size: int) -> None:
    plain, sealed, back = tmp_path / "p", tmp_path / "s", tmp_path / "b"
    plain.write_bytes(pattern(size))
    encrypt_file(KEY, plain, sealed, path="/p", workers=2)
    assert sealed.stat().st_size == readme_host_size(size)
    decrypt_file(KEY, sealed, back, path="/p", workers=2)
    assert back.read_bytes() == pattern(size)
