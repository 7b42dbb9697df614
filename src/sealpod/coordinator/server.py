"""Serving the coordinator over HTTPS (uvicorn) with a certificate from its own root.

The TLS server certificate is issued at start by the coordinator root for the listen host (and,
for a wildcard listen address, for ``localhost``, the loopback addresses and the host name), so a
client that pinned the root after attesting the coordinator (:func:`sealpod.coordinator.client.
verify_coordinator`) trusts exactly this server. The private key is generated in memory and
loaded into the TLS context through an anonymous in-memory file (``memfd_create``): it never
reaches the host's disk.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import uvicorn
from cryptography.hazmat.primitives import serialization

from sealpod.coordinator.app import create_app
from sealpod.coordinator.service import Coordinator
from sealpod.coordinator.settings import CoordinatorSettings
from sealpod.errors import ConfigError, EnvironmentUnavailableError
from sealpod.pki import CertifiedKey, certificates_to_pem

__all__ = [
    "CoordinatorServer",
    "load_credentials",
    "parse_listen",
    "server_names",
    "server_ssl_context",
]

_logger = logging.getLogger(__name__)

_WILDCARDS = frozenset({"0.0.0.0", "::", ""})  # noqa: S104 (names of wildcard addresses)


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT`` -> ``(host, port)``.

    Raises:
        ConfigError: not of that form or the port is out of range.
    """
    text = value.strip()
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
    else:
        host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ConfigError(f"listen address {value!r}: use HOST:PORT")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ConfigError(f"listen address {value!r}: port out of range")
    return host, port


def server_names(host: str, extra: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """The DNS names and IP addresses the server certificate covers.

    Raises:
        ConfigError: a name is neither a DNS name nor an IP address.
    """
    dns: list[str] = []
    ips: list[str] = []
    candidates = [host, *extra]
    if host in _WILDCARDS:
        candidates = ["localhost", "127.0.0.1", "::1", socket.gethostname(), *extra]
    for name in candidates:
        if not name or name in _WILDCARDS:
            continue
        try:
            ips.append(str(ipaddress.ip_address(name)))
        except ValueError:
            if any(c in name for c in " /\\@:"):
                raise ConfigError(f"invalid server name {name!r}") from None
            dns.append(name.lower())
    return sorted(set(dns)), sorted(set(ips))


def server_ssl_context(credentials: CertifiedKey) -> ssl.SSLContext:
    """A TLS 1.2+ server context holding ``credentials`` (loaded from memory, not disk).

    Raises:
        EnvironmentUnavailableError: the platform has no ``memfd_create``.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    load_credentials(context, credentials)
    return context


def load_credentials(context: ssl.SSLContext, credentials: CertifiedKey) -> None:
    """(Re)load the certificate and key of ``context``; later handshakes use them.

    Raises:
        EnvironmentUnavailableError: the platform has no ``memfd_create``.
    """
    pem = certificates_to_pem((credentials.certificate, *credentials.chain))
    key = credentials.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is None:
        raise EnvironmentUnavailableError("memfd_create is needed to load the TLS key in memory")
    descriptor = memfd_create("sealpod-coordinator-tls", os.MFD_CLOEXEC)
    try:
        data = memoryview(pem + key)
        while data:
            written = os.write(descriptor, data)
            data = data[written:]
        context.load_cert_chain(f"/proc/self/fd/{descriptor}")
    finally:
        os.close(descriptor)


@dataclass
class CoordinatorServer:
    """A coordinator app with its HTTPS uvicorn server, ready to :meth:`run`."""

    coordinator: Coordinator
    server: uvicorn.Server
    credentials: CertifiedKey

    @classmethod
    def build(
        cls,
        settings: CoordinatorSettings,
        *,
        host: str,
        port: int,
        server_names_extra: Sequence[str] = (),
        coordinator: Coordinator | None = None,
        log_level: str = "warning",
    ) -> CoordinatorServer:
        """Open the coordinator, issue its TLS certificate and configure uvicorn.

        In recovery the TLS certificate is ephemeral and self-signed (the coordinator's quote
        binds it); once the state is recovered the server switches to a certificate of the root.

        Raises:
            ConfigError: bad settings or server names.
            EnvironmentUnavailableError: the TEE or the database is unavailable.
            VerificationError: the sealed state was tampered with.
        """
        core = coordinator if coordinator is not None else Coordinator.open(settings)
        dns_names, ips = server_names(host, server_names_extra)
        credentials = core.issue_server_certificate(dns_names=dns_names, ip_addresses=ips)
        context = server_ssl_context(credentials)
        server_ref: list[CoordinatorServer] = []

        def switch_to_root() -> None:
            # Recovered: from now on serve a certificate of the (unsealed) root again.
            fresh = core.issue_server_certificate(dns_names=dns_names, ip_addresses=ips)
            load_credentials(context, fresh)
            if server_ref:
                server_ref[0].credentials = fresh
            _logger.warning("TLS now uses a certificate of the recovered coordinator root")

        core.on_unsealed(switch_to_root)

        def factory(
            _config: uvicorn.Config, _default: Callable[[], ssl.SSLContext]
        ) -> ssl.SSLContext:
            return context

        config = uvicorn.Config(
            create_app(coordinator=core),
            host=host or "0.0.0.0",  # noqa: S104 (an explicit --listen choice)
            port=port,
            ssl_context_factory=factory,
            log_config=None,
            log_level=log_level,
            access_log=False,
            server_header=False,
        )
        built = cls(coordinator=core, server=uvicorn.Server(config), credentials=credentials)
        server_ref.append(built)
        return built

    @property
    def root_pem(self) -> bytes:
        """The coordinator root certificate (PEM).

        Raises:
            RequestRefusedError: ``recovery_mode`` while the state is sealed.
        """
        return self.coordinator.ca.root_certificate.public_bytes(serialization.Encoding.PEM)

    def run(self, sockets: list[socket.socket] | None = None) -> None:
        """Serve until stopped (SIGINT/SIGTERM, or :meth:`stop` from another thread)."""
        _logger.info(
            "coordinator serving on https://%s:%s", self.server.config.host, self.server.config.port
        )
        self.server.run(sockets=sockets)

    def stop(self) -> None:
        """Ask the server to stop (thread-safe)."""
        self.server.should_exit = True
