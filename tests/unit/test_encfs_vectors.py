"""Gramine's own encrypted files (``../shared/encrypted-files-vectors``) against our reader and
our writer's output against the layout of Gramine's.

Expected values come from the vectors' ``manifest.json`` and README, and from a small reference
decoder below written from the README's format facts (it shares no code with ``sealpod.encfs``).
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.cmac import CMAC

from sealpod.encfs import EncryptedFile, MemoryNodeStore, decrypt_bytes, encrypt_bytes
from sealpod.errors import ConfigError, VerificationError


def _manifest(vectors_dir: Path) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads((vectors_dir / "manifest.json").read_text())
    return manifest


def _vectors(vectors_dir: Path, category: str | None = None) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = _manifest(vectors_dir)["vectors"]
    return [v for v in entries if category is None or v["category"] == category]


def plaintext(size: int) -> bytes:
    """The README's plaintext generator."""
    blocks = (
        hashlib.sha256(f"ef-vectors:{size}:{c}".encode()).digest() for c in range((size + 31) // 32)
    )
    return b"".join(blocks)[:size]


def _embedded_path(vector: dict[str, Any]) -> bytes:
    if "embedded_path_hex" in vector:
        return bytes.fromhex(vector["embedded_path_hex"])
    path: str = vector["embedded_path"]
    return path.encode()


def _expected_digest(vector: dict[str, Any]) -> str:
    digest: str = vector.get("decrypted_sha256") or vector["plaintext_sha256"]
    return digest


# -- a reference decoder from the README's "Format facts" ---------------------------------


def reference_decrypt(key: bytes, blob: bytes) -> tuple[bytes, bytes, bytes]:
    """Returns (bound path, plaintext, root MHT key); raises on any failure."""
    assert len(blob) % 4096 == 0 and blob[:8] == b"GRAFS_PF" and blob[8] == 2
    nonce, tag = blob[10:42], blob[42:58]
    cmac = CMAC(algorithms.AES(key))
    cmac.update(
        struct.pack("<I", 1)
        + b"SGX-PROTECTED-FS-METADATA-KEY".ljust(64, b"\0")
        + nonce
        + struct.pack("<I", 128)
    )
    record = AESGCM(cmac.finalize()).decrypt(bytes(12), blob[59:3943] + tag, None)
    path = record[:772].split(b"\0")[0]
    (size,) = struct.unpack("<Q", record[772:780])
    root_key, root_tag = record[780:796], record[796:812]
    out = bytearray(record[812 : 812 + min(size, 3072)])
    if size <= 3072:
        return path, bytes(out), root_key

    def node(physical: int) -> bytes:
        return blob[4096 * physical : 4096 * (physical + 1)]

    def open_node(physical: int, entry: bytes) -> bytes:
        return AESGCM(entry[:16]).decrypt(bytes(12), node(physical) + entry[16:32], None)

    data_count = -(-(size - 3072) // 4096)
    mhts = {0: open_node(1, root_key + root_tag)}
    for m in range(1, -(-data_count // 96)):
        parent = mhts[(m - 1) // 32]
        slot = 96 + (m - 1) % 32
        mhts[m] = open_node(1 + 97 * m, parent[32 * slot : 32 * slot + 32])
    for d in range(data_count):
        entry = mhts[d // 96][32 * (d % 96) : 32 * (d % 96) + 32]
        out += open_node(d + 2 + d // 96, entry)
    return path, bytes(out[:size]), root_key


def _outcome(key: bytes, path: bytes | None, blob: bytes) -> str:
    """ "ok:<sha256>" or "fail:<reason>"."""
    try:
        return "ok:" + hashlib.sha256(decrypt_bytes(key, path, blob)).hexdigest()
    except VerificationError as exc:
        return "fail:" + exc.reason


def _expected_outcome(vector: dict[str, Any], result: str) -> str:
    return "ok:" + _expected_digest(vector) if result == "ok" else "fail"


# -- Gramine's files through our reader ----------------------------------------------------
# Each test walks every manifest entry of its kind and reports all the entries that disagree
# (the vectors are reached only through the ``encrypted_files_vectors`` fixture).


def test_every_vector_without_path_check_matches_gramine(encrypted_files_vectors: Path) -> None:
    vectors = _vectors(encrypted_files_vectors)
    assert len(vectors) >= 21 + 19 + 72
    wrong = []
    for vector in vectors:
        blob = (encrypted_files_vectors / vector["file"]).read_bytes()
        got = _outcome(bytes.fromhex(vector["key_hex"]), None, blob)
        want = _expected_outcome(vector, vector["expected"])
        if not got.startswith(want):
            wrong.append(f"{vector['file']}: got {got}, want {want}")
    assert wrong == []


def test_every_vector_with_path_check_matches_gramine(encrypted_files_vectors: Path) -> None:
    wrong = []
    for vector in _vectors(encrypted_files_vectors):
        blob = (encrypted_files_vectors / vector["file"]).read_bytes()
        got = _outcome(bytes.fromhex(vector["key_hex"]), _embedded_path(vector), blob)
        want = _expected_outcome(vector, vector["expected_with_path_check"])
        if not got.startswith(want):
            wrong.append(f"{vector['file']}: got {got}, want {want}")
    assert wrong == []


def test_every_tampered_vector_is_refused_with_path_check(encrypted_files_vectors: Path) -> None:
    tampered = _vectors(encrypted_files_vectors, "tampered") + _vectors(
        encrypted_files_vectors, "tamper_suite"
    )
    refused = [v for v in tampered if v["expected_with_path_check"] == "fail"]
    assert len(refused) >= 14 + 70
    accepted = []
    for vector in refused:
        blob = (encrypted_files_vectors / vector["file"]).read_bytes()
        if not _outcome(bytes.fromhex(vector["key_hex"]), b"/data/t_7169.bin", blob).startswith(
            "fail:encfs_"
        ):
            accepted.append(vector["file"])
    assert accepted == []


def test_valid_vectors_decrypt_to_the_regenerated_plaintext(encrypted_files_vectors: Path) -> None:
    checked = 0
    for vector in _vectors(encrypted_files_vectors):
        if "plaintext_size" not in vector or vector["expected"] != "ok":
            continue
        if vector["category"] == "tampered":
            continue
        blob = (encrypted_files_vectors / vector["file"]).read_bytes()
        result = decrypt_bytes(bytes.fromhex(vector["key_hex"]), _embedded_path(vector), blob)
        assert result == plaintext(vector["plaintext_size"]), vector["file"]
        assert hashlib.sha256(result).hexdigest() == vector["plaintext_sha256"]
        checked += 1
    assert checked == 21


def test_valid_vectors_read_the_same_through_encrypted_file(
    encrypted_files_vectors: Path,
) -> None:
    for vector in _vectors(encrypted_files_vectors, "valid"):
        blob = (encrypted_files_vectors / vector["file"]).read_bytes()
        key = bytes.fromhex(vector["key_hex"])
        with EncryptedFile.from_store(
            MemoryNodeStore(blob), key, path=vector["embedded_path"], cache_nodes=4
        ) as f:
            assert f.size == vector["plaintext_size"]
            assert f.root_mac == blob[42:58]
            assert f.path == vector["embedded_path"]
            pieces = [f.read(offset, 5000) for offset in range(0, f.size, 5000)]
        assert b"".join(pieces) == plaintext(vector["plaintext_size"]), vector["file"]


def test_manifest_checks_are_refused(encrypted_files_vectors: Path) -> None:
    checks = _manifest(encrypted_files_vectors)["checks"]
    assert {c["kind"] for c in checks} == {"wrong_key", "path_mismatch"}
    for check in checks:
        blob = (encrypted_files_vectors / check["file"]).read_bytes()
        key = bytes.fromhex(check["key_hex"])
        if check["kind"] == "wrong_key":
            assert _outcome(key, None, blob) == "fail:encfs_bad_mac", check
        else:
            assert check["expected_without_path_check"] == "ok"
            assert _outcome(key, None, blob).startswith("ok:"), check
            got = _outcome(key, check["checked_against_path"].encode(), blob)
            assert got == "fail:encfs_path_mismatch", check


def test_reference_decoder_agrees_with_the_vectors(encrypted_files_vectors: Path) -> None:
    for vector in _vectors(encrypted_files_vectors):
        if vector["category"] not in ("valid", "valid_keyB", "path_form"):
            continue
        blob = (encrypted_files_vectors / vector["file"]).read_bytes()
        path, plain, _ = reference_decrypt(bytes.fromhex(vector["key_hex"]), blob)
        assert path == _embedded_path(vector)
        assert hashlib.sha256(plain).hexdigest() == vector["plaintext_sha256"]


# -- our writer against Gramine's layout ---------------------------------------------------


def test_written_files_have_gramines_layout(encrypted_files_vectors: Path) -> None:
    same_ranges = _manifest(encrypted_files_vectors)["encryption_deterministic"][
        "identical_byte_ranges_of_len_ge_4"
    ]
    for vector in _vectors(encrypted_files_vectors, "valid"):
        gramine = (encrypted_files_vectors / vector["file"]).read_bytes()
        key = bytes.fromhex(vector["key_hex"])
        data = plaintext(vector["plaintext_size"])
        ours = encrypt_bytes(key, vector["embedded_path"], data)
        assert len(ours) == vector["ciphertext_size"] == vector["physical_nodes"] * 4096
        # The byte ranges identical by design (README "Encryption is not deterministic").
        for start, end in same_ranges:
            assert ours[start:end] == gramine[start:end], (vector["file"], start)
        assert ours[58] == gramine[58] == 0
        path, plain, root_key = reference_decrypt(key, ours)
        assert path == vector["embedded_path"].encode()
        assert plain == data
        if vector["plaintext_size"] <= 3072:
            assert root_key == bytes(16)
        assert decrypt_bytes(key, vector["embedded_path"], ours) == data


def test_written_file_with_second_mht_level_follows_the_layout() -> None:
    # 33 MHT nodes: MHT #33 is the first whose parent (MHT #1) is not the root.
    size = 3072 + 4096 * 96 * 33 + 4096 * 5 + 7
    assert size > 12_979_200  # README: the smallest size that needs MHT #33
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    key = bytes(range(16))
    blob = encrypt_bytes(key, "/deep", data)
    data_nodes = 96 * 33 + 6
    assert len(blob) == 4096 * (1 + data_nodes + 34)
    path, plain, _ = reference_decrypt(key, blob)
    assert (path, plain) == (b"/deep", data)


def test_encrypting_with_a_772_byte_path_is_refused(encrypted_files_vectors: Path) -> None:
    manifest = _manifest(encrypted_files_vectors)
    assert manifest["path_772_bytes_encrypt"]["rc"] != 0
    longest = next(
        v for v in _vectors(encrypted_files_vectors) if v["file"] == "path_771bytes_100.bin"
    )
    assert len(longest["embedded_path"].encode()) == 771
    encrypt_bytes(bytes(16), "/" + "a" * 770, b"x")
    with pytest.raises(ConfigError):
        encrypt_bytes(bytes(16), "/" + "a" * 771, b"x")


def test_random_access_writer_output_follows_the_layout() -> None:
    # Written out of order through a tiny cache (many intermediate commits), then checked by
    # the reference decoder: the random-access writer places every node where Gramine does.
    size = 3072 + 4096 * 96 * 2 + 4096 * 7 + 11
    key = bytes.fromhex("0f1e2d3c4b5a69788796a5b4c3d2e1f0")
    model = bytearray(size)
    store = MemoryNodeStore()
    with EncryptedFile.from_store(store, key, path="/rw", create=True, cache_nodes=4) as f:
        for number, offset in enumerate(range(size - 1000, -1, -37_003)):
            chunk = bytes([number % 256]) * 1000
            f.write(offset, chunk)
            model[offset : offset + 1000] = chunk
        f.truncate(size)
    assert len(store.buffer) == 4096 * (1 + (96 * 2 + 8) + 3)
    path, plain, _ = reference_decrypt(key, bytes(store.buffer))
    assert (path, plain) == (b"/rw", bytes(model))


def test_format_1_file_is_read_by_shifting(encrypted_files_vectors: Path) -> None:
    # README: a 1.x header has no feature-flags byte, so its encrypted record starts at 58.
    vector = next(v for v in _vectors(encrypted_files_vectors) if v["file"] == "f_7169.bin")
    blob = (encrypted_files_vectors / vector["file"]).read_bytes()
    legacy = blob[:8] + b"\x01" + blob[9:58] + blob[59:3943] + bytes(154) + blob[4096:]
    key = bytes.fromhex(vector["key_hex"])
    assert decrypt_bytes(key, vector["embedded_path"], legacy) == plaintext(7169)
    store = MemoryNodeStore(legacy)
    with EncryptedFile.from_store(store, key, path=vector["embedded_path"], writable=True) as f:
        assert f.read(0, 10) == plaintext(7169)[:10]
    # Committing rewrites the header as format 2.0 (what Gramine's reader does too).
    assert store.buffer[8] == 2
    assert reference_decrypt(key, bytes(store.buffer))[1] == plaintext(7169)


def test_pending_write_flag_is_read_with_a_warning(
    encrypted_files_vectors: Path, caplog: pytest.LogCaptureFixture
) -> None:
    vector = next(
        v for v in _vectors(encrypted_files_vectors) if v["file"].endswith("flags_pending.bin")
    )
    assert vector["expected"] == "ok"
    blob = (encrypted_files_vectors / vector["file"]).read_bytes()
    result = decrypt_bytes(bytes.fromhex(vector["key_hex"]), None, blob)
    assert hashlib.sha256(result).hexdigest() == _expected_digest(vector)
    assert "pending-write" in caplog.text
