"""Who may call what: the role each RPC needs, and the check made on every call.

The TLS handshake has already proved that the peer holds a certificate signed by
the cluster CA (servers require one). What the certificate speaks for is its
rangekv URI SAN (see :mod:`rangekv.common.certs`): a node, or a client with the
role ``read``, ``write`` or ``admin``. Roles are ordered, each including the ones
below: read < write < admin < node.

:data:`METHOD_ROLES` maps a method-name prefix to the least role that may call it;
the longest matching prefix wins and a method no prefix matches needs a node
identity (closed by default). Adding a service is one line, e.g. the gateway's
``/rangekv.v1.Admin/`` is listed already.

The admin CLI verbs read the meta range and call a node's AdminSplit,
TransferLease, ChangeReplicas and RangeInfo directly, so those few Replica and
Meta methods take ``admin``; everything else on the internal services (raft,
replica batches, txn records, meta writes) takes a node.

A refusal is a :class:`~rangekv.common.errors.Unauthenticated` (no rangekv
identity in the certificate) or :class:`~rangekv.common.errors.PermissionDenied`
(a role too low), whose message names the method, the identity and the role it
lacks, and is counted in ``rangekv_auth_refusals_total{method,code}``.

A method that carries operations of different roles (``KV/Stream``: reads and
writes on one call) is listed with the least of them, and its handler checks
each operation against the caller: the interceptor leaves the checked caller in
:func:`current_caller` (a context variable of the call's task), and
:meth:`Caller.require` refuses one operation, counted like any refusal, without
ending the call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass

import grpc

from rangekv.common import errors as E
from rangekv.common.certs import Identity, Role, identity_from_uri
from rangekv.common.telemetry import Telemetry

REFUSALS = "rangekv_auth_refusals"

METHOD_ROLES: Mapping[str, Role] = {
    # Public KV API (gateway).
    "/rangekv.v1.KV/Get": Role.READ,
    "/rangekv.v1.KV/Scan": Role.READ,
    # Reads and writes on one call: each operation is checked by the gateway (Caller).
    "/rangekv.v1.KV/Stream": Role.READ,
    "/rangekv.v1.KV/": Role.WRITE,  # Put, Delete, CompareAndSwap, Batch
    # Cluster administration (gateway's Admin service).
    "/rangekv.v1.Admin/": Role.ADMIN,
    # What the admin CLI verbs call on nodes and the meta range directly.
    "/rangekv.v1.Replica/AdminSplit": Role.ADMIN,
    "/rangekv.v1.Replica/TransferLease": Role.ADMIN,
    "/rangekv.v1.Replica/ChangeReplicas": Role.ADMIN,
    "/rangekv.v1.Replica/RangeInfo": Role.ADMIN,
    "/rangekv.v1.Meta/LookupRange": Role.ADMIN,
    "/rangekv.v1.Meta/ListRanges": Role.ADMIN,
    "/rangekv.v1.Meta/ListNodes": Role.ADMIN,
    "/rangekv.v1.Meta/ClusterInfo": Role.ADMIN,
    # Retiring a node (the Admin API's Decommission/Recommission with --meta).
    "/rangekv.v1.Meta/Decommission": Role.ADMIN,
    "/rangekv.v1.Meta/Recommission": Role.ADMIN,
    # Internal: only rangekv processes.
    "/rangekv.v1.Replica/": Role.NODE,
    "/rangekv.v1.Meta/": Role.NODE,
    "/rangekv.v1.RaftTransport/": Role.NODE,
    # Any identity may see what is served and whether it is healthy.
    "/grpc.health.v1.Health/": Role.READ,
    "/grpc.reflection.": Role.READ,
}


def required_role(method: str, table: Mapping[str, Role] = METHOD_ROLES) -> Role:
    """The least role ``method`` needs: the longest matching prefix's, else NODE."""
    best = ""
    for prefix in table:
        if method.startswith(prefix) and len(prefix) > len(best):
            best = prefix
    return table[best] if best else Role.NODE


class Authorizer:
    """Checks the caller of each RPC against the role its method needs.

    ``required(method)`` is computed once per method (the server interceptor
    caches it); :meth:`check` runs on every call and costs a dictionary lookup
    once a peer's identity has been seen.
    """

    def __init__(
        self,
        telemetry: Telemetry | None = None,
        table: Mapping[str, Role] = METHOD_ROLES,
    ) -> None:
        self._table = table
        self._identities: dict[tuple[bytes, ...], Identity | None] = {}
        self._refusals = (
            telemetry.counter(
                REFUSALS,
                "Calls refused for a missing identity or role, by method and status code",
                labels=("method", "code"),
            )
            if telemetry is not None
            else None
        )

    def required(self, method: str) -> Role:
        return required_role(method, self._table)

    def identity(self, auth_context: Mapping[str, Sequence[bytes]]) -> Identity | None:
        """The verified peer's rangekv identity (from its certificate's URI SANs)."""
        uris = tuple(auth_context.get("peer_uri", ()))
        if uris in self._identities:
            return self._identities[uris]
        found = {i for u in uris if (i := identity_from_uri(u.decode(errors="replace")))}
        identity = found.pop() if len(found) == 1 else None
        if len(self._identities) >= 4096:
            self._identities.clear()  # bounded: identities are few, certificates rotate
        self._identities[uris] = identity
        return identity

    def check(self, method: str, role: Role, context: grpc.aio.ServicerContext) -> Identity:
        """The caller's identity if it may call ``method``; else raise (and count) the refusal."""
        auth = context.auth_context()
        identity = self.identity(auth)
        if identity is None:
            if not auth.get("transport_security_type"):
                why = "no TLS client certificate"
            else:
                why = "the client certificate names no rangekv identity (urn:rangekv:... URI SAN)"
            self._count(method, grpc.StatusCode.UNAUTHENTICATED)
            raise E.Unauthenticated(f"{method}: {why}; it needs {_needs(role)}")
        if identity.role < role:
            self._count(method, grpc.StatusCode.PERMISSION_DENIED)
            raise E.PermissionDenied(
                f"{method} needs {_needs(role)}; {identity.describe()} does not have it"
            )
        return identity

    def _count(self, method: str, code: grpc.StatusCode) -> None:
        if self._refusals is not None:
            self._refusals.add(1, method=method, code=code.name)

    def refuse_operation(self, method: str, identity: Identity, role: Role, what: str) -> None:
        """Refuse (and count) one operation of a call ``identity`` may make, if it
        needs ``role``; ``what`` names the operation in the message."""
        if identity.role < role:
            self._count(method, grpc.StatusCode.PERMISSION_DENIED)
            raise E.PermissionDenied(
                f"{method}: {what} needs {_needs(role)}; {identity.describe()} does not have it"
            )


@dataclass(frozen=True, slots=True)
class Caller:
    """The checked caller of the call being served (see :func:`current_caller`)."""

    method: str
    identity: Identity
    authorizer: Authorizer

    def require(self, role: Role, what: str) -> None:
        """Raise PermissionDenied (counted) unless the caller has ``role`` for ``what``."""
        self.authorizer.refuse_operation(self.method, self.identity, role, what)


_CALLER: ContextVar[Caller | None] = ContextVar("rangekv_caller", default=None)


def current_caller() -> Caller | None:
    """Who is calling the RPC being served, as checked by the server's interceptor.

    None when the server checks no identities (``--insecure``): then every
    operation is allowed, as every method is."""
    return _CALLER.get()


def set_caller(caller: Caller) -> None:
    """Record the checked caller for the handler (the interceptor's job)."""
    _CALLER.set(caller)


def _needs(role: Role) -> str:
    return "a node certificate" if role is Role.NODE else f"role {role.label} or higher"


__all__ = [
    "METHOD_ROLES",
    "REFUSALS",
    "Authorizer",
    "Caller",
    "current_caller",
    "required_role",
    "set_caller",
]
