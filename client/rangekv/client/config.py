"""ClientConfig: how a rangekv.client.Client connects, from flags, environment or code.

One declaration gives each setting its flag, its environment variable and its
help (rangekv.common.config.setting): a program adds them to its parser with
``add_arguments(parser, ClientConfig)`` and reads them with ``from_args``, or
builds the dataclass directly. TLS settings are not here: they are the
services' and the CLI's (rangekv.common.config.SecurityConfig, plus a client
certificate name), passed to :func:`rangekv.client.connect` beside this.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass

from rangekv.common.config import check_choices, from_args, require, setting

#: Routes: through a gateway's KV/Stream, or in-process straight to the leaseholders.
ROUTES = ("gateway", "direct")


@dataclass(frozen=True)
class ClientConfig:
    """Where and how a rangekv client sends its requests."""

    addr: str = setting(
        "127.0.0.1:50051", help="the gateway's host:port (route gateway)", env="RANGEKV_ADDR"
    )
    route: str = setting(
        "gateway",
        choices=ROUTES,
        env="RANGEKV_CLIENT_ROUTE",
        help="gateway: requests on KV/Stream to --addr; direct: route in this process "
        "straight to the leaseholders (needs --meta-addrs and a node certificate)",
    )
    meta_addrs: str = setting(
        "",
        env="RANGEKV_CLIENT_META_ADDRS",
        help="metarange replicas HOST:PORT,... (route direct)",
    )
    connections: int = setting(
        1,
        env="RANGEKV_CLIENT_CONNECTIONS",
        help="connections to the gateway, one KV/Stream each (route gateway)",
    )
    max_inflight: int = setting(
        1000,
        env="RANGEKV_CLIENT_MAX_INFLIGHT",
        help="requests in flight per connection; more calls wait for room",
    )
    frame_gather_turns: int = setting(
        16,
        env="RANGEKV_CLIENT_FRAME_GATHER_TURNS",
        help="when a connection is busy (requests queued while the last message was "
        "written) and every queued request only reads, event-loop turns its next message "
        "may wait while each brings more reads, so that they share one message (0: never; "
        "writes never wait; route gateway)",
    )
    timeout: float = setting(
        10.0, env="RANGEKV_CLIENT_TIMEOUT", help="seconds an operation may take by default"
    )
    attempts: int = setting(
        10,
        env="RANGEKV_CLIENT_ATTEMPTS",
        help="tries per operation when a retry is safe (1: never retry)",
    )

    def __post_init__(self) -> None:
        check_choices(self)
        require(self.connections >= 1, "connections", "must be >= 1")
        require(self.max_inflight >= 1, "max_inflight", "must be >= 1")
        require(self.frame_gather_turns >= 0, "frame_gather_turns", "must be >= 0")
        require(self.timeout > 0, "timeout", "must be > 0")
        require(self.attempts >= 1, "attempts", "must be >= 1")
        if self.route == "direct":
            require(bool(self.meta_addrs.strip()), "meta_addrs", "route direct needs them")
        else:
            require(bool(self.addr.strip()), "addr", "must name the gateway")

    @staticmethod
    def from_env(environ: Mapping[str, str] | None = None) -> ClientConfig:
        """The configuration the environment gives (defaults elsewhere)."""
        return from_args(
            ClientConfig, argparse.Namespace(), os.environ if environ is None else environ
        )


__all__ = ["ROUTES", "ClientConfig"]
