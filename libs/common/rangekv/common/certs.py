"""Certificates: how rangekv identities are encoded in them, and how they are made.

Every rangekv certificate is signed by the cluster CA (``ca.crt``/``ca.key``).
Who a certificate speaks for is one **URI subject alternative name**, which the
CA signs and nobody else can forge:

- a node (raftnode, metarange, gateway): ``urn:rangekv:node:<name>``;
- a client: ``urn:rangekv:client:<role>:<name>`` with role ``read``, ``write`` or
  ``admin``.

The subject repeats it for people (``O=rangekv, OU=node`` or ``OU=client-<role>``,
``CN=<name>``) but only the URI SAN is read when deciding. A node certificate also
carries the DNS name :data:`NODE_SERVER_NAME`: rangekv processes dial each other
by whatever address the registry holds (an IP, a pod name) and check that the
other end is *a node of this cluster* by that name, so node certificates need
only the --host names that outside clients use.

No bearer tokens: every client presents a certificate (every gRPC implementation
can), so there is one way to be identified and nothing secret to store server side.

Files in a certs directory: ``ca.crt`` (and ``ca.key``, which only the machine
that mints certificates needs), ``node.crt``/``node.key``, and client pairs
``client.<name>.crt``/``client.<name>.key``. Keys are written 0600, certificates
0644; nothing is overwritten unless asked.
"""

from __future__ import annotations

import datetime
import enum
import ipaddress
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NODE_SERVER_NAME = "node.rangekv"
"""DNS name in every node certificate; rangekv processes verify each other by it."""

URI_PREFIX = "urn:rangekv:"
CA_CERT = "ca.crt"
CA_KEY = "ca.key"
NODE_CERT = "node.crt"
NODE_KEY = "node.key"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class Role(enum.IntEnum):
    """What an identity may do; each level includes the ones below it."""

    READ = 1
    WRITE = 2
    ADMIN = 3
    NODE = 4

    @property
    def label(self) -> str:
        return self.name.lower()


CLIENT_ROLES = (Role.READ, Role.WRITE, Role.ADMIN)


@dataclass(frozen=True)
class Identity:
    """Who a peer certificate speaks for: a node, or a client with a role."""

    name: str
    role: Role

    @property
    def is_node(self) -> bool:
        return self.role is Role.NODE

    def uri(self) -> str:
        if self.is_node:
            return f"{URI_PREFIX}node:{self.name}"
        return f"{URI_PREFIX}client:{self.role.label}:{self.name}"

    def describe(self) -> str:
        return (
            f"node {self.name}" if self.is_node else f"client {self.name} (role {self.role.label})"
        )


def parse_role(text: str) -> Role:
    """A client role from its name (``read``, ``write``, ``admin``)."""
    for role in CLIENT_ROLES:
        if role.label == text.strip().lower():
            return role
    raise ValueError(f"unknown role {text!r}; one of read, write, admin")


def identity_from_uri(uri: str) -> Identity | None:
    """The identity a rangekv URI SAN names, or None if it is not one."""
    if not uri.startswith(URI_PREFIX):
        return None
    parts = uri[len(URI_PREFIX) :].split(":")
    if len(parts) == 2 and parts[0] == "node" and _NAME.match(parts[1]):
        return Identity(parts[1], Role.NODE)
    if len(parts) == 3 and parts[0] == "client" and _NAME.match(parts[2]):
        try:
            return Identity(parts[2], parse_role(parts[1]))
        except ValueError:
            return None
    return None


def identity_of(cert: x509.Certificate) -> Identity | None:
    """The one rangekv identity a certificate carries, or None (none, or several)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    found = {
        i
        for u in san.get_values_for_type(x509.UniformResourceIdentifier)
        if (i := identity_from_uri(u)) is not None
    }
    return found.pop() if len(found) == 1 else None


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(
            f"bad name {name!r}: letters, digits, '.', '_' and '-' only, at most 63 characters"
        )
    return name


# --- making certificates -----------------------------------------------------------------


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, as PEM."""

    cert_pem: bytes
    key_pem: bytes

    @property
    def cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)


def _key() -> ec.EllipticCurvePrivateKey:
    # P-256: every TLS stack speaks it, and signing is far cheaper than RSA.
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _subject(cn: str, ou: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "rangekv"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def create_ca(now: datetime.datetime, *, days: int = 3650, name: str = "rangekv CA") -> KeyPair:
    """A self-signed CA that may sign leaf certificates only (path length 0)."""
    key = _key()
    subject = _subject(name, "ca")
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _host_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        host = host.strip()
        if not host:
            continue
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))  # wildcards like *.svc.ns.svc.cluster.local too
    return names


def _leaf(
    ca: KeyPair,
    identity: Identity,
    hosts: Sequence[str],
    *,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> KeyPair:
    ca_cert = ca.cert
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key is not an EC key made by `rangekv cert create-ca`")
    key = _key()
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.uri())]
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if identity.is_node:
        sans += [x509.DNSName(NODE_SERVER_NAME), *_host_names(hosts)]
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    ou = "node" if identity.is_node else f"client-{identity.role.label}"
    cert = (
        x509.CertificateBuilder()
        .subject_name(_subject(identity.name, ou))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def create_node(
    ca: KeyPair,
    name: str,
    hosts: Sequence[str],
    now: datetime.datetime,
    *,
    days: int = 365,
    not_after: datetime.datetime | None = None,
) -> KeyPair:
    """A node certificate: server and client auth, valid for ``hosts`` (DNS names, IPs)."""
    return _leaf(
        ca,
        Identity(check_name(name), Role.NODE),
        hosts,
        not_before=now - datetime.timedelta(minutes=5),
        not_after=not_after or now + datetime.timedelta(days=days),
    )


def create_client(
    ca: KeyPair,
    name: str,
    role: Role,
    now: datetime.datetime,
    *,
    days: int = 365,
    not_after: datetime.datetime | None = None,
) -> KeyPair:
    """A client certificate carrying ``role``."""
    if role not in CLIENT_ROLES:
        raise ValueError(f"a client role is read, write or admin, not {role.label}")
    return _leaf(
        ca,
        Identity(check_name(name), role),
        (),
        not_before=now - datetime.timedelta(minutes=5),
        not_after=not_after or now + datetime.timedelta(days=days),
    )


# --- the certs directory -----------------------------------------------------------------


def client_files(name: str) -> tuple[str, str]:
    return f"client.{name}.crt", f"client.{name}.key"


def write_pair(
    directory: Path, cert_name: str, key_name: str, pair: KeyPair, *, overwrite: bool
) -> None:
    """Write a pair: key 0600, certificate 0644, each replaced atomically (a rename).

    Refuses to replace existing files unless ``overwrite``: a CA key written over
    by mistake would orphan every certificate it signed.
    """
    directory.mkdir(parents=True, exist_ok=True)
    targets = [
        (directory / key_name, pair.key_pem, 0o600),
        (directory / cert_name, pair.cert_pem, 0o644),
    ]
    if not overwrite:
        existing = [str(p) for p, _d, _m in targets if p.exists()]
        if existing:
            raise FileExistsError(f"{', '.join(existing)} already exist; pass --overwrite")
    for path, data, mode in targets:
        write_atomic(path, data, mode)


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def load_ca(directory: Path) -> KeyPair:
    cert, key = directory / CA_CERT, directory / CA_KEY
    if not cert.exists() or not key.exists():
        raise FileNotFoundError(f"no CA in {directory}: run `rangekv cert create-ca` first")
    return KeyPair(cert.read_bytes(), key.read_bytes())


@dataclass(frozen=True)
class CertInfo:
    """One certificate file as `rangekv cert list` shows it."""

    file: str
    subject: str
    identity: str
    hosts: tuple[str, ...]
    not_after: datetime.datetime
    expired: bool


def describe_dir(directory: Path, now: datetime.datetime) -> list[CertInfo]:
    out = []
    for path in sorted(directory.glob("*.crt")):
        try:
            cert = x509.load_pem_x509_certificate(path.read_bytes())
        except ValueError:
            continue
        identity = identity_of(cert)
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            hosts = tuple(
                [*san.get_values_for_type(x509.DNSName)]
                + [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
            )
        except x509.ExtensionNotFound:
            hosts = ()
        is_ca = path.name == CA_CERT
        not_after = cert.not_valid_after_utc
        out.append(
            CertInfo(
                path.name,
                cert.subject.rfc4514_string(),
                "CA" if is_ca else (identity.describe() if identity else "(no rangekv identity)"),
                tuple(h for h in hosts if h != NODE_SERVER_NAME),
                not_after,
                not_after <= now,
            )
        )
    return out


def ensure_dev_certs(
    directory: Path, now: datetime.datetime, say: Callable[[str], None] | None = None
) -> None:
    """The certificates a local cluster needs, created once and reused after.

    A CA, one node certificate for every local process (localhost, 127.0.0.1,
    ::1) and an ``admin`` client certificate (``client.admin.*``), which the CLI
    and grpcurl use.
    """
    if not (directory / CA_CERT).exists():
        write_pair(directory, CA_CERT, CA_KEY, create_ca(now), overwrite=False)
        if say:
            say(f"  created a CA in {directory}")
    ca = load_ca(directory)
    if not (directory / NODE_CERT).exists():
        pair = create_node(ca, "dev", ["localhost", "127.0.0.1", "::1"], now)
        write_pair(directory, NODE_CERT, NODE_KEY, pair, overwrite=False)
    crt, key = client_files("admin")
    if not (directory / crt).exists():
        write_pair(
            directory, crt, key, create_client(ca, "admin", Role.ADMIN, now), overwrite=False
        )


__all__ = [
    "CA_CERT",
    "CA_KEY",
    "CLIENT_ROLES",
    "NODE_CERT",
    "NODE_KEY",
    "NODE_SERVER_NAME",
    "CertInfo",
    "Identity",
    "KeyPair",
    "Role",
    "client_files",
    "create_ca",
    "create_client",
    "create_node",
    "describe_dir",
    "ensure_dev_certs",
    "identity_from_uri",
    "identity_of",
    "load_ca",
    "parse_role",
    "write_atomic",
    "write_pair",
]
