"""The fast enclave.json reader of the run path agrees with the pydantic model.

The property that matters: :func:`read_canonical` accepts a document only when the model
validates it *and* its canonical encoding is exactly the given bytes (the old check); it may
refuse more (the caller then asks the model), never accept more. The expected decisions come
from the model (an independent implementation: pydantic) and from ``json.dumps``.
"""

from __future__ import annotations

import copy
import itertools
import json
import posixpath
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sealpod.errors import ManifestError
from sealpod.package._rules import is_normal_path
from sealpod.package.manifest import EnclaveManifest
from sealpod.package.view import EnclaveView, _read_split, read_canonical


def _canonical(document: Any) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _full(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "schema_version": 1,
        "entrypoint": "/usr/bin/app",
        "argv": ["/usr/bin/app", "--serve"],
        "env": {"PATH": "/usr/bin", "MODE": "prod"},
        "working_dir": "/srv",
        "user": {"uid": 1000, "gid": 100},
        "trusted_files": {
            "/usr/bin/app": {"sha256": "a" * 64, "size": 10, "mode": 0o755, "type": "file"},
            "/usr/bin/sh": {"sha256": "b" * 64, "size": 4, "mode": 0o777, "type": "symlink"},
            "/usr/lib/libfoo.so": {"sha256": "c" * 64, "size": 7, "mode": 0o644, "type": "file"},
            "/etc/ca-certificates.conf": {
                "sha256": "d" * 64,
                "size": 0,
                "mode": 0o644,
                "type": "file",
            },
        },
        "allowed_files": ["/var/cache/keep.txt"],
        "tmpfs": ["/tmp"],
        "volumes": {"state": "/data"},
        "isv_prod_id": 7,
        "isv_svn": 3,
        "debug": False,
    }
    document.update(changes)
    return document


def _model_accepts(data: bytes) -> bool:
    """The old decision: the model parses it and re-encodes it to exactly these bytes."""
    try:
        return EnclaveManifest.from_bytes(data).canonical_bytes() == data
    except ManifestError:
        return False


def test_complete_canonical_manifest_is_read_like_the_model() -> None:
    data = _canonical(_full())
    view = read_canonical(data)
    assert view is not None
    assert view == EnclaveView.from_model(EnclaveManifest.from_bytes(data))
    assert view.trusted_links == frozenset({"/usr/bin/sh"})
    assert view.trusted_bytes == 10 + 7 + 0  # regular files only
    assert view.trusted_count == 4


def test_pretty_printed_manifest_is_not_read() -> None:
    assert read_canonical(json.dumps(_full(), indent=1, sort_keys=True).encode()) is None


def test_unsorted_keys_are_not_read() -> None:
    data = json.dumps(_full(), separators=(",", ":"), ensure_ascii=False).encode()
    assert data != _canonical(_full())
    assert read_canonical(data) is None


def test_duplicate_key_is_not_read() -> None:
    data = _canonical(_full())
    doubled = data.replace(b'"debug":false', b'"debug":false,"debug":false')
    assert doubled != data
    assert read_canonical(doubled) is None


def test_escaped_unicode_is_not_read() -> None:
    data = _canonical(_full(env={"GREETING": "h\u00e9"}))
    assert read_canonical(data) is not None
    assert read_canonical(data.replace("é".encode(), b"\\u00e9")) is None


def test_missing_default_field_is_not_read_though_the_model_accepts_it() -> None:
    document = _full()
    del document["working_dir"]
    data = _canonical(document)
    EnclaveManifest.from_bytes(data)  # valid for the model ...
    assert not _model_accepts(data)  # ... but not canonical (the default is dumped)
    assert read_canonical(data) is None


def test_utf16_encoded_manifest_is_not_read() -> None:
    assert read_canonical(json.dumps(_full(), sort_keys=True).encode("utf-16")) is None


@pytest.mark.parametrize(
    "changes",
    [
        {"schema_version": 2},
        {"schema_version": True},
        {"isv_svn": 1.0},
        {"isv_svn": 0x10000},
        {"isv_prod_id": True},
        {"debug": 0},
        {"user": {"uid": -1, "gid": 0}},
        {"user": {"uid": 0}},
        {"argv": []},
        {"argv": "/usr/bin/app"},
        {"env": {"A=B": "x"}},
        {"env": {"A": "x\x00"}},
        {"entrypoint": "/usr/bin/../bin/app"},
        {"working_dir": "srv"},
        {"tmpfs": ["/usr"]},
        {"tmpfs": ["/"]},
        {"tmpfs": ["/tmp", "/tmp"]},
        {"volumes": {"v": "/usr/lib"}},
        {"volumes": {"a": "/data", "b": "/data"}},
        {"volumes": {"../x": "/data"}},
        {"allowed_files": ["/usr/bin"]},
        {"allowed_files": ["/"]},
        {"unknown": 1},
        {"entrypoint": "/usr/bin/other"},
    ],
)
def test_invalid_field_is_not_read(changes: dict[str, Any]) -> None:
    data = _canonical(_full(**changes))
    assert not _model_accepts(data)
    assert read_canonical(data) is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sha256", "A" * 64),
        ("sha256", "a" * 63),
        ("sha256", "a" * 65),
        ("sha256", 5),
        ("size", -1),
        ("size", 1.5),
        ("size", True),
        ("mode", 0o10000),
        ("type", "dir"),
        ("extra", 1),
    ],
)
def test_invalid_trusted_entry_is_not_read(field: str, value: Any) -> None:
    document = _full()
    document["trusted_files"]["/usr/lib/libfoo.so"][field] = value
    data = _canonical(document)
    assert not _model_accepts(data)
    assert read_canonical(data) is None


@pytest.mark.parametrize("path", ["/", "relative", "/usr//lib", "/usr/./lib", "/usr/lib/", "//x"])
def test_invalid_trusted_path_is_not_read(path: str) -> None:
    document = _full()
    document["trusted_files"][path] = {"sha256": "e" * 64, "size": 1, "mode": 0, "type": "file"}
    data = _canonical(document)
    assert not _model_accepts(data)
    assert read_canonical(data) is None


_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 0x10001),
    st.sampled_from(["", "/", "/tmp", "/usr/bin/app", "a" * 64, "file", "symlink", "x=y"]),
)


def _mutations(document: Any) -> st.SearchStrategy[Any]:
    """Replace one leaf or container anywhere in ``document`` by an arbitrary value."""
    paths: list[tuple[Any, ...]] = []

    def walk(node: Any, at: tuple[Any, ...]) -> None:
        paths.append(at)
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, (*at, key))
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, (*at, index))

    walk(document, ())
    values = st.recursive(_LEAVES, lambda inner: st.lists(inner, max_size=2), max_leaves=3)

    def apply(choice: tuple[tuple[Any, ...], Any]) -> Any:
        at, value = choice
        changed = copy.deepcopy(document)
        if not at:
            return value
        node = changed
        for key in at[:-1]:
            node = node[key]
        node[at[-1]] = value
        return changed

    return st.tuples(st.sampled_from(paths[1:]), values).map(apply)


@settings(max_examples=300, deadline=None)
@given(_mutations(_full()))
def test_read_canonical_never_accepts_what_the_model_refuses(document: Any) -> None:
    data = _canonical(document)
    view = read_canonical(data)
    if view is not None:
        assert _model_accepts(data)
        assert view == EnclaveView.from_model(EnclaveManifest.from_bytes(data))
    elif _model_accepts(data):  # pragma: no cover - shows a needless fallback, not a hole
        pytest.fail("read_canonical refused a canonical manifest the model accepts")


def test_is_normal_path_is_normpath_without_double_slash_root() -> None:
    # Every string up to length 6 over the characters that matter, against the definition.
    for length in range(7):
        for chars in itertools.product("/.a\x00", repeat=length):
            path = "".join(chars)
            expected = (
                path.startswith("/")
                and "\x00" not in path
                and posixpath.normpath(path) == path
                and not path.startswith("//")
            )
            assert is_normal_path(path) == expected, path


# The fast path (a text without a backslash is cut at "trusted_files" and read piece by piece)
# must accept exactly the canonical bytes: attacks on the cut and on the pieces.


def _accepted_only_if_canonical(data: bytes) -> None:
    view = read_canonical(data)
    if view is not None:
        assert data == _canonical(json.loads(data))
        assert view == EnclaveView.from_model(EnclaveManifest.from_bytes(data))


def test_whitespace_inside_trusted_files_is_not_read() -> None:
    data = _canonical(_full())
    spaced = data.replace(b'"mode":420,', b'"mode": 420,', 1)
    assert spaced != data
    assert read_canonical(spaced) is None


def test_trusted_entry_with_keys_out_of_order_is_not_read() -> None:
    document = _full()
    entry = document["trusted_files"]["/usr/lib/libfoo.so"]
    data = _canonical(document)
    swapped = data.replace(
        b'{"mode":420,"sha256":"' + b"c" * 64 + b'"',
        b'{"sha256":"' + b"c" * 64 + b'","mode":420',
    )
    assert swapped != data and json.loads(swapped)["trusted_files"]["/usr/lib/libfoo.so"] == entry
    assert read_canonical(swapped) is None


def test_trusted_entry_listed_twice_is_not_read() -> None:
    # json.loads keeps the second entry: a reader of the first would see another hash.
    data = _canonical(_full())
    entry = (
        b'"/usr/lib/libfoo.so":{"mode":420,"sha256":"' + b"c" * 64 + b'","size":7,"type":"file"}'
    )
    evil = entry.replace(b"c" * 64, b"e" * 64)
    assert entry in data
    doubled = data.replace(entry, entry + b"," + evil)
    assert json.loads(doubled)["trusted_files"]["/usr/lib/libfoo.so"]["sha256"] == "e" * 64
    assert read_canonical(doubled) is None


def test_second_trusted_files_key_is_not_read() -> None:
    data = _canonical(_full())
    head, _, tail = data.partition(b',"user":')
    evil = b',"trusted_files":{"/usr/bin/app":{"mode":493,"sha256":"' + b"f" * 64
    evil += b'","size":10,"type":"file"}}'
    doubled = head + evil + b',"user":' + tail
    assert json.loads(doubled)["trusted_files"]["/usr/bin/app"]["sha256"] == "f" * 64
    assert read_canonical(doubled) is None


def test_negative_zero_is_not_read() -> None:
    data = _canonical(_full(user={"uid": 0, "gid": 100}))
    assert read_canonical(data) is not None
    assert read_canonical(data.replace(b'"uid":0', b'"uid":-0')) is None
    size = b'"size":0,"type":"file"'
    assert size in data
    assert read_canonical(data.replace(size, b'"size":-0,"type":"file"')) is None


@pytest.mark.parametrize("number", [b"010", b"1.0", b"1e1", b"+10", b" 10", b"10 "])
def test_non_canonical_trusted_number_is_not_read(number: bytes) -> None:
    data = _canonical(_full())
    assert b'"size":10,' in data
    assert read_canonical(data.replace(b'"size":10,', b'"size":' + number + b",")) is None


def test_control_character_in_trusted_path_is_not_read() -> None:
    document = _full()
    document["trusted_files"]["/usr/lib/\tx"] = document["trusted_files"]["/usr/lib/libfoo.so"]
    raw = _canonical(document).replace(b"\\t", b"\t")  # raw TAB: invalid JSON
    assert b"\\" not in raw
    assert read_canonical(raw) is None


def test_manifest_with_backslash_is_still_read_when_canonical() -> None:
    data = _canonical(_full(env={"PATTERN": 'a\\b"c', "PATH": "/usr/bin"}))
    assert b"\\" in data
    view = read_canonical(data)
    assert view is not None and view.env["PATTERN"] == 'a\\b"c'


_SPLICE = st.sampled_from(
    [
        b" ",
        b",",
        b":",
        b"{",
        b"}",
        b"[",
        b"]",
        b'"',
        b"0",
        b"7",
        b"-",
        b"/",
        b"a",
        b"}},",
        b'"user":',
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_byte_level_edits_are_read_only_when_canonical(data: st.DataObject) -> None:
    raw = bytearray(_canonical(_full()))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(raw)))
        action = data.draw(st.sampled_from(["insert", "delete", "duplicate"]))
        if action == "insert":
            raw[at:at] = data.draw(_SPLICE)
        else:
            end = min(len(raw), at + data.draw(st.integers(1, 80)))
            piece = raw[at:end]
            if action == "delete":
                del raw[at:end]
            else:
                raw[end:end] = piece
    _accepted_only_if_canonical(bytes(raw))


def test_all_normal_paths_is_is_normal_path_without_root() -> None:
    from sealpod.package._rules import all_normal_paths as _all_normal

    for length in range(6):
        for chars in itertools.product("/.a\x00", repeat=length):
            path = "".join(chars)
            expected = is_normal_path(path) and path != "/"
            assert _all_normal([path]) == expected, path
            assert _all_normal(["/x", path, "/y"]) == expected, path


def test_trusted_paths_with_json_punctuation_are_read_like_the_model() -> None:
    document = _full()
    entry = {"sha256": "e" * 64, "size": 3, "mode": 0o644, "type": "file"}
    for path in ("/usr/share/a}},{b", "/usr/share/c:d,e", "/usr/share/é ü", "/usr/share/x{y}"):
        document["trusted_files"][path] = dict(entry)
    data = _canonical(document)
    assert b"\\" not in data
    view = read_canonical(data)
    assert view is not None
    assert view == EnclaveView.from_model(EnclaveManifest.from_bytes(data))
    assert view.trusted["/usr/share/a}},{b"] == "e" * 64
    assert _read_split(data.decode()) == view  # the fast path itself, not the fallback
