"""rangekv.client: an asyncio client library for rangekv.

    from rangekv.client import ClientConfig, connect
    from rangekv.common.config import SecurityConfig

    security = SecurityConfig(certs_dir=Path("data/dev/certs"))  # or SecurityConfig.plaintext()
    async with await connect(ClientConfig(addr="127.0.0.1:50051"), security) as kv:
        await kv.put(b"greeting", b"hello")
        print(await kv.get(b"greeting"))

Two routes, one API (rangekv.client.client.Client):

- ``gateway`` (the default): every call is a request on KV/Stream, one
  long-lived stream per connection to a gateway, shared by all concurrent
  calls (rangekv.client.gateway);
- ``direct``: the gateway's routing runs in this process and talks to the
  leaseholders itself, one hop fewer (rangekv.client.direct; it needs a node
  certificate, as it speaks the cluster's internal APIs).

TLS is the CLI's: a SecurityConfig (certs dir, or explicit files, or
plaintext) and, for the gateway route, the client certificate's name
(``client.NAME.crt``; default as the CLI: admin, else the only pair).
"""

from __future__ import annotations

from rangekv.client.client import Client
from rangekv.client.config import ROUTES, ClientConfig
from rangekv.client.retry import RetryPolicy
from rangekv.client.transport import KVTransport
from rangekv.client.values import (
    CasResult,
    CompareAndSwap,
    Delete,
    Get,
    KeyValue,
    Operation,
    Put,
    Result,
    Version,
)
from rangekv.common.config import SecurityConfig
from rangekv.common.tls import ChannelOpener, client_channels, node_channels


def open_transport(
    config: ClientConfig,
    security: SecurityConfig,
    client_name: str | None = None,
    *,
    channels: ChannelOpener | None = None,
) -> KVTransport:
    """The transport ``config.route`` names, dialling with ``security``'s identity:
    the client certificate ``client_name`` through a gateway, the node's directly.
    ``channels`` overrides the dialling (tests)."""
    if config.route == "direct":
        from rangekv.client.direct import DirectTransport  # the gateway's code: only when asked

        opener = channels or node_channels(security)
        return DirectTransport.open(config.meta_addrs, opener, request_timeout=config.timeout)
    from rangekv.client.gateway import GatewayTransport

    opener = channels or client_channels(security, client_name)
    return GatewayTransport(
        config.addr,
        opener,
        connections=config.connections,
        max_inflight=config.max_inflight,
        gather_turns=config.frame_gather_turns,
    )


async def connect(
    config: ClientConfig,
    security: SecurityConfig | None = None,
    client_name: str | None = None,
    *,
    channels: ChannelOpener | None = None,
    ready_timeout: float | None = None,
) -> Client:
    """A Client for ``config`` (plaintext when ``security`` is None). With
    ``ready_timeout``, waits until the gateway's connections are up (raises
    Unavailable otherwise); else connections are made by the first calls."""
    transport = open_transport(
        config, security or SecurityConfig.plaintext(), client_name, channels=channels
    )
    if ready_timeout is not None:
        from rangekv.client.gateway import GatewayTransport

        if isinstance(transport, GatewayTransport):
            try:
                await transport.wait_ready(ready_timeout)
            except BaseException:
                await transport.close()
                raise
    return Client(transport, timeout=config.timeout, retry=RetryPolicy(attempts=config.attempts))


__all__ = [
    "ROUTES",
    "CasResult",
    "Client",
    "ClientConfig",
    "CompareAndSwap",
    "Delete",
    "Get",
    "KVTransport",
    "KeyValue",
    "Operation",
    "Put",
    "Result",
    "RetryPolicy",
    "Version",
    "connect",
    "open_transport",
]
