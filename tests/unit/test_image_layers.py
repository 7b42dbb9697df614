"""Reading images and extracting their layers, on small images crafted here by hand.

The images are built with tarfile/gzip/hashlib/json directly (not with sealpod's writers), so
expected digests and trees come from an independent computation.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import sys
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from sealpod.errors import ConfigError, VerificationError
from sealpod.image import extract_layers, open_image, verify_layers

MTIME = 1_600_000_000

# -- crafting images ---------------------------------------------------------------------------


def entry(
    name: str,
    kind: str = "file",
    data: bytes = b"",
    *,
    target: str = "",
    mode: int | None = None,
    uid: int = 0,
    gid: int = 0,
    mtime: int = MTIME,
) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.mtime, info.uid, info.gid = mtime, uid, gid
    types = {
        "file": tarfile.REGTYPE,
        "dir": tarfile.DIRTYPE,
        "sym": tarfile.SYMTYPE,
        "link": tarfile.LNKTYPE,
        "chr": tarfile.CHRTYPE,
        "blk": tarfile.BLKTYPE,
        "fifo": tarfile.FIFOTYPE,
    }
    info.type = types[kind]
    info.mode = mode if mode is not None else (0o755 if kind == "dir" else 0o644)
    info.linkname = target
    if kind == "file":
        info.size = len(data)
        return info, data
    return info, None


def layer_tar(*entries: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def config_json(diff_ids: Sequence[str], **section: Any) -> bytes:
    document = {
        "architecture": "amd64",
        "os": "linux",
        "config": section,
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
    }
    return json.dumps(document).encode()


class OCIBuilder:
    """Writes an OCI image layout by hand."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs" / "sha256").mkdir(parents=True)
        (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')

    def blob(self, data: bytes) -> dict[str, Any]:
        digest = sha(data)
        (self.root / "blobs" / "sha256" / digest[7:]).write_bytes(data)
        return {"digest": digest, "size": len(data)}

    def manifest(
        self,
        layers: Sequence[bytes],
        *,
        compress: bool = True,
        config: bytes | None = None,
        **section: Any,
    ) -> dict[str, Any]:
        descriptors = []
        for tar in layers:
            blob = gzip.compress(tar, mtime=0) if compress else tar
            media = "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if compress else "")
            descriptors.append({"mediaType": media, **self.blob(blob)})
        if config is None:
            config = config_json([sha(t) for t in layers], **section)
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                **self.blob(config),
            },
            "layers": descriptors,
        }
        data = json.dumps(manifest).encode()
        return {"mediaType": "application/vnd.oci.image.manifest.v1+json", **self.blob(data)}

    def index(self, *descriptors: dict[str, Any]) -> Path:
        document = {"schemaVersion": 2, "manifests": list(descriptors)}
        (self.root / "index.json").write_text(json.dumps(document))
        return self.root


def oci_image(tmp_path: Path, *layers: bytes, compress: bool = True, **section: Any) -> Path:
    builder = OCIBuilder(tmp_path / "oci")
    return builder.index(builder.manifest(layers, compress=compress, **section))


def docker_archive(tmp_path: Path, *layers: bytes, legacy: bool = True, **section: Any) -> Path:
    """A ``docker save`` tarball: legacy (<id>/layer.tar) or Docker 25+ (blobs/sha256)."""
    config = config_json([sha(t) for t in layers], **section)
    files: dict[str, bytes] = {}
    names = []
    for i, tar in enumerate(layers):
        name = f"{i:064x}/layer.tar" if legacy else f"blobs/sha256/{sha(tar)[7:]}"
        files[name] = tar
        names.append(name)
    config_name = f"{sha(config)[7:]}.json" if legacy else f"blobs/sha256/{sha(config)[7:]}"
    files[config_name] = config
    files["manifest.json"] = json.dumps(
        [{"Config": config_name, "RepoTags": ["example/app:1.0"], "Layers": names}]
    ).encode()
    path = tmp_path / "image.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def extract(spec: str, tmp_path: Path, name: str = "out") -> Path:
    dest = tmp_path / name
    dest.mkdir()
    extract_layers(open_image(spec), dest)
    return dest


def tree(root: Path) -> dict[str, Any]:
    """Path -> (type, mode, content/target) for everything below root."""
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
            else:
                found[key] = ("file", stat.S_IMODE(st.st_mode), path.read_bytes())
    return found


# -- layer semantics ---------------------------------------------------------------------------


def test_layers_apply_in_order_with_modes_times_links(tmp_path: Path) -> None:
    lower = layer_tar(
        entry("etc", "dir"),
        entry("etc/app.conf", data=b"v1", mode=0o640, mtime=1_500_000_000),
        entry("etc/alias", "sym", target="app.conf"),
        entry("etc/hard", "link", target="etc/app.conf"),
        entry("usr/bin/tool", data=b"#!/bin/sh\n", mode=0o4755),
    )
    upper = layer_tar(entry("etc/app.conf", data=b"v2", mode=0o600))
    out = extract(f"oci:{oci_image(tmp_path, lower, upper)}", tmp_path)
    assert (out / "etc/app.conf").read_bytes() == b"v2"
    assert stat.S_IMODE((out / "etc/app.conf").stat().st_mode) == 0o600
    # The hard link of the lower layer still names the lower content (overlay semantics).
    assert (out / "etc/hard").read_bytes() == b"v1"
    assert stat.S_IMODE((out / "etc/hard").stat().st_mode) == 0o640
    assert (out / "etc/hard").stat().st_mtime == 1_500_000_000
    assert os.readlink(out / "etc/alias") == "app.conf"
    assert stat.S_IMODE((out / "usr/bin/tool").stat().st_mode) == 0o4755
    assert (out / "usr/bin").is_dir()  # implicit parents are created


def test_hardlink_shares_the_inode(tmp_path: Path) -> None:
    layer = layer_tar(entry("a", data=b"x"), entry("b", "link", target="./a"))
    out = extract(f"oci:{oci_image(tmp_path, layer)}", tmp_path)
    assert (out / "a").stat().st_ino == (out / "b").stat().st_ino


def test_whiteout_deletes_file_and_directory_of_lower_layer(tmp_path: Path) -> None:
    lower = layer_tar(
        entry("keep", data=b"k"),
        entry("gone", data=b"g"),
        entry("dir/sub/deep", data=b"d"),
    )
    upper = layer_tar(entry(".wh.gone"), entry("dir/.wh.sub"), entry(".wh.never-existed"))
    out = extract(f"oci:{oci_image(tmp_path, lower, upper)}", tmp_path)
    assert tree(out) == {
        "keep": ("file", 0o644, b"k"),
        "dir": ("dir", 0o755),
    }


def test_opaque_directory_hides_lower_contents_only(tmp_path: Path) -> None:
    lower = layer_tar(entry("d/old", data=b"o"), entry("d/sub/x", data=b"x"), entry("e", data=b"e"))
    # The marker comes after a sibling of its own layer: it must still not remove it.
    upper = layer_tar(entry("d/new", data=b"n"), entry("d/.wh..wh..opq"))
    out = extract(f"oci:{oci_image(tmp_path, lower, upper)}", tmp_path)
    assert sorted(os.listdir(out / "d")) == ["new"]
    assert (out / "e").read_bytes() == b"e"


def test_whiteout_never_hides_a_file_of_its_own_layer(tmp_path: Path) -> None:
    layer = layer_tar(entry("f", data=b"same layer"), entry(".wh.f"))
    out = extract(f"oci:{oci_image(tmp_path, layer)}", tmp_path)
    assert (out / "f").read_bytes() == b"same layer"


def test_later_layer_replaces_directory_with_file_and_file_with_symlink(tmp_path: Path) -> None:
    lower = layer_tar(entry("x/y", data=b"1"), entry("z", data=b"2"))
    upper = layer_tar(entry("x", data=b"now a file"), entry("z", "sym", target="x"))
    out = extract(f"oci:{oci_image(tmp_path, lower, upper)}", tmp_path)
    assert (out / "x").read_bytes() == b"now a file"
    assert os.readlink(out / "z") == "x"


def test_read_only_directory_gets_its_mode_after_its_children(tmp_path: Path) -> None:
    layer = layer_tar(
        entry("ro", "dir", mode=0o555, mtime=1_400_000_000), entry("ro/f", data=b"in")
    )
    out = extract(f"oci:{oci_image(tmp_path, layer)}", tmp_path)
    assert (out / "ro/f").read_bytes() == b"in"
    assert stat.S_IMODE((out / "ro").stat().st_mode) == 0o555
    assert (out / "ro").stat().st_mtime == 1_400_000_000


def test_absolute_symlink_target_is_kept(tmp_path: Path) -> None:
    # Debian images hold links like /etc/alternatives/x -> /usr/bin/x; inside the image root
    # they do not escape, and extraction never follows them.
    layer = layer_tar(entry("etc/alternatives/editor", "sym", target="/usr/bin/vi"))
    out = extract(f"oci:{oci_image(tmp_path, layer)}", tmp_path)
    assert os.readlink(out / "etc/alternatives/editor") == "/usr/bin/vi"


def test_device_nodes_and_fifos_are_skipped(tmp_path: Path) -> None:
    layer = layer_tar(
        entry("dev", "dir"),
        entry("dev/null", "chr"),
        entry("dev/sda", "blk"),
        entry("run/pipe", "fifo"),
        entry("ok", data=b"1"),
    )
    dest = tmp_path / "out"
    dest.mkdir()
    summary = extract_layers(open_image(f"oci:{oci_image(tmp_path, layer)}"), dest)
    assert sorted(s.path for s in summary.skipped) == ["/dev/null", "/dev/sda", "/run/pipe"]
    assert os.listdir(dest / "dev") == []
    assert not (dest / "run/pipe").exists()
    assert summary.files == 1
    assert summary.bytes == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="changing owners needs root")
def test_numeric_owners_are_kept_as_root(tmp_path: Path) -> None:
    layer = layer_tar(
        entry("home/u", "dir", uid=1234, gid=4321),
        entry("home/u/f", data=b"x", uid=1234, gid=4321, mode=0o2750),
        entry("home/u/l", "sym", target="f", uid=1234, gid=4321),
    )
    out = extract(f"oci:{oci_image(tmp_path, layer)}", tmp_path)
    for name in ("home/u", "home/u/f", "home/u/l"):
        st = (out / name).lstat()
        assert (st.st_uid, st.st_gid) == (1234, 4321), name
    assert stat.S_IMODE((out / "home/u/f").stat().st_mode) == 0o2750


def test_destination_must_be_empty(tmp_path: Path) -> None:
    image = open_image(f"oci:{oci_image(tmp_path, layer_tar(entry('a')))}")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ConfigError):
        extract_layers(image, tmp_path / "full")


def test_dir_image_is_copied(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "run").write_bytes(b"code")
    (src / "bin" / "run").chmod(0o750)
    (src / "link").symlink_to("bin/run")
    out = extract(f"dir:{src}", tmp_path)
    assert tree(out) == tree(src)


# -- formats -----------------------------------------------------------------------------------

LOWER = layer_tar(
    entry("app", "dir"),
    entry("app/main.py", data=b"print('hi')\n", mode=0o755),
    entry("app/lib.py", data=b"x = 1\n"),
    entry("app/link", "sym", target="main.py"),
    entry("app/hard", "link", target="app/lib.py"),
)
UPPER = layer_tar(entry("app/.wh.lib.py"), entry("app/new.py", data=b"y = 2\n"))


def test_config_fields_are_read(tmp_path: Path) -> None:
    root = oci_image(
        tmp_path,
        LOWER,
        Entrypoint=["/app/main.py"],
        Cmd=["--serve"],
        Env=["A=1", "PATH=/usr/bin"],
        WorkingDir="/app",
        User="1000:1000",
        ExposedPorts={"8443/tcp": {}},
        Labels={"org.example": "yes"},
    )
    image = open_image(f"oci:{root}")
    config = image.config
    assert config.entrypoint == ("/app/main.py",)
    assert config.cmd == ("--serve",)
    assert config.argv == ("/app/main.py", "--serve")
    assert config.env == ("A=1", "PATH=/usr/bin")
    assert (config.working_dir, config.user) == ("/app", "1000:1000")
    assert config.exposed_ports == ("8443/tcp",)
    assert dict(config.labels) == {"org.example": "yes"}
    assert config.diff_ids == (sha(LOWER),)
    with pytest.raises(TypeError):
        config.labels["x"] = "y"  # type: ignore[index]


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "docker25"])
def test_oci_and_docker_archive_of_the_same_layers_extract_identically(
    tmp_path: Path, legacy: bool
) -> None:
    oci_out = extract(f"oci:{oci_image(tmp_path, LOWER, UPPER)}", tmp_path, "from-oci")
    archive = docker_archive(tmp_path, LOWER, UPPER, legacy=legacy, Entrypoint=["/app/main.py"])
    image = open_image(f"docker-archive:{archive}")
    assert image.config.entrypoint == ("/app/main.py",)
    docker_out = extract(f"docker-archive:{archive}", tmp_path, "from-docker")
    assert tree(oci_out) == tree(docker_out)
    assert set(tree(oci_out)) == {"app", "app/main.py", "app/link", "app/hard", "app/new.py"}


def test_docker_archive_layer_stored_as_link_to_a_shared_layer_is_read(tmp_path: Path) -> None:
    # Legacy `docker save` writes a layer shared by two images once and links to it.
    config = config_json([sha(LOWER)])
    files = {
        "aaa/layer.tar": ("file", LOWER),
        "bbb/layer.tar": ("sym", b"../aaa/layer.tar"),
        f"{sha(config)[7:]}.json": ("file", config),
        "manifest.json": (
            "file",
            json.dumps(
                [{"Config": f"{sha(config)[7:]}.json", "Layers": ["bbb/layer.tar"]}]
            ).encode(),
        ),
    }
    path = tmp_path / "image.tar"
    with tarfile.open(path, "w") as tar:
        for name, (kind, data) in files.items():
            info = tarfile.TarInfo(name)
            if kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, data.decode()
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    out = extract(f"docker-archive:{path}", tmp_path)
    assert (out / "app/lib.py").read_bytes() == b"x = 1\n"


def test_docker_archive_tag_selects_the_image(tmp_path: Path) -> None:
    archive = docker_archive(tmp_path, LOWER)
    assert open_image(f"docker-archive:{archive}:1.0").kind == "docker-archive"
    with pytest.raises(ConfigError):
        open_image(f"docker-archive:{archive}:2.0")


def test_oci_tag_selects_among_several_manifests(tmp_path: Path) -> None:
    builder = OCIBuilder(tmp_path / "oci")
    one = builder.manifest([LOWER], Cmd=["one"])
    two = builder.manifest([LOWER], Cmd=["two"])
    one["annotations"] = {"org.opencontainers.image.ref.name": "one"}
    two["annotations"] = {"org.opencontainers.image.ref.name": "two"}
    root = builder.index(one, two)
    assert open_image(f"oci:{root}:two").config.cmd == ("two",)
    assert open_image(f"oci:{root}:one").config.cmd == ("one",)
    with pytest.raises(ConfigError, match="name one"):
        open_image(f"oci:{root}")
    with pytest.raises(ConfigError):
        open_image(f"oci:{root}:three")


@pytest.mark.parametrize("architecture", ["amd64", "arm64"])
def test_platform_index_picks_the_architecture(tmp_path: Path, architecture: str) -> None:
    builder = OCIBuilder(tmp_path / "oci")
    amd = builder.manifest([LOWER], Cmd=["amd64"])
    arm = builder.manifest([LOWER], Cmd=["arm64"])
    amd["platform"] = {"os": "linux", "architecture": "amd64"}
    arm["platform"] = {"os": "linux", "architecture": "arm64", "variant": "v8"}
    attestation = dict(amd, platform={"os": "unknown", "architecture": "unknown"})
    inner = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [attestation, arm, amd],
        }
    ).encode()
    outer = {"mediaType": "application/vnd.oci.image.index.v1+json", **builder.blob(inner)}
    root = builder.index(outer)
    image = open_image(f"oci:{root}", architecture=architecture)
    assert image.config.cmd == (architecture,)
    with pytest.raises(ConfigError, match="s390x"):
        open_image(f"oci:{root}", architecture="s390x")


def test_uncompressed_oci_layers_are_read(tmp_path: Path) -> None:
    out = extract(f"oci:{oci_image(tmp_path, LOWER, compress=False)}", tmp_path)
    assert (out / "app/main.py").read_bytes() == b"print('hi')\n"


def test_zstd_layer_is_read_when_zstandard_is_installed(tmp_path: Path) -> None:
    zstandard = pytest.importorskip("zstandard")
    builder = OCIBuilder(tmp_path / "oci")
    descriptor = builder.manifest([LOWER], compress=False)
    manifest_path = tmp_path / "oci/blobs/sha256" / descriptor["digest"][7:]
    manifest = json.loads(manifest_path.read_bytes())
    blob = zstandard.ZstdCompressor().compress(LOWER)
    manifest["layers"] = [
        {"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", **builder.blob(blob)}
    ]
    root = builder.index(
        {"mediaType": descriptor["mediaType"], **builder.blob(json.dumps(manifest).encode())}
    )
    out = extract(f"oci:{root}", tmp_path)
    assert (out / "app/main.py").read_bytes() == b"print('hi')\n"


def test_zstd_layer_without_zstandard_is_a_clear_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    builder = OCIBuilder(tmp_path / "oci")
    descriptor = builder.manifest([LOWER], compress=False)
    manifest_path = tmp_path / "oci/blobs/sha256" / descriptor["digest"][7:]
    manifest = json.loads(manifest_path.read_bytes())
    # The blob is a plain tar: the error must come from the media type, before any decoding.
    manifest["layers"][0]["mediaType"] = "application/vnd.oci.image.layer.v1.tar+zstd"
    root = builder.index(
        builder.blob(json.dumps(manifest).encode()) | {"mediaType": descriptor["mediaType"]}
    )
    monkeypatch.setitem(sys.modules, "zstandard", None)
    image = open_image(f"oci:{root}")
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(ConfigError, match="zstandard"):
        extract_layers(image, dest)


@pytest.mark.parametrize(
    "spec",
    ["nothing", "oci:", "tarball:/x", "oci:/does/not/exist", "docker-archive:/does/not/exist"],
)
def test_bad_image_reference_is_a_config_error(spec: str) -> None:
    with pytest.raises(ConfigError):
        open_image(spec)


def test_directory_without_oci_layout_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="oci-layout"):
        open_image(f"oci:{tmp_path}")


# -- attacks -----------------------------------------------------------------------------------


def _refused(tmp_path: Path, *layers: bytes) -> VerificationError:
    image = open_image(f"oci:{oci_image(tmp_path, *layers)}")
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(VerificationError) as caught:
        extract_layers(image, dest)
    return caught.value


def test_path_traversal_entry_is_refused(tmp_path: Path) -> None:
    error = _refused(tmp_path, layer_tar(entry("ok", data=b"1"), entry("a/../../evil", data=b"x")))
    assert error.reason == "layer_path_traversal"
    assert "a/../../evil" in str(error)
    assert not (tmp_path / "evil").exists()
    assert os.listdir(tmp_path / "out") == []  # refused before anything of the layer is written


def test_absolute_path_entry_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "victim"
    error = _refused(tmp_path, layer_tar(entry(str(target), data=b"owned")))
    assert error.reason == "layer_absolute_path"
    assert not target.exists()


def test_symlink_pointing_outside_the_root_is_refused(tmp_path: Path) -> None:
    error = _refused(tmp_path, layer_tar(entry("a/escape", "sym", target="../../../etc")))
    assert error.reason == "layer_symlink_escape"
    assert "/a/escape" in str(error)


def test_symlink_escape_then_write_through_it_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    lower = layer_tar(entry("etc", "sym", target=str(outside)))
    upper = layer_tar(entry("etc/passwd", data=b"root::0:0::/:/bin/sh\n"))
    error = _refused(tmp_path, lower, upper)
    assert error.reason == "layer_write_through_symlink"
    assert "/etc" in str(error)
    assert os.listdir(outside) == []


def test_write_through_symlink_of_the_same_layer_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    error = _refused(
        tmp_path,
        layer_tar(entry("lib", "sym", target=str(outside)), entry("lib/evil.so", data=b"x")),
    )
    assert error.reason == "layer_write_through_symlink"
    assert os.listdir(outside) == []


def test_hardlink_to_outside_is_refused(tmp_path: Path) -> None:
    error = _refused(tmp_path, layer_tar(entry("h", "link", target="../../etc/shadow")))
    assert error.reason == "layer_hardlink_escape"


def test_hardlink_with_absolute_target_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s")
    error = _refused(tmp_path, layer_tar(entry("h", "link", target=str(secret))))
    assert error.reason == "layer_hardlink_escape"
    assert secret.stat().st_nlink == 1


def test_hardlink_through_symlink_to_outside_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "shadow").write_text("secret")
    lower = layer_tar(entry("l", "sym", target=str(outside)))
    upper = layer_tar(entry("stolen", "link", target="l/shadow"))
    error = _refused(tmp_path, lower, upper)
    assert error.reason == "layer_write_through_symlink"
    assert (outside / "shadow").stat().st_nlink == 1


def test_whiteout_through_symlink_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("v")
    lower = layer_tar(entry("l", "sym", target=str(outside)))
    upper = layer_tar(entry("l/.wh.victim"))
    error = _refused(tmp_path, lower, upper)
    assert error.reason == "layer_write_through_symlink"
    assert (outside / "victim").read_text() == "v"


def test_layer_whose_digest_does_not_match_is_refused(tmp_path: Path) -> None:
    root = oci_image(tmp_path, LOWER)
    image = open_image(f"oci:{root}")
    blob = image.layers[0].path
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(VerificationError) as caught:
        extract_layers(image, dest)
    assert caught.value.reason == "blob_digest_mismatch"
    assert os.listdir(dest) == []


def test_uncompressed_layer_whose_digest_does_not_match_is_refused(tmp_path: Path) -> None:
    root = oci_image(tmp_path, LOWER, compress=False)
    image = open_image(f"oci:{root}")
    blob = image.layers[0].path
    blob.write_bytes(blob.read_bytes().replace(b"print('hi')", b"print('no')"))
    with pytest.raises(VerificationError) as caught:
        verify_layers(image)
    assert caught.value.reason == "blob_digest_mismatch"


def test_layer_that_is_not_gzip_is_refused_even_with_a_matching_digest(tmp_path: Path) -> None:
    builder = OCIBuilder(tmp_path / "oci")
    garbage = b"this is not a gzip stream" * 10
    descriptor = builder.manifest([], config=config_json([sha(garbage)]))
    manifest_path = tmp_path / "oci/blobs/sha256" / descriptor["digest"][7:]
    manifest = json.loads(manifest_path.read_bytes())
    manifest["layers"] = [
        {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **builder.blob(garbage)}
    ]
    root = builder.index(
        {"mediaType": descriptor["mediaType"], **builder.blob(json.dumps(manifest).encode())}
    )
    with pytest.raises(VerificationError) as caught:
        verify_layers(open_image(f"oci:{root}"))
    assert caught.value.reason == "malformed_layer"


def test_diff_id_mismatch_is_refused(tmp_path: Path) -> None:
    # A consistent manifest and config whose diff_id names other content than the layer.
    builder = OCIBuilder(tmp_path / "oci")
    wrong = config_json([sha(UPPER)])
    root = builder.index(builder.manifest([LOWER], config=wrong))
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(VerificationError) as caught:
        extract_layers(open_image(f"oci:{root}"), dest)
    assert caught.value.reason == "diff_id_mismatch"
    assert os.listdir(dest) == []


def test_docker_archive_layer_swapped_is_refused(tmp_path: Path) -> None:
    archive = docker_archive(tmp_path, LOWER)
    image = open_image(f"docker-archive:{archive}")
    # Rewrite the archive with a different layer under the same name.
    with tarfile.open(archive) as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar]  # type: ignore[union-attr]
    with tarfile.open(archive, "w") as tar:
        for member, data in members:
            if member.name.endswith("layer.tar"):
                data = UPPER
                member.size = len(data)
            tar.addfile(member, io.BytesIO(data) if data is not None else None)
    with pytest.raises(VerificationError) as caught:
        verify_layers(image)
    assert caught.value.reason == "diff_id_mismatch"


def test_tampered_config_is_refused(tmp_path: Path) -> None:
    root = oci_image(tmp_path, LOWER, Cmd=["safe"])
    for blob in (root / "blobs/sha256").iterdir():
        data = blob.read_bytes()
        if b'"safe"' in data:
            blob.write_bytes(data.replace(b'"safe"', b'"evil"'))
    with pytest.raises(VerificationError) as caught:
        open_image(f"oci:{root}")
    assert caught.value.reason == "blob_digest_mismatch"


def test_digest_with_path_traversal_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "oci"
    builder = OCIBuilder(root)
    (tmp_path / "evil.json").write_text("{}")
    builder.index(
        {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": "sha256:../../../evil.json",
            "size": 2,
        }
    )
    with pytest.raises(VerificationError) as caught:
        open_image(f"oci:{root}")
    assert caught.value.reason == "malformed_digest"


def test_layer_count_differing_from_diff_ids_is_refused(tmp_path: Path) -> None:
    builder = OCIBuilder(tmp_path / "oci")
    root = builder.index(builder.manifest([LOWER, UPPER], config=config_json([sha(LOWER)])))
    with pytest.raises(VerificationError) as caught:
        open_image(f"oci:{root}")
    assert caught.value.reason == "diff_id_count_mismatch"


def test_docker_archive_with_traversing_member_name_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "image.tar"
    manifest = json.dumps([{"Config": "../config.json", "Layers": []}]).encode()
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
    with pytest.raises(VerificationError) as caught:
        open_image(f"docker-archive:{path}")
    assert caught.value.reason == "malformed_archive_path"
