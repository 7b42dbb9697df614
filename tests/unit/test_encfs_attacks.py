"""One test per attack on an encrypted file: each must be refused, never give wrong plaintext.

Node positions come from the vectors' README: node 0 metadata (header 0..58, encrypted record
59..3942, padding 3943..4095), node 1 root MHT, data node d at d + 2 + d // 96, MHT node m at
1 + 97 * m.
"""

from __future__ import annotations

import pytest

from sealpod.encfs import EncryptedFile, MemoryNodeStore, decrypt_bytes, encrypt_bytes
from sealpod.errors import VerificationError

KEY = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
OTHER_KEY = bytes.fromhex("0f1e2d3c4b5a69788796a5b4c3d2e1f0")
# Two MHT levels below the root are not needed for these attacks; MHT #1 is (physical 98).
SIZE = 3072 + 4096 * 96 + 4096 * 3 + 100
PLAIN = bytes(i % 253 for i in range(SIZE))


@pytest.fixture(scope="module")
def sealed() -> bytes:
    return encrypt_bytes(KEY, "/data/victim", PLAIN)


def _flip(blob: bytes, offset: int) -> bytes:
    changed = bytearray(blob)
    changed[offset] ^= 0x01
    return bytes(changed)


def _refused(blob: bytes, *, key: bytes = KEY, path: str | None = "/data/victim") -> str:
    with pytest.raises(VerificationError) as info:
        decrypt_bytes(key, path, blob)
    # The same verdict through the random-access reader, whatever it reads.
    with pytest.raises(VerificationError):
        with EncryptedFile.from_store(MemoryNodeStore(blob), key, path=path) as f:
            f.read(0, f.size)
    return info.value.reason


def test_untouched_file_decrypts(sealed: bytes) -> None:
    assert decrypt_bytes(KEY, "/data/victim", sealed) == PLAIN


def test_flipped_bit_in_metadata_record_is_refused(sealed: bytes) -> None:
    assert _refused(_flip(sealed, 59 + 500)) == "encfs_bad_mac"


def test_flipped_bit_in_metadata_tag_is_refused(sealed: bytes) -> None:
    assert _refused(_flip(sealed, 42)) == "encfs_bad_mac"


def test_flipped_bit_in_kdf_nonce_is_refused(sealed: bytes) -> None:
    assert _refused(_flip(sealed, 10)) == "encfs_bad_mac"


def test_flipped_bit_in_file_id_is_refused(sealed: bytes) -> None:
    assert _refused(_flip(sealed, 0)) == "encfs_bad_header"


def test_unsupported_major_version_is_refused(sealed: bytes) -> None:
    changed = bytearray(sealed)
    changed[8] = 3
    assert _refused(bytes(changed)) == "encfs_unsupported_version"


def test_flipped_bit_in_root_mht_node_is_refused(sealed: bytes) -> None:
    assert _refused(_flip(sealed, 4096 * 1 + 10)) == "encfs_bad_mac"


def test_flipped_bit_in_child_mht_node_is_refused(sealed: bytes) -> None:
    assert _refused(_flip(sealed, 4096 * 98 + 3000)) == "encfs_bad_mac"


def test_flipped_bit_in_first_data_node_is_refused(sealed: bytes) -> None:
    assert _refused(_flip(sealed, 4096 * 2 + 1000)) == "encfs_bad_mac"


def test_flipped_bit_in_data_node_under_child_mht_is_refused(sealed: bytes) -> None:
    assert _refused(_flip(sealed, 4096 * 99 + 7)) == "encfs_bad_mac"


def test_flipped_bit_in_padding_of_last_data_node_is_refused(sealed: bytes) -> None:
    assert _refused(_flip(sealed, len(sealed) - 1)) == "encfs_bad_mac"


def test_swapped_data_nodes_are_refused(sealed: bytes) -> None:
    nodes = [sealed[i : i + 4096] for i in range(0, len(sealed), 4096)]
    nodes[2], nodes[3] = nodes[3], nodes[2]
    assert _refused(b"".join(nodes)) == "encfs_bad_mac"


def test_node_spliced_from_another_file_with_the_same_key_is_refused(sealed: bytes) -> None:
    other = encrypt_bytes(KEY, "/data/victim", bytes(SIZE))
    spliced = sealed[: 4096 * 5] + other[4096 * 5 : 4096 * 6] + sealed[4096 * 6 :]
    assert _refused(spliced) == "encfs_bad_mac"


def test_file_truncated_by_one_node_is_refused(sealed: bytes) -> None:
    assert _refused(sealed[:-4096]) == "encfs_truncated"


def test_file_truncated_by_one_byte_is_refused(sealed: bytes) -> None:
    assert _refused(sealed[:-1]) == "encfs_truncated"


def test_file_truncated_to_metadata_only_is_refused(sealed: bytes) -> None:
    assert _refused(sealed[:4096]) == "encfs_truncated"


def test_empty_file_is_refused() -> None:
    assert _refused(b"") == "encfs_truncated"


def test_file_opened_under_another_bound_path_is_refused(sealed: bytes) -> None:
    assert _refused(sealed, path="/data/other") == "encfs_path_mismatch"


def test_relative_form_of_the_bound_path_is_refused(sealed: bytes) -> None:
    assert _refused(sealed, path="data/victim") == "encfs_path_mismatch"


def test_wrong_key_is_refused(sealed: bytes) -> None:
    assert _refused(sealed, key=OTHER_KEY) == "encfs_bad_mac"


def test_wrong_key_is_refused_without_a_path_check(sealed: bytes) -> None:
    assert _refused(sealed, key=OTHER_KEY, path=None) == "encfs_bad_mac"


def test_rolled_back_file_is_refused_by_root_mac(sealed: bytes) -> None:
    store = MemoryNodeStore(sealed)
    with EncryptedFile.from_store(store, KEY, path="/data/victim", writable=True) as f:
        f.write(0, b"new version")
        current = f.flush()
    with pytest.raises(VerificationError) as info:
        EncryptedFile.from_store(
            MemoryNodeStore(sealed), KEY, path="/data/victim", expected_root_mac=current
        )
    assert info.value.reason == "encfs_root_mac_mismatch"
    EncryptedFile.from_store(store, KEY, path="/data/victim", expected_root_mac=current)


def test_corrupted_handle_refuses_further_use(sealed: bytes) -> None:
    f = EncryptedFile.from_store(
        MemoryNodeStore(_flip(sealed, 4096 * 99 + 7)), KEY, path="/data/victim", writable=True
    )
    assert f.read(0, 3072) == PLAIN[:3072]
    with pytest.raises(VerificationError):
        f.read(3072 + 4096 * 96, 10)
    with pytest.raises(VerificationError):
        f.read(0, 10)
    with pytest.raises(VerificationError):
        f.write(0, b"x")


def test_flipped_bit_in_a_read_ahead_node_is_refused_when_it_is_read(sealed: bytes) -> None:
    # Data node 5 sits at physical node 7; sequential reads of nodes 0..4 fetch it early.
    f = EncryptedFile.from_store(
        MemoryNodeStore(_flip(sealed, 4096 * 7 + 9)), KEY, path="/data/victim"
    )
    for index in range(5):
        start = 3072 + 4096 * index
        assert f.read(start, 4096) == PLAIN[start : start + 4096]
    with pytest.raises(VerificationError) as info:
        f.read(3072 + 4096 * 5, 1)
    assert info.value.reason == "encfs_bad_mac"
