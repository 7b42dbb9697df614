"""What extraction reports and what in-memory layers are made of (see :mod:`sealpod.image.model`)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SkippedEntry:
    """A layer entry that extraction left out on purpose (device nodes, FIFOs, ...)."""

    path: str
    reason: str


@dataclass(frozen=True)
class ExtractionSummary:
    """What :func:`sealpod.image.extract_layers` wrote."""

    files: int
    directories: int
    symlinks: int
    hardlinks: int
    bytes: int
    whiteouts: int
    skipped: tuple[SkippedEntry, ...]


@dataclass(frozen=True)
class LayerFile:
    """A regular file for an in-memory layer (:func:`sealpod.image.layer_from_files`)."""

    data: bytes = field(repr=False)
    mode: int = 0o644
