"""Encrypted volumes: the record, the tag, and one test per attack (each must be refused).

Expected values are computed here independently: the tag is SHA-256 over the record as this
test canonicalises it from ``volume.json``, the HMAC key is derived here with HKDF, and object
contents are decrypted with the (vector-tested) Gramine file reader under the bound path the
design names. Node positions follow the Gramine layout: node 0 metadata, node 1 root MHT,
data node d at d + 2 + d // 96, MHT node m at 1 + 97 * m.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sealpod.encfs import decrypt_bytes
from sealpod.encfs.volume import (
    InsecureTrustOnFirstUse,
    LocalTagAuthority,
    TagAuthority,
    Volume,
    inspect_volume,
)
from sealpod.errors import ConfigError, VerificationError

KEY = bytes(range(16))
OTHER_KEY = bytes(range(16, 32))
NODE = 4096
# One child MHT node (physical 98) and data past it.
BIG = bytes(i % 251 for i in range(3072 + NODE * 96 + NODE * 3 + 100))


def _record(directory: Path) -> dict[str, object]:
    return json.loads((directory / "volume.json").read_text())["record"]  # type: ignore[no-any-return]


def _object(directory: Path, path: str) -> Path:
    files = _record(directory)["files"]
    assert isinstance(files, dict)
    return directory / "objects" / files[path]["object"]


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture
def authority() -> LocalTagAuthority:
    return LocalTagAuthority()


@pytest.fixture
def volume_dir(tmp_path: Path, authority: LocalTagAuthority) -> Path:
    """A committed volume "data" with /a (small), /big (two MHT levels) and /dir/c."""
    directory = tmp_path / "vol"
    with Volume.create(directory, KEY, "data", tag_authority=authority) as volume:
        volume.write_file("/a", b"alpha")
        volume.write_file("/big", BIG)
        volume.mkdir("/dir")
        volume.write_file("/dir/c", b"charlie" * 1000)
    return directory


def _open(directory: Path, authority: TagAuthority, **kw: object) -> Volume:
    return Volume.open(directory, KEY, "data", tag_authority=authority, **kw)  # type: ignore[arg-type]


def _refused(directory: Path, authority: TagAuthority, **kw: object) -> VerificationError:
    with pytest.raises(VerificationError) as info:
        with _open(directory, authority, **kw) as volume:
            for path in volume.iter_files():
                volume.read_file(path)
    return info.value


# -- the record and the tag ------------------------------------------------------------------


def test_tag_is_sha256_of_canonical_record(volume_dir: Path, authority: LocalTagAuthority) -> None:
    record = _record(volume_dir)
    canonical = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
    expected = hashlib.sha256(canonical).digest()
    assert authority.current_tag("data") == expected
    with _open(volume_dir, authority) as volume:
        assert volume.tag == expected
        assert volume.inspect().tag == expected
        assert volume.version == record["version"] == 2


def test_record_is_signed_with_hkdf_derived_hmac_key(volume_dir: Path) -> None:
    document = json.loads((volume_dir / "volume.json").read_text())
    canonical = json.dumps(document["record"], sort_keys=True, separators=(",", ":")).encode()
    hmac_key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"sealpod-volume-record-v1"
    ).derive(KEY)
    assert document["hmac"] == hmac.new(hmac_key, canonical, hashlib.sha256).hexdigest()


def test_host_directory_holds_only_ciphertext_under_opaque_names(volume_dir: Path) -> None:
    names = set(os.listdir(volume_dir))
    assert names <= {"volume.json", "volume.journal", "objects", "new"}
    for host in (volume_dir / "objects").iterdir():
        assert len(host.name) == 32
        raw = host.read_bytes()
        assert b"alpha" not in raw and b"charlie" not in raw
    # Each object is a Gramine encrypted file bound to "<volume name>/<object id>".
    obj = _object(volume_dir, "/dir/c")
    assert decrypt_bytes(KEY, f"data/{obj.name}", obj.read_bytes()) == b"charlie" * 1000


def test_contents_survive_reopen_and_rename(volume_dir: Path, authority: LocalTagAuthority) -> None:
    with _open(volume_dir, authority, deep=True) as volume:
        assert volume.read_file("/big") == BIG
        volume.rename("/dir", "/moved")
        h = volume.open_file("/big")
        volume.write(h, 5000, b"X" * 10)
        volume.truncate("/a", 2)
    with _open(volume_dir, authority, deep=True) as volume:
        assert volume.listdir("/") == ["a", "big", "moved"]
        assert volume.read_file("/moved/c") == b"charlie" * 1000
        assert volume.read_file("/a") == b"al"
        assert volume.read_file("/big") == BIG[:5000] + b"X" * 10 + BIG[5010:]
        assert volume.version == 3


def test_inspect_volume_reads_record_without_files(volume_dir: Path) -> None:
    info = inspect_volume(volume_dir, KEY)
    assert info.name == "data" and info.version == 2
    assert sorted(info.files) == ["/a", "/big", "/dir/c"]
    assert info.files["/a"].size == 5
    assert "objects" not in json.dumps(info.to_json()["files"]["/a"])  # no host paths leak


# -- attacks ---------------------------------------------------------------------------------


def test_flipped_bit_in_metadata_node_is_refused(
    volume_dir: Path, authority: LocalTagAuthority
) -> None:
    _flip(_object(volume_dir, "/big"), 59 + 100)
    error = _refused(volume_dir, authority)
    assert error.reason == "encfs_bad_mac" and "/big" in str(error)


def test_flipped_bit_in_root_mht_node_is_refused(
    volume_dir: Path, authority: LocalTagAuthority
) -> None:
    _flip(_object(volume_dir, "/big"), 1 * NODE + 7)
    error = _refused(volume_dir, authority)
    assert error.reason == "encfs_bad_mac" and "/big" in str(error)


def test_flipped_bit_in_data_node_is_refused(
    volume_dir: Path, authority: LocalTagAuthority
) -> None:
    _flip(_object(volume_dir, "/big"), (10 + 2) * NODE + 99)
    assert _refused(volume_dir, authority).reason == "encfs_bad_mac"
    assert _refused(volume_dir, authority, deep=True).reason == "encfs_bad_mac"


def test_flipped_bit_in_child_mht_node_is_refused(
    volume_dir: Path, authority: LocalTagAuthority
) -> None:
    _flip(_object(volume_dir, "/big"), (1 + 97) * NODE + 1)
    with _open(volume_dir, authority) as volume:
        h = volume.open_file("/big")
        assert volume.read(h, 0, 100) == BIG[:100]  # the first MHT group is untouched
        with pytest.raises(VerificationError) as info:
            volume.read(h, 3072 + NODE * 96, 100)
    assert info.value.reason == "encfs_bad_mac"


def test_truncated_volume_file_is_refused(volume_dir: Path, authority: LocalTagAuthority) -> None:
    host = _object(volume_dir, "/big")
    os.truncate(host, host.stat().st_size - NODE)
    assert _refused(volume_dir, authority).reason == "encfs_truncated"


def test_path_swap_within_volume_is_refused(volume_dir: Path, authority: LocalTagAuthority) -> None:
    a, c = _object(volume_dir, "/a"), _object(volume_dir, "/dir/c")
    a_bytes, c_bytes = a.read_bytes(), c.read_bytes()
    a.write_bytes(c_bytes)
    c.write_bytes(a_bytes)
    error = _refused(volume_dir, authority)
    assert error.reason == "rollback_detected"
    assert "/a" in str(error) or "/dir/c" in str(error)


def test_file_swap_between_volumes_with_same_key_is_refused(
    volume_dir: Path, tmp_path: Path, authority: LocalTagAuthority
) -> None:
    with Volume.create(tmp_path / "other", KEY, "other", tag_authority=authority) as other:
        other.write_file("/a", b"other alpha")
    theirs = tmp_path / "other" / "objects" / next(iter(os.listdir(tmp_path / "other/objects")))
    shutil.copyfile(theirs, _object(volume_dir, "/a"))
    error = _refused(volume_dir, authority)
    assert error.reason == "rollback_detected" and "/a" in str(error)


def test_file_swap_between_volumes_with_other_key_is_refused(
    volume_dir: Path, tmp_path: Path, authority: LocalTagAuthority
) -> None:
    with Volume.create(tmp_path / "other", OTHER_KEY, "data") as other:
        other.write_file("/a", b"other alpha")
    theirs = tmp_path / "other" / "objects" / next(iter(os.listdir(tmp_path / "other/objects")))
    shutil.copyfile(theirs, _object(volume_dir, "/a"))
    error = _refused(volume_dir, authority)
    assert error.reason == "encfs_bad_mac" and "/a" in str(error)


def test_single_file_rollback_is_refused(volume_dir: Path, authority: LocalTagAuthority) -> None:
    host = _object(volume_dir, "/big")
    old = host.read_bytes()
    with _open(volume_dir, authority) as volume:
        h = volume.open_file("/big")
        volume.write(h, 100, b"new data")
    assert host.read_bytes() != old  # rewritten in place (through the journal)
    host.write_bytes(old)
    error = _refused(volume_dir, authority)
    assert error.reason == "rollback_detected" and "/big" in str(error)


def test_whole_volume_rollback_is_refused(
    volume_dir: Path, tmp_path: Path, authority: LocalTagAuthority
) -> None:
    snapshot = tmp_path / "snapshot"
    shutil.copytree(volume_dir, snapshot)
    with _open(volume_dir, authority) as volume:
        volume.write_file("/a", b"newer")
    shutil.rmtree(volume_dir)
    shutil.copytree(snapshot, volume_dir)
    assert _refused(volume_dir, authority).reason == "rollback_detected"
    assert _refused(volume_dir, authority, writable=False).reason == "rollback_detected"


def test_replayed_tag_report_is_refused(volume_dir: Path, authority: LocalTagAuthority) -> None:
    old_tag = authority.current_tag("data")
    assert old_tag is not None
    with _open(volume_dir, authority) as volume:
        volume.write_file("/a", b"newer")
    with pytest.raises(VerificationError) as info:
        authority.report_tag("data", 2, old_tag)
    assert info.value.reason == "tag_replayed"
    assert authority.current_tag("data") != old_tag


def test_commit_refused_by_authority_does_not_count(
    volume_dir: Path, authority: LocalTagAuthority
) -> None:
    volume = _open(volume_dir, authority)
    volume.write_file("/a", b"never committed")
    authority.report_tag("data", 99, b"\0" * 32)  # someone else advanced the volume
    with pytest.raises(VerificationError) as info:
        volume.commit()
    assert info.value.reason == "tag_replayed"
    with pytest.raises(VerificationError):
        volume.read_file("/a")  # the volume is failed
    volume.close()


def test_missing_file_is_refused(volume_dir: Path, authority: LocalTagAuthority) -> None:
    _object(volume_dir, "/dir/c").unlink()
    error = _refused(volume_dir, authority)
    assert error.reason == "rollback_detected" and "/dir/c" in str(error)


def test_extra_file_is_refused(volume_dir: Path, authority: LocalTagAuthority) -> None:
    shutil.copyfile(_object(volume_dir, "/a"), volume_dir / "objects" / ("ab" * 16))
    error = _refused(volume_dir, authority)
    assert error.reason == "rollback_detected" and "extra" in str(error)


def test_deleted_file_restored_from_older_copy_is_refused(
    volume_dir: Path, authority: LocalTagAuthority
) -> None:
    host = _object(volume_dir, "/a")
    old = host.read_bytes()
    with _open(volume_dir, authority) as volume:
        volume.unlink("/a")
    assert not host.exists()
    host.write_bytes(old)
    assert _refused(volume_dir, authority).reason == "rollback_detected"


def test_forged_record_is_refused(volume_dir: Path, authority: LocalTagAuthority) -> None:
    document = json.loads((volume_dir / "volume.json").read_text())
    document["record"]["files"]["/a"]["size"] = 3
    (volume_dir / "volume.json").write_text(json.dumps(document))
    assert _refused(volume_dir, authority).reason == "volume_bad_record"


def test_record_under_other_key_is_refused(volume_dir: Path, authority: LocalTagAuthority) -> None:
    with pytest.raises(VerificationError) as info:
        Volume.open(volume_dir, OTHER_KEY, "data", tag_authority=authority)
    assert info.value.reason == "volume_bad_record"


def test_volume_opened_under_other_name_is_refused(volume_dir: Path) -> None:
    with pytest.raises(VerificationError) as info:
        Volume.open(volume_dir, KEY, "other-volume")
    assert info.value.reason == "volume_name_mismatch"


def test_expected_tag_differing_from_authority_is_refused(
    volume_dir: Path, authority: LocalTagAuthority
) -> None:
    with pytest.raises(VerificationError) as info:
        Volume.open(volume_dir, KEY, "data", expected_tag=b"\1" * 32, tag_authority=authority)
    assert info.value.reason == "rollback_detected"


# -- commit ordering: what a crash at each point leaves --------------------------------------


class _CrashAfterReportError(Exception):
    pass


def test_crash_before_tag_report_leaves_old_state(
    volume_dir: Path, authority: LocalTagAuthority
) -> None:
    volume = _open(volume_dir, authority)
    h = volume.open_file("/big")
    volume.write(h, 0, b"Z" * 20000)
    volume.write_file("/new", b"fresh")
    # "Crash" between the pending record and the report: the authority never heard of it.
    unreachable = LocalTagAuthority()
    unreachable.report_tag("data", 10**9, b"\0" * 32)
    volume._authority = unreachable
    with pytest.raises(VerificationError):
        volume.commit()
    volume._release()
    assert (volume_dir / "volume.pending.json").exists()
    with _open(volume_dir, authority, deep=True) as volume:
        assert volume.read_file("/big") == BIG
        assert volume.listdir("/") == ["a", "big", "dir"]
        assert volume.version == 2
    assert not os.listdir(volume_dir / "new")


def test_crash_after_tag_report_leaves_new_state(
    volume_dir: Path, authority: LocalTagAuthority, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sealpod.encfs.volume as volume_module

    volume = _open(volume_dir, authority)
    h = volume.open_file("/big")
    volume.write(h, 0, b"Z" * 20000)
    volume.write_file("/new", b"fresh")

    def crash(*args: object) -> None:
        raise _CrashAfterReportError

    with monkeypatch.context() as patch:
        patch.setattr(volume_module, "_apply", crash)
        with pytest.raises(ConfigError):
            volume.commit()
    volume._release()
    assert authority.current_version("data") == 3
    with pytest.raises(VerificationError) as info:
        _open(volume_dir, authority, writable=False)
    assert info.value.reason == "volume_commit_unfinished"
    with _open(volume_dir, authority, deep=True) as volume:
        assert volume.read_file("/big") == b"Z" * 20000 + BIG[20000:]
        assert volume.read_file("/new") == b"fresh"
        assert volume.version == 3
    assert not (volume_dir / "volume.pending.json").exists()


def test_lost_pending_record_after_report_is_detected(
    volume_dir: Path, authority: LocalTagAuthority, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sealpod.encfs.volume as volume_module

    volume = _open(volume_dir, authority)
    volume.write_file("/a", b"newer")

    def crash(*args: object) -> None:
        raise _CrashAfterReportError

    with monkeypatch.context() as patch:
        patch.setattr(volume_module, "_apply", crash)
        with pytest.raises(ConfigError):
            volume.commit()
    volume._release()
    (volume_dir / "volume.pending.json").unlink()  # the host drops the pending commit
    assert _refused(volume_dir, authority).reason == "rollback_detected"


def test_open_without_expected_tag_warns(
    volume_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Volume.open(volume_dir, KEY, "data", writable=False):
        pass
    assert any("rollback" in r.getMessage() for r in caplog.records)
    tofu = InsecureTrustOnFirstUse()
    with Volume.open(volume_dir, KEY, "data", tag_authority=tofu) as volume:
        volume.write_file("/a", b"x")
    assert any("trust-on-first-use" in r.getMessage() for r in caplog.records)


def test_read_only_volume_refuses_writes(volume_dir: Path, authority: LocalTagAuthority) -> None:
    with _open(volume_dir, authority, writable=False) as volume:
        with pytest.raises(OSError):
            volume.write_file("/a", b"x")
        assert volume.read_file("/a") == b"alpha"


def test_create_refuses_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "x").write_text("x")
    with pytest.raises(ConfigError):
        Volume.create(tmp_path, KEY, "data")


def test_second_writer_on_same_volume_is_refused(
    volume_dir: Path, authority: LocalTagAuthority
) -> None:
    with _open(volume_dir, authority):
        with pytest.raises(ConfigError):
            _open(volume_dir, authority)
        with _open(volume_dir, authority, writable=False) as reader:
            assert reader.read_file("/a") == b"alpha"
    _open(volume_dir, authority).close()  # the lock goes with the first writer


def test_committed_reads_at_node_boundaries(volume_dir: Path, authority: LocalTagAuthority) -> None:
    with _open(volume_dir, authority) as volume:
        handle = volume.open_file("/big")
        for offset in (0, 1, 3071, 3072, 3073, 4095, 7167, 7168, 3072 + 96 * NODE - 1):
            for size in (1, 100, NODE, NODE + 1, 3 * NODE + 5, 1 << 20):
                assert volume.read(handle, offset, size) == BIG[offset : offset + size]
        assert volume.read(handle, len(BIG) - 10, 100) == BIG[-10:]
        assert volume.read(handle, len(BIG) + 10, 100) == b""


def test_interrupted_apply_is_redone_after_objects_were_removed(
    volume_dir: Path, authority: LocalTagAuthority, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sealpod.encfs.volume as volume_module

    old_object = _object(volume_dir, "/big")
    volume = _open(volume_dir, authority)
    handle = volume.open_file("/big")
    # Enough to make the file commit nodes to its store: journal entries for the old object ...
    volume.write(handle, 0, bytes(6 << 20))
    volume.truncate("/big", 0)  # ... which is then replaced and removed at the commit
    volume.write(handle, 0, b"replacement")

    def crash(*args: object) -> None:
        raise _CrashAfterReportError

    with monkeypatch.context() as patch:
        patch.setattr(volume_module, "_apply", crash)
        with pytest.raises(ConfigError):
            volume.commit()
    volume._release()
    assert (volume_dir / "volume.journal").stat().st_size > 0
    old_object.unlink()  # the interrupted apply had got as far as removing it
    with _open(volume_dir, authority, deep=True) as volume:
        assert volume.read_file("/big") == b"replacement"
        assert volume.version == 3


def test_file_moved_to_another_path_is_refused(
    volume_dir: Path, authority: LocalTagAuthority
) -> None:
    # The host renames /a's object over /dir/c's: /dir/c now holds a file bound elsewhere.
    os.replace(_object(volume_dir, "/a"), _object(volume_dir, "/dir/c"))
    error = _refused(volume_dir, authority)
    assert error.reason == "rollback_detected"
    assert "/a" in str(error) or "/dir/c" in str(error)


def test_file_read_back_after_its_commit(volume_dir: Path, authority: LocalTagAuthority) -> None:
    with _open(volume_dir, authority) as volume:
        handle = volume.open_file("/fresh", create=True)
        volume.write(handle, 0, b"appended")
        volume.commit()
        assert volume.read(handle, 0, 100) == b"appended"
        volume.write(handle, 8, b" more")
        volume.commit()
        assert volume.read(handle, 0, 100) == b"appended more"
        volume.write(handle, 0, b"A")
        assert volume.read(handle, 0, 100) == b"Appended more"
    with _open(volume_dir, authority) as volume:
        assert volume.read_file("/fresh") == b"Appended more"
