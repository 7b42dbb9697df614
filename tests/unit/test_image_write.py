"""Writing layers and images: determinism, round trips, appending a layer to an image.

Expected digests are computed here with hashlib/gzip/tarfile over the written bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
from pathlib import Path
from typing import Any

import pytest

from sealpod.errors import ConfigError, VerificationError
from sealpod.image import (
    ImageConfig,
    LayerFile,
    extract_cached,
    extract_layers,
    layer_from_directory,
    layer_from_files,
    layers_cache_key,
    open_image,
    write_docker_archive,
    write_oci_layout,
)


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def listing(root: Path) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            key = str(path.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                found[key] = ("sym", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                found[key] = ("dir", stat.S_IMODE(st.st_mode))
            elif stat.S_ISREG(st.st_mode):
                found[key] = ("file", stat.S_IMODE(st.st_mode), path.read_bytes(), st.st_nlink)
            else:
                found[key] = ("special", stat.S_IFMT(st.st_mode))
    return found


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "usr/bin").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "usr/bin/app").write_bytes(b"\x7fELF fake")
    (root / "usr/bin/app").chmod(0o755)
    (root / "usr/bin/app-hard").hardlink_to(root / "usr/bin/app")
    (root / "bin").symlink_to("usr/bin")
    (root / "etc/conf").write_text("a=1\n")
    (root / "etc/conf").chmod(0o600)
    os.mkfifo(root / "etc/fifo")
    for path in root.rglob("*"):
        os.utime(path, (1_000_000_000, 1_000_000_000), follow_symlinks=False)
    return root


def test_layer_from_files_is_deterministic_and_its_digests_are_right(tmp_path: Path) -> None:
    files: dict[str, bytes | LayerFile] = {
        "/.sealpod/enclave.json": b"{}",
        ".sealpod/gramine/entrypoint.manifest": LayerFile(b"[loader]\n", mode=0o600),
    }
    first = layer_from_files(files, tmp_path / "a")
    second = layer_from_files(dict(reversed(files.items())), tmp_path / "b")
    blob = first.path.read_bytes()
    assert blob == second.path.read_bytes()
    assert first.digest == sha(blob) and first.size == len(blob)
    assert blob[4:8] == b"\0\0\0\0"  # gzip header mtime (RFC 1952 section 2.3)
    tar_bytes = gzip.decompress(blob)
    assert first.diff_id == sha(tar_bytes)
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == [
            ".sealpod",
            ".sealpod/enclave.json",
            ".sealpod/gramine",
            ".sealpod/gramine/entrypoint.manifest",
        ]
        assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, 0, "", "")}
        manifest = members[3]
        assert manifest.mode == 0o600
        extracted = tar.extractfile(manifest)
        assert extracted is not None and extracted.read() == b"[loader]\n"


@pytest.mark.parametrize(
    "files",
    [{"../x": b""}, {"": b""}, {"a": b"", "a/b": b""}, {"a": b"", "/a": b""}],
    ids=["traversal", "empty", "file-and-dir", "twice"],
)
def test_bad_in_memory_layer_is_refused(tmp_path: Path, files: dict[str, bytes]) -> None:
    with pytest.raises(ConfigError):
        layer_from_files(files, tmp_path)


def test_layer_from_directory_is_deterministic_and_keeps_links(
    tmp_path: Path, rootfs: Path
) -> None:
    first = layer_from_directory(rootfs, tmp_path / "a", prefix="srv")
    second = layer_from_directory(rootfs, tmp_path / "b", prefix="srv")
    assert first.path.read_bytes() == second.path.read_bytes()
    with tarfile.open(first.path) as tar:
        by_name = {m.name: m for m in tar.getmembers()}
    assert by_name["srv/bin"].issym() and by_name["srv/bin"].linkname == "usr/bin"
    assert by_name["srv/usr/bin/app-hard"].islnk()
    assert by_name["srv/usr/bin/app-hard"].linkname == "srv/usr/bin/app"
    assert by_name["srv/etc/conf"].mode == 0o600
    assert "srv/etc/fifo" not in by_name  # device nodes and FIFOs are left out
    assert {m.mtime for m in by_name.values()} == {0}


def test_layer_from_directory_can_keep_times_and_owners(tmp_path: Path, rootfs: Path) -> None:
    layer = layer_from_directory(rootfs, tmp_path / "w", mtime=None, owner=None)
    with tarfile.open(layer.path) as tar:
        member = tar.getmember("etc/conf")
    assert member.mtime == 1_000_000_000
    assert (member.uid, member.gid) == (os.getuid(), os.getgid())


def test_oci_layout_reads_back(tmp_path: Path, rootfs: Path) -> None:
    layer = layer_from_directory(rootfs, tmp_path / "w")
    config = ImageConfig(
        entrypoint=("/usr/bin/app",),
        cmd=("--port", "8443"),
        env=("LANG=C.UTF-8",),
        working_dir="/srv",
        user="1000",
        exposed_ports=("8443/tcp",),
        labels={"a": "b"},
    )
    written = write_oci_layout(tmp_path / "oci", config, [layer], {"org.example": "x"}, tag="v1")
    image = open_image(f"oci:{tmp_path / 'oci'}:v1")
    assert image.config == ImageConfig(
        entrypoint=("/usr/bin/app",),
        cmd=("--port", "8443"),
        env=("LANG=C.UTF-8",),
        working_dir="/srv",
        user="1000",
        exposed_ports=("8443/tcp",),
        labels={"a": "b"},
        diff_ids=(layer.diff_id,),
    )
    assert image.manifest_digest == written.manifest_digest
    manifest_blob = tmp_path / "oci/blobs/sha256" / written.manifest_digest.removeprefix("sha256:")  # type: ignore[union-attr]
    manifest = json.loads(manifest_blob.read_bytes())
    assert manifest["annotations"] == {"org.example": "x"}
    layer_blob = (tmp_path / "oci/blobs/sha256" / manifest["layers"][0]["digest"][7:]).read_bytes()
    assert sha(gzip.decompress(layer_blob)) == image.config.diff_ids[0]
    out = tmp_path / "out"
    out.mkdir()
    extract_layers(image, out)
    expected = listing(rootfs)
    del expected["etc/fifo"]
    assert listing(out) == expected


def test_same_input_gives_byte_identical_images(tmp_path: Path, rootfs: Path) -> None:
    config = ImageConfig(entrypoint=("/usr/bin/app",))
    for name in ("one", "two"):
        layer = layer_from_directory(rootfs, tmp_path / f"w-{name}")
        write_oci_layout(tmp_path / name, config, [layer])
        write_docker_archive(tmp_path / f"{name}.tar", config, [layer], repo_tags=["x:1"])
    assert listing(tmp_path / "one") == listing(tmp_path / "two")
    assert (tmp_path / "one.tar").read_bytes() == (tmp_path / "two.tar").read_bytes()


def test_docker_archive_and_oci_layout_of_one_rootfs_extract_identically(
    tmp_path: Path, rootfs: Path
) -> None:
    base = layer_from_directory(rootfs, tmp_path / "w")
    extra = layer_from_files({"etc/conf": b"a=2\n", ".wh.bin": b""}, tmp_path / "w")
    config = ImageConfig(cmd=("/usr/bin/app",))
    write_oci_layout(tmp_path / "oci", config, [base, extra])
    written = write_docker_archive(tmp_path / "img.tar", config, [base, extra])
    with tarfile.open(tmp_path / "img.tar") as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        first = tar.extractfile(manifest[0]["Layers"][0]).read()  # type: ignore[union-attr]
    assert sha(first) == base.diff_id == written.layer_digests[0]
    results = []
    for spec in (f"oci:{tmp_path / 'oci'}", f"docker-archive:{tmp_path / 'img.tar'}"):
        image = open_image(spec)
        assert image.config.cmd == ("/usr/bin/app",)
        assert image.config.diff_ids == (base.diff_id, extra.diff_id)
        out = tmp_path / f"out-{image.kind}"
        out.mkdir()
        extract_layers(image, out)
        results.append(listing(out))
    assert results[0] == results[1]
    assert "bin" not in results[0]
    assert results[0]["etc/conf"][2] == b"a=2\n"


def test_appending_a_layer_keeps_the_original_layers_and_config(tmp_path: Path) -> None:
    # What the package build does: the original image plus a /.sealpod/ layer.
    original = layer_from_files({"app/run": LayerFile(b"#!/bin/sh\n", mode=0o755)}, tmp_path / "w")
    raw = {
        "architecture": "amd64",
        "os": "linux",
        "author": "someone",
        "config": {"Cmd": ["/app/run"], "Healthcheck": {"Test": ["NONE"]}},
        "rootfs": {"type": "layers", "diff_ids": [original.diff_id]},
        "history": [{"created_by": "COPY run /app/run"}, {"empty_layer": True}],
    }
    (tmp_path / "raw.json").write_text(json.dumps(raw))
    source = tmp_path / "src"
    (source / "blobs/sha256").mkdir(parents=True)
    (source / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')

    def put(data: bytes) -> dict[str, Any]:
        (source / "blobs/sha256" / sha(data)[7:]).write_bytes(data)
        return {"digest": sha(data), "size": len(data)}

    config_bytes = json.dumps(raw).encode()
    manifest = {
        "schemaVersion": 2,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **put(config_bytes)},
        "layers": [
            {"mediaType": original.media_type, **put(original.path.read_bytes())},
        ],
    }
    descriptor = {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        **put(json.dumps(manifest).encode()),
    }
    (source / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [descriptor]}))

    image = open_image(f"oci:{source}")
    sealpod = layer_from_files({".sealpod/enclave.json": b'{"v":1}'}, tmp_path / "w")
    written = write_oci_layout(tmp_path / "pkg", image.config, [*image.layers, sealpod])
    package = open_image(f"oci:{tmp_path / 'pkg'}")
    assert package.config.diff_ids == (original.diff_id, sealpod.diff_id)
    assert written.layer_digests[0] == image.layers[0].digest
    config = json.loads(package.config.raw_json)
    assert config["author"] == "someone"
    assert config["config"]["Healthcheck"] == {"Test": ["NONE"]}
    assert [h.get("created_by") for h in config["history"]] == [
        "COPY run /app/run",
        None,
        "sealpod",
    ]
    out = tmp_path / "out"
    out.mkdir()
    extract_layers(package, out)
    assert (out / ".sealpod/enclave.json").read_bytes() == b'{"v":1}'
    assert (out / "app/run").read_bytes() == b"#!/bin/sh\n"


def test_zstd_layers_round_trip(tmp_path: Path, rootfs: Path) -> None:
    zstandard = pytest.importorskip("zstandard")
    layer = layer_from_directory(rootfs, tmp_path / "w", compression="zstd")
    blob = layer.path.read_bytes()
    assert sha(zstandard.ZstdDecompressor().decompressobj().decompress(blob)) == layer.diff_id
    write_oci_layout(tmp_path / "oci", ImageConfig(), [layer])
    image = open_image(f"oci:{tmp_path / 'oci'}")
    assert image.layers[0].media_type == "application/vnd.oci.image.layer.v1.tar+zstd"
    out = tmp_path / "out"
    out.mkdir()
    extract_layers(image, out)
    assert (out / "usr/bin/app").read_bytes() == b"\x7fELF fake"


def test_copying_a_tampered_layer_into_a_new_image_is_refused(tmp_path: Path) -> None:
    layer = layer_from_files({"a": b"original"}, tmp_path / "w")
    data = bytearray(layer.path.read_bytes())
    data[-12] ^= 0xFF
    layer.path.write_bytes(bytes(data))
    with pytest.raises(VerificationError) as caught:
        write_oci_layout(tmp_path / "oci", ImageConfig(), [layer])
    assert caught.value.reason == "blob_digest_mismatch"
    with pytest.raises(VerificationError):
        write_docker_archive(tmp_path / "img.tar", ImageConfig(), [layer])
    assert not (tmp_path / "img.tar").exists()


def test_writing_into_a_non_empty_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "oci").mkdir()
    (tmp_path / "oci" / "x").write_text("x")
    with pytest.raises(ConfigError):
        write_oci_layout(tmp_path / "oci", ImageConfig(), [])


def test_extract_cached_unpacks_once_per_set_of_layers(tmp_path: Path, rootfs: Path) -> None:
    layer = layer_from_directory(rootfs, tmp_path / "w")
    write_oci_layout(tmp_path / "oci", ImageConfig(), [layer])
    write_docker_archive(tmp_path / "img.tar", ImageConfig(), [layer])
    cache = tmp_path / "cache"
    first = extract_cached(open_image(f"oci:{tmp_path / 'oci'}"), cache)
    (first / "marker").write_text("same entry")
    # The same layers in the other format (uncompressed) are the same cache entry.
    second = extract_cached(open_image(f"docker-archive:{tmp_path / 'img.tar'}"), cache)
    assert second == first
    assert (second / "marker").read_text() == "same entry"
    assert (second / "etc/conf").read_text() == "a=1\n"
    assert sorted(p.name for p in first.parent.iterdir()) == [first.name, f"{first.name}.lock"]


def test_tampered_layer_leaves_nothing_in_the_layer_cache(tmp_path: Path, rootfs: Path) -> None:
    layer = layer_from_directory(rootfs, tmp_path / "w", compression="none")
    write_oci_layout(tmp_path / "oci", ImageConfig(), [layer])
    image = open_image(f"oci:{tmp_path / 'oci'}")
    blob = image.layers[0].path
    blob.write_bytes(blob.read_bytes().replace(b"a=1", b"a=9"))
    with pytest.raises(VerificationError):
        extract_cached(image, tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache/layers").iterdir()] == [
        f"{layers_cache_key(image, preserve_owners=os.geteuid() == 0)}.lock"
    ]


def test_dir_image_has_no_layer_cache_entry(tmp_path: Path, rootfs: Path) -> None:
    with pytest.raises(ConfigError):
        extract_cached(open_image(f"dir:{rootfs}"), tmp_path / "cache")
