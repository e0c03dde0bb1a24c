"""The test tree collects as one run: every test module's basename is unique.

pytest imports test modules by basename (rootdir-relative, no packages), so
two files named alike in different folders break collection of the whole run
("import file mismatch") — on a fresh clone, not on a machine whose
__pycache__ happens to hold the right one first.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_test_module_basenames_are_unique() -> None:
    seen: dict[str, list[str]] = defaultdict(list)
    for path in TESTS.rglob("*.py"):
        if path.name.startswith(("test_", "conftest")) and path.name != "conftest.py":
            seen[path.name].append(str(path.relative_to(TESTS)))
    clashes = {name: paths for name, paths in seen.items() if len(paths) > 1}
    assert not clashes, f"test modules share a basename: {clashes}"
