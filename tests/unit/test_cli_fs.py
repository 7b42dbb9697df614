"""``sealpod fs`` as a user runs it (in-process through the real entry point)."""

from __future__ import annotations

import hashlib
import json
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from sealpod.encfs import decrypt_bytes, encrypt_bytes

RunCLI = Callable[[list[str]], tuple[int, str, str]]  # the `run_cli` fixture (conftest)

KEY = bytes.fromhex("000102030405060708090a0b0c0d0e0f")


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "wrap.key"
    path.write_bytes(KEY)
    return path


def test_keygen_writes_16_private_bytes(tmp_path: Path, run_cli: RunCLI) -> None:
    target = tmp_path / "k"
    code, out, _ = run_cli(["fs", "keygen", "-o", str(target), "--json"])
    assert code == 0
    assert json.loads(out) == {"key_file": str(target), "bytes": 16}
    assert len(target.read_bytes()) == 16
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    first = target.read_bytes()
    code, _, err = run_cli(["fs", "keygen", "-o", str(target)])
    assert code == 1 and "exists" in err and err.count("\n") == 1
    code, _, _ = run_cli(["fs", "keygen", "-o", str(target), "--force"])
    assert code == 0 and target.read_bytes() != first


def test_encrypt_binds_the_normalised_output_path(
    tmp_path: Path, key_file: Path, run_cli: RunCLI
) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_bytes(b"hello enclave" * 1000)
    out = tmp_path / "sealed.bin"
    unnormalised = f"{tmp_path}/./x/../sealed.bin"
    code, stdout, _ = run_cli(
        ["fs", "encrypt", "-k", str(key_file), "-i", str(plain), "-o", unnormalised, "--json"]
    )
    assert code == 0
    record = json.loads(stdout)["files"][0]
    assert record["bound_path"] == str(out)
    assert decrypt_bytes(KEY, str(out), out.read_bytes()) == plain.read_bytes()


def test_encrypt_with_path_binds_the_given_path(
    tmp_path: Path, key_file: Path, run_cli: RunCLI
) -> None:
    plain = tmp_path / "p"
    plain.write_bytes(b"x" * 5000)
    out = tmp_path / "s"
    code, _, _ = run_cli(
        ["fs", "encrypt", "-k", str(key_file), "-i", str(plain), "-o", str(out), "-p", "/app/db"]
    )
    assert code == 0
    assert decrypt_bytes(KEY, "/app/db", out.read_bytes()) == b"x" * 5000


def test_directory_round_trip_binds_each_relative_path(
    tmp_path: Path, key_file: Path, run_cli: RunCLI
) -> None:
    src = tmp_path / "src"
    (src / "sub" / "deeper").mkdir(parents=True)
    files = {"a.txt": b"A" * 10, "sub/b.bin": b"B" * 9000, "sub/deeper/c": b""}
    for name, content in files.items():
        (src / name).write_bytes(content)
    enc = tmp_path / "enc"
    code, out, _ = run_cli(
        ["fs", "encrypt", "-k", str(key_file), "-i", str(src), "-o", str(enc), "-p", "/app/data"]
    )
    assert code == 0 and out.count("encrypted") == 3
    for name, content in files.items():
        assert decrypt_bytes(KEY, f"/app/data/{name}", (enc / name).read_bytes()) == content

    code, out, _ = run_cli(["fs", "verify", "-k", str(key_file), str(enc), "--json"])
    assert code == 0
    report = json.loads(out)
    assert report["ok"] is True
    assert sorted(f["bound_path"] for f in report["files"]) == sorted(
        f"/app/data/{n}" for n in files
    )

    dec = tmp_path / "dec"
    code, _, _ = run_cli(
        ["fs", "decrypt", "-k", str(key_file), "-i", str(enc), "-o", str(dec), "-p", "/app/data"]
    )
    assert code == 0
    for name, content in files.items():
        assert (dec / name).read_bytes() == content


def test_decrypt_with_verify_path_checks_the_input_path(
    tmp_path: Path, key_file: Path, run_cli: RunCLI
) -> None:
    sealed = tmp_path / "f.enc"
    sealed.write_bytes(encrypt_bytes(KEY, str(sealed), b"payload"))
    moved = tmp_path / "moved.enc"
    moved.write_bytes(sealed.read_bytes())
    out = tmp_path / "out"
    code, _, _ = run_cli(
        ["fs", "decrypt", "-k", str(key_file), "-i", str(sealed), "-o", str(out), "-V"]
    )
    assert code == 0 and out.read_bytes() == b"payload"
    out.unlink()
    code, _, err = run_cli(
        ["fs", "decrypt", "-k", str(key_file), "-i", str(moved), "-o", str(out), "-V"]
    )
    assert code == 1 and err.startswith("error: encfs_path_mismatch") and err.count("\n") == 1
    assert not out.exists()


def test_decrypt_gramine_vector(
    encrypted_files_vectors: Path,
    tmp_path: Path,
    run_cli: RunCLI,
) -> None:
    manifest = json.loads((encrypted_files_vectors / "manifest.json").read_text())
    vector = next(v for v in manifest["vectors"] if v["file"] == "f_401413.keyB.bin")
    out = tmp_path / "out"
    code, stdout, _ = run_cli(
        [
            "fs",
            "decrypt",
            "-k",
            str(encrypted_files_vectors / manifest["key_files"]["B"]),
            "-i",
            str(encrypted_files_vectors / vector["file"]),
            "-o",
            str(out),
            "--path",
            vector["embedded_path"],
            "--json",
        ]
    )
    assert code == 0
    assert hashlib.sha256(out.read_bytes()).hexdigest() == vector["plaintext_sha256"]
    assert json.loads(stdout)["files"][0]["size"] == vector["plaintext_size"]


def test_verify_reports_each_tampered_file_and_exits_1(
    tmp_path: Path, key_file: Path, run_cli: RunCLI
) -> None:
    good = tmp_path / "good"
    good.write_bytes(encrypt_bytes(KEY, "/g", b"g" * 8000))
    bad = tmp_path / "bad"
    blob = bytearray(encrypt_bytes(KEY, "/b", b"b" * 8000))
    blob[4096 * 2 + 5] ^= 1
    bad.write_bytes(blob)
    code, out, err = run_cli(["fs", "verify", "-k", str(key_file), str(good), str(bad), "--json"])
    assert code == 1
    report = json.loads(out)
    assert report["ok"] is False
    assert [f["ok"] for f in report["files"]] == [True, False]
    assert report["files"][1]["reason"] == "encfs_bad_mac"
    assert err.count("\n") == 1 and "1 of 2 files failed" in err


def test_verify_with_wrong_path_fails(tmp_path: Path, key_file: Path, run_cli: RunCLI) -> None:
    sealed = tmp_path / "s"
    sealed.write_bytes(encrypt_bytes(KEY, "/right", b"z"))
    code, out, _ = run_cli(["fs", "verify", "-k", str(key_file), str(sealed), "-p", "/wrong"])
    assert code == 1 and "encfs_path_mismatch" in out


def test_wrong_size_key_file_is_one_line_exit_1(tmp_path: Path, run_cli: RunCLI) -> None:
    key = tmp_path / "k"
    key.write_bytes(b"0123456789abcdef\n")  # 17 bytes: a hex/text key is not a raw key
    plain = tmp_path / "p"
    plain.write_bytes(b"x")
    code, out, err = run_cli(
        ["fs", "encrypt", "-k", str(key), "-i", str(plain), "-o", str(tmp_path / "o")]
    )
    assert code == 1 and out == "" and err.count("\n") == 1 and "16 raw bytes" in err


def test_missing_input_is_one_line_exit_1(tmp_path: Path, key_file: Path, run_cli: RunCLI) -> None:
    code, _, err = run_cli(
        ["fs", "encrypt", "-k", str(key_file), "-i", str(tmp_path / "nope"), "-o", "x"]
    )
    assert code == 1 and err.count("\n") == 1


def test_path_and_verify_path_together_are_a_usage_error(
    tmp_path: Path, key_file: Path, run_cli: RunCLI
) -> None:
    code, _, _ = run_cli(
        ["fs", "decrypt", "-k", str(key_file), "-i", "a", "-o", "b", "-p", "/x", "-V"]
    )
    assert code == 2


def test_missing_key_option_is_a_usage_error(run_cli: RunCLI) -> None:
    code, _, err = run_cli(["fs", "verify", "somefile"])
    assert code == 2 and "--key" in err
