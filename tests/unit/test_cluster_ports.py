"""Listening ports for local clusters come from below the kernel's ephemeral range."""

from __future__ import annotations

import socket

from rangekv.cli.cluster import LISTEN_PORTS, free_port, free_ports


def test_ports_are_distinct_bindable_and_never_ephemeral() -> None:
    ports = free_ports(20)
    assert len(set(ports)) == 20
    assert all(p in LISTEN_PORTS for p in ports)
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low = int(f.read().split()[0])
    assert max(LISTEN_PORTS) < low  # so no outgoing connection is ever given one of them
    p = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", p))
