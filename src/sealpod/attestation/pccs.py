"""Fetch DCAP collateral from a PCCS (or Intel's PCS) over the PCS API v4, with an on-disk cache.

Invariants of this module:

* Nothing fetched here is trusted: collateral is signed up to the root and checked by
  :func:`sealpod.attestation.verify.verify_quote`. The client only checks that each response has the
  expected structure (see :mod:`sealpod.attestation.collateral`) before caching it, so a broken
  response is never cached.
* A cached response is used while ``now < nextUpdate - refresh_margin``; after that it is fetched
  again. If the fetch fails and the cached copy has not yet reached ``nextUpdate``, the cached copy
  is used (with a warning); otherwise the failure is a :class:`~sealpod.errors.NetworkError`.
* Cache files are written atomically (temporary file + rename), so a crash never leaves a
  half-written entry; an unreadable entry is ignored and fetched again.
* Time comes from the injected ``clock``, so tests pin it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal
from urllib.parse import urlencode

import dcap_qvl
import httpx

from sealpod._internal.fsutil import write_file_atomic
from sealpod.attestation.collateral import (
    Collateral,
    CollateralValidity,
    crl_to_der,
    crl_validity,
    signed_json_validity,
    split_signed_body,
)
from sealpod.errors import ConfigError, NetworkError, QuoteFormatError

__all__ = ["DEFAULT_REFRESH_MARGIN", "PCCSClient"]

_logger = logging.getLogger(__name__)

#: Refresh a cached item this many seconds before its ``nextUpdate`` (one day).
DEFAULT_REFRESH_MARGIN = 24 * 3600

# Intel PCS API v4 response headers that carry the issuer chains (URL-encoded PEM).
_TCB_INFO_CHAIN_HEADERS = ("TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain")
_QE_IDENTITY_CHAIN_HEADERS = ("SGX-Enclave-Identity-Issuer-Chain",)
_PCK_CRL_CHAIN_HEADERS = ("SGX-PCK-CRL-Issuer-Chain",)


@dataclass(frozen=True)
class _Entry:
    """One cached PCS response."""

    url: str
    body: bytes
    issuer_chain: str | None
    next_update: int
    fetched_at: int

    def to_json(self) -> str:
        return json.dumps(
            {
                "url": self.url,
                "body": base64.b64encode(self.body).decode("ascii"),
                "issuer_chain": self.issuer_chain,
                "next_update": self.next_update,
                "fetched_at": self.fetched_at,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> _Entry:
        data = json.loads(text)
        chain = data["issuer_chain"]
        return cls(
            url=str(data["url"]),
            body=base64.b64decode(data["body"], validate=True),
            issuer_chain=None if chain is None else str(chain),
            next_update=int(data["next_update"]),
            fetched_at=int(data["fetched_at"]),
        )


@dataclass(frozen=True)
class _Kind:
    """What one endpoint returns and how to read its validity."""

    name: str
    chain_headers: tuple[str, ...]
    validity: Callable[[bytes], CollateralValidity]


def _tcb_info_validity(body: bytes) -> CollateralValidity:
    text, _ = split_signed_body(body, "tcbInfo", "tcb_info")
    return signed_json_validity(text, "tcb_info")[0]


def _qe_identity_validity(body: bytes) -> CollateralValidity:
    text, _ = split_signed_body(body, "enclaveIdentity", "qe_identity")
    return signed_json_validity(text, "qe_identity")[0]


_TCB_INFO = _Kind("tcb_info", _TCB_INFO_CHAIN_HEADERS, _tcb_info_validity)
_QE_IDENTITY = _Kind("qe_identity", _QE_IDENTITY_CHAIN_HEADERS, _qe_identity_validity)
_PCK_CRL = _Kind(
    "pck_crl",
    _PCK_CRL_CHAIN_HEADERS,
    lambda body: crl_validity(crl_to_der(body, "pck_crl"), "pck_crl"),
)
_ROOT_CA_CRL = _Kind(
    "root_ca_crl", (), lambda body: crl_validity(crl_to_der(body, "root_ca_crl"), "root_ca_crl")
)


class PCCSClient:
    """A client for the PCS API v4 (Intel PCS or a PCCS) that caches responses on disk.

    Args:
        base_url: e.g. ``https://pccs.example:8081`` or ``https://api.trustedservices.intel.com``.
        cache_dir: where responses are cached (created 0700); ``None`` keeps them in memory only.
        clock: returns the current time in epoch seconds (injected so tests pin it).
        refresh_margin: refresh an item this many seconds before its ``nextUpdate``.
        root_ca_crl_url: absolute URL of the Intel SGX Root CA CRL; default
            ``{base_url}/sgx/certification/v4/rootcacrl`` (the PCCS endpoint).
        timeout: HTTP timeout in seconds.
        transport: an httpx transport (tests); default: a normal HTTPS client.
        verify: TLS verification for httpx (``True``, a CA bundle path or an SSL context).

    Raises:
        ConfigError: ``base_url`` is not an http(s) URL, or ``refresh_margin`` is negative.
    """

    def __init__(
        self,
        base_url: str,
        cache_dir: str | Path | None = None,
        clock: Callable[[], float] = time.time,
        *,
        refresh_margin: int = DEFAULT_REFRESH_MARGIN,
        root_ca_crl_url: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        verify: Any = True,
    ) -> None:
        base = base_url.rstrip("/")
        if not base.startswith(("https://", "http://")):
            raise ConfigError(f"PCCS URL must be http(s)://..., got {base_url!r}")
        if refresh_margin < 0:
            raise ConfigError("refresh_margin must not be negative")
        self._base = base
        self._root_ca_crl_url = root_ca_crl_url or f"{base}/sgx/certification/v4/rootcacrl"
        self._cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._clock = clock
        self._margin = refresh_margin
        self._memory: dict[str, _Entry] = {}
        self._http = httpx.Client(
            timeout=timeout, transport=transport, verify=verify, follow_redirects=False
        )

    # -- life cycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    def __enter__(self) -> PCCSClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PCCSClient({self._base!r}, cache_dir={self._cache_dir!s})"

    # -- public API ------------------------------------------------------------------------

    def collateral(
        self,
        fmspc: str,
        *,
        tee: Literal["sgx", "tdx"],
        ca: Literal["processor", "platform"],
    ) -> Collateral:
        """Collateral for a platform: TCB info of ``fmspc``, the QE identity, both CRLs.

        Raises:
            ConfigError: ``fmspc``, ``tee`` or ``ca`` is not valid.
            NetworkError: a response could not be fetched (and no usable cached copy exists).
            VerificationError: ``malformed_collateral``: a response does not have the PCS form.
        """
        try:
            fmspc_bytes = bytes.fromhex(fmspc)
        except ValueError as exc:
            raise ConfigError(f"fmspc {fmspc!r} is not hex") from exc
        if len(fmspc_bytes) != 6:
            raise ConfigError(f"fmspc must be 6 bytes, got {len(fmspc_bytes)}")
        if tee not in ("sgx", "tdx"):
            raise ConfigError(f"tee must be 'sgx' or 'tdx', got {tee!r}")
        if ca not in ("processor", "platform"):
            raise ConfigError(f"ca must be 'processor' or 'platform', got {ca!r}")
        prefix = f"{self._base}/{tee}/certification/v4"
        tcb = self._get(_TCB_INFO, f"{prefix}/tcb", {"fmspc": fmspc_bytes.hex().upper()})
        qe = self._get(_QE_IDENTITY, f"{prefix}/qe/identity", {})
        pck_crl = self._get(
            _PCK_CRL,
            f"{self._base}/sgx/certification/v4/pckcrl",
            {"ca": ca, "encoding": "der"},
        )
        root_crl = self._get(_ROOT_CA_CRL, self._root_ca_crl_url, {})
        return Collateral.from_pcs_responses(
            tcb_info_body=tcb.body,
            tcb_info_issuer_chain=tcb.issuer_chain or "",
            qe_identity_body=qe.body,
            qe_identity_issuer_chain=qe.issuer_chain or "",
            pck_crl=pck_crl.body,
            pck_crl_issuer_chain=pck_crl.issuer_chain or "",
            root_ca_crl=root_crl.body,
        )

    def collateral_for_quote(self, quote: bytes) -> Collateral:
        """Collateral for the platform that produced ``quote`` (FMSPC and CA from its PCK cert).

        Raises:
            QuoteFormatError: the quote or its PCK certificate does not parse.
            NetworkError: a response could not be fetched (and no usable cached copy exists).
            VerificationError: ``malformed_collateral``: a response does not have the PCS form.
        """
        try:
            parsed = dcap_qvl.parse_quote(bytes(quote))
            fmspc = str(parsed.fmspc())
            ca = str(parsed.ca()).lower()
            is_tdx = bool(parsed.is_tdx())
        except ValueError as exc:
            raise QuoteFormatError(f"cannot read FMSPC/CA from the quote: {exc}") from exc
        if ca not in ("processor", "platform"):
            raise QuoteFormatError(f"PCK certificate issued by an unknown CA {ca!r}")
        return self.collateral(fmspc, tee="tdx" if is_tdx else "sgx", ca=ca)  # type: ignore[arg-type]

    # -- internals -------------------------------------------------------------------------

    def _get(self, kind: _Kind, url: str, params: Mapping[str, str]) -> _Entry:
        full_url = f"{url}?{urlencode(sorted(params.items()))}" if params else url
        key = hashlib.sha256(full_url.encode()).hexdigest()[:40]
        now = int(self._clock())
        cached = self._memory.get(key) or self._load(key, full_url)
        if cached is not None and now < cached.next_update - self._margin:
            _logger.debug("PCCS cache hit for %s", kind.name)
            return cached
        try:
            entry = self._fetch(kind, full_url, now)
        except NetworkError:
            if cached is not None and now <= cached.next_update:
                _logger.warning(
                    "PCCS unreachable; using the cached %s until its nextUpdate", kind.name
                )
                return cached
            raise
        self._memory[key] = entry
        self._store(key, entry)
        return entry

    def _fetch(self, kind: _Kind, url: str, now: int) -> _Entry:
        _logger.info("fetching %s from %s", kind.name, url)
        try:
            response = self._http.get(url)
        except httpx.HTTPError as exc:
            raise NetworkError(f"cannot fetch {kind.name} from {url}: {exc}") from exc
        if response.status_code != 200:
            raise NetworkError(f"cannot fetch {kind.name} from {url}: HTTP {response.status_code}")
        body = response.content
        chain: str | None = None
        if kind.chain_headers:
            for name in kind.chain_headers:
                value = response.headers.get(name)
                if value:
                    chain = value
                    break
            if chain is None:
                raise NetworkError(
                    f"{kind.name} response from {url} lacks the {kind.chain_headers[0]} header"
                )
        validity = kind.validity(body)  # malformed -> VerificationError, never cached
        return _Entry(url, body, chain, validity.next_update, now)

    def _path(self, key: str) -> Path | None:
        return None if self._cache_dir is None else self._cache_dir / f"{key}.json"

    def _load(self, key: str, url: str) -> _Entry | None:
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        try:
            entry = _Entry.from_json(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            _logger.warning("ignoring unreadable PCCS cache entry %s: %s", path, exc)
            return None
        if entry.url != url:
            return None
        self._memory[key] = entry
        return entry

    def _store(self, key: str, entry: _Entry) -> None:
        path = self._path(key)
        if path is None:
            return
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_file_atomic(path, entry.to_json().encode("utf-8"), mode=0o600)
        except OSError as exc:
            # A cache that cannot be written only costs a refetch next time.
            _logger.warning("cannot write PCCS cache entry %s: %s", path, exc)
