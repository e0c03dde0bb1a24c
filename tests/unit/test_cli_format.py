"""Pure pieces of the CLI: escaping, prefix spans, bench percentiles and table.

They decide what a user reads and what a script parses, so they are pinned
here without a cluster.
"""

from __future__ import annotations

import argparse

import pytest

from rangekv.cli.admin import table
from rangekv.cli.bench import OpStats, format_table
from rangekv.cli.kv import CLIError, escape, prefix_end, to_bytes


def test_escape_keeps_text_and_escapes_what_breaks_lines() -> None:
    assert escape("héllo wörld".encode()) == "héllo wörld"
    assert escape(b"a\tb\nc\x00") == "a\\tb\\nc\\x00"
    assert escape(b"\xff\xfe") == "\\xff\\xfe"


def test_prefix_end() -> None:
    assert prefix_end(b"abc") == b"abd"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") == b""
    assert prefix_end(b"") == b""


def test_to_bytes_hex_and_text() -> None:
    hexargs = argparse.Namespace(hex=True)
    assert to_bytes(hexargs, "00ff", "key") == b"\x00\xff"
    with pytest.raises(CLIError) as info:
        to_bytes(hexargs, "xyz", "key")
    assert info.value.code == 2
    assert to_bytes(argparse.Namespace(hex=False), "ké", "key") == "ké".encode()


def test_table_aligns_columns() -> None:
    out = table(["A", "LONG"], [["xyz", "1"], ["q", "22"]]).splitlines()
    assert out == ["A    LONG", "xyz  1", "q    22"]


def test_percentiles_and_table() -> None:
    stats = OpStats(latencies=[i * 1_000_000 for i in range(1, 1001)])  # 1..1000 ms
    stats.errors["UNAVAILABLE"] += 2
    s = stats.summary(elapsed=2.0)
    assert s["ops"] == 1000 and s["ops_per_s"] == 500.0
    assert s["latency_ms"]["p50"] == 501.0
    assert s["latency_ms"]["p99"] == 991.0
    assert s["latency_ms"]["p99.9"] == 1000.0
    assert s["errors"] == 2
    result = {
        "workload": "put",
        "concurrency": 4,
        "value_size": 10,
        "keys": 5,
        "elapsed_s": 2.0,
        **s,
        "client_cpu_us_per_op": 100.0,
        "by_op": {"put": s},
    }
    text = format_table(result)
    assert "p99.9 ms" in text and "UNAVAILABLE 2" in text
    assert OpStats().summary(1.0)["latency_ms"]["p50"] is None
