"""``sealpod volume`` as a user runs it (in-process through the real entry point)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from sealpod.cli import main
from sealpod.encfs.volume import Volume

KEY = bytes(range(16))


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc_info:
        main(args)
        raise SystemExit(0)
    out, err = capsys.readouterr()
    code = exc_info.value.code
    return (code if isinstance(code, int) else 0), out, err


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "volume.key"
    path.write_bytes(KEY)
    return path


def _tag_of(directory: Path) -> str:
    record = json.loads((directory / "volume.json").read_text())["record"]
    return hashlib.sha256(
        json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


def test_create_inspect_verify(
    tmp_path: Path, key_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "vol"
    code, out, _ = _run(
        ["volume", "create", str(directory), "-k", str(key_file), "--name", "db", "--json"], capsys
    )
    assert code == 0
    created = json.loads(out)
    assert created["version"] == 1 and created["tag"] == _tag_of(directory)
    with Volume.open(directory, KEY, "db", bytes.fromhex(created["tag"])) as volume:
        volume.write_file("/hello", b"world")
    tag = _tag_of(directory)
    code, out, _ = _run(
        ["volume", "inspect", str(directory), "-k", str(key_file), "--json"], capsys
    )
    assert code == 0
    info = json.loads(out)
    assert info["version"] == 2 and info["tag"] == tag
    assert info["files"]["/hello"]["size"] == 5
    code, out, _ = _run(
        ["volume", "verify", str(directory), "-k", str(key_file), "--expect-tag", tag, "--json"],
        capsys,
    )
    assert code == 0 and json.loads(out)["ok"] is True


def test_verify_reports_rolled_back_file_with_its_path(
    tmp_path: Path, key_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "vol"
    with Volume.create(directory, KEY, "db") as volume:
        volume.write_file("/x", b"one")
    objects = directory / "objects"
    old = {p.name: p.read_bytes() for p in objects.iterdir()}
    with Volume.open(directory, KEY, "db") as volume:
        handle = volume.open_file("/x")
        volume.write(handle, 0, b"two")
    for name, data in old.items():
        (objects / name).write_bytes(data)
    code, _, err = _run(
        [
            "volume",
            "verify",
            str(directory),
            "-k",
            str(key_file),
            "--expect-tag",
            _tag_of(directory),
        ],
        capsys,
    )
    assert code == 1
    assert err.startswith("error: rollback_detected: /x")
    assert "Traceback" not in err


def test_verify_refuses_whole_volume_rollback_with_expected_tag(
    tmp_path: Path, key_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "vol"
    with Volume.create(directory, KEY, "db") as volume:
        volume.write_file("/x", b"one")
    shutil.copytree(directory, tmp_path / "snapshot")
    with Volume.open(directory, KEY, "db") as volume:
        volume.write_file("/x", b"two")
    latest = _tag_of(directory)
    code, _, err = _run(
        [
            "volume",
            "verify",
            str(tmp_path / "snapshot"),
            "-k",
            str(key_file),
            "--expect-tag",
            latest,
        ],
        capsys,
    )
    assert code == 1 and "rollback_detected" in err


def test_malformed_input_is_one_line(
    tmp_path: Path, key_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    short = tmp_path / "short.key"
    short.write_bytes(b"123")
    code, _, err = _run(
        ["volume", "create", str(tmp_path / "v"), "-k", str(short), "--name", "x"], capsys
    )
    assert code == 1 and len(err.strip().splitlines()) == 1
    code, _, err = _run(
        ["volume", "inspect", str(tmp_path / "nothing"), "-k", str(key_file)], capsys
    )
    assert code == 1 and err.startswith("error:")
    code, _, _ = _run(
        ["volume", "verify", str(tmp_path), "-k", str(key_file), "--expect-tag", "zz"], capsys
    )
    assert code == 2
