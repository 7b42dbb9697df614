"""Reading and verifying confidential packages (the runtime's first step).

A package is an OCI image layout whose *last* layer holds exactly ``/.sealpod/enclave.json``,
``/.sealpod/enclave.sig`` and ``/.sealpod/gramine/entrypoint.manifest`` (plus their parent
directories); the layers below it are the original image's. The builder stores that layer
uncompressed (it is read at every start); gzip-compressed ones, as older builds wrote, are read
too. Everything read here is untrusted:

* :func:`open_package` parses the layout (descriptors and JSON documents are digest-checked by
  :func:`sealpod.image.open_image`), checks the sealpod layer's blob digest and diff_id itself,
  and refuses a layer holding anything else;
* :func:`verify_package` checks the SIGSTRUCT as EINIT would, requires enclave.json to be
  canonical, recomputes MRENCLAVE from its bytes and requires it to equal the signed one, and
  requires the signed ISVPRODID/ISVSVN/DEBUG to equal the manifest's. Nothing from a package
  may be used before it passes;
* the rootfs layers' own digests are checked when the runtime extracts them; their *content*
  is bound by the trusted-file hashes, which the shield enforces.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
import io
import logging
import tarfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

from sealpod.errors import ConfigError, ManifestError, VerificationError
from sealpod.image.read import open_image
from sealpod.package.measure import measure_manifest_bytes
from sealpod.package.view import EnclaveView, read_canonical
from sealpod.sgx._check import signed_identity, verify_sigstruct_bytes

if TYPE_CHECKING:
    from sealpod.image.model import Image, Layer
    from sealpod.package.manifest import EnclaveManifest

_logger = logging.getLogger(__name__)

ENCLAVE_JSON: Final = ".sealpod/enclave.json"
ENCLAVE_SIG: Final = ".sealpod/enclave.sig"
GRAMINE_MANIFEST: Final = ".sealpod/gramine/entrypoint.manifest"
_FILES: Final = frozenset({ENCLAVE_JSON, ENCLAVE_SIG, GRAMINE_MANIFEST})
_DIRECTORIES: Final = frozenset({".sealpod", ".sealpod/gramine"})

#: Annotations (and a config label) naming the package's identity, for humans and tools.
ANNOTATION_MRENCLAVE: Final = "dev.sealpod.mrenclave"
ANNOTATION_MRSIGNER: Final = "dev.sealpod.mrsigner"

#: Upper bounds on what the sealpod layer may take, compressed and uncompressed.
_MAX_BLOB: Final = 256 << 20
_MAX_TAR: Final = 1 << 30
_CHUNK: Final = 1 << 20


@dataclass(frozen=True)
class Package:
    """A package as read by :func:`open_package`: parsed, *not yet verified*.

    Both readings of enclave.json are derived from :attr:`enclave_json` itself and cached on
    first use (a :func:`dataclasses.replace` with other bytes reads them again): :attr:`view`,
    what the runtime reads, comes from the fast reader
    (:func:`sealpod.package.view.read_canonical`) when the bytes are a complete canonical
    manifest, else from the pydantic model; :attr:`manifest`, the pydantic model, is only
    parsed when asked for (the run path never needs it).
    """

    path: Path
    image: Image
    sealpod_layer: Layer
    enclave_json: bytes = field(repr=False)
    enclave_sig: bytes = field(repr=False)
    gramine_manifest: str = field(repr=False)

    @property
    def rootfs_layers(self) -> tuple[Layer, ...]:
        """The original image's layers, bottom first."""
        return self.image.layers[:-1]

    @cached_property
    def _read(self) -> tuple[EnclaveView, bool]:
        fast = read_canonical(self.enclave_json)
        if fast is not None:
            return fast, True
        # Not complete and canonical: the model says why (invalid), or accepts it (and
        # verify_package decides whether it is canonical).
        return EnclaveView.from_model(self.manifest), False

    @property
    def view(self) -> EnclaveView:
        """The validated manifest as the runtime reads it.

        Raises:
            VerificationError: ``package_manifest_invalid``.
        """
        return self._read[0]

    @property
    def canonical(self) -> bool:
        """Whether enclave.json is in canonical form (what MRENCLAVE must be measured over).

        Raises:
            VerificationError: ``package_manifest_invalid``.
        """
        return self._read[1] or self.manifest.canonical_bytes() == self.enclave_json

    @cached_property
    def manifest(self) -> EnclaveManifest:
        """enclave.json as the pydantic model (validated when the package was opened).

        Raises:
            VerificationError: ``package_manifest_invalid`` (cannot happen for a package from
                :func:`open_package`, which validated the same bytes).
        """
        return _parse_manifest(self.enclave_json, str(self.path))


def _parse_manifest(data: bytes, where: str) -> EnclaveManifest:
    from sealpod.package.manifest import EnclaveManifest

    try:
        return EnclaveManifest.from_bytes(data)
    except ManifestError as exc:
        raise VerificationError("package_manifest_invalid", f"{where}: {exc}") from exc


@dataclass(frozen=True)
class PackageInfo:
    """What a package is: its identity and a summary of its policy."""

    mrenclave: str
    mrsigner: str
    isv_prod_id: int
    isv_svn: int
    debug: bool
    entrypoint: str
    argv: tuple[str, ...]
    trusted_files: int
    trusted_bytes: int
    volumes: Mapping[str, str]
    layer_digests: tuple[str, ...]
    manifest_digest: str | None

    def __post_init__(self) -> None:
        object.__setattr__(self, "volumes", MappingProxyType(dict(self.volumes)))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (the ``--json`` output of ``sealpod inspect``)."""
        return {
            "mrenclave": self.mrenclave,
            "mrsigner": self.mrsigner,
            "isv_prod_id": self.isv_prod_id,
            "isv_svn": self.isv_svn,
            "debug": self.debug,
            "entrypoint": self.entrypoint,
            "argv": list(self.argv),
            "trusted_files": self.trusted_files,
            "trusted_bytes": self.trusted_bytes,
            "volumes": dict(self.volumes),
            "layer_digests": list(self.layer_digests),
            "manifest_digest": self.manifest_digest,
        }


@dataclass(frozen=True)
class PackageRootfs:
    """What the runtime unpacks and enforces.

    ``image`` holds the rootfs layers only (its config's diff_ids match them, so
    :func:`sealpod.image.cache.extract_cached` keys the tree by exactly these layers);
    ``manifest`` gives the shield policy: :meth:`EnclaveManifest.trusted_digests` (path ->
    SHA-256, links hashed by their target string), ``allowed_files``, ``tmpfs`` and ``volumes``
    (name -> mount path), plus ``user``, ``working_dir``, ``env`` and ``argv`` for the sandbox.
    """

    image: Image
    manifest: EnclaveView

    @property
    def layers(self) -> tuple[Layer, ...]:
        """The layers to unpack, bottom first."""
        return self.image.layers


def _gunzip(raw: bytes, limit: int) -> bytes:
    """The concatenated members of a gzip stream, at most ``limit + 1`` bytes of them.

    One-shot :mod:`zlib` inflation (the gzip header and CRC-32/ISIZE trailer checked by zlib)
    with a bound on the output, several times faster than reading a :class:`gzip.GzipFile`.

    Raises:
        EOFError: a member is truncated.
        zlib.error: a member is corrupt.
    """
    members: list[bytes] = []
    size = 0
    rest = raw
    while True:
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        member = inflater.decompress(rest, limit + 1 - size)
        members.append(member)
        size += len(member)
        if size > limit:
            break
        if not inflater.eof:
            raise EOFError("compressed data ended before the end of a gzip member")
        # Like gzip.decompress: members follow each other, zero bytes may pad the end.
        rest = inflater.unused_data.lstrip(b"\x00")
        if not rest:
            break
    return b"".join(members)


def _decompressed(raw: bytes, layer: Layer, where: str) -> bytes:
    compression = layer.compression
    try:
        if compression == "none":
            return raw
        if compression == "gzip":
            data = _gunzip(raw, _MAX_TAR)
        else:
            try:
                zstandard = importlib.import_module("zstandard")
            except ImportError as exc:
                raise ConfigError("zstd layers need the optional 'zstandard' package") from exc
            with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw)) as stream:
                data = stream.read(_MAX_TAR + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise VerificationError("package_layer_malformed", f"{where}: {exc}") from exc
    if len(data) > _MAX_TAR:
        raise VerificationError("package_layer_malformed", f"{where}: too large")
    return data


def _read_sealpod_layer(layer: Layer, where: str) -> dict[str, bytes]:
    with layer.open_blob() as stream:
        raw = stream.read(_MAX_BLOB + 1)
    if len(raw) > _MAX_BLOB:
        raise VerificationError("package_layer_malformed", f"{where}: blob too large")
    blob_digest = None
    if layer.digest is not None:
        algorithm = layer.digest.partition(":")[0]
        blob_digest = f"{algorithm}:{hashlib.new(algorithm, raw).hexdigest()}"
        if blob_digest != layer.digest:
            raise VerificationError("blob_digest_mismatch", f"{where}: does not match its digest")
    tar_bytes = _decompressed(raw, layer, where)
    if tar_bytes is raw and blob_digest is not None and blob_digest.startswith("sha256:"):
        diff_id = blob_digest  # an uncompressed layer: the same bytes, hashed once
    else:
        diff_id = f"sha256:{hashlib.sha256(tar_bytes).hexdigest()}"
    if diff_id != layer.diff_id:
        raise VerificationError("diff_id_mismatch", f"{where}: does not match its diff_id")
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as tar:
            for member in tar:
                name = str(PurePosixPath(member.name.lstrip("/")))
                if name.startswith("./"):
                    name = name[2:]
                if member.isdir() and name in _DIRECTORIES:
                    continue
                if not member.isfile() or name not in _FILES or name in files:
                    raise VerificationError(
                        "package_layer_malformed",
                        f"{where}: unexpected entry {member.name!r} in the sealpod layer",
                    )
                extracted = tar.extractfile(member)
                if extracted is None:
                    raise VerificationError("package_layer_malformed", f"{where}: {name}")
                files[name] = extracted.read()
    except tarfile.TarError as exc:
        raise VerificationError("package_layer_malformed", f"{where}: {exc}") from exc
    missing = sorted(_FILES - files.keys())
    if missing:
        raise VerificationError(
            "package_missing_enclave_files", f"{where}: no /{', /'.join(missing)}"
        )
    return files


def open_package(path: str | Path) -> Package:
    """Read the package at ``path`` (an OCI layout directory, optionally ``oci:DIR[:TAG]``).

    The result is not verified: call :func:`verify_package` before using anything from it.

    Raises:
        ConfigError: not a readable OCI layout.
        VerificationError: a document or the sealpod layer fails its digest, the image has no
            sealpod layer (``package_missing_enclave_files``), the layer holds anything else
            (``package_layer_malformed``) or enclave.json is not a valid enclave manifest
            (``package_manifest_invalid``).
    """
    text = str(path)
    spec = text if text.startswith("oci:") else f"oci:{text}"
    image = open_image(spec)
    if len(image.layers) < 2:
        raise VerificationError(
            "package_missing_enclave_files", f"{text}: not a sealpod package (too few layers)"
        )
    layer = image.layers[-1]
    where = f"{text}: sealpod layer ({layer.digest})"
    files = _read_sealpod_layer(layer, where)
    try:
        gramine = files[GRAMINE_MANIFEST].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise VerificationError(
            "package_layer_malformed", f"{where}: the Gramine manifest is not UTF-8"
        ) from exc
    package = Package(
        path=Path(text.removeprefix("oci:")),
        image=image,
        sealpod_layer=layer,
        enclave_json=files[ENCLAVE_JSON],
        enclave_sig=files[ENCLAVE_SIG],
        gramine_manifest=gramine,
    )
    _ = package.view  # validates enclave.json now (package_manifest_invalid)
    return package


def package_info(package: Package) -> PackageInfo:
    """Describe a package from its (unverified) enclave.json and SIGSTRUCT fields.

    Raises:
        VerificationError: ``sigstruct_bad_length`` if enclave.sig is not a SIGSTRUCT.
    """
    sig = signed_identity(package.enclave_sig)
    manifest = package.view
    return PackageInfo(
        mrenclave=sig.mr_enclave.hex(),
        mrsigner=sig.mr_signer.hex(),
        isv_prod_id=sig.isv_prod_id,
        isv_svn=sig.isv_svn,
        debug=sig.debug,
        entrypoint=manifest.entrypoint,
        argv=manifest.argv,
        trusted_files=manifest.trusted_count,
        trusted_bytes=manifest.trusted_bytes,
        volumes=manifest.volumes,
        layer_digests=tuple(layer.digest or layer.diff_id for layer in package.image.layers),
        manifest_digest=package.image.manifest_digest,
    )


def verify_package(package: Package, *, expected_mr_signer: bytes | None = None) -> PackageInfo:
    """Check a package's signature and that its enclave.json is what was signed.

    Args:
        package: from :func:`open_package`.
        expected_mr_signer: also require this MRSIGNER.

    Returns:
        The verified description.

    Raises:
        VerificationError: ``sigstruct_*`` (the checks of :func:`sealpod.sgx.verify_sigstruct`),
            ``package_manifest_not_canonical``, ``package_mrenclave_mismatch`` or
            ``package_identity_mismatch``.
    """
    sig = verify_sigstruct_bytes(package.enclave_sig, expected_mr_signer=expected_mr_signer)
    if not package.canonical:
        raise VerificationError(
            "package_manifest_not_canonical", "enclave.json is not in canonical form"
        )
    measured = measure_manifest_bytes(package.enclave_json)
    if not hmac.compare_digest(measured, sig.mr_enclave):
        raise VerificationError(
            "package_mrenclave_mismatch",
            f"enclave.json measures {measured.hex()}, the SIGSTRUCT signs {sig.mr_enclave.hex()}",
        )
    manifest = package.view
    if (sig.isv_prod_id, sig.isv_svn, sig.debug) != (
        manifest.isv_prod_id,
        manifest.isv_svn,
        manifest.debug,
    ):
        raise VerificationError(
            "package_identity_mismatch",
            "the SIGSTRUCT's ISVPRODID/ISVSVN/DEBUG differ from enclave.json",
        )
    info = package_info(package)
    _logger.info("package %s verified: MRENCLAVE %s", package.path, info.mrenclave)
    return info


def package_rootfs_layers(package: Package) -> PackageRootfs:
    """The rootfs layers to unpack (bottom first) and the manifest to enforce.

    Call :func:`verify_package` first; this only reshapes what it verified.
    """
    config = replace(package.image.config, diff_ids=package.image.config.diff_ids[:-1])
    image = replace(package.image, config=config, layers=package.rootfs_layers)
    return PackageRootfs(image=image, manifest=package.view)
