"""The volume's append writer and run reader against the Gramine file reader.

Files the append writer produces must decrypt with :func:`sealpod.encfs.decrypt_bytes` (checked
against Gramine's own vectors elsewhere) and continue with :class:`EncryptedFile`; the run
reader must return exactly what the file reader returns, and refuse what it refuses.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sealpod.encfs import EncryptedFile, MemoryNodeStore, decrypt_bytes, encrypt_bytes
from sealpod.encfs._reader import TreeReader
from sealpod.encfs._writer import AppendWriter
from sealpod.errors import VerificationError

KEY = bytes(range(16))
NODE = 4096
SIZES = st.sampled_from([0, 1, 100, 3071, 3072, 3073, 4095, 4096, 4097, 9000, 400000, 1 << 20])


@settings(max_examples=30, deadline=None)
@given(chunks=st.lists(st.tuples(SIZES, st.booleans()), max_size=8))
def test_appended_file_decrypts_with_the_gramine_reader(chunks: list[tuple[int, bool]]) -> None:
    store = MemoryNodeStore()
    writer = AppendWriter(store, KEY, path="vol/object")
    model = bytearray()
    for size, flush in chunks:
        data = os.urandom(size)
        writer.append(data)
        model += data
        if flush:
            writer.flush()
            assert decrypt_bytes(KEY, "vol/object", bytes(store.buffer)) == model
    mac = writer.flush()
    assert decrypt_bytes(KEY, "vol/object", bytes(store.buffer)) == model
    with EncryptedFile.from_store(
        store, KEY, path="vol/object", writable=True, expected_root_mac=mac
    ) as handle:
        handle.append(b"tail")
    assert decrypt_bytes(KEY, "vol/object", bytes(store.buffer)) == model + b"tail"


def test_every_data_node_has_its_own_key() -> None:
    store = MemoryNodeStore()
    writer = AppendWriter(store, KEY, path="vol/object")
    writer.append(bytes(3072 + 10 * NODE))  # ten identical all-zero data nodes
    writer.flush()
    nodes = [bytes(store.buffer[(2 + i) * NODE : (3 + i) * NODE]) for i in range(10)]
    assert len(set(nodes)) == 10


@settings(max_examples=30, deadline=None)
@given(offset=st.integers(0, 420000), size=st.integers(0, 300000))
def test_run_reader_matches_the_file_reader(offset: int, size: int) -> None:
    plain = bytes(i % 251 for i in range(3072 + NODE * 96 + NODE * 3 + 100))
    sealed = _sealed(plain)
    store = MemoryNodeStore(sealed)
    with EncryptedFile.from_store(store, KEY, path="vol/object") as handle:
        mac = handle.root_mac
        expected = handle.read(offset, size)
    reader = TreeReader(store, KEY, path=b"vol/object", expected_root_mac=mac)
    assert reader.read(offset, size) == expected == plain[offset : offset + size]


_CACHE: dict[int, bytes] = {}


def _sealed(plain: bytes) -> bytes:
    if len(plain) not in _CACHE:
        _CACHE[len(plain)] = encrypt_bytes(KEY, "vol/object", plain)
    return _CACHE[len(plain)]


@pytest.mark.parametrize(
    ("physical", "read_at"),
    [(1, 0), (2, 3072), (50, 3072 + 48 * NODE), (98, 3072 + 96 * NODE), (99, 3072 + 96 * NODE)],
    ids=["root_mht", "first_data", "middle_data", "child_mht", "data_under_child_mht"],
)
def test_run_reader_refuses_a_flipped_bit(physical: int, read_at: int) -> None:
    plain = bytes(i % 251 for i in range(3072 + NODE * 96 + NODE * 3 + 100))
    sealed = bytearray(_sealed(plain))
    with EncryptedFile.from_store(MemoryNodeStore(bytes(sealed)), KEY, path="vol/object") as f:
        mac = f.root_mac
    sealed[physical * NODE + 17] ^= 0x04
    with pytest.raises(VerificationError) as info:
        reader = TreeReader(MemoryNodeStore(sealed), KEY, path=b"vol/object", expected_root_mac=mac)
        reader.read(read_at, 2 * NODE)
    assert info.value.reason == "encfs_bad_mac"


def test_run_reader_refuses_another_version() -> None:
    sealed = encrypt_bytes(KEY, "vol/object", b"x" * 5000)
    with pytest.raises(VerificationError) as info:
        TreeReader(MemoryNodeStore(sealed), KEY, path=b"vol/object", expected_root_mac=bytes(16))
    assert info.value.reason == "encfs_root_mac_mismatch"
