"""Where a gRPC channel to ``host:port`` really goes: DNS, or a test's hosts file.

Every channel rangekv opens to a peer, the meta range or a gateway comes from a
channel opener (`rangekv.common.tls`), and every opener asks :func:`dial_target`
here where to dial. In production that is plain gRPC: the target is the
address as given and DNS resolves it (in Kubernetes, the headless Services' pod
names).

``RANGEKV_HOSTS_FILE`` names a hosts-format file (``IP NAME [NAME...]`` per
line, ``#`` comments) whose names win over DNS, for tests only: the
manifest-driven Kubernetes tests (tests/k8s) run every pod of a rendered chart
as a local process on its own loopback address and map the pods' and
Services' DNS names there, exactly as cluster DNS would. A mapped name is
dialled at its IP with the name kept as the channel's authority and TLS
target name, so certificates issued for the DNS names still verify. The file
is re-read when it changes (pods come and go); names it does not list go to DNS.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import grpc

HOSTS_FILE_ENV = "RANGEKV_HOSTS_FILE"

_cache: dict[str, tuple[float, dict[str, str]]] = {}


def parse_hosts(text: str) -> dict[str, str]:
    """``IP NAME [NAME...]`` lines -> {name: ip} (later lines win)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2:
            for name in fields[1:]:
                out[name.lower()] = fields[0]
    return out


def _mapping() -> dict[str, str]:
    path = os.environ.get(HOSTS_FILE_ENV, "")
    if not path:
        return {}
    try:
        mtime = os.stat(path).st_mtime_ns
    except OSError:
        return {}
    cached = _cache.get(path)
    if cached is not None and cached[0] == mtime:
        return cached[1]
    try:
        with open(path) as f:
            mapping = parse_hosts(f.read())
    except OSError:
        return cached[1] if cached else {}
    _cache[path] = (mtime, mapping)
    return mapping


def dial_target(
    address: str, tls_name: str | None = None, *, secure: bool = False
) -> tuple[str, tuple[tuple[str, Any], ...]]:
    """(gRPC target, extra channel options) for ``host:port`` (module doc).

    ``secure``: a TLS channel, whose server certificate is checked for
    ``tls_name`` (None: for the host dialled, which a mapped channel keeps; gRPC
    then takes the call's authority from that name too)."""
    host, sep, port = address.rpartition(":")
    ip = _mapping().get(host.lower()) if sep and host else None
    if ip is None:
        override = (("grpc.ssl_target_name_override", tls_name),) if secure and tls_name else ()
        return address, override
    target = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
    if secure:
        return target, (("grpc.ssl_target_name_override", tls_name or host),)
    return target, (("grpc.default_authority", address),)


def insecure_channel(address: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
    """``grpc.aio.insecure_channel`` to ``address``, honouring the hosts file."""
    target, extra = dial_target(address)
    return grpc.aio.insecure_channel(target, options=[*options, *extra])


def secure_channel(
    address: str,
    credentials: grpc.ChannelCredentials,
    options: Sequence[tuple[str, Any]] = (),
    *,
    tls_name: str | None = None,
) -> grpc.aio.Channel:
    """``grpc.aio.secure_channel`` to ``address``, honouring the hosts file; the
    server's certificate is checked for ``tls_name`` (None: the host dialled)."""
    target, extra = dial_target(address, tls_name, secure=True)
    return grpc.aio.secure_channel(target, credentials, options=[*options, *extra])


__all__ = ["HOSTS_FILE_ENV", "dial_target", "insecure_channel", "parse_hosts", "secure_channel"]
