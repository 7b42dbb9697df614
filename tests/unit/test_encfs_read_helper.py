"""Large reads hand whole MHT groups to the decryption helper process: same bytes, same refusals.

Node positions follow the Gramine layout: node 0 metadata, node 1 root MHT, data node d at
physical node d + 2 + d // 96. The plaintext and the tampered positions are computed here. A
1 MiB read from offset 0 covers data nodes 0..255: group 0 (nodes 0..95) stays with the reader,
the largest later group (nodes 96..191) goes to the helper.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sealpod.encfs import _read_worker
from sealpod.encfs.volume import LocalTagAuthority, Volume
from sealpod.errors import VerificationError

KEY = bytes(range(16))
NODE = 4096
META = 3072
DATA = bytes((i * 7 + i // 4096) % 256 for i in range(META + NODE * 300))


def _physical(data_node: int) -> int:
    return data_node + 2 + data_node // 96


@pytest.fixture
def helper() -> Iterator[_read_worker.DecryptHelper]:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("the helper is only used with two or more CPUs")
    found = _read_worker.helper()
    assert found is not None
    deadline = time.monotonic() + 30
    while not found.available():
        assert time.monotonic() < deadline, "the decryption helper did not start"
        time.sleep(0.02)
    yield found


@pytest.fixture
def volume_dir(tmp_path: Path) -> tuple[Path, LocalTagAuthority]:
    authority = LocalTagAuthority()
    directory = tmp_path / "vol"
    with Volume.create(directory, KEY, "data", tag_authority=authority) as volume:
        volume.write_file("/big", DATA)
    return directory, authority


def _object(directory: Path) -> Path:
    record = json.loads((directory / "volume.json").read_text())["record"]
    return directory / "objects" / record["files"]["/big"]["object"]


def _read_all(
    directory: Path, authority: LocalTagAuthority, size: int = 1 << 20, start: int = 0
) -> bytes:
    with Volume.open(directory, KEY, "data", tag_authority=authority) as volume:
        handle = volume.open_file("/big")
        return b"".join(
            bytes(volume.read(handle, offset, size)) for offset in range(start, len(DATA), size)
        )


def _counting_sends(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    sent: list[int] = []
    real = _read_worker.DecryptHelper.send

    def send(self: _read_worker.DecryptHelper, fd: int, runs: list) -> object:  # type: ignore[type-arg]
        sent.append(sum(len(entries) // 32 for _, entries, _ in runs))
        return real(self, fd, runs)

    monkeypatch.setattr(_read_worker.DecryptHelper, "send", send)
    return sent


def test_large_reads_through_the_helper_give_the_plaintext(
    helper: _read_worker.DecryptHelper,
    volume_dir: tuple[Path, LocalTagAuthority],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    directory, authority = volume_dir
    sent = _counting_sends(monkeypatch)
    assert _read_all(directory, authority) == DATA
    assert _read_all(directory, authority, size=700_000, start=1) == DATA[1:]  # cut mid-node
    assert sent and all(0 < n <= 0.55 * 256 for n in sent)  # the helper did take groups


@pytest.mark.parametrize("data_node", [10, 150, 200])  # reader, helper, reader
def test_a_tampered_node_in_any_group_is_refused(
    helper: _read_worker.DecryptHelper,
    volume_dir: tuple[Path, LocalTagAuthority],
    data_node: int,
) -> None:
    directory, authority = volume_dir
    host = _object(directory)
    raw = bytearray(host.read_bytes())
    raw[_physical(data_node) * NODE + 123] ^= 0x40
    host.write_bytes(bytes(raw))
    with pytest.raises(VerificationError) as info:
        _read_all(directory, authority)
    assert info.value.reason == "encfs_bad_mac"
    assert f"data node {data_node} " in str(info.value)


def test_reads_go_on_when_the_helper_dies(
    helper: _read_worker.DecryptHelper, volume_dir: tuple[Path, LocalTagAuthority]
) -> None:
    directory, authority = volume_dir
    process = helper._process
    assert process is not None
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    try:
        assert _read_all(directory, authority) == DATA
        assert _read_worker.helper() is None  # not used again
    finally:
        helper.close()
        _read_worker._helper = None  # later tests may start a new one


def test_without_the_helper_reads_are_the_same(
    volume_dir: tuple[Path, LocalTagAuthority], monkeypatch: pytest.MonkeyPatch
) -> None:
    directory, authority = volume_dir
    monkeypatch.setattr(_read_worker, "helper", lambda: None)
    assert _read_all(directory, authority) == DATA


def test_the_helper_reads_only_the_file_the_reader_named(tmp_path: Path) -> None:
    # The helper reopens the reader's descriptor through /proc; a descriptor number now naming
    # another file (another device/inode than the request says) is refused, not read.
    first, second = tmp_path / "first", tmp_path / "second"
    first.write_bytes(b"a")
    second.write_bytes(b"b")
    fd = os.open(first, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        other = second.stat()
        files: dict[tuple[int, int, int], int] = {}
        assert _read_worker._reopen(files, (fd, other.st_dev, other.st_ino), os.getpid()) == -1
        own = _read_worker._reopen(files, (fd, st.st_dev, st.st_ino), os.getpid())
        assert own >= 0 and os.pread(own, 1, 0) == b"a"
        for opened in files.values():
            os.close(opened)
    finally:
        os.close(fd)


def test_a_request_outside_the_shared_region_is_refused(tmp_path: Path) -> None:
    import mmap

    source = tmp_path / "sealed"
    source.write_bytes(bytes(NODE * (_read_worker.MAX_NODES + 2)))
    fd = os.open(source, os.O_RDONLY)
    region = mmap.mmap(-1, _read_worker._REGION)
    view = memoryview(region)
    sealed = bytearray(_read_worker.MAX_NODES * NODE)
    files: dict[tuple[int, int, int], int] = {}
    try:
        st = os.fstat(fd)
        # A run inside the region reaches decryption (the zeros then fail authentication)...
        inside = _read_worker._REQUEST.pack(fd, st.st_dev, st.st_ino, 0, 2, 0)
        assert _read_worker._decrypt_request(inside, view, files, sealed, os.getpid()) == 0
        # ...one that would run past it, or holds no node, is refused before anything is read.
        for nodes, slot in ((0, 0), (_read_worker.MAX_NODES + 1, 0), (10, 250), (1, -1)):
            request = _read_worker._REQUEST.pack(fd, st.st_dev, st.st_ino, 0, nodes, slot)
            status = _read_worker._decrypt_request(request, view, files, sealed, os.getpid())
            assert status == _read_worker.UNREADABLE, (nodes, slot)
    finally:
        for opened in files.values():
            os.close(opened)
        view.release()
        region.close()
        os.close(fd)
