"""Test-only faults: one value, read once from the environment, loud when active."""

from __future__ import annotations

from pathlib import Path

import pytest

from rangekv.replication.mutations import NO_FAULTS, Mutation, TestFaults


def test_nothing_set_means_no_faults_and_no_warning() -> None:
    faults = TestFaults.from_env({})
    assert faults == NO_FAULTS
    assert faults.warnings() == []


def test_every_fault_is_read_and_announced() -> None:
    faults = TestFaults.from_env(
        {
            "RANGEKV_TEST_MUTATION": "no_scan_fence",
            "RANGEKV_TEST_POWER_LOSS": "1",
            "RANGEKV_TEST_SNAPSHOT_DELAY_MS": "250",
            "RANGEKV_TEST_CLOCK_OFFSET_MS": "-1500",
            "RANGEKV_SPLIT_CRASH_AFTER": "first_intent",
            "RANGEKV_TEST_REFUSE_RAFT_FILE": "/tmp/refuse",
        }
    )
    assert faults == TestFaults(
        mutation=Mutation.NO_SCAN_FENCE,
        power_loss=True,
        snapshot_send_delay=0.25,
        clock_offset_ns=-1_500_000_000,
        split_crash_after="first_intent",
        refuse_raft_file="/tmp/refuse",
    )
    assert len(faults.warnings()) == 6


@pytest.mark.parametrize(
    "env",
    [
        {"RANGEKV_TEST_MUTATION": "typo"},
        {"RANGEKV_TEST_POWER_LOSS": "maybe"},
        {"RANGEKV_TEST_SNAPSHOT_DELAY_MS": "-1"},
        {"RANGEKV_TEST_CLOCK_OFFSET_MS": "soon"},
        {"RANGEKV_SPLIT_CRASH_AFTER": "halfway"},
    ],
)
def test_a_malformed_fault_is_an_error_not_a_silent_default(env: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        TestFaults.from_env(env)


def test_raft_refusal_follows_its_file(tmp_path: Path) -> None:
    """Off: the transport server asks nothing. Armed: it refuses while the file exists."""
    assert NO_FAULTS.refusing_raft() is None
    marker = tmp_path / "refuse"
    refusing = TestFaults(refuse_raft_file=str(marker)).refusing_raft()
    assert refusing is not None and not refusing()
    marker.touch()
    assert refusing()
    marker.unlink()
    assert not refusing()
