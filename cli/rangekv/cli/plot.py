"""`rangekv bench --plot FILE.png`: a run's throughput and latency over time, as a picture.

Two panels sharing the time axis: operations per second, and p50/p99 latency
in milliseconds, one point per timeline window. matplotlib is an optional
dependency (the `plot` extra) and is imported only here, with the Agg
backend (no display needed), so the rest of the CLI starts fast and works
without it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

INSTALL_HINT = "pip install 'rangekv[plot]'"


def plot_missing() -> str:
    """Why --plot cannot work here ("" when it can): checked before a run starts."""
    if importlib.util.find_spec("matplotlib") is None:
        return f"--plot needs matplotlib, which is not installed: {INSTALL_HINT}"
    return ""


def plot_run(result: dict[str, Any], timeline: list[dict[str, Any]], path: Path) -> None:
    """Draw `timeline` (from `rangekv.cli.bench.Timeline`) into the PNG file `path`."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    t = [w["t_s"] for w in timeline]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(9, 6), constrained_layout=True)
    try:
        top.plot(t, [w["ops_per_s"] for w in timeline], color="tab:blue", marker=".")
        top.set_ylabel("ops/s")
        top.set_ylim(bottom=0)
        top.grid(True, alpha=0.3)
        top.set_title(
            f"rangekv bench: {result['workload']}, concurrency {result['concurrency']}, "
            f"{result['ops']} ops in {result['elapsed_s']:.1f} s"
        )
        for key, label, color in (("p50_ms", "p50", "tab:green"), ("p99_ms", "p99", "tab:red")):
            points = [(w["t_s"], w[key]) for w in timeline if w[key] is not None]
            bottom.plot(
                [x for x, _ in points],
                [y for _, y in points],
                label=label,
                color=color,
                marker=".",
            )
        bottom.set_ylabel("latency (ms)")
        bottom.set_xlabel("time (s)")
        bottom.set_ylim(bottom=0)
        bottom.grid(True, alpha=0.3)
        bottom.legend(loc="upper right")
        fig.savefig(path, format="png", dpi=100)
    finally:
        plt.close(fig)


__all__ = ["INSTALL_HINT", "plot_missing", "plot_run"]
