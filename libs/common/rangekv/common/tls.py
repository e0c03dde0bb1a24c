"""Transport security: one configuration, server credentials that reload, channels.

Secure is the default. Every service and the CLI read the same settings
(:class:`SecurityConfig`): a certificates directory (``--certs-dir``) or explicit
``--ca-cert``/``--cert``/``--key``, or ``--insecure`` for plaintext, said out loud.
A process given neither refuses to start, naming both ways.

Servers verify every peer against the cluster CA (mutual TLS, client certificate
required) and serve the certificate files as they are *now*: gRPC asks for the
server certificate at each new handshake (dynamic server credentials), and
:class:`ServerCredentialsSource` re-reads the files when they change, so rotation
is a file swap and no restart. Existing connections keep the certificate they
were opened with.

Outgoing channels come from a :class:`ChannelOpener`. Between rangekv processes
(:func:`node_channels`) the server is checked to be *a node of this cluster* by the
name :data:`~rangekv.common.certs.NODE_SERVER_NAME` that only node certificates
carry, whatever address the registry gave; clients of the gateway
(:func:`client_channels`) check the host name they dialled, as any TLS client does.
Openers re-read changed files too, so a new channel presents the new certificate,
and dial through `rangekv.common.dialing` (a test-only hosts file can map names).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from rangekv.common import dialing
from rangekv.common.certs import NODE_SERVER_NAME
from rangekv.common.config import ConfigError, SecurityConfig, TLSFiles

log = logging.getLogger("rangekv.tls")

INSECURE_WARNING = (
    "INSECURE MODE: plaintext gRPC, no encryption and no authentication; "
    "anyone who can reach this port can read and change everything"
)

ChannelOptions = Sequence[tuple[str, Any]]


def read_material(files: TLSFiles) -> TLSMaterial:
    """Read and check one identity's files; ConfigError names the file that is wrong."""
    data = {}
    for field, path in (("--ca-cert", files.ca), ("--cert", files.cert), ("--key", files.key)):
        try:
            data[field] = path.read_bytes()
        except OSError as exc:
            raise ConfigError(field, f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        x509.load_pem_x509_certificates(data["--ca-cert"])
    except ValueError:
        raise ConfigError("--ca-cert", f"{files.ca} holds no PEM certificate") from None
    try:
        cert = x509.load_pem_x509_certificate(data["--cert"])
    except ValueError:
        raise ConfigError("--cert", f"{files.cert} holds no PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(data["--key"], password=None)
    except (ValueError, TypeError):
        raise ConfigError("--key", f"{files.key} holds no unencrypted PEM private key") from None
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    if key.public_key().public_bytes(enc, pub) != cert.public_key().public_bytes(enc, pub):
        raise ConfigError("--key", f"{files.key} is not the key of {files.cert}")
    return TLSMaterial(data["--ca-cert"], data["--cert"], data["--key"])


@dataclass(frozen=True)
class TLSMaterial:
    """The PEM bytes of one identity."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes


class ServerCredentialsSource:
    """Mutual-TLS server credentials that follow the files on disk.

    gRPC calls :meth:`_fetch` before each new handshake (on one of its threads);
    it re-reads the files only when their stat changed, and keeps serving the
    previous certificate while a swap is half done (cert and key not yet
    matching), so rotation can never take a server down.
    """

    def __init__(self, files: TLSFiles, logger: logging.Logger | None = None) -> None:
        self.files = files
        self._log = logger or log
        self._stamp = files.stamp()
        self.material = read_material(files)
        self.reloads = 0

    def _config(self, material: TLSMaterial) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(material.key_pem, material.cert_pem)], root_certificates=material.ca_pem
        )

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._config(self.material), self._fetch, require_client_authentication=True
        )

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        try:
            stamp = self.files.stamp()
            if stamp == self._stamp:
                return None
            try:
                material = read_material(self.files)
            except ConfigError as exc:
                self._log.warning("certificate files changed but are not usable yet: %s", exc)
                return None
            self._stamp = stamp
            if material == self.material:
                return None
            self.material = material
            self.reloads += 1
            self._log.info("reloaded TLS certificates from %s", self.files.cert)
            return self._config(material)
        except Exception:  # a fetcher that raises would fail the handshake
            self._log.exception("certificate reload failed; serving the previous certificate")
            return None


class ChannelOpener(Protocol):
    """Opens a grpc.aio channel to an address (plaintext, or TLS with this process's identity)."""

    secure: bool

    def __call__(self, address: str, options: ChannelOptions = ()) -> grpc.aio.Channel: ...


class PlaintextChannels:
    """--insecure: plaintext channels."""

    secure = False

    def __call__(self, address: str, options: ChannelOptions = ()) -> grpc.aio.Channel:
        return dialing.insecure_channel(address, options)


class TLSChannels:
    """TLS channels presenting ``files``; re-reads them when they change.

    ``server_name`` set: the server must present a certificate valid for that name
    (rangekv's own processes: :data:`NODE_SERVER_NAME`); unset: for the host dialled.
    """

    secure = True

    def __init__(self, files: TLSFiles, server_name: str | None) -> None:
        self.files = files
        self.server_name = server_name
        self._stamp = files.stamp()
        self._creds = self._load()

    def _load(self) -> grpc.ChannelCredentials:
        material = read_material(self.files)
        return grpc.ssl_channel_credentials(
            root_certificates=material.ca_pem,
            private_key=material.key_pem,
            certificate_chain=material.cert_pem,
        )

    def credentials(self) -> grpc.ChannelCredentials:
        stamp = self.files.stamp()
        if stamp != self._stamp:
            try:
                self._creds = self._load()
                self._stamp = stamp
            except ConfigError as exc:  # mid-swap: keep the previous identity for now
                log.warning("client certificate files changed but are not usable yet: %s", exc)
        return self._creds

    def __call__(self, address: str, options: ChannelOptions = ()) -> grpc.aio.Channel:
        return dialing.secure_channel(
            address, self.credentials(), options, tls_name=self.server_name
        )


def node_channels(security: SecurityConfig) -> ChannelOpener:
    """Channels between rangekv processes: the node identity, the peer checked to be a node."""
    if security.insecure:
        return PlaintextChannels()
    return TLSChannels(security.node_files(), NODE_SERVER_NAME)


def client_channels(
    security: SecurityConfig, name: str | None = None, *, server_name: str | None = None
) -> ChannelOpener:
    """Channels of a client (the CLI, bench) presenting a client certificate."""
    if security.insecure:
        return PlaintextChannels()
    return TLSChannels(security.client_files(name), server_name)


def warn_if_insecure(security: SecurityConfig, logger: logging.Logger) -> None:
    if security.insecure:
        for _ in range(3):
            logger.warning("%s", INSECURE_WARNING)


__all__ = [
    "INSECURE_WARNING",
    "ChannelOpener",
    "PlaintextChannels",
    "ServerCredentialsSource",
    "TLSChannels",
    "TLSMaterial",
    "client_channels",
    "node_channels",
    "read_material",
    "warn_if_insecure",
]
