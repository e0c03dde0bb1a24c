"""The generated stubs import, are fresh, and the freshness check can fail."""

from __future__ import annotations

import importlib
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import gen_protos  # noqa: E402

MODULES = ["types", "errors", "kv", "replica", "raft", "meta"]


@pytest.mark.parametrize("name", MODULES)
def test_stubs_import(name: str) -> None:
    importlib.import_module(f"rangekv.v1.{name}_pb2")
    importlib.import_module(f"rangekv.v1.{name}_pb2_grpc")


def test_public_services_exist() -> None:
    from rangekv.v1 import kv_pb2, meta_pb2, raft_pb2, replica_pb2

    assert kv_pb2.DESCRIPTOR.services_by_name["KV"].full_name == "rangekv.v1.KV"
    rpcs = {m.name for m in kv_pb2.DESCRIPTOR.services_by_name["KV"].methods}
    assert rpcs == {"Get", "Put", "Delete", "CompareAndSwap", "Scan", "Batch", "Stream"}
    assert "Replica" in replica_pb2.DESCRIPTOR.services_by_name
    assert "Meta" in meta_pb2.DESCRIPTOR.services_by_name
    assert "RaftTransport" in raft_pb2.DESCRIPTOR.services_by_name


def test_kv_field_names_are_the_contract() -> None:
    from rangekv.v1 import kv_pb2, types_pb2

    def fields(msg: type) -> set[str]:
        return {f.name for f in msg.DESCRIPTOR.fields}  # type: ignore[attr-defined]

    assert {"key", "consistency"} <= fields(kv_pb2.GetRequest)
    assert {"found", "kv"} <= fields(kv_pb2.GetResponse)
    assert {"key", "value"} <= fields(kv_pb2.PutRequest)
    assert {"version"} <= fields(kv_pb2.PutResponse)
    assert {"deleted"} <= fields(kv_pb2.DeleteResponse)
    assert {"key", "expected_value", "expect_absent", "new_value"} <= fields(
        kv_pb2.CompareAndSwapRequest
    )
    assert {"succeeded", "current"} <= fields(kv_pb2.CompareAndSwapResponse)
    assert {"start_key", "end_key", "limit"} <= fields(kv_pb2.ScanRequest)
    assert {"kvs"} <= fields(kv_pb2.ScanResponse)
    assert {"requests"} <= fields(kv_pb2.StreamRequest)
    assert {"request_id", "timeout", "get", "put", "delete", "compare_and_swap", "batch"} <= (
        fields(kv_pb2.StreamRequestItem)
    )
    assert {"responses"} <= fields(kv_pb2.StreamResponse)
    assert {"request_id", "get", "put", "delete", "compare_and_swap", "batch", "error"} <= (
        fields(kv_pb2.StreamResponseItem)
    )
    assert {"key", "value", "version"} <= fields(types_pb2.KeyValue)


def test_committed_stubs_are_fresh() -> None:
    assert gen_protos.stale_files() == []


def test_freshness_check_detects_a_stale_stub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "proto"
    shutil.copytree(gen_protos.OUT_ROOT, copy)
    target = copy / gen_protos.PACKAGE / "kv_pb2.py"
    target.write_text(target.read_text() + "\n# edited by hand\n")
    monkeypatch.setattr(gen_protos, "OUT_ROOT", copy)
    assert gen_protos.stale_files() == ["kv_pb2.py"]
