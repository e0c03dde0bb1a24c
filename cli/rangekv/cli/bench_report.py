"""`rangekv bench`'s report: the table (rich on a terminal, plain when piped) and --out.

The figures come from `Bench.summary()` (rangekv.cli.bench); `--json` prints
that dict as is, and scripts depend on its format.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rangekv.cli.output import Output


def _ms_text(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


TABLE_HEADERS = ["op", "ops", "ops/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "errors"]


def table_rows(result: dict[str, Any]) -> list[list[str]]:
    named = list(result["by_op"].items())
    if len(named) != 1:
        named.append(("total", result))
    rows = []
    for name, s in named:
        lat = s["latency_ms"]
        rows.append(
            [
                name,
                str(s["ops"]),
                f"{s['ops_per_s']:.0f}",
                _ms_text(lat["p50"]),
                _ms_text(lat["p99"]),
                _ms_text(lat["p99.9"]),
                _ms_text(lat["max"]),
                str(s["errors"]),
            ]
        )
    return rows


def _heading(result: dict[str, Any]) -> str:
    return (
        f"workload {result['workload']}  client {result.get('client', 'unary')}  "
        f"concurrency {result['concurrency']}  "
        f"value {result['value_size']} B  keys {result['keys']}  "
        f"elapsed {result['elapsed_s']:.1f} s"
    )


def _footer(result: dict[str, Any]) -> list[str]:
    lines = []
    if result.get("client_cpu_us_per_op") is not None:
        lines.append(f"client CPU {result['client_cpu_us_per_op']:.0f} us/op")
    errors = result.get("errors_by_code") or {}
    if errors:
        lines.append("errors: " + ", ".join(f"{k} {v}" for k, v in sorted(errors.items())))
    return lines


def format_table(result: dict[str, Any]) -> str:
    """The plain report (what a pipe or a file gets): heading, table, client CPU, errors."""
    rows = table_rows(result)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(TABLE_HEADERS)]
    lines = [_heading(result), ""]
    lines.append("  ".join(h.rjust(w) for h, w in zip(TABLE_HEADERS, widths, strict=True)))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join([*lines, *_footer(result)])


def report(result: dict[str, Any], out: Output) -> None:
    """The human report: a rich table on a terminal, `format_table` text otherwise."""
    if not out.rich:
        out.line(format_table(result))
        return
    out.table(
        TABLE_HEADERS,
        table_rows(result),
        title=_heading(result),
        right=[False, *([True] * (len(TABLE_HEADERS) - 1))],
    )
    for line in _footer(result):
        out.line(line, style="red" if line.startswith("errors") else "")


def write_out(
    path: Path, result: dict[str, Any], timeline: list[dict[str, Any]], interval: float
) -> None:
    """--out: the summary `--json` prints, plus the run's timeline."""
    document = {**result, "interval_s": interval, "timeline": timeline}
    path.write_text(json.dumps(document, indent=2) + "\n")


__all__ = ["TABLE_HEADERS", "format_table", "report", "table_rows", "write_out"]
