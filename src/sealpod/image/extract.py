"""Safe extraction of image layers into a directory.

Layer tars are untrusted. Invariants kept here:

* nothing is written outside ``dest``: entry names and hard-link targets that are absolute or
  contain ``..`` are refused, every parent directory is opened component by component with
  ``O_NOFOLLOW`` from a descriptor of ``dest`` (so a symbolic link placed by an earlier entry or
  layer is never written through; doing so is refused), and leaves are created with
  ``O_CREAT|O_EXCL|O_NOFOLLOW`` after removing what was there;
* relative symbolic links whose target climbs above the root are refused; absolute targets are
  kept because they resolve inside the container's root at run time. Consumers on the host
  must never follow links inside an extracted tree;
* every layer is read twice: a first pass checks the blob digest, the diff_id of the
  uncompressed tar, every entry name and link target, and collects the whiteouts; only a layer
  that passes is applied. The second pass hashes again, so a blob changed between the passes
  is detected (the tree is then incomplete and must be discarded);
* whiteouts (``.wh.NAME``) and opaque markers (``.wh..wh..opq``) apply to the lower layers only,
  before the entries of their own layer (OCI image spec, layer.md);
* device nodes and FIFOs are skipped and reported; ownership (numeric) is applied only when
  running as root; directory modes and times are applied last, deepest first.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import shutil
import stat
import tarfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, cast

from sealpod.errors import ConfigError, VerificationError
from sealpod.image._blobs import HashingReader, decompressor, parse_digest
from sealpod.image._records import ExtractionSummary, SkippedEntry
from sealpod.image._walk import directory_entries
from sealpod.image.model import Image, Layer

_logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
_O_DIR = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"

Parts = tuple[str, ...]


def _display(parts: Parts) -> str:
    return "/" + "/".join(parts)


def entry_parts(name: str, where: str, *, kind: str = "entry") -> Parts:
    """Split a tar entry name into path components, refusing anything that leaves the root.

    Raises:
        VerificationError: ``layer_absolute_path`` or ``layer_path_traversal``; for hard-link
            targets (``kind="hardlink"``) ``layer_hardlink_escape``.
    """
    if "\x00" in name:
        raise VerificationError("layer_malformed_name", f"{where}: {kind} name contains NUL")
    if name.startswith("/"):
        reason = "layer_hardlink_escape" if kind == "hardlink" else "layer_absolute_path"
        raise VerificationError(reason, f"{where}: {kind} {name!r} is an absolute path")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        reason = "layer_hardlink_escape" if kind == "hardlink" else "layer_path_traversal"
        raise VerificationError(reason, f"{where}: {kind} {name!r} contains '..'")
    return parts


def check_symlink_target(parts: Parts, target: str, where: str) -> None:
    """Refuse a relative symbolic link whose target climbs above the root.

    Raises:
        VerificationError: ``layer_symlink_escape``.
    """
    if "\x00" in target or not target:
        raise VerificationError("layer_malformed_name", f"{where}: bad link target {target!r}")
    stack = [] if target.startswith("/") else list(parts[:-1])
    for component in target.split("/"):
        if component in ("", "."):
            continue
        if component == "..":
            if not stack:
                raise VerificationError(
                    "layer_symlink_escape",
                    f"{where}: symlink {_display(parts)} -> {target!r} points outside the root",
                )
            stack.pop()
        else:
            stack.append(component)


@dataclass
class _Plan:
    whiteouts: list[Parts] = field(default_factory=list)
    opaque: list[Parts] = field(default_factory=list)


@dataclass
class _Counts:
    files: int = 0
    directories: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    bytes: int = 0
    whiteouts: int = 0
    skipped: list[SkippedEntry] = field(default_factory=list)


def _layer_name(layer: Layer, index: int) -> str:
    return f"layer {index} ({layer.digest or layer.diff_id})"


class _LayerReadError(Exception):
    """Reading or decompressing a layer failed (as opposed to writing into dest)."""


class _GuardedReader(io.RawIOBase):
    """Marks every failure below it as a read failure, so writes failing stay OSErrors."""

    def __init__(self, inner: IO[bytes]) -> None:
        super().__init__()
        self._inner = inner

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        try:
            data = self._inner.read(len(buffer))
        except Exception as exc:  # zlib.error, EOFError, OSError; zstandard.ZstdError
            raise _LayerReadError(str(exc) or type(exc).__name__) from exc
        buffer[: len(data)] = data
        return len(data)


@contextmanager
def _layer_tar(layer: Layer, where: str) -> Iterator[tarfile.TarFile]:
    """The layer as a streaming tar; digests and size are checked when the block ends."""
    outer_algorithm = parse_digest(layer.digest, where)[0] if layer.digest else "sha256"
    inner_algorithm = parse_digest(layer.diff_id, where)[0]
    with layer.open_blob() as raw:
        outer = HashingReader(raw, outer_algorithm)
        try:
            uncompressed = decompressor(io.BufferedReader(outer, _CHUNK), layer.compression)
            inner = HashingReader(uncompressed, inner_algorithm)
            buffered = io.BufferedReader(_GuardedReader(cast(IO[bytes], inner)), _CHUNK)
            with tarfile.open(fileobj=buffered, mode="r|", errorlevel=2) as tar:
                yield tar
            while buffered.read(_CHUNK):
                pass
            outer.drain()
        except (_LayerReadError, tarfile.TarError) as exc:
            # A tampered compressed blob usually fails to decompress before its digest is
            # known; finish hashing it and report the digest mismatch when that is what it is.
            try:
                outer.drain()
            except OSError:
                pass
            if layer.digest is not None and outer.digest() != layer.digest:
                raise VerificationError(
                    "blob_digest_mismatch", f"{where}: blob does not match its digest"
                ) from exc
            raise VerificationError("malformed_layer", f"{where}: cannot read: {exc}") from exc
    if layer.digest is not None and outer.digest() != layer.digest:
        raise VerificationError("blob_digest_mismatch", f"{where}: blob does not match its digest")
    if layer.size is not None and outer.count != layer.size:
        raise VerificationError("blob_size_mismatch", f"{where}: blob is not {layer.size} bytes")
    if inner.digest() != layer.diff_id:
        raise VerificationError(
            "diff_id_mismatch", f"{where}: uncompressed layer does not match its diff_id"
        )


def _plan_layer(layer: Layer, where: str) -> _Plan:
    plan = _Plan()
    with _layer_tar(layer, where) as tar:
        for member in tar:
            parts = entry_parts(member.name, where)
            if member.issym():
                check_symlink_target(parts, member.linkname, where)
            elif member.islnk():
                entry_parts(member.linkname, where, kind="hardlink")
            if not parts or not parts[-1].startswith(_WHITEOUT):
                continue
            leaf = parts[-1]
            if leaf == _OPAQUE:
                plan.opaque.append(parts[:-1])
            elif leaf.startswith(_WHITEOUT + _WHITEOUT):
                continue  # other AUFS metadata (.wh..wh.plnk, ...) carries nothing to apply
            else:
                target = leaf[len(_WHITEOUT) :]
                if target in ("", ".", ".."):
                    raise VerificationError(
                        "layer_path_traversal", f"{where}: whiteout {member.name!r} is malformed"
                    )
                plan.whiteouts.append((*parts[:-1], target))
    return plan


def verify_layers(image: Image) -> None:
    """Read every layer once and check its digest, diff_id and entry names.

    Raises:
        VerificationError: a digest, size or diff_id mismatch, or an unsafe entry name.
        ConfigError: a layer cannot be read or needs a missing decompressor.
    """
    for index, layer in enumerate(image.layers):
        _plan_layer(layer, _layer_name(layer, index))


@dataclass
class _DirMeta:
    mode: int
    uid: int
    gid: int
    mtime: int


class _Tree:
    """Writes into ``dest`` through descriptors, never following a link."""

    def __init__(self, dest: Path, *, chown: bool) -> None:
        self.dest = dest
        self.chown = chown
        self.root_fd = os.open(dest, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self.dirs: dict[Parts, _DirMeta] = {}
        self.counts = _Counts()

    def close(self) -> None:
        os.close(self.root_fd)

    def open_dir(
        self, parts: Parts, *, create: bool, where: str, entry: Parts | None = None
    ) -> int | None:
        """A descriptor of the directory ``parts`` (created when missing if ``create``).

        ``entry`` is the layer entry this is for, named in errors.
        """
        fd = os.dup(self.root_fd)
        try:
            for i, part in enumerate(parts):
                try:
                    child = os.open(part, _O_DIR, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        os.close(fd)
                        return None
                    os.mkdir(part, 0o755, dir_fd=fd)
                    self.dirs.pop(parts[: i + 1], None)
                    child = os.open(part, _O_DIR, dir_fd=fd)
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    st = os.stat(part, dir_fd=fd, follow_symlinks=False)
                    if stat.S_ISLNK(st.st_mode):
                        raise VerificationError(
                            "layer_write_through_symlink",
                            f"{where}: {_display(parts[: i + 1])} is a symbolic link; "
                            f"refusing to write {_display(entry or parts)} through it",
                        ) from None
                    raise VerificationError(
                        "layer_parent_not_directory",
                        f"{where}: {_display(parts[: i + 1])} is not a directory "
                        f"(writing {_display(entry or parts)})",
                    ) from None
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def remove(self, parent_fd: int, parts: Parts) -> bool:
        """Remove ``parts[-1]`` in ``parent_fd`` whatever it is; False when absent."""
        leaf = parts[-1]
        try:
            st = os.stat(leaf, dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=parent_fd)
            try:
                shutil.rmtree(leaf, dir_fd=fd)
            finally:
                os.close(fd)
            for key in [k for k in self.dirs if k[: len(parts)] == parts]:
                del self.dirs[key]
        else:
            os.unlink(leaf, dir_fd=parent_fd)
        return True

    def apply_whiteouts(self, plan: _Plan, where: str) -> None:
        for parts in plan.whiteouts:
            parent = self.open_dir(parts[:-1], create=False, where=where, entry=parts)
            if parent is None:
                continue
            try:
                if self.remove(parent, parts):
                    self.counts.whiteouts += 1
            finally:
                os.close(parent)
        for parts in plan.opaque:
            directory = self.open_dir(parts, create=False, where=where)
            if directory is None:
                continue
            try:
                listing = os.open(
                    ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=directory
                )
                try:
                    names = os.listdir(listing)
                finally:
                    os.close(listing)
                for name in names:
                    self.remove(directory, (*parts, name))
                self.counts.whiteouts += 1
            finally:
                os.close(directory)

    def _owner(self, name: str, parent_fd: int, info: tarfile.TarInfo) -> None:
        if self.chown:
            os.chown(name, info.uid, info.gid, dir_fd=parent_fd, follow_symlinks=False)

    def add(self, info: tarfile.TarInfo, read: Callable[[], IO[bytes] | None], where: str) -> None:
        """Apply one entry (not a whiteout)."""
        parts = entry_parts(info.name, where)
        if not parts:
            return  # the root itself: keep dest's own mode and owner
        if info.ischr() or info.isblk() or info.isfifo():
            kind = "fifo" if info.isfifo() else "device node"
            _logger.info("%s: skipping %s %s", where, kind, _display(parts))
            self.counts.skipped.append(SkippedEntry(_display(parts), kind))
            return
        if not (info.isfile() or info.isdir() or info.issym() or info.islnk()):
            _logger.info("%s: skipping %s of tar type %r", where, _display(parts), info.type)
            self.counts.skipped.append(SkippedEntry(_display(parts), f"tar type {info.type!r}"))
            return
        parent = self.open_dir(parts[:-1], create=True, where=where, entry=parts)
        if parent is None:  # create=True never gives None
            raise ConfigError(f"{where}: cannot create {_display(parts[:-1])}")
        leaf = parts[-1]
        try:
            if info.isdir():
                self._add_dir(parent, parts, info)
            elif info.issym():
                check_symlink_target(parts, info.linkname, where)
                self.remove(parent, parts)
                os.symlink(info.linkname, leaf, dir_fd=parent)
                self._owner(leaf, parent, info)
                os.utime(
                    leaf, ns=(int(info.mtime) * 10**9,) * 2, dir_fd=parent, follow_symlinks=False
                )
                self.counts.symlinks += 1
            elif info.islnk():
                self._add_hardlink(parent, parts, info, where)
            else:
                self._add_file(parent, parts, info, read)
        finally:
            os.close(parent)

    def _add_dir(self, parent: int, parts: Parts, info: tarfile.TarInfo) -> None:
        leaf = parts[-1]
        try:
            st = os.stat(leaf, dir_fd=parent, follow_symlinks=False)
            is_dir = stat.S_ISDIR(st.st_mode)
        except FileNotFoundError:
            is_dir = False
        if not is_dir:
            self.remove(parent, parts)
            os.mkdir(leaf, 0o755, dir_fd=parent)
        self.dirs[parts] = _DirMeta(info.mode & 0o7777, info.uid, info.gid, int(info.mtime))
        self.counts.directories += 1

    def _add_hardlink(self, parent: int, parts: Parts, info: tarfile.TarInfo, where: str) -> None:
        target = entry_parts(info.linkname, where, kind="hardlink")
        if not target or target == parts:
            raise VerificationError(
                "layer_hardlink_escape", f"{where}: hard link {_display(parts)} has a bad target"
            )
        target_parent = self.open_dir(target[:-1], create=False, where=where, entry=target)
        if target_parent is None:
            raise VerificationError(
                "layer_hardlink_missing_target",
                f"{where}: hard link {_display(parts)} -> {_display(target)} has no target",
            )
        try:
            try:
                st = os.stat(target[-1], dir_fd=target_parent, follow_symlinks=False)
            except FileNotFoundError:
                raise VerificationError(
                    "layer_hardlink_missing_target",
                    f"{where}: hard link {_display(parts)} -> {_display(target)} has no target",
                ) from None
            if stat.S_ISDIR(st.st_mode):
                raise VerificationError(
                    "layer_hardlink_escape",
                    f"{where}: hard link {_display(parts)} points at a directory",
                )
            self.remove(parent, parts)
            os.link(
                target[-1],
                parts[-1],
                src_dir_fd=target_parent,
                dst_dir_fd=parent,
                follow_symlinks=False,
            )
        finally:
            os.close(target_parent)
        self.counts.hardlinks += 1

    def _add_file(
        self,
        parent: int,
        parts: Parts,
        info: tarfile.TarInfo,
        read: Callable[[], IO[bytes] | None],
    ) -> None:
        self.remove(parent, parts)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(parts[-1], flags, 0o600, dir_fd=parent)
        with os.fdopen(fd, "wb") as out:
            source = read()
            if source is not None:
                with source:
                    shutil.copyfileobj(source, out, _CHUNK)
            out.flush()
            if self.chown:
                os.fchown(fd, info.uid, info.gid)
            os.fchmod(fd, info.mode & 0o7777)
            os.utime(fd, ns=(int(info.mtime) * 10**9,) * 2)
        self.counts.files += 1
        self.counts.bytes += info.size

    def finish(self, where: str) -> None:
        """Apply the recorded directory owners, modes and times, deepest first."""
        for parts in sorted(self.dirs, key=len, reverse=True):
            meta = self.dirs[parts]
            parent = self.open_dir(parts[:-1], create=False, where=where)
            if parent is None:
                continue
            try:
                leaf = parts[-1]
                st = os.stat(leaf, dir_fd=parent, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    continue
                if self.chown:
                    os.chown(leaf, meta.uid, meta.gid, dir_fd=parent, follow_symlinks=False)
                # fchmodat cannot refuse links on Linux; the leaf was just checked to be a
                # directory and nothing else writes into dest meanwhile.
                os.chmod(leaf, meta.mode, dir_fd=parent)
                os.utime(leaf, ns=(meta.mtime * 10**9,) * 2, dir_fd=parent, follow_symlinks=False)
            finally:
                os.close(parent)

    def summary(self) -> ExtractionSummary:
        c = self.counts
        return ExtractionSummary(
            files=c.files,
            directories=c.directories,
            symlinks=c.symlinks,
            hardlinks=c.hardlinks,
            bytes=c.bytes,
            whiteouts=c.whiteouts,
            skipped=tuple(c.skipped),
        )


def _apply_layer(tree: _Tree, layer: Layer, where: str) -> None:
    plan = _plan_layer(layer, where)
    tree.apply_whiteouts(plan, where)
    with _layer_tar(layer, where) as tar:
        for member in tar:
            parts = entry_parts(member.name, where)
            if parts and parts[-1].startswith(_WHITEOUT):
                continue

            def read(member: tarfile.TarInfo = member) -> IO[bytes] | None:
                return tar.extractfile(member)

            tree.add(member, read, where)


def _apply_directory(tree: _Tree, root: Path, where: str) -> None:
    for info, content in directory_entries(root):

        def read(content: Path | None = content) -> IO[bytes] | None:
            return open(content, "rb") if content is not None else None

        if info.issym():
            check_symlink_target(entry_parts(info.name, where), info.linkname, where)
        tree.add(info, read, where)


def extract_layers(
    image: Image, dest: Path, *, preserve_owners: bool | None = None
) -> ExtractionSummary:
    """Apply the image's layers in order into ``dest`` (an empty directory), safely.

    Args:
        image: from :func:`sealpod.image.open_image`; a ``dir:`` image is copied.
        dest: an existing, empty directory.
        preserve_owners: apply numeric owners (default: when running as root).

    Returns:
        Counts of what was written and the entries skipped on purpose.

    Raises:
        VerificationError: a digest/diff_id mismatch or an unsafe entry (the message names it);
            ``dest`` is then incomplete and must be discarded.
        ConfigError: ``dest`` is not an empty directory, or a layer cannot be read.
    """
    if not dest.is_dir():
        raise ConfigError(f"{dest} is not a directory")
    if any(dest.iterdir()):
        raise ConfigError(f"{dest} is not empty")
    chown = os.geteuid() == 0 if preserve_owners is None else preserve_owners
    tree = _Tree(dest, chown=chown)
    try:
        if image.rootfs is not None:
            _apply_directory(tree, image.rootfs, image.source)
        for index, layer in enumerate(image.layers):
            where = _layer_name(layer, index)
            try:
                _apply_layer(tree, layer, where)
            except OSError as exc:
                raise ConfigError(f"{where}: cannot extract into {dest}: {exc}") from exc
        tree.finish(image.source)
    finally:
        tree.close()
    summary = tree.summary()
    _logger.info(
        "extracted %s: %d files, %d bytes, %d skipped",
        image.source,
        summary.files,
        summary.bytes,
        len(summary.skipped),
    )
    return summary
