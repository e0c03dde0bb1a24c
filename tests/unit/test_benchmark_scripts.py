"""Benchmark scripts keep running: each is started with the smallest arguments.

They print figures and are run by hand (README "Performance"), so nothing else
would notice one broken by a change to what it drives. Timings are never
checked here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_apply_cost_runs_and_prints_both_cases() -> None:
    out = _run("apply_cost.py", "--commands", "3", "--keys", "20", "--runs", "1", "--puts", "1,4")
    assert out.returncode == 0, out.stderr
    assert "1 puts per command: with a ceiling" in out.stdout
    assert "4 puts per command: with a ceiling" in out.stdout


def test_node_path_cost_runs_and_prints_medians() -> None:
    out = _run(
        "node_path_cost.py",
        "--ranges",
        "1,3",
        "--callers",
        "3",
        "--seconds",
        "0.2",
        "--rounds",
        "1",
    )
    assert out.returncode == 0, out.stderr
    assert "medians:" in out.stdout
    assert "3 ranges:" in out.stdout and "puts per entry" in out.stdout


@pytest.mark.parametrize(
    ("script", "bad"),
    [("apply_cost.py", ["--runs", "0"]), ("node_path_cost.py", ["--ranges", "0"])],
)
def test_bad_arguments_are_refused_without_a_traceback(script: str, bad: list[str]) -> None:
    out = _run(script, *bad)
    assert out.returncode == 2
    assert "must be positive" in out.stderr
    assert "Traceback" not in out.stderr
