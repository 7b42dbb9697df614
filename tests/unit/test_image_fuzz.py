"""Property tests: whatever a layer holds, extraction writes nothing outside its destination.

Layers are random mixes of files, directories, symbolic links (to targets inside, outside and
through other links), hard links and whiteouts, over names drawn from a tiny alphabet that
includes ``..`` so collisions and traversal attempts are frequent.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sealpod.errors import ConfigError, VerificationError
from sealpod.image import extract_layers, open_image
from sealpod.image.extract import entry_parts

_COMPONENT = st.sampled_from(["a", "b", "..", ".", "", ".wh.a", ".wh..wh..opq"])
_NAME = st.lists(_COMPONENT, min_size=1, max_size=4).map("/".join)


@given(st.lists(_COMPONENT, max_size=6).map("/".join), st.booleans())
@settings(max_examples=200)
def test_accepted_names_never_leave_the_root(name: str, absolute: bool) -> None:
    name = "/" + name if absolute else name
    try:
        parts = entry_parts(name, "fuzz")
    except VerificationError:
        return
    resolved = os.path.normpath(os.path.join("/root-of-image", *parts))
    assert resolved == "/root-of-image" or resolved.startswith("/root-of-image/")


def _entry(kind: str, name: str, target: str) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.mode = 0o755 if kind == "dir" else 0o644
    if kind == "file":
        info.size = 2
        return info, b"ok"
    info.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "link": tarfile.LNKTYPE}[kind]
    info.linkname = target
    return info, None


_OUTSIDE = "/tmp/sealpod-fuzz-outside"  # replaced per example by the real outside directory
# Few, short names so that entries collide, links get written through and whiteouts hit.
_LAYER_NAME = st.sampled_from(
    ["a", "b", "a/b", "b/a", "a/a", "a/b/a", ".wh.a", "a/.wh.b", "a/.wh..wh..opq", "../a", "/a"]
)
_TARGET = st.sampled_from(
    [_OUTSIDE, f"{_OUTSIDE}/a", "a", "b", "a/b", "../..", "../../b", "/a", "/"]
)
_ENTRY = st.tuples(st.sampled_from(["file", "dir", "sym", "link"]), _LAYER_NAME, _TARGET)
_LAYER = st.lists(_ENTRY, min_size=1, max_size=5)


def _image(root: Path, layers: list[list[tuple[str, str, str]]], outside: Path) -> Path:
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')

    def put(data: bytes) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    descriptors, diff_ids = [], []
    for layer in layers:
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for kind, name, target in layer:
                info, data = _entry(kind, name, target.replace(_OUTSIDE, str(outside)))
                tar.addfile(info, io.BytesIO(data) if data is not None else None)
        raw = out.getvalue()
        diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
        descriptors.append(
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                **put(gzip.compress(raw, mtime=0)),
            }
        )
    config = {"os": "linux", "architecture": "amd64", "rootfs": {"diff_ids": diff_ids}}
    manifest = {
        "schemaVersion": 2,
        "config": put(json.dumps(config).encode()),
        "layers": descriptors,
    }
    manifest["config"]["mediaType"] = "application/vnd.oci.image.config.v1+json"  # type: ignore[index]
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                **put(json.dumps(manifest).encode()),
            }
        ],
    }
    (root / "index.json").write_text(json.dumps(index))
    return root


def _snapshot(path: Path) -> list[tuple[str, int]]:
    return sorted((str(p), p.lstat().st_mode) for p in path.rglob("*"))


@given(st.lists(_LAYER, min_size=1, max_size=3))
@example([[("sym", "a", _OUTSIDE), ("file", "a/b", "")]])
@example([[("sym", "a", _OUTSIDE)], [("dir", "a/b", ""), ("file", "a/b/a", "")]])
@example([[("sym", "a", _OUTSIDE)], [("link", "b", "a/b")]])
@example([[("sym", "a", _OUTSIDE)], [("file", "a/.wh.b", "")]])
@example([[("sym", "a", _OUTSIDE)], [("file", "a/.wh..wh..opq", "")]])
@example([[("sym", "b", _OUTSIDE)], [("file", "b", "")]])
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
def test_random_layers_write_nothing_outside_the_destination(
    tmp_path_factory: pytest.TempPathFactory, layers: list[list[tuple[str, str, str]]]
) -> None:
    base = tmp_path_factory.mktemp("fuzz")
    outside = base / "outside"
    (outside / "a").mkdir(parents=True)
    (outside / "a" / "b").write_text("sentinel")
    (outside / "b").write_text("sentinel")
    before = _snapshot(outside)
    siblings = sorted(p.name for p in base.iterdir())
    image = open_image(f"oci:{_image(base / 'oci', layers, outside)}")
    dest = base / "dest"
    dest.mkdir()
    try:
        extract_layers(image, dest)
    except (VerificationError, ConfigError):
        pass
    assert _snapshot(outside) == before
    assert (outside / "a" / "b").read_text() == "sentinel"
    assert (outside / "b").read_text() == "sentinel"
    assert sorted(p.name for p in base.iterdir()) == sorted([*siblings, "oci", "dest"])
    for path in dest.rglob("*"):
        if path.is_symlink():
            continue
        assert path.resolve().is_relative_to(dest.resolve())
