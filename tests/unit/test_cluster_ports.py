"""Listening ports for local clusters come from below the kernel's ephemeral range."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from rangekv.cli.cluster import LISTEN_PORTS, Layout, free_port, free_ports


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


def test_metrics_ports_are_kept_in_cluster_json(tmp_path: Path) -> None:
    path = tmp_path / "cluster.json"
    first = Layout.load_or_create(path, 3, 3, [free_port()])
    assert sorted(first.metrics) == sorted(
        ["meta1", "meta2", "meta3", "node1", "node2", "node3", "gateway1"]
    )
    grpc_ports = {*first.meta.values(), *first.nodes.values(), *first.gateways}
    metrics = set(first.metrics.values())
    assert len(metrics) == 7 and not metrics & grpc_ports
    assert all(p in LISTEN_PORTS for p in metrics)
    again = Layout.load_or_create(path, 3, 3, [])
    assert again.metrics == first.metrics  # a restart keeps them


def test_a_layout_without_metrics_ports_gets_them_once(tmp_path: Path) -> None:
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps({"meta": {"1": 20001}, "nodes": {"1": 20002}, "gateways": [20003]}))
    layout = Layout.load_or_create(path, 1, 1, [])
    assert sorted(layout.metrics) == ["gateway1", "meta1", "node1"]
    assert not set(layout.metrics.values()) & {20001, 20002, 20003}
    assert json.loads(path.read_text())["metrics"] == layout.metrics
    assert Layout.load_or_create(path, 1, 1, []).metrics == layout.metrics


class _SameOrder:
    """A `random.SystemRandom` stand-in that offers ports in one fixed order, so
    two independent picks would both land on the first free one."""

    def sample(self, population: range, k: int) -> list[int]:
        return list(population)[:k]


def test_a_new_layout_never_gives_two_processes_one_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("rangekv.cli.cluster.random.SystemRandom", _SameOrder)
    gateway = free_ports(2)
    layout = Layout.load_or_create(tmp_path / "cluster.json", 3, 3, gateway)
    every = [*layout.meta.values(), *layout.nodes.values(), *layout.gateways]
    every += layout.metrics.values()
    assert len(every) == 3 + 3 + 2 + 8
    assert len(set(every)) == len(every), sorted(every)


def test_zero_ports_is_an_empty_list() -> None:
    assert free_ports(0) == []
