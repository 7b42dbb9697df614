"""``sealpod build`` and ``sealpod inspect`` through the real entry point (exit codes, --json)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from sealpod.cli import main
from sealpod.image import (
    ImageConfig,
    LayerFile,
    layer_from_files,
    rootfs_to_image,
    write_oci_layout,
)
from sealpod.package import ENCLAVE_JSON, ENCLAVE_SIG, GRAMINE_MANIFEST, open_package
from sealpod.sgx import EnclaveSigningKey, write_signing_key


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("cli")
    root = base / "rootfs"
    (root / "usr/bin").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "usr/bin/server").write_bytes(b"#!/bin/sh\nexec sleep 1\n")
    (root / "usr/bin/server").chmod(0o755)
    (root / "etc/passwd").write_bytes(b"root:x:0:0::/root:/bin/sh\n")
    oci = rootfs_to_image(
        root, ImageConfig(entrypoint=("/usr/bin/server",), env=("PATH=/usr/bin",)), base / "oci"
    )
    key = EnclaveSigningKey.generate()
    key_file = base / "key.pem"
    write_signing_key(key_file, key)
    return {"base": base, "oci": oci, "key": key, "key_file": key_file}


def test_build_then_inspect_json(
    setup: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "pkg"
    code, stdout, stderr = run(
        capsys,
        "build",
        f"oci:{setup['oci']}",
        "-o",
        str(out),
        "--key",
        str(setup["key_file"]),
        "--isv-prod-id",
        "5",
        "--isv-svn",
        "2",
        "--volume",
        "db:/var/lib/db",
        "--tmpfs",
        "/tmp",
        "--env",
        "GREETING=hi",
        "--argv",
        "server",
        "--argv",
        "--port=1",
        "--json",
    )
    assert code == 0, stderr
    built = json.loads(stdout)
    code, stdout, stderr = run(capsys, "inspect", str(out), "--json")
    assert code == 0, stderr
    shown = json.loads(stdout)
    expected_signer = hashlib.sha256(setup["key"].modulus.to_bytes(384, "little")).hexdigest()
    assert shown["mrsigner"] == expected_signer
    assert shown["mrenclave"] == built["mrenclave"]
    assert shown["signature_valid"] is True
    assert (shown["isv_prod_id"], shown["isv_svn"], shown["debug"]) == (5, 2, False)
    assert shown["entrypoint"] == "/usr/bin/server"
    assert shown["argv"] == ["server", "--port=1"]
    assert shown["volumes"] == {"db": "/var/lib/db"}
    assert shown["trusted_files"] == 2
    assert shown["trusted_bytes"] == len(b"#!/bin/sh\nexec sleep 1\n") + len(
        b"root:x:0:0::/root:/bin/sh\n"
    )
    assert open_package(out).manifest.env["GREETING"] == "hi"


def test_inspect_human_output(
    setup: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "pkg"
    args = ["build", f"oci:{setup['oci']}", "-o", str(out), "--key", str(setup["key_file"])]
    assert run(capsys, *args)[0] == 0
    code, stdout, _ = run(capsys, "inspect", str(out))
    assert code == 0
    assert "signature_valid: True" in stdout
    assert "entrypoint: /usr/bin/server" in stdout


def test_inspect_of_a_swapped_enclave_json_fails_with_signature_invalid(
    setup: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    base = ["--key", str(setup["key_file"])]
    assert run(capsys, "build", f"oci:{setup['oci']}", "-o", str(tmp_path / "a"), *base)[0] == 0
    assert (
        run(
            capsys,
            "build",
            f"oci:{setup['oci']}",
            "-o",
            str(tmp_path / "b"),
            "--argv",
            "/usr/bin/server",
            "--argv",
            "--evil",
            *base,
        )[0]
        == 0
    )
    good, evil = open_package(tmp_path / "a"), open_package(tmp_path / "b")
    layer = layer_from_files(
        {
            ENCLAVE_JSON: LayerFile(evil.enclave_json),
            ENCLAVE_SIG: LayerFile(good.enclave_sig),
            GRAMINE_MANIFEST: LayerFile(good.gramine_manifest.encode()),
        },
        tmp_path / "work",
    )
    write_oci_layout(tmp_path / "c", good.image.config, [*good.rootfs_layers, layer])
    code, stdout, stderr = run(capsys, "inspect", str(tmp_path / "c"), "--json")
    assert code == 1
    assert json.loads(stdout)["signature_valid"] is False
    assert "package_mrenclave_mismatch" in stderr
    assert len(stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--volume", "no-colon"], "NAME:/absolute/path"),
        (["--tmpfs", "relative"], "absolute"),
        (["--argv", "/usr/bin/missing"], "not an executable"),
    ],
)
def test_bad_build_options_are_one_line_errors(
    setup: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    args: list[str],
    fragment: str,
) -> None:
    out = tmp_path / "pkg"
    code, stdout, stderr = run(
        capsys,
        "build",
        f"oci:{setup['oci']}",
        "-o",
        str(out),
        "--key",
        str(setup["key_file"]),
        *args,
    )
    assert code == 1
    assert stdout == ""
    assert fragment in stderr and len(stderr.strip().splitlines()) == 1
    assert "Traceback" not in stderr
    assert not out.exists()


def test_missing_key_file_is_a_one_line_error(
    setup: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, stderr = run(
        capsys, "build", f"oci:{setup['oci']}", "-o", str(tmp_path / "p"), "--key", "/nonexistent"
    )
    assert code == 1 and "signing key" in stderr and len(stderr.strip().splitlines()) == 1


def test_bad_env_is_a_usage_error(
    setup: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, _ = run(
        capsys,
        "build",
        f"oci:{setup['oci']}",
        "-o",
        str(tmp_path / "p"),
        "--key",
        str(setup["key_file"]),
        "--env",
        "NOEQUALS",
    )
    assert code == 2


def test_missing_output_option_is_a_usage_error(
    setup: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, _ = run(capsys, "build", f"oci:{setup['oci']}", "--key", str(setup["key_file"]))
    assert code == 2


def test_inspect_of_a_plain_image_is_a_one_line_error(
    setup: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    code, stdout, stderr = run(capsys, "inspect", str(setup["oci"]))
    assert code == 1 and stdout == ""
    assert "package_missing_enclave_files" in stderr


def test_inspect_of_a_missing_path_is_a_one_line_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, stderr = run(capsys, "inspect", str(tmp_path / "nothing"))
    assert code == 1 and len(stderr.strip().splitlines()) == 1
