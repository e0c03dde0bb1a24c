"""Parsing RANGEKV_FSM_SYNC_MODE: fail safe toward sync."""

from __future__ import annotations

import logging

import pytest

from rangekv.replication.sync_mode import (
    ENV_VAR,
    FsmSyncMode,
    from_env,
    parse_fsm_sync_mode,
)


@pytest.mark.parametrize(
    ("raw", "mode"),
    [
        ("sync", FsmSyncMode.SYNC),
        ("nosync", FsmSyncMode.NOSYNC),
        ("NoSync", FsmSyncMode.NOSYNC),
        ("  NOSYNC\t\n", FsmSyncMode.NOSYNC),
        (" Sync ", FsmSyncMode.SYNC),
    ],
)
def test_known_values(raw: str, mode: FsmSyncMode) -> None:
    assert parse_fsm_sync_mode(raw) == (mode, None)


@pytest.mark.parametrize("raw", [None, "", "   "])
def test_unset_or_blank_is_sync_without_warning(raw: str | None) -> None:
    assert parse_fsm_sync_mode(raw) == (FsmSyncMode.SYNC, None)


@pytest.mark.parametrize("raw", ["no-sync", "async", "false", "0", "nosync2"])
def test_unknown_falls_back_to_sync_with_warning(raw: str) -> None:
    mode, warning = parse_fsm_sync_mode(raw)
    assert mode is FsmSyncMode.SYNC
    assert warning is not None
    assert repr(raw) in warning
    assert ENV_VAR in warning


def test_from_env_reads_only_the_given_mapping(caplog: pytest.LogCaptureFixture) -> None:
    assert from_env({}) is FsmSyncMode.SYNC
    assert from_env({ENV_VAR: "nosync"}) is FsmSyncMode.NOSYNC
    with caplog.at_level(logging.WARNING):
        assert from_env({ENV_VAR: "bogus"}) is FsmSyncMode.SYNC
    assert any("bogus" in r.getMessage() for r in caplog.records)


def test_labels() -> None:
    assert [m.label for m in FsmSyncMode] == ["sync", "nosync"]
