"""The test-only hosts file every rangekv channel honours (rangekv.common.dialing)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rangekv.common.dialing import HOSTS_FILE_ENV, dial_target, parse_hosts


def test_parse_hosts() -> None:
    text = "# pods\n127.9.9.2 a-0.a.ns.svc.cluster.local  a-0\n\n127.9.9.3 B  # comment\nbad\n"
    assert parse_hosts(text) == {
        "a-0.a.ns.svc.cluster.local": "127.9.9.2",
        "a-0": "127.9.9.2",
        "b": "127.9.9.3",
    }


def test_mapped_names_keep_their_authority_others_go_to_dns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("127.9.9.2 pod-0.svc.ns\n")
    monkeypatch.setenv(HOSTS_FILE_ENV, str(hosts))
    target, options = dial_target("pod-0.svc.ns:7000")
    assert target == "127.9.9.2:7000"
    assert dict(options) == {"grpc.default_authority": "pod-0.svc.ns:7000"}
    # TLS: the certificate is checked for the name dialled, or the one asked for.
    assert dial_target("pod-0.svc.ns:7000", secure=True)[1] == (
        ("grpc.ssl_target_name_override", "pod-0.svc.ns"),
    )
    assert dial_target("pod-0.svc.ns:7000", "node.rangekv", secure=True)[1] == (
        ("grpc.ssl_target_name_override", "node.rangekv"),
    )
    assert dial_target("elsewhere:1", "node.rangekv", secure=True) == (
        "elsewhere:1",
        (("grpc.ssl_target_name_override", "node.rangekv"),),
    )
    assert dial_target("elsewhere:7000") == ("elsewhere:7000", ())
    # The file is re-read when it changes (a pod came or went).
    hosts.write_text("127.9.9.5 pod-0.svc.ns\n")
    os.utime(hosts, ns=(1, 10**18))
    assert dial_target("pod-0.svc.ns:7000")[0] == "127.9.9.5:7000"
    monkeypatch.delenv(HOSTS_FILE_ENV)
    assert dial_target("pod-0.svc.ns:7000") == ("pod-0.svc.ns:7000", ())
