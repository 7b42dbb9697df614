"""Confidential packages: build, measure, sign, read back, verify; one test per attack.

Expected values are computed here independently: file hashes with hashlib over the bytes the
test wrote, MRENCLAVE by re-implementing the SGX measurement records of Intel SDM Vol. 3D
38.7 (ECREATE/EADD/EEXTEND) over the documented layout, MRSIGNER as SHA-256 of the modulus.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import io
import json
import os
import stat
import struct
import tarfile
import tomllib
from pathlib import Path
from typing import Any

import pytest

from sealpod.errors import ConfigError, ManifestError, VerificationError
from sealpod.image import (
    ImageConfig,
    Layer,
    LayerFile,
    layer_from_files,
    open_image,
    rootfs_to_image,
    write_oci_layout,
)
from sealpod.package import (
    ENCLAVE_JSON,
    ENCLAVE_SIG,
    GRAMINE_MANIFEST,
    EnclaveManifest,
    build_manifest,
    build_package,
    measure_manifest,
    open_package,
    package_rootfs_layers,
    verify_package,
)
from sealpod.package._hashing import hash_files
from sealpod.runtime.policy import ShieldPolicy
from sealpod.sgx import SIGSTRUCT, EnclaveSigningKey

DATE = dt.date(2026, 1, 2)
APP = b"#!/bin/sh\necho hello\n"
LIB = bytes(range(256)) * 40


def sha_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def key() -> EnclaveSigningKey:
    return EnclaveSigningKey.generate()


@pytest.fixture(scope="module")
def other_key() -> EnclaveSigningKey:
    return EnclaveSigningKey.generate()


def make_rootfs(root: Path) -> Path:
    """A small tree with everything the trust rules care about."""
    files: dict[str, bytes] = {
        "usr/bin/app": APP,
        "usr/lib/libfoo.so": LIB,
        "etc/passwd": b"root:x:0:0:root:/root:/bin/sh\nsvc:x:1000:1001::/home/svc:/bin/sh\n",
        "etc/group": b"root:x:0:\nsvc:x:1001:\nstaff:x:50:\n",
        "etc/shadow": b"root:$6$secret:19000::::::\n",
        "etc/gshadow": b"root:*::\n",
        "etc/shadow-": b"root:$6$older:19000::::::\n",
        "etc/passwd-": b"root:x:0:0:root:/root:/bin/sh\n",
        "var/cache/app/big.log": b"log line\n",
        "var/cache/keep.txt": b"kept\n",
        "tmp/leftover": b"temporary\n",
        "data/old-state": b"state\n",
        "srv/config.ini": b"[app]\nport=8080\n",
        "proc/fake": b"not a kernel file\n",
        "dev/fake": b"not a device\n",
    }
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "usr/bin/app").chmod(0o755)
    (root / "usr/bin/app-link").symlink_to("app")
    os.link(root / "usr/lib/libfoo.so", root / "usr/lib/libfoo.so.1")
    return root


CONFIG = ImageConfig(
    entrypoint=("/usr/bin/app",),
    cmd=("--serve",),
    env=("PATH=/usr/bin:/bin", "MODE=prod"),
    working_dir="/srv",
    user="svc:staff",
)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("images")
    rootfs = make_rootfs(base / "rootfs")
    oci = rootfs_to_image(rootfs, CONFIG, base / "oci")
    archive = rootfs_to_image(rootfs, CONFIG, base / "image.tar", image_format="docker-archive")
    return {"rootfs": rootfs, "oci": oci, "archive": archive, "base": base}


@pytest.fixture(scope="module")
def package(
    images: dict[str, Any], key: EnclaveSigningKey, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("pkg") / "package"
    build_package(
        f"oci:{images['oci']}",
        out,
        key,
        isv_prod_id=7,
        isv_svn=3,
        tmpfs=["/tmp"],
        volumes={"state": "/data"},
        allow=["/var/cache/keep.txt"],
        exclude=["/var/cache/app"],
        env={"MODE": "test", "EXTRA": "1"},
        date=DATE,
    )
    return out


# -- independent MRENCLAVE --------------------------------------------------------------------


def expected_mrenclave(manifest_bytes: bytes) -> bytes:
    """SDM 38.7 measurement records over the layout documented in sealpod.package.measure."""
    page = 4096
    h = hashlib.sha256()
    h.update(b"ECREATE\0" + struct.pack("<I", 1) + struct.pack("<Q", 1 << 30) + bytes(44))

    def add(offset: int, data: bytes, flags: int) -> None:
        h.update(b"EADD\0\0\0\0" + struct.pack("<QQ", offset, flags) + bytes(40))
        for chunk in range(0, page, 256):
            h.update(b"EEXTEND\0" + struct.pack("<Q", offset + chunk) + bytes(48))
            h.update(data[chunk : chunk + 256])

    padded = manifest_bytes + bytes(-len(manifest_bytes) % page)
    for offset in range(0, len(padded), page):
        add(offset, padded[offset : offset + page], 0x201)  # R, PT_REG
    runtime = b"sealpod-runtime-v1".ljust(64, b"\0") + struct.pack("<Q", len(manifest_bytes))
    add(len(padded), runtime.ljust(page, b"\0"), 0x205)  # R|X, PT_REG
    return h.digest()


# -- build, read back, verify -----------------------------------------------------------------


def test_built_package_verifies_and_describes_the_image(
    package: Path, key: EnclaveSigningKey
) -> None:
    opened = open_package(package)
    info = verify_package(opened, expected_mr_signer=key.mr_signer)
    assert info.mrsigner == sha_hex(key.modulus.to_bytes(384, "little"))
    assert info.mrenclave == expected_mrenclave(opened.enclave_json).hex()
    assert (info.isv_prod_id, info.isv_svn, info.debug) == (7, 3, False)
    assert info.entrypoint == "/usr/bin/app"
    assert info.argv == ("/usr/bin/app", "--serve")
    assert dict(info.volumes) == {"state": "/data"}
    manifest = opened.manifest
    assert manifest.env == {"PATH": "/usr/bin:/bin", "MODE": "test", "EXTRA": "1"}
    assert manifest.working_dir == "/srv"
    assert (manifest.user.uid, manifest.user.gid) == (1000, 50)
    assert manifest.tmpfs == ("/tmp",)
    assert manifest.allowed_files == ("/var/cache/keep.txt",)


def test_trusted_files_are_every_file_and_link_but_the_excluded(package: Path) -> None:
    manifest = open_package(package).manifest
    assert sorted(manifest.trusted_files) == [
        "/etc/group",
        "/etc/passwd",
        "/srv/config.ini",
        "/usr/bin/app",
        "/usr/bin/app-link",
        "/usr/lib/libfoo.so",
        "/usr/lib/libfoo.so.1",
    ]
    lib = manifest.trusted_files["/usr/lib/libfoo.so"]
    assert (lib.sha256, lib.size, lib.type) == (sha_hex(LIB), len(LIB), "file")
    assert manifest.trusted_files["/usr/lib/libfoo.so.1"].sha256 == sha_hex(LIB)
    app = manifest.trusted_files["/usr/bin/app"]
    assert (app.sha256, app.mode) == (sha_hex(APP), 0o755)
    link = manifest.trusted_files["/usr/bin/app-link"]
    assert (link.type, link.sha256, link.size) == ("symlink", sha_hex(b"app"), 3)
    assert manifest.trusted_bytes == 2 * len(LIB) + len(APP) + sum(
        manifest.trusted_files[p].size for p in ("/etc/group", "/etc/passwd", "/srv/config.ini")
    )


def test_shadow_files_are_not_trusted(package: Path) -> None:
    trusted = open_package(package).manifest.trusted_files
    for path in ("/etc/shadow", "/etc/gshadow", "/etc/shadow-", "/etc/passwd-"):
        assert path not in trusted


def test_excluded_tmpfs_volume_proc_and_dev_files_are_not_trusted(package: Path) -> None:
    trusted = open_package(package).manifest.trusted_files
    for path in (
        "/var/cache/app/big.log",
        "/var/cache/keep.txt",
        "/tmp/leftover",
        "/data/old-state",
        "/proc/fake",
        "/dev/fake",
    ):
        assert path not in trusted


def test_original_layer_blobs_are_kept_unchanged(package: Path, images: dict[str, Any]) -> None:
    source = open_image(f"oci:{images['oci']}")
    built = open_image(f"oci:{package}")
    assert len(built.layers) == len(source.layers) + 1
    for original, copied in zip(source.layers, built.layers, strict=False):
        assert copied.digest == original.digest
        assert copied.path.read_bytes() == original.path.read_bytes()


def test_sealpod_layer_holds_exactly_the_three_files(package: Path) -> None:
    layer = open_image(f"oci:{package}").layers[-1]
    # Stored uncompressed (read at every start): the blob is the tar.
    assert layer.media_type == "application/vnd.oci.image.layer.v1.tar"
    with tarfile.open(fileobj=io.BytesIO(layer.path.read_bytes())) as tar:
        names = {m.name for m in tar if m.isfile()}
        sig = tar.extractfile("/".join((".sealpod", "enclave.sig")))
        assert sig is not None
        assert len(sig.read()) == 1808
    assert names == {ENCLAVE_JSON, ENCLAVE_SIG, GRAMINE_MANIFEST}


def test_enclave_json_is_canonical(package: Path) -> None:
    raw = open_package(package).enclave_json
    document = json.loads(raw)
    assert raw == json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    assert document["schema_version"] == 1


def test_gramine_manifest_parses_and_carries_every_trusted_file(package: Path) -> None:
    opened = open_package(package)
    toml = tomllib.loads(opened.gramine_manifest)
    files = {p: t.sha256 for p, t in opened.manifest.trusted_files.items() if t.type == "file"}
    files["/usr/bin/app-link"] = sha_hex(APP)  # a link is listed with its target's content
    listed = {e["uri"].removeprefix("file:"): e["sha256"] for e in toml["sgx"]["trusted_files"]}
    assert listed == files
    assert toml["libos"]["entrypoint"] == "/usr/bin/app"
    assert toml["loader"]["entrypoint"]["uri"].startswith("file:")
    assert toml["loader"]["argv"] == ["/usr/bin/app", "--serve"]
    assert toml["loader"]["env"]["MODE"] == "test"
    assert toml["sgx"]["isvprodid"] == 7
    assert toml["sgx"]["isvsvn"] == 3
    assert toml["sgx"]["debug"] is False
    assert toml["sgx"]["remote_attestation"] == "dcap"
    assert toml["sgx"]["allowed_files"] == ["file:/var/cache/keep.txt"]
    assert toml["sys"]["enable_extra_runtime_domain_names_conf"] is True
    mounts = toml["fs"]["mounts"]
    assert {"type": "tmpfs", "path": "/tmp"} in mounts
    encrypted = [m for m in mounts if m["type"] == "encrypted"]
    assert len(encrypted) == 1 and encrypted[0]["path"] == "/data" and encrypted[0]["key_name"]


def test_mrenclave_is_stable_across_rebuilds_and_image_formats(
    images: dict[str, Any], key: EnclaveSigningKey, tmp_path: Path
) -> None:
    found = set()
    for i, source in enumerate(
        (f"oci:{images['oci']}", f"oci:{images['oci']}", f"docker-archive:{images['archive']}")
    ):
        info = build_package(source, tmp_path / f"p{i}", key, date=DATE)
        found.add(info.mrenclave)
    assert len(found) == 1
    assert (tmp_path / "p0" / "index.json").read_bytes() == (
        tmp_path / "p1" / "index.json"
    ).read_bytes()


def test_dir_source_needs_argv_and_builds_with_it(
    images: dict[str, Any], key: EnclaveSigningKey, tmp_path: Path
) -> None:
    with pytest.raises(ManifestError, match="argv"):
        build_package(f"dir:{images['rootfs']}", tmp_path / "a", key)
    assert not (tmp_path / "a").exists()
    info = build_package(f"dir:{images['rootfs']}", tmp_path / "b", key, argv=["app", "-x"])
    assert info.entrypoint == "/usr/bin/app"  # found through the default PATH
    verify_package(open_package(tmp_path / "b"))


# -- what changes MRENCLAVE -------------------------------------------------------------------


def _measure(root: Path, **options: Any) -> bytes:
    return measure_manifest(build_manifest(root, CONFIG, **options))


def test_every_policy_change_changes_mrenclave(tmp_path: Path) -> None:
    root = make_rootfs(tmp_path / "rootfs")
    baseline = _measure(root)
    variants = {
        "argv": {"argv": ["/usr/bin/app", "--other"]},
        "env": {"env": {"MODE": "dev"}},
        "tmpfs": {"tmpfs": ["/run"]},
        "volume": {"volumes": {"state": "/data2"}},
        "allow": {"allow": ["/var/log"]},
        "exclude": {"exclude": ["/srv/*"]},
        "isv_svn": {"isv_svn": 1},
        "isv_prod_id": {"isv_prod_id": 1},
        "debug": {"debug": True},
    }
    seen = {baseline}
    for name, options in variants.items():
        measured = _measure(root, **options)
        assert measured not in seen, name
        seen.add(measured)
    assert _measure(root) == baseline


@pytest.mark.parametrize(
    "change",
    ["flip_byte", "mode", "new_file", "remove_file", "retarget_link"],
)
def test_any_file_change_changes_mrenclave(tmp_path: Path, change: str) -> None:
    root = make_rootfs(tmp_path / "rootfs")
    baseline = _measure(root)
    lib = root / "usr/lib/libfoo.so"
    if change == "flip_byte":
        data = bytearray(lib.read_bytes())
        data[100] ^= 1
        lib.write_bytes(bytes(data))  # same size, one bit
    elif change == "mode":
        (root / "srv/config.ini").chmod(0o600)
    elif change == "new_file":
        (root / "srv/extra").write_bytes(b"")
    elif change == "remove_file":
        (root / "srv/config.ini").unlink()
    else:
        (root / "usr/bin/app-link").unlink()
        (root / "usr/bin/app-link").symlink_to("./app")
    assert _measure(root) != baseline


# -- attacks on packages ----------------------------------------------------------------------


def _repack(package: Path, dest: Path, **replacements: bytes) -> Path:
    """A copy of ``package`` whose sealpod layer has some files replaced."""
    opened = open_package(package)
    files = {
        ENCLAVE_JSON: opened.enclave_json,
        ENCLAVE_SIG: opened.enclave_sig,
        GRAMINE_MANIFEST: opened.gramine_manifest.encode(),
    }
    for name, data in replacements.items():
        files[{"json": ENCLAVE_JSON, "sig": ENCLAVE_SIG, "gramine": GRAMINE_MANIFEST}[name]] = data
    layer = layer_from_files(
        {k: LayerFile(v, 0o444) for k, v in files.items()}, dest.parent / "work"
    )
    write_oci_layout(dest, opened.image.config, [*opened.rootfs_layers, layer])
    return dest


@pytest.fixture(scope="module")
def second_package(
    images: dict[str, Any], key: EnclaveSigningKey, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("pkg2") / "package"
    build_package(f"oci:{images['oci']}", out, key, argv=["/usr/bin/app", "--evil"], date=DATE)
    return out


def test_swapped_enclave_json_is_refused(
    package: Path, second_package: Path, tmp_path: Path
) -> None:
    evil_json = open_package(second_package).enclave_json
    swapped = open_package(_repack(package, tmp_path / "p", json=evil_json))
    with pytest.raises(VerificationError) as caught:
        verify_package(swapped)
    assert caught.value.reason == "package_mrenclave_mismatch"


def test_swapped_enclave_sig_is_refused(
    package: Path, second_package: Path, tmp_path: Path
) -> None:
    other_sig = open_package(second_package).enclave_sig
    swapped = open_package(_repack(package, tmp_path / "p", sig=other_sig))
    with pytest.raises(VerificationError) as caught:
        verify_package(swapped)
    assert caught.value.reason == "package_mrenclave_mismatch"


def test_sigstruct_edited_to_the_new_mrenclave_is_refused(
    package: Path, second_package: Path, tmp_path: Path
) -> None:
    # The attacker swaps enclave.json and patches ENCLAVEHASH to match: the signature breaks.
    evil = open_package(second_package)
    sig = bytearray(open_package(package).enclave_sig)
    sig[960:992] = expected_mrenclave(evil.enclave_json)
    tampered = open_package(
        _repack(package, tmp_path / "p", json=evil.enclave_json, sig=bytes(sig))
    )
    with pytest.raises(VerificationError) as caught:
        verify_package(tampered)
    assert caught.value.reason == "sigstruct_bad_signature"


def test_package_resigned_by_another_key_is_refused_when_mrsigner_is_pinned(
    package: Path, key: EnclaveSigningKey, other_key: EnclaveSigningKey, tmp_path: Path
) -> None:
    from sealpod.sgx import sign_sigstruct

    original = SIGSTRUCT.from_bytes(open_package(package).enclave_sig)
    resigned = sign_sigstruct(original, other_key).to_bytes()
    forged = open_package(_repack(package, tmp_path / "p", sig=resigned))
    verify_package(forged)  # a valid package of another signer ...
    with pytest.raises(VerificationError) as caught:
        verify_package(forged, expected_mr_signer=key.mr_signer)
    assert caught.value.reason == "sigstruct_mrsigner_mismatch"


def test_non_canonical_enclave_json_is_refused(package: Path, tmp_path: Path) -> None:
    document = json.loads(open_package(package).enclave_json)
    pretty = json.dumps(document, indent=1).encode()
    tampered = open_package(_repack(package, tmp_path / "p", json=pretty))
    with pytest.raises(VerificationError) as caught:
        verify_package(tampered)
    assert caught.value.reason == "package_manifest_not_canonical"


def test_sigstruct_with_other_isv_svn_than_the_manifest_is_refused(
    package: Path, key: EnclaveSigningKey, tmp_path: Path
) -> None:
    from dataclasses import replace

    from sealpod.sgx import sign_sigstruct

    original = SIGSTRUCT.from_bytes(open_package(package).enclave_sig)
    raised = sign_sigstruct(replace(original, isv_svn=original.isv_svn + 1), key).to_bytes()
    tampered = open_package(_repack(package, tmp_path / "p", sig=raised))
    with pytest.raises(VerificationError) as caught:
        verify_package(tampered)
    assert caught.value.reason == "package_identity_mismatch"


def test_garbage_enclave_json_is_refused(package: Path, tmp_path: Path) -> None:
    with pytest.raises(VerificationError) as caught:
        open_package(_repack(package, tmp_path / "p", json=b'{"argv": 1}'))
    assert caught.value.reason == "package_manifest_invalid"


def test_extra_file_in_the_sealpod_layer_is_refused(package: Path, tmp_path: Path) -> None:
    opened = open_package(package)
    layer = layer_from_files(
        {
            ENCLAVE_JSON: opened.enclave_json,
            ENCLAVE_SIG: opened.enclave_sig,
            GRAMINE_MANIFEST: opened.gramine_manifest.encode(),
            "etc/ld.so.preload": b"/evil.so\n",
        },
        tmp_path / "work",
    )
    write_oci_layout(tmp_path / "p", opened.image.config, [*opened.rootfs_layers, layer])
    with pytest.raises(VerificationError) as caught:
        open_package(tmp_path / "p")
    assert caught.value.reason == "package_layer_malformed"


def _with_gzip_sealpod_layer(package: Path, dest: Path, *, truncate: bool = False) -> Path:
    """The package with its sealpod layer stored gzip-compressed (as builds before 0.1 did)."""
    opened = open_package(package)
    layer = layer_from_files(
        {
            ENCLAVE_JSON: opened.enclave_json,
            ENCLAVE_SIG: opened.enclave_sig,
            GRAMINE_MANIFEST: opened.gramine_manifest.encode(),
        },
        dest.with_name(dest.name + "-work"),
        compression="gzip",
    )
    if truncate:
        # A well-formed descriptor (digest and diff_id of what is stored) over a gzip member
        # that ends early.
        cut = layer.path.read_bytes()[:-20]
        whole = gzip.decompress(layer.path.read_bytes())
        path = layer.path.with_name(sha_hex(cut))
        path.write_bytes(cut)
        layer = Layer(
            media_type=layer.media_type,
            digest=f"sha256:{sha_hex(cut)}",
            size=len(cut),
            diff_id=f"sha256:{sha_hex(whole)}",
            path=path,
        )
    write_oci_layout(dest, opened.image.config, [*opened.rootfs_layers, layer])
    return dest


def test_gzip_sealpod_layer_of_older_packages_is_read(package: Path, tmp_path: Path) -> None:
    copy = open_package(_with_gzip_sealpod_layer(package, tmp_path / "p"))
    assert copy.sealpod_layer.compression == "gzip"
    assert copy.enclave_json == open_package(package).enclave_json
    assert verify_package(copy).mrenclave == verify_package(open_package(package)).mrenclave


def test_truncated_gzip_sealpod_layer_is_refused(package: Path, tmp_path: Path) -> None:
    copy = _with_gzip_sealpod_layer(package, tmp_path / "p", truncate=True)
    with pytest.raises(VerificationError) as caught:
        open_package(copy)
    assert caught.value.reason == "package_layer_malformed"


def test_image_without_sealpod_layer_is_refused(images: dict[str, Any]) -> None:
    with pytest.raises(VerificationError) as caught:
        open_package(images["oci"])
    assert caught.value.reason == "package_missing_enclave_files"


def test_tampered_sealpod_layer_blob_is_refused(package: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "p"
    shutil.copytree(package, copy)
    blob = open_image(f"oci:{copy}").layers[-1].path
    data = bytearray(blob.read_bytes())
    data[-10] ^= 1
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    with pytest.raises(VerificationError) as caught:
        open_package(copy)
    assert caught.value.reason == "blob_digest_mismatch"


def _layer_with_traversal(work: Path, *, symlink: bool = False) -> Layer:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("usr/bin/app")
        info.size, info.mode = len(APP), 0o755
        tar.addfile(info, io.BytesIO(APP))
        if symlink:
            info = tarfile.TarInfo("etc/host")
            info.type, info.linkname = tarfile.SYMTYPE, "../../../../etc"
            tar.addfile(info)
        else:
            info = tarfile.TarInfo("../escaped")
            info.size, info.mode = 6, 0o644
            tar.addfile(info, io.BytesIO(b"owned\n"))
    raw = buffer.getvalue()
    work.mkdir(parents=True, exist_ok=True)
    path = work / sha_hex(raw)
    path.write_bytes(raw)
    digest = "sha256:" + sha_hex(raw)
    return Layer(
        media_type="application/vnd.oci.image.layer.v1.tar",
        digest=digest,
        size=len(raw),
        diff_id=digest,
        path=path,
    )


def test_path_traversal_in_a_layer_is_refused(key: EnclaveSigningKey, tmp_path: Path) -> None:
    layout = tmp_path / "evil-oci"
    write_oci_layout(layout, CONFIG, [_layer_with_traversal(tmp_path / "work")])
    out = tmp_path / "out" / "package"
    out.parent.mkdir()
    with pytest.raises(VerificationError) as caught:
        build_package(f"oci:{layout}", out, key)
    assert caught.value.reason == "layer_path_traversal"
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "out" / "escaped").exists()
    assert list(out.parent.iterdir()) == []  # no package, no leftover work directory


def test_symlink_escaping_the_root_in_a_layer_is_refused(
    key: EnclaveSigningKey, tmp_path: Path
) -> None:
    layout = tmp_path / "evil-oci"
    write_oci_layout(layout, CONFIG, [_layer_with_traversal(tmp_path / "work", symlink=True)])
    out = tmp_path / "out" / "package"
    out.parent.mkdir()
    with pytest.raises(VerificationError) as caught:
        build_package(f"oci:{layout}", out, key)
    assert caught.value.reason == "layer_symlink_escape"
    assert list(out.parent.iterdir()) == []


# -- build input errors -----------------------------------------------------------------------


def test_existing_output_is_refused(
    images: dict[str, Any], key: EnclaveSigningKey, tmp_path: Path
) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(ConfigError, match="exists"):
        build_package(f"oci:{images['oci']}", tmp_path / "out", key)


def test_excluded_entrypoint_is_refused(tmp_path: Path) -> None:
    root = make_rootfs(tmp_path / "rootfs")
    with pytest.raises(ManifestError, match="entrypoint"):
        build_manifest(root, CONFIG, exclude=["/usr/bin/*"])


def test_unknown_user_is_refused(tmp_path: Path) -> None:
    from dataclasses import replace

    root = make_rootfs(tmp_path / "rootfs")
    with pytest.raises(ManifestError, match="nobody"):
        build_manifest(root, replace(CONFIG, user="nobody"))


def test_numeric_user_without_group_takes_the_passwd_group(tmp_path: Path) -> None:
    from dataclasses import replace

    root = make_rootfs(tmp_path / "rootfs")
    manifest = build_manifest(root, replace(CONFIG, user="1000"))
    assert (manifest.user.uid, manifest.user.gid) == (1000, 1001)


def test_passwd_symlink_out_of_the_rootfs_is_read_inside_it(tmp_path: Path) -> None:
    from dataclasses import replace

    root = make_rootfs(tmp_path / "rootfs")
    outside = tmp_path / "host-passwd"
    outside.write_bytes(b"svc:x:4242:4242::/:/bin/sh\n")
    (root / "etc/passwd").unlink()
    (root / "etc/passwd").symlink_to(str(outside))  # absolute: resolved inside the rootfs
    with pytest.raises(ManifestError, match="svc"):
        build_manifest(root, replace(CONFIG, user="svc"))


# -- the manifest model -----------------------------------------------------------------------


def _minimal(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "entrypoint": "/app",
        "argv": ["/app"],
        "env": {},
        "trusted_files": {"/app": {"sha256": "a" * 64, "size": 1, "mode": 493, "type": "file"}},
    }
    document.update(changes)
    return document


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"unknown": 1}, "unknown"),
        ({"entrypoint": "/other"}, "entrypoint"),
        ({"tmpfs": ["/"]}, "tmpfs"),
        ({"tmpfs": ["/app"]}, "covers"),
        ({"volumes": {"v": "/app"}}, "covers"),
        ({"volumes": {"../x": "/data"}}, "volumes"),
        ({"argv": []}, "argv"),
        ({"working_dir": "relative"}, "working_dir"),
        (
            {
                "trusted_files": {
                    "/a/../app": {"sha256": "a" * 64, "size": 1, "mode": 0, "type": "file"}
                }
            },
            "trusted_files",
        ),
        ({"isv_svn": 70000}, "isv_svn"),
    ],
)
def test_invalid_manifests_are_refused(changes: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ManifestError, match=fragment):
        EnclaveManifest.from_document(_minimal(**changes))


def test_manifest_gives_a_valid_shield_policy(package: Path, tmp_path: Path) -> None:
    opened = open_package(package)
    verify_package(opened)
    rootfs = package_rootfs_layers(opened)
    assert rootfs.layers == opened.image.layers[:-1]
    assert rootfs.image.config.diff_ids == tuple(layer.diff_id for layer in rootfs.layers)
    manifest = rootfs.manifest
    policy = ShieldPolicy(
        backing_root=tmp_path,
        trusted=manifest.trusted_digests(),
        allowed=frozenset(manifest.allowed_files),
        tmpfs=manifest.tmpfs,
        owner=(manifest.user.uid, manifest.user.gid),
    )
    assert policy.trusted["/usr/lib/libfoo.so"] == sha_hex(LIB)


# -- the parallel hasher ----------------------------------------------------------------------


def test_parallel_hasher_matches_hashlib(tmp_path: Path) -> None:
    paths, sizes, expected = [], [], []
    for i in range(40):
        data = os.urandom(300_000 + i * 7919) if i % 3 else b""
        path = tmp_path / f"f{i}"
        path.write_bytes(data)
        paths.append(path)
        sizes.append(len(data))
        expected.append((sha_hex(data), len(data)))
    seen: list[tuple[int, int]] = []
    got = hash_files(paths, sizes, workers=2, progress=lambda d, t: seen.append((d, t)))
    assert got == expected
    assert seen[-1] == (sum(sizes), sum(sizes))
    assert hash_files(paths, sizes, workers=1) == expected


def test_hasher_refuses_to_follow_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "target").write_bytes(b"x")
    (tmp_path / "link").symlink_to("target")
    with pytest.raises(ConfigError):
        hash_files([tmp_path / "link"], [1])
    assert stat.S_ISLNK((tmp_path / "link").lstat().st_mode)


def test_very_deep_tree_is_walked_without_recursion(tmp_path: Path) -> None:
    import inspect
    import sys

    from sealpod.package import collect_trusted_files

    # A tree deeper than the stack allows: the walk must not recurse per directory. (The
    # limit is lowered instead of building 1000+ levels, which pytest's cleanup could not
    # remove.)
    path = tmp_path / "root"
    path.mkdir()
    for _ in range(300):
        path = path / "d"
        path.mkdir()
    (path / "leaf").write_bytes(b"leaf")
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(len(inspect.stack()) + 120)
    try:
        trusted = collect_trusted_files(tmp_path / "root")
    finally:
        sys.setrecursionlimit(old)
    assert list(trusted) == ["/d" * 300 + "/leaf"]
    assert trusted["/d" * 300 + "/leaf"].sha256 == sha_hex(b"leaf")


def test_sigstruct_date_comes_from_source_date_epoch(
    images: dict[str, Any],
    key: EnclaveSigningKey,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")  # 2023-11-14 UTC
    build_package(f"oci:{images['oci']}", tmp_path / "p", key)
    sig = SIGSTRUCT.from_bytes(open_package(tmp_path / "p").enclave_sig)
    assert sig.date_value() == dt.date(2023, 11, 14)
