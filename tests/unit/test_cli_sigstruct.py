"""``sealpod key ...`` and ``sealpod sigstruct ...`` through the real entry point."""

from __future__ import annotations

import hashlib
import json
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sealpod.cli import main

MRENCLAVE = "5a" * 32

# The keys `gramine-sgx-sigstruct-view --verbose --output-format json` prints.
GRAMINE_VIEW_KEYS = [
    "mr_signer",
    "mr_enclave",
    "isv_prod_id",
    "isv_svn",
    "attribute_flags",
    "attribute_xfrms",
    "misc_select",
    "attribute_flags_mask",
    "attribute_xfrm_mask",
    "misc_mask",
    "date",
    "debug_enclave",
]


@dataclass
class Run:
    code: int
    out: str
    err: str


Runner = Callable[..., Run]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Runner:
    for name in ("SEALPOD_SIGNING_KEY", "SEALPOD_MRENCLAVE", "SEALPOD_DEBUG"):
        monkeypatch.delenv(name, raising=False)

    def _run(*args: str) -> Run:
        capsys.readouterr()
        try:
            returned = main(list(args))
            code = returned if isinstance(returned, int) else 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return _run


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keys")


@pytest.fixture(scope="module")
def key_file(key_dir: Path) -> Path:
    path = key_dir / "enclave-key.pem"
    main(["key", "generate", "-o", str(path)])
    return path


def _modulus_of(path: Path) -> int:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key.public_key().public_numbers().n


def _sign(run, key_file: Path, out: Path, *extra: str) -> Run:
    return run(
        "sigstruct",
        "sign",
        "--key",
        str(key_file),
        "--mrenclave",
        MRENCLAVE,
        "--date",
        "2024-02-29",
        "-o",
        str(out),
        *extra,
    )


def test_key_generate_writes_private_rsa3072_e3_pem_mode_0600(key_file: Path) -> None:
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.key_size == 3072
    assert key.public_key().public_numbers().e == 3


def test_key_generate_refuses_to_overwrite(run: Runner, key_file: Path) -> None:
    before = key_file.read_bytes()
    result = run("key", "generate", "-o", str(key_file))
    assert result.code == 1
    assert "exists" in result.err and "--force" in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert key_file.read_bytes() == before


def test_key_generate_force_overwrites(run: Runner, tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    path.write_text("old")
    path.chmod(0o644)
    result = run("key", "generate", "-o", str(path), "--force", "--json")
    assert result.code == 0, result.err
    n = _modulus_of(path)
    assert (
        json.loads(result.out)["mr_signer"] == hashlib.sha256(n.to_bytes(384, "little")).hexdigest()
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_key_show_prints_mrsigner(run: Runner, key_file: Path) -> None:
    result = run("key", "show", str(key_file), "--json")
    assert result.code == 0, result.err
    expected = hashlib.sha256(_modulus_of(key_file).to_bytes(384, "little")).hexdigest()
    assert json.loads(result.out)["mr_signer"] == expected
    assert "PRIVATE" not in result.out


def test_sign_then_inspect_json_has_gramine_keys(
    run: Runner, key_file: Path, tmp_path: Path
) -> None:
    sig = tmp_path / "enclave.sig"
    result = _sign(run, key_file, sig, "--isv-prod-id", "9", "--isv-svn", "4")
    assert result.code == 0, result.err
    assert sig.stat().st_size == 1808

    result = run("sigstruct", "inspect", str(sig), "--json")
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert [k for k in data if k in GRAMINE_VIEW_KEYS] == GRAMINE_VIEW_KEYS
    assert data["mr_enclave"] == MRENCLAVE
    n = _modulus_of(key_file)
    assert data["mr_signer"] == hashlib.sha256(n.to_bytes(384, "little")).hexdigest()
    assert data["isv_prod_id"] == 9
    assert data["isv_svn"] == 4
    assert data["date"] == "2024-02-29"
    assert data["debug_enclave"] is False
    assert data["attribute_flags"] == "0x4"
    assert data["signature_valid"] is True


def test_sign_debug_sets_debug_enclave(run: Runner, key_file: Path, tmp_path: Path) -> None:
    sig = tmp_path / "debug.sig"
    result = _sign(run, key_file, sig, "--debug")
    assert result.code == 0, result.err
    raw = sig.read_bytes()
    assert int.from_bytes(raw[928:936], "little") & 0x2
    data = json.loads(run("sigstruct", "inspect", str(sig), "--json").out)
    assert data["debug_enclave"] is True


def test_inspect_human_output_says_signature_valid(
    run: Runner, key_file: Path, tmp_path: Path
) -> None:
    sig = tmp_path / "e.sig"
    _sign(run, key_file, sig)
    result = run("sigstruct", "inspect", str(sig))
    assert result.code == 0
    assert f"mr_enclave: {MRENCLAVE}" in result.out
    assert "signature: valid" in result.out


def test_tampered_sigstruct_inspect_exits_1(run: Runner, key_file: Path, tmp_path: Path) -> None:
    sig = tmp_path / "e.sig"
    _sign(run, key_file, sig)
    raw = bytearray(sig.read_bytes())
    raw[1024] ^= 1  # ISVPRODID
    sig.write_bytes(bytes(raw))
    result = run("sigstruct", "inspect", str(sig), "--json")
    assert result.code == 1
    data = json.loads(result.out)
    assert data["signature_valid"] is False
    assert data["verification_error"] == "sigstruct_bad_signature"
    assert len(result.err.strip().splitlines()) == 1


def test_verify_accepts_matching_mrenclave(run: Runner, key_file: Path, tmp_path: Path) -> None:
    sig = tmp_path / "e.sig"
    _sign(run, key_file, sig)
    result = run("sigstruct", "verify", str(sig), "--mrenclave", MRENCLAVE, "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["valid"] is True


def test_verify_with_other_mrenclave_exits_1(run: Runner, key_file: Path, tmp_path: Path) -> None:
    sig = tmp_path / "e.sig"
    _sign(run, key_file, sig)
    result = run("sigstruct", "verify", str(sig), "--mrenclave", "00" * 32)
    assert result.code == 1
    assert "sigstruct_mrenclave_mismatch" in result.err
    assert "Traceback" not in result.err


def test_truncated_sigstruct_is_one_line_error(run: Runner, key_file: Path, tmp_path: Path) -> None:
    sig = tmp_path / "e.sig"
    _sign(run, key_file, sig)
    sig.write_bytes(sig.read_bytes()[:1000])
    for command in ("inspect", "verify"):
        result = run("sigstruct", command, str(sig))
        assert result.code == 1
        assert "sigstruct_bad_length" in result.err
        assert len(result.err.strip().splitlines()) == 1


def test_missing_sigstruct_file_is_one_line_error(run: Runner, tmp_path: Path) -> None:
    result = run("sigstruct", "inspect", str(tmp_path / "nope.sig"))
    assert result.code == 1
    assert len(result.err.strip().splitlines()) == 1


def test_sign_with_exponent_65537_key_is_refused(run: Runner, tmp_path: Path) -> None:
    wrong = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    path = tmp_path / "wrong.pem"
    path.write_bytes(
        wrong.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    result = _sign(run, path, tmp_path / "x.sig")
    assert result.code == 1
    assert "exponent 3" in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert not (tmp_path / "x.sig").exists()


def test_bad_mrenclave_hex_is_a_usage_error(run: Runner, key_file: Path, tmp_path: Path) -> None:
    result = run(
        "sigstruct", "sign", "--key", str(key_file), "--mrenclave", "abc", "-o", str(tmp_path / "x")
    )
    assert result.code == 2


def test_out_of_range_isv_svn_is_a_usage_error(run: Runner, key_file: Path, tmp_path: Path) -> None:
    result = _sign(run, key_file, tmp_path / "x.sig", "--isv-svn", "65536")
    assert result.code == 2
