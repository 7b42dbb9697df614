"""Random write/truncate/rename/unlink/fsync sequences through the provider API vs a dict model.

The model is a dict of bytearrays (path -> content) driven by the same operations; after every
sequence the volume is closed, reopened against the authority and compared with the model.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sealpod.encfs.volume import LocalTagAuthority, Volume
from sealpod.runtime.encrypted_volume import EncryptedVolumeProvider

KEY = bytes(range(16))
NAMES = ["/a", "/b", "/c"]
# Sizes around the metadata node's 3 KiB and data node boundaries.
OFFSETS = st.sampled_from([0, 1, 3071, 3072, 3073, 4095, 7168, 7169, 20000, 400000])

_op = st.one_of(
    st.tuples(
        st.just("write"), st.sampled_from(NAMES), OFFSETS, st.binary(min_size=1, max_size=9000)
    ),
    st.tuples(st.just("truncate"), st.sampled_from(NAMES), OFFSETS),
    st.tuples(st.just("rename"), st.sampled_from(NAMES), st.sampled_from(NAMES)),
    st.tuples(st.just("unlink"), st.sampled_from(NAMES)),
    st.tuples(st.just("fsync"), st.sampled_from(NAMES)),
    st.tuples(st.just("read"), st.sampled_from(NAMES)),
)


def _apply(provider: EncryptedVolumeProvider, model: dict[str, bytearray], op: tuple) -> None:  # type: ignore[type-arg]
    kind = op[0]
    if kind == "write":
        _, path, offset, data = op
        handle = provider.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        assert provider.write(handle, offset, data) == len(data)
        content = model.setdefault(path, bytearray())
        if offset > len(content):
            content.extend(bytes(offset - len(content)))
        content[offset : offset + len(data)] = data
        provider.release(handle)
    elif kind == "truncate":
        _, path, size = op
        if path not in model:
            try:
                provider.truncate(path, size)
            except FileNotFoundError:
                return
            raise AssertionError("truncate of a missing file succeeded")
        provider.truncate(path, size)
        content = model[path]
        del content[size:]
        content.extend(bytes(size - len(content)))
    elif kind == "rename":
        _, old, new = op
        if old not in model:
            return
        provider.rename(old, new)
        model[new] = model.pop(old)
    elif kind == "unlink":
        _, path = op
        if path not in model:
            return
        provider.unlink(path)
        del model[path]
    elif kind == "read":
        _, path = op
        if path in model:
            handle = provider.open(path, os.O_RDONLY, 0)
            assert provider.read(handle, 0, len(model[path]) + 10) == model[path]
            provider.release(handle)
    else:
        _, path = op
        if path in model:
            handle = provider.open(path, os.O_RDONLY, 0)
            provider.fsync(handle)
            provider.release(handle)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(_op, min_size=1, max_size=12))
def test_random_operations_match_a_dict_model(ops: list[tuple]) -> None:  # type: ignore[type-arg]
    authority = LocalTagAuthority()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "vol"
        Volume.create(directory, KEY, "p", tag_authority=authority).close()
        provider = EncryptedVolumeProvider.open_volume(directory, KEY, "p", tag_authority=authority)
        model: dict[str, bytearray] = {}
        for op in ops:
            _apply(provider, model, op)
            for path, content in model.items():
                assert provider.getattr(path).size == len(content)
        assert provider.readdir("/") == sorted(p[1:] for p in model)
        provider.close()
        with Volume.open(directory, KEY, "p", tag_authority=authority, deep=True) as volume:
            assert {p: volume.read_file(p) for p in volume.iter_files()} == {
                p: bytes(c) for p, c in model.items()
            }
            # Committed files are served by the run reader: ranges across node boundaries.
            for path, content in model.items():
                handle = volume.open_file(path)
                for offset in (0, 1, 3071, 3072, 4000, 7169, len(content) - 1):
                    for size in (1, 4096, 9000):
                        start = max(offset, 0)
                        assert volume.read(handle, start, size) == content[start : start + size]


def test_provider_errors_keep_their_errno(tmp_path: Path) -> None:
    authority = LocalTagAuthority()
    Volume.create(tmp_path / "vol", KEY, "p", tag_authority=authority).close()
    provider = EncryptedVolumeProvider.open_volume(
        tmp_path / "vol", KEY, "p", tag_authority=authority
    )
    provider.mkdir("/d", 0o755)
    provider.release(provider.open("/d/f", os.O_CREAT | os.O_WRONLY, 0o600))
    cases = [
        (lambda: provider.open("/missing", os.O_RDONLY, 0), errno.ENOENT),
        (lambda: provider.open("/d/f", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600), errno.EEXIST),
        (lambda: provider.open("/d", os.O_RDONLY, 0), errno.EISDIR),
        (lambda: provider.rmdir("/d"), errno.ENOTEMPTY),
        (lambda: provider.unlink("/d"), errno.EISDIR),
        (lambda: provider.rename("/d", "/d/sub"), errno.EINVAL),
        (lambda: provider.read(12345, 0, 1), errno.EBADF),
    ]
    for action, code in cases:
        try:
            action()
        except OSError as exc:
            assert exc.errno == code, (code, exc)
        else:
            raise AssertionError(f"expected errno {code}")
    assert provider.getattr("/d/f").mode == 0o600
    provider.close()
