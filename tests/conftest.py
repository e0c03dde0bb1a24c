"""Suite-wide pytest options and fixtures.

RANGEKV_SLOW=1 runs the tests marked `@pytest.mark.slow` (fresh-clone README
run, soaks). They take minutes each (the README test creates a virtualenv and
installs every dependency from the package registry), so a plain `pytest` run
skips them and says how to turn them on.

RANGEKV_SIM_SEEDS=N runs N seeds (default 300) of each seeded simulator: the
raft core's (tests/consensus/test_simulation.py) and the driver's
(tests/simulation/test_driver_simulation.py: real storage nodes over the
in-memory twins); RANGEKV_SIM_SEED=N with `-k replay` replays one seed.

The test kit (tests/testkit) is importable as `testkit` from every test folder
(this file's folder is on sys.path); its fixtures (`clusters`) and its hook
that attaches cluster logs to a failure report are registered here for all.
"""

from __future__ import annotations

import os

import pytest

pytest_plugins = ("testkit.fixtures",)

SLOW_ENV = "RANGEKV_SLOW"


def slow_enabled() -> bool:
    return os.environ.get(SLOW_ENV, "").strip().lower() in ("1", "true", "yes")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if slow_enabled():
        return
    skip = pytest.mark.skip(reason=f"slow test (minutes); run with {SLOW_ENV}=1 to include it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
