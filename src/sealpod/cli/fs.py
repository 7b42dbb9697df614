"""``sealpod fs``: Gramine-compatible encrypted files (``gramine-sgx-pf-crypt`` semantics).

Bound paths follow ``gramine-sgx-pf-crypt``: ``encrypt`` binds each file to its normalised
output path (``-o``, or ``-o DIR/<relative path>`` for a directory) unless ``--path`` names the
path the file will have inside the enclave (for a directory: the directory's path there).
``decrypt``/``verify`` check the bound path against ``--path`` (as above), or with ``-V`` against
the normalised input path (``gramine-sgx-pf-crypt decrypt -V``); with neither they accept any
bound path and report it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from sealpod.cli._common import (
    byte_progress,
    emit,
    json_option,
    read_bytes,
    write_bytes_atomic,
)
from sealpod.encfs import (
    KEY_SIZE,
    EncryptedFileInfo,
    decrypt_file,
    encrypt_file,
    normalize_path,
    verify_file,
)
from sealpod.errors import ConfigError, VerificationError

_logger = logging.getLogger(__name__)

_key_option = click.option(
    "-k",
    "--key",
    "key_file",
    required=True,
    envvar="SEALPOD_FS_KEY",
    type=click.Path(dir_okay=False),
    help="File with the 16-byte raw key (as gramine-sgx-pf-crypt -w). Env: SEALPOD_FS_KEY.",
)
_path_option = click.option(
    "-p",
    "--path",
    "bound_path",
    envvar="SEALPOD_FS_PATH",
    help="Bound path (for a directory: the directory's path inside the enclave).",
)
_verify_path_option = click.option(
    "-V",
    "--verify-path",
    is_flag=True,
    envvar="SEALPOD_FS_VERIFY_PATH",
    help="Require the bound path to equal the normalised input path (pf-crypt -V).",
)


@click.group()
def fs() -> None:
    """Encrypt, decrypt and verify Gramine encrypted files."""


def _load_key(key_file: str) -> bytes:
    key = read_bytes(key_file, "key file")
    if len(key) != KEY_SIZE:
        raise ConfigError(f"key file {key_file} must hold exactly {KEY_SIZE} raw bytes")
    return key


def _files_under(root: Path) -> Iterator[Path]:
    """Regular files under ``root`` (recursively, sorted), relative to it."""
    for directory, subdirs, names in os.walk(root):
        subdirs.sort()
        for name in sorted(names):
            full = Path(directory, name)
            if full.is_file():
                yield full.relative_to(root)
            else:
                _logger.info("skipping non-regular file %s", full)


def _jobs(source: Path, target: Path) -> list[tuple[Path, Path, str]]:
    """(input, output, relative name or "") for a file or every file of a directory."""
    if source.is_dir():
        return [(source / rel, target / rel, rel.as_posix()) for rel in _files_under(source)]
    if not source.exists():
        raise ConfigError(f"cannot read {source}: no such file or directory")
    return [(source, target, "")]


def _bound(base: str, relative: str) -> str:
    return normalize_path(f"{base}/{relative}" if relative else base)


def _expected_path(
    bound_path: str | None, verify_path: bool, source: Path, relative: str
) -> str | None:
    if bound_path is not None:
        return _bound(bound_path, relative)
    if verify_path:
        return _bound(str(source), relative)
    return None


def _check_path_flags(bound_path: str | None, verify_path: bool) -> None:
    if bound_path is not None and verify_path:
        raise click.UsageError("--path and --verify-path exclude each other")


@contextlib.contextmanager
def _progress(label: str, files: list[Path]) -> Iterator[Callable[[int], None] | None]:
    """A byte progress bar on stderr for large inputs when it is a terminal (else nothing)."""
    total = sum(path.stat().st_size for path in files if path.is_file())
    if total < (16 << 20):
        yield None
        return
    with byte_progress(label, total) as bar:
        yield None if bar is None else bar.advance


def _record(info: EncryptedFileInfo, **extra: Any) -> dict[str, Any]:
    return {**extra, **info.to_dict()}


@fs.command()
@click.option(
    "-o", "--output", "output", required=True, type=click.Path(dir_okay=False), help="Key file."
)
@click.option("--force", is_flag=True, help="Replace an existing key file.")
@json_option
def keygen(output: str, force: bool, as_json: bool) -> None:
    """Write a new random 16-byte key (mode 0600)."""
    target = Path(output)
    # Created 0600 from the start: the key never sits in a more readable file.
    write_bytes_atomic(target, os.urandom(KEY_SIZE), 0o600, overwrite=force)
    emit({"key_file": str(target), "bytes": KEY_SIZE}, as_json)


@fs.command()
@_key_option
@click.option("-i", "--input", "source", required=True, type=click.Path(), help="File or dir.")
@click.option("-o", "--output", "target", required=True, type=click.Path(), help="File or dir.")
@_path_option
@json_option
def encrypt(key_file: str, source: str, target: str, bound_path: str | None, as_json: bool) -> None:
    """Encrypt a file, or a directory recursively, into Gramine encrypted files."""
    key = _load_key(key_file)
    results = []
    jobs = _jobs(Path(source), Path(target))
    with _progress("encrypting", [job[0] for job in jobs]) as progress:
        for src, dst, relative in jobs:
            dst.parent.mkdir(parents=True, exist_ok=True)
            path = _bound(bound_path if bound_path is not None else str(target), relative)
            info = encrypt_file(key, src, dst, path=path, progress=progress)
            results.append(_record(info, input=str(src), output=str(dst)))

    def human() -> None:
        for item in results:
            click.echo(
                f"encrypted {item['input']} -> {item['output']} "
                f"(bound to {item['bound_path']}, {item['size']} bytes)"
            )

    emit({"files": results}, as_json, human)


@fs.command()
@_key_option
@click.option("-i", "--input", "source", required=True, type=click.Path(), help="File or dir.")
@click.option("-o", "--output", "target", required=True, type=click.Path(), help="File or dir.")
@_path_option
@_verify_path_option
@json_option
def decrypt(
    key_file: str,
    source: str,
    target: str,
    bound_path: str | None,
    verify_path: bool,
    as_json: bool,
) -> None:
    """Authenticate and decrypt a file, or a directory recursively (nothing on failure)."""
    _check_path_flags(bound_path, verify_path)
    key = _load_key(key_file)
    results = []
    jobs = _jobs(Path(source), Path(target))
    with _progress("decrypting", [job[0] for job in jobs]) as progress:
        for src, dst, relative in jobs:
            dst.parent.mkdir(parents=True, exist_ok=True)
            expected = _expected_path(bound_path, verify_path, Path(source), relative)
            info = decrypt_file(key, src, dst, path=expected, progress=progress)
            results.append(_record(info, input=str(src), output=str(dst), path_checked=expected))

    def human() -> None:
        for item in results:
            checked = "checked" if item["path_checked"] is not None else "not checked"
            click.echo(
                f"decrypted {item['input']} -> {item['output']} "
                f"(bound to {item['bound_path']}, {checked}; {item['size']} bytes)"
            )

    emit({"files": results}, as_json, human)


@fs.command()
@_key_option
@click.argument("files", nargs=-1, required=True, type=click.Path())
@_path_option
@_verify_path_option
@json_option
def verify(
    key_file: str,
    files: tuple[str, ...],
    bound_path: str | None,
    verify_path: bool,
    as_json: bool,
) -> None:
    """Authenticate every node of encrypted files (or directories); exit 1 if any fails."""
    _check_path_flags(bound_path, verify_path)
    if bound_path is not None and len(files) != 1:
        raise click.UsageError("--path needs exactly one FILE")
    key = _load_key(key_file)
    results: list[dict[str, Any]] = []
    failures: list[VerificationError] = []
    jobs = [(name, job) for name in files for job in _jobs(Path(name), Path(name))]
    with _progress("verifying", [job[0] for _, job in jobs]) as progress:
        for name, (src, _, relative) in jobs:
            expected = _expected_path(bound_path, verify_path, Path(name), relative)
            try:
                info = verify_file(key, src, path=expected, progress=progress)
            except VerificationError as exc:
                failures.append(exc)
                results.append(
                    {"file": str(src), "ok": False, "reason": exc.reason, "error": str(exc)}
                )
                continue
            results.append(_record(info, file=str(src), ok=True, path_checked=expected))

    def human() -> None:
        for item in results:
            if item["ok"]:
                click.echo(
                    f"ok    {item['file']} (bound to {item['bound_path']}, {item['size']} bytes, "
                    f"root MAC {item['root_mac']})"
                )
            else:
                click.echo(f"FAIL  {item['file']}: {item['error']}")

    emit({"ok": not failures, "files": results}, as_json, human)
    if failures:
        raise VerificationError(
            failures[0].reason, f"{len(failures)} of {len(results)} files failed verification"
        )
