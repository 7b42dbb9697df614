"""Attacks on `sealpod run` by whoever controls the host's disk: one test per attack.

The packages are tiny (busybox-static from the host plus a script and a data file) and every
test unpacks into its own cache directory, so tampering never touches the shared cache.
Each test first shows the untampered case working where that is what makes it able to fail.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from images import BUSYBOX, busybox_layer, write_image

from sealpod.errors import VerificationError
from sealpod.image import Layer, LayerFile, layer_from_files, open_image, write_oci_layout
from sealpod.package import (
    ENCLAVE_JSON,
    ENCLAVE_SIG,
    GRAMINE_MANIFEST,
    Package,
    build_package,
    open_package,
)
from sealpod.runtime.run import run_package
from sealpod.sgx import EnclaveSigningKey

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="FUSE mounts and bwrap as root"),
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse"),
    pytest.mark.skipif(not os.path.exists(BUSYBOX), reason="busybox-static is not installed"),
]

DATA = b"the measured content of data.txt\n"
SCRIPT = b"ls /app\necho ---\ncat /app/data.txt\n"

KEY = EnclaveSigningKey.generate()


def _package(work: Path, name: str, data: bytes = DATA) -> Path:
    layers = [
        busybox_layer(work / f"{name}-layers"),
        layer_from_files(
            {"app/run.sh": SCRIPT, "app/data.txt": LayerFile(data, 0o644)},
            work / f"{name}-layers",
        ),
    ]
    source = write_image(work / f"{name}-oci", layers, argv=("/bin/busybox", "sh", "/app/run.sh"))
    build_package(source, work / f"{name}.pkg", KEY)
    return work / f"{name}.pkg"


def _run(package: Path, cache: Path, out: Path) -> tuple[int, str]:
    with open(out, "wb") as stdout:
        status = run_package(package, cache_dir=cache, stdout=stdout, stderr=stdout)
    return status, out.read_text(errors="replace")


def _tree(cache: Path) -> Path:
    (entry,) = [p for p in (cache / "layers").iterdir() if p.is_dir()]
    return entry


def test_untampered_package_runs(tmp_path: Path) -> None:
    package = _package(tmp_path, "plain")
    status, output = _run(package, tmp_path / "cache", tmp_path / "out")
    assert status == 0, output
    assert output == "data.txt\nrun.sh\n---\n" + DATA.decode()


def test_trusted_file_changed_after_build_is_refused(tmp_path: Path) -> None:
    package = _package(tmp_path, "tamper")
    cache = tmp_path / "cache"
    assert _run(package, cache, tmp_path / "out1")[0] == 0  # unpacked and working
    target = _tree(cache) / "app" / "data.txt"
    tampered = bytearray(target.read_bytes())
    tampered[4] ^= 0x20  # "measured" -> "Measured": one byte, same size
    target.write_bytes(bytes(tampered))
    status, output = _run(package, cache, tmp_path / "out2")
    assert status != 0
    assert bytes(tampered).decode() not in output
    assert "Permission denied" in output  # EACCES from the shield, never the bytes


def test_trusted_file_changed_in_the_package_layer_is_refused(tmp_path: Path) -> None:
    package = _package(tmp_path, "blob")
    image = open_image(f"oci:{package}")
    app_blob = image.layers[1].path  # the layer with run.sh and data.txt (gzip)
    raw = bytearray(app_blob.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    app_blob.chmod(0o644)
    app_blob.write_bytes(bytes(raw))
    with pytest.raises(VerificationError) as refused:
        _run(package, tmp_path / "cache", tmp_path / "out")
    assert refused.value.reason in ("blob_digest_mismatch", "diff_id_mismatch")
    assert not (tmp_path / "out").read_bytes()  # nothing ran


def test_file_added_to_the_rootfs_is_invisible(tmp_path: Path) -> None:
    package = _package(tmp_path, "added")
    cache = tmp_path / "cache"
    assert _run(package, cache, tmp_path / "out1")[0] == 0
    tree = _tree(cache)
    (tree / "app" / "extra.txt").write_bytes(b"planted by the host\n")
    shutil.copy(tree / "app" / "run.sh", tree / "app" / "zz.sh")
    status, output = _run(package, cache, tmp_path / "out2")
    assert status == 0, output
    assert output == "data.txt\nrun.sh\n---\n" + DATA.decode()


def _swap(
    work: Path,
    package: Path,
    other: Path,
    pick: Callable[[dict[str, bytes], dict[str, bytes]], dict[str, bytes]],
) -> Path:
    """``package``'s layers with a sealpod layer mixing its files with ``other``'s."""
    mine, theirs = open_package(package), open_package(other)

    def files(p: Package) -> dict[str, bytes]:
        return {
            ENCLAVE_JSON: p.enclave_json,
            ENCLAVE_SIG: p.enclave_sig,
            GRAMINE_MANIFEST: p.gramine_manifest.encode(),
        }

    chosen = pick(files(mine), files(theirs))
    layer = layer_from_files(
        {name: LayerFile(data, 0o444) for name, data in chosen.items()}, work / "swap-layers"
    )
    dest = work / "swapped.pkg"
    write_oci_layout(dest, mine.image.config, [*mine.rootfs_layers, layer])
    return dest


def test_swapped_enclave_json_is_refused_before_anything_runs(tmp_path: Path) -> None:
    package = _package(tmp_path, "a")
    other = _package(tmp_path, "b", data=b"other content, other measurement\n")
    swapped = _swap(
        tmp_path, package, other, lambda mine, theirs: {**mine, ENCLAVE_JSON: theirs[ENCLAVE_JSON]}
    )
    with pytest.raises(VerificationError) as refused:
        _run(swapped, tmp_path / "cache", tmp_path / "out")
    assert refused.value.reason == "package_mrenclave_mismatch"
    assert not (tmp_path / "cache").exists()  # not even unpacked
    assert not (tmp_path / "out").read_bytes()


def test_swapped_enclave_sig_is_refused_before_anything_runs(tmp_path: Path) -> None:
    package = _package(tmp_path, "a")
    other = _package(tmp_path, "b", data=b"other content, other measurement\n")
    swapped = _swap(
        tmp_path, package, other, lambda mine, theirs: {**mine, ENCLAVE_SIG: theirs[ENCLAVE_SIG]}
    )
    with pytest.raises(VerificationError) as refused:
        _run(swapped, tmp_path / "cache", tmp_path / "out")
    assert refused.value.reason == "package_mrenclave_mismatch"
    assert not (tmp_path / "cache").exists()
    assert not (tmp_path / "out").read_bytes()


def _traversal_layer(work: Path, escape_name: str) -> Layer:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(f"app/../../{escape_name}")
        payload = b"written outside the rootfs\n"
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    work.mkdir(parents=True, exist_ok=True)
    (work / digest).write_bytes(data)
    return Layer(
        media_type="application/vnd.oci.image.layer.v1.tar",
        digest=f"sha256:{digest}",
        size=len(data),
        diff_id=f"sha256:{digest}",
        path=work / digest,
    )


def test_path_traversal_in_a_layer_is_refused(tmp_path: Path) -> None:
    package = _package(tmp_path, "trav")
    mine = open_package(package)
    escape_name = f"sealpod-escaped-{os.getpid()}"
    evil = _traversal_layer(tmp_path / "evil", escape_name)
    # Replace the app layer, keep the signed sealpod layer: the package still verifies, so the
    # refusal must come from the extraction.
    dest = tmp_path / "evil.pkg"
    layers = [mine.rootfs_layers[0], evil, mine.sealpod_layer]
    write_oci_layout(dest, mine.image.config, layers)
    cache = tmp_path / "cache"
    with pytest.raises(VerificationError):
        _run(dest, cache, tmp_path / "out")
    assert not (tmp_path / "out").read_bytes()
    for parent in (cache, cache / "layers", tmp_path):
        assert not (parent / escape_name).exists()
