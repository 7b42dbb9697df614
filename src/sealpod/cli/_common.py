"""Shared click parameter types and output helpers for the CLI modules."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from sealpod._internal.fsutil import write_file_atomic
from sealpod.cli._lazy import LazyGroup as LazyGroup
from sealpod.errors import ConfigError

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")


def emit(data: Mapping[str, Any], as_json: bool, human: Callable[[], None] | None = None) -> None:
    """Print ``data`` as JSON, or call ``human`` (default: ``key: value`` lines)."""
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))
        return
    if human is not None:
        human()
        return
    for key, value in data.items():
        if isinstance(value, list | tuple):
            value = ", ".join(str(v) for v in value) if value else "(none)"
        click.echo(f"{key}: {value}")


def read_bytes(path: str | Path, what: str) -> bytes:
    """Read a file given on the command line; a missing file is a one-line ConfigError."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc


def write_bytes_atomic(
    path: str | Path, data: bytes, mode: int = 0o644, *, overwrite: bool = True
) -> None:
    """Write ``data`` to ``path`` all at once (temp file, fsync, rename): never half-written.

    Raises:
        ConfigError: the file exists (``overwrite`` false) or cannot be written.
    """
    try:
        write_file_atomic(path, data, mode=mode, overwrite=overwrite)
    except FileExistsError as exc:
        raise ConfigError(f"{path} exists; use --force to replace it") from exc
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from exc


def parse_time(value: str) -> int:
    """Parse ISO-8601 (``2025-07-19T09:00:00Z``) or epoch seconds into epoch seconds.

    Raises:
        ConfigError: the value is neither.
    """
    text = value.strip()
    if text.isdigit():
        return int(text)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ConfigError(f"invalid time {value!r}: use ISO-8601 or epoch seconds") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp())


class TimeParam(click.ParamType[int]):
    """``--at TIME``: ISO-8601 or epoch seconds -> epoch seconds."""

    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_time(str(value))
        except ConfigError as exc:
            self.fail(str(exc), param, ctx)


class HexParam(click.ParamType[bytes]):
    """A hex string of an exact byte length (``None`` = any length)."""

    name = "HEX"

    def __init__(self, length: int | None = None) -> None:
        self.length = length

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> bytes:
        if isinstance(value, bytes):
            return value
        text = str(value).strip().lower().removeprefix("0x")
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            self.fail(f"{value!r} is not hex", param, ctx)
        if self.length is not None and len(raw) != self.length:
            self.fail(
                f"expected {self.length} bytes ({2 * self.length} hex digits), got {len(raw)}",
                param,
                ctx,
            )
        return raw


def stdout_is_terminal() -> bool:
    """Progress bars only on a terminal (STYLE.md 9)."""
    return sys.stderr.isatty()


@dataclass(frozen=True)
class ByteProgress:
    """A running progress bar counting bytes (see :func:`byte_progress`)."""

    _bar: Any
    _task: Any

    def advance(self, done: int) -> None:
        """Count ``done`` more bytes."""
        self._bar.advance(self._task, done)

    def update(self, done: int, total: int) -> None:
        """Set the bytes done so far and the total."""
        self._bar.update(self._task, completed=done, total=total)


@contextlib.contextmanager
def byte_progress(label: str, total: int | None = None) -> Iterator[ByteProgress | None]:
    """A byte progress bar on stderr when it is a terminal; ``None`` otherwise (STYLE.md 9)."""
    if not stdout_is_terminal():
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn(label),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        yield ByteProgress(bar, bar.add_task(label, total=total))
