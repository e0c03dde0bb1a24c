"""Benchmark scripts keep running: each is started with the smallest arguments.

They print figures and are run by hand (README "Performance"), so nothing else
would notice one broken by a change to what it drives. Timings are never
checked here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_apply_cost_runs_and_prints_both_cases() -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "apply_cost.py"),
            "--commands",
            "3",
            "--keys",
            "20",
            "--runs",
            "1",
            "--puts",
            "1,4",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "1 puts per command: with a ceiling" in out.stdout
    assert "4 puts per command: with a ceiling" in out.stdout


def test_apply_cost_refuses_bad_arguments() -> None:
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / "apply_cost.py"), "--runs", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert "must be positive" in out.stderr
    assert "Traceback" not in out.stderr


def test_node_path_cost_runs_and_prints_medians() -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "node_path_cost.py"),
            "--ranges",
            "1,3",
            "--callers",
            "3",
            "--seconds",
            "0.2",
            "--rounds",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "medians:" in out.stdout
    assert "3 ranges:" in out.stdout and "puts per entry" in out.stdout


def test_node_path_cost_refuses_bad_arguments() -> None:
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / "node_path_cost.py"), "--ranges", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert "must be positive" in out.stderr
    assert "Traceback" not in out.stderr
