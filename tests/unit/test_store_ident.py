"""A store's identity in its data folder, and where a new store's node id comes from."""

from __future__ import annotations

from pathlib import Path

import pytest

from rangekv.common.config import ConfigError
from rangekv.raftnode.ident import STORE_FILE, StoreIdent, StoreRetired, resolve_identity


async def resolve(
    data: Path, *, configured: int = 0, ordinal: int | None = None, known: bool | None = None
) -> StoreIdent:
    async def allocate() -> int:
        return 7

    async def registered(node_id: int) -> bool | None:
        return known

    return await resolve_identity(
        data,
        configured=configured,
        ordinal=ordinal,
        bootstrap_nodes=(1, 2, 3),
        allocate=allocate,
        registered=registered,
    )


async def test_bootstrap_ordinals_take_the_bootstrap_ids_and_later_ones_ask_meta(
    tmp_path: Path,
) -> None:
    assert (await resolve(tmp_path / "pod0", ordinal=0)).node_id == 1
    assert (await resolve(tmp_path / "pod2", ordinal=2)).node_id == 3
    assert (await resolve(tmp_path / "pod3", ordinal=3)).node_id == 7
    assert (await resolve(tmp_path / "flag", configured=5)).node_id == 5
    # Saved: the same folder is the same node, whatever the ordinal says now.
    assert StoreIdent.load(tmp_path / "pod3") == StoreIdent(7)
    assert (await resolve(tmp_path / "pod3", ordinal=0)).node_id == 7
    with pytest.raises(ConfigError, match="needs --node-id"):
        await resolve(tmp_path / "nothing")


async def test_a_folder_names_its_node_and_a_retired_one_is_refused(tmp_path: Path) -> None:
    await resolve(tmp_path / "d", configured=4)
    with pytest.raises(ConfigError, match=r"--node-id 5, but .* holds the store of node 4"):
        await resolve(tmp_path / "d", configured=5)
    StoreIdent(4).retired().save(tmp_path / "d")
    with pytest.raises(StoreRetired, match="node 4, which was decommissioned") as info:
        await resolve(tmp_path / "d", configured=4)
    assert "PersistentVolumeClaim" in str(info.value)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / STORE_FILE).write_text('{"node_id": "x"}')
    with pytest.raises(ConfigError, match="names no node id"):
        StoreIdent.load(tmp_path / "bad")


async def test_a_bootstrap_pod_that_lost_its_volume_starts_as_a_new_node(tmp_path: Path) -> None:
    # First install: the registry cannot say yet (None) or does not know node 1.
    assert (await resolve(tmp_path / "a", ordinal=0, known=None)).node_id == 1
    assert (await resolve(tmp_path / "b", ordinal=0, known=False)).node_id == 1
    # Node 1 is registered but this volume is empty: a new node, never node 1 again.
    assert (await resolve(tmp_path / "c", ordinal=0, known=True)).node_id == 7
    assert StoreIdent.load(tmp_path / "c") == StoreIdent(7)
