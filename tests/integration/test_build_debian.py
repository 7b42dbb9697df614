"""``build_package`` over a real Debian root filesystem with Python (cached debootstrap).

Uses the same cached rootfs as ``test_rootfs_debian.py`` (``python`` with ``python3-minimal``),
so the cache is built once. Needs root and debootstrap (and the host's Debian mirror the first
time).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tomllib
from pathlib import Path

import pytest

from sealpod.image import ImageConfig, build_debian_rootfs, rootfs_to_image
from sealpod.package import build_package, open_package, package_rootfs_layers, verify_package
from sealpod.sgx import EnclaveSigningKey

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="debootstrap needs root"),
    pytest.mark.skipif(
        shutil.which("debootstrap", path=os.environ.get("PATH", "") + ":/usr/sbin") is None,
        reason="debootstrap is not installed (scripts/bootstrap.sh installs it)",
    ),
]


@pytest.fixture(scope="module")
def python_rootfs() -> Path:
    return build_debian_rootfs("python", ["python3-minimal"])


def test_debian_python_package_is_the_same_from_oci_and_docker_archive(
    python_rootfs: Path, tmp_path: Path
) -> None:
    config = ImageConfig(
        entrypoint=("python3",), cmd=("-c", "print(42)"), env=("PATH=/usr/bin:/bin",)
    )
    oci = rootfs_to_image(python_rootfs, config, tmp_path / "oci", compression="none")
    archive = rootfs_to_image(
        python_rootfs, config, tmp_path / "image.tar", image_format="docker-archive"
    )
    key = EnclaveSigningKey.generate()
    infos = [
        build_package(f"oci:{oci}", tmp_path / "p-oci", key, tmpfs=["/tmp"]),
        build_package(f"docker-archive:{archive}", tmp_path / "p-archive", key, tmpfs=["/tmp"]),
    ]
    assert infos[0].mrenclave == infos[1].mrenclave
    package = open_package(tmp_path / "p-oci")
    info = verify_package(package, expected_mr_signer=key.mr_signer)
    assert info.mrenclave == infos[0].mrenclave
    assert info.entrypoint == "/usr/bin/python3"
    manifest = package.manifest

    # Every regular file of the rootfs outside the skipped trees is trusted with its hash.
    expected: dict[str, str] = {}
    for directory, dirnames, filenames in os.walk(python_rootfs):
        rel = "/" + os.path.relpath(directory, python_rootfs).removeprefix(".").lstrip("/")
        if rel.rstrip("/") in ("/proc", "/sys", "/dev", "/tmp"):
            dirnames.clear()
            continue
        for name in filenames:
            path = Path(directory) / name
            image_path = f"{rel.rstrip('/')}/{name}"
            if path.is_symlink() or not path.is_file():
                continue
            if image_path in ("/etc/shadow", "/etc/gshadow") or (
                rel == "/etc" and name.endswith("-")
            ):
                continue
            expected[image_path] = hashlib.sha256(path.read_bytes()).hexdigest()
    files = {p: t.sha256 for p, t in manifest.trusted_files.items() if t.type == "file"}
    assert files == expected
    assert len(files) > 1000
    assert manifest.trusted_files["/usr/bin/python3"].type == "symlink"

    toml = tomllib.loads(package.gramine_manifest)
    listed = {e["uri"].removeprefix("file:"): e["sha256"] for e in toml["sgx"]["trusted_files"]}
    assert {p: h for p, h in listed.items() if p in expected} == expected
    for path in listed.keys() - expected.keys():  # links, listed with their target's hash
        assert manifest.trusted_files[path].type == "symlink"
    target = os.readlink(python_rootfs / "usr/bin/python3")
    assert "/" not in target
    python = (python_rootfs / "usr/bin" / target).read_bytes()
    assert listed["/usr/bin/python3"] == hashlib.sha256(python).hexdigest()

    rootfs = package_rootfs_layers(package)
    assert len(rootfs.layers) == 1
