"""Parsing RANGEKV_FSM_SYNC_MODE: fail safe toward sync."""

from __future__ import annotations

import dataclasses
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


def test_a_storage_node_defaults_to_nosync_and_the_meta_range_to_sync() -> None:
    """The raft log is a raftnode's durability boundary (module docstring of
    sync_mode); the meta range, whose power cuts no test emulates, keeps sync."""
    from rangekv.metarange.main import MetarangeConfig
    from rangekv.raftnode.config import RaftnodeConfig

    def default(cls: type) -> str:
        return str(next(f.default for f in dataclasses.fields(cls) if f.name == "fsm_sync_mode"))

    assert parse_fsm_sync_mode(default(RaftnodeConfig)) == (FsmSyncMode.NOSYNC, None)
    assert parse_fsm_sync_mode(default(MetarangeConfig)) == (FsmSyncMode.SYNC, None)
