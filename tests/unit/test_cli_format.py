"""Pure pieces of the CLI: escaping, prefix spans, bench percentiles and table.

They decide what a user reads and what a script parses, so they are pinned
here without a cluster.
"""

from __future__ import annotations

import argparse
import importlib.util
import io

import pytest

from rangekv.cli.admin import size_text, table
from rangekv.cli.bench import OpStats, Timeline, format_table
from rangekv.cli.kv import CLIError, escape, prefix_end, to_bytes
from rangekv.cli.output import Output
from rangekv.cli.plot import INSTALL_HINT, plot_missing


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
    stats = OpStats()
    for i in range(1, 1001):  # 1..1000 ms
        stats.record(i * 1_000_000)
    stats.errors["UNAVAILABLE"] += 2
    s = stats.summary(elapsed=2.0)
    assert s["ops"] == 1000 and s["ops_per_s"] == 500.0
    # An HdrHistogram of 3 significant digits: every figure within 0.1%.
    lat = s["latency_ms"]
    assert lat["p50"] == pytest.approx(500.0, rel=1e-3)
    assert lat["p99"] == pytest.approx(990.0, rel=1e-3)
    assert lat["p99.9"] == pytest.approx(999.0, rel=1e-3)
    assert lat["max"] == pytest.approx(1000.0, rel=1e-3)
    assert lat["mean"] == pytest.approx(500.5, rel=1e-3)
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


def test_timeline_windows() -> None:
    """Per-interval throughput and percentiles, empty windows kept, a partial last window."""
    t = Timeline(interval=1.0)
    for i in range(10):
        t.record(0.05 + i * 0.09, 2_000_000)  # 10 ops of 2 ms in [0, 1)
    t.record(0.99, None)  # one failure
    t.record(2.5, 8_000_000)  # nothing in [1, 2), one op of 8 ms in [2, 2.5)
    windows = t.finish(elapsed=2.5)
    assert [w["t_s"] for w in windows] == [1.0, 2.0, 2.5]
    assert [w["ops"] for w in windows] == [10, 0, 1]
    assert windows[0]["errors"] == 1 and windows[0]["ops_per_s"] == 10.0
    assert windows[0]["p50_ms"] == pytest.approx(2.0, rel=1e-2)
    assert windows[1]["p50_ms"] is None
    assert windows[2]["ops_per_s"] == 2.0  # one op over half a second
    assert windows[2]["p99_ms"] == pytest.approx(8.0, rel=1e-2)


def test_size_text() -> None:
    assert size_text(0) == "-"
    assert size_text(512) == "512 B"
    assert size_text(1536) == "1.5 KiB"
    assert size_text(3 << 30) == "3.0 GiB"


def test_plain_output_when_piped_rich_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    plain = io.StringIO()
    Output.for_stream(plain).table(["A", "B"], [["x", "live"]])
    assert plain.getvalue() == "A  B\nx  live\n"
    drawn = Tty()
    out = Output.for_stream(drawn)
    assert out.rich
    out.table(["A", "B"], [["x", "live"]])
    assert "│" in drawn.getvalue() or "┃" in drawn.getvalue()  # a bordered rich table


def test_plot_says_how_to_install_matplotlib(monkeypatch: pytest.MonkeyPatch) -> None:
    assert plot_missing() == ""  # the dev extra installs it
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert INSTALL_HINT in plot_missing()
