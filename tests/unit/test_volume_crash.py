"""Kill loop: a forked child commits versions of a volume and is SIGKILLed at random moments.

Each version's content is a pure function of the version number (computed here, independently
of the volume code). After every kill the volume is reopened against a durable tag authority:
it must open at exactly the authority's version with exactly that version's content (the design
promises old or new committed state; a detected inconsistency would also be safe, but this
design must not even produce one), never other bytes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import pytest

from sealpod.encfs.volume import Volume
from sealpod.errors import VerificationError

KEY = bytes(range(16))
NAME = "crash"


class FileAuthority:
    """What the coordinator does: keep the latest (version, tag) durably, refuse old ones."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _load(self) -> tuple[int, bytes] | None:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        return int(data["version"]), bytes.fromhex(data["tag"])

    def current_tag(self, volume: str) -> bytes | None:
        latest = self._load()
        return None if latest is None else latest[1]

    def report_tag(self, volume: str, version: int, tag: bytes) -> None:
        latest = self._load()
        if latest is not None and version <= latest[0]:
            raise VerificationError("tag_replayed", "old version")
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump({"version": version, "tag": tag.hex()}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


def content(version: int, index: int) -> bytes:
    rng = random.Random(version * 1000 + index)
    return rng.randbytes(rng.choice([0, 100, 3072, 5000, 70000, 450000]))


def expected(version: int) -> dict[str, bytes]:
    if version <= 1:
        return {}
    moved = "/c" if version % 2 else "/d"
    return {"/a": content(version, 0), "/b": content(version, 1), moved: content(version, 2)}


def _child(directory: Path, authority: FileAuthority) -> None:
    volume = Volume.open(directory, KEY, NAME, tag_authority=authority)
    while True:
        want = expected(volume.version + 1)
        for old, new in (("/c", "/d"), ("/d", "/c")):
            if new in want and old in list(volume.iter_files()):
                volume.rename(old, new)
        for path, data in want.items():
            handle = volume.open_file(path, create=True)
            # Overwrite in place (journaled for committed nodes), then cut or extend.
            volume.write(handle, 0, data[: len(data) // 2])
            volume.write(handle, len(data) // 2, data[len(data) // 2 :])
            volume.resize(handle, len(data))
        volume.commit()


@pytest.mark.timeout(60)
def test_sigkill_during_commits_leaves_old_or_new_committed_state(tmp_path: Path) -> None:
    authority_file = tmp_path / "authority.json"
    authority = FileAuthority(authority_file)
    directory = tmp_path / "vol"
    Volume.create(directory, KEY, NAME, tag_authority=authority).close()
    rng = random.Random(1234)
    versions = []
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child never returns
            try:
                _child(directory, authority)
            finally:
                os._exit(3)
        time.sleep(rng.uniform(0.005, 0.25))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status), "the child stopped by itself (it failed)"
        with Volume.open(directory, KEY, NAME, tag_authority=authority, deep=True) as volume:
            got = {path: volume.read_file(path) for path in volume.iter_files()}
            version = volume.version
        assert json.loads(authority_file.read_text())["version"] == version
        assert got == expected(version)
        versions.append(version)
    assert len(versions) >= 10 and versions[-1] > 3, "too few kills or commits to test anything"
