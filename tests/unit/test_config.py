"""Per-component config: flag > environment > default, and precise validation errors."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import pytest

from rangekv.common.config import (
    ConfigError,
    ServerConfig,
    add_arguments,
    describe,
    from_args,
    from_args_or_exit,
    require,
    setting,
)
from rangekv.common.telemetry import Telemetry


def _parser(cls: type = ServerConfig) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rangekv-test")
    add_arguments(parser, cls)
    return parser


def _load(argv: list[str], env: dict[str, str], cls: type = ServerConfig) -> object:
    return from_args(cls, _parser(cls).parse_args(argv), env)


def test_defaults_when_nothing_is_given() -> None:
    assert _load([], {}) == ServerConfig()
    config = ServerConfig()
    assert config.listen_port == 0 and config.metrics_port == 0 and config.metrics_enabled
    assert config.data_dir is None and config.otlp_endpoint is None


def test_flag_beats_environment_beats_default() -> None:
    env = {"RANGEKV_LISTEN_PORT": "7001", "RANGEKV_NODE_ID": "4"}
    config = _load(["--listen-port", "7002"], env)
    assert isinstance(config, ServerConfig)
    assert config.listen_port == 7002  # flag
    assert config.node_id == 4  # environment
    assert config.metrics_port == 0  # default


def test_environment_values_are_parsed_by_field_type() -> None:
    env = {
        "RANGEKV_DATA_DIR": "/var/lib/rangekv",
        "RANGEKV_LOG_LEVEL": "debug",
        "RANGEKV_LOG_FORMAT": "JSON",
        "RANGEKV_METRICS_PORT": "-1",
        "RANGEKV_SHUTDOWN_GRACE_SECONDS": "2.5",
        "RANGEKV_OTLP_ENDPOINT": "",
    }
    config = _load([], env)
    assert config == ServerConfig(
        data_dir=Path("/var/lib/rangekv"),
        log_level="DEBUG",
        log_format="json",
        metrics_port=-1,
        shutdown_grace_seconds=2.5,
        otlp_endpoint=None,
    )
    assert isinstance(config, ServerConfig) and not config.metrics_enabled
    assert describe(config)["data_dir"] == "/var/lib/rangekv"


def test_validation_in_post_init_names_the_field() -> None:
    with pytest.raises(ConfigError) as info:
        ServerConfig(listen_port=70000)
    assert info.value.field == "listen_port"
    assert str(info.value) == "listen_port: must be 0 (pick a free port) or 1..65535, got 70000"
    with pytest.raises(ConfigError, match=r"log_format: must be one of text, json, got 'xml'"):
        ServerConfig(log_format="xml")
    with pytest.raises(ValueError, match="metrics_port: must be -1"):
        ServerConfig(metrics_port=-2)


def test_errors_name_the_flag_or_variable_the_value_came_from() -> None:
    with pytest.raises(ConfigError, match=r"^metrics_port: RANGEKV_METRICS_PORT: must be -1"):
        _load([], {"RANGEKV_METRICS_PORT": "-5"})
    with pytest.raises(ConfigError, match=r"^metrics_port: --metrics-port: must be -1"):
        _load(["--metrics-port", "-5"], {"RANGEKV_METRICS_PORT": "9000"})
    with pytest.raises(ConfigError, match=r"--listen-port: cannot parse 'abc'"):
        _load(["--listen-port", "abc"], {})
    with pytest.raises(ConfigError, match=r"RANGEKV_NODE_ID: cannot parse 'one'"):
        _load([], {"RANGEKV_NODE_ID": "one"})


def test_cli_error_is_one_line_and_exit_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    parser = _parser()
    args = parser.parse_args(["--log-format", "xml"])
    with pytest.raises(SystemExit) as info:
        from_args_or_exit(parser, ServerConfig, args, {})
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err == (
        "rangekv-test: error: invalid configuration: "
        "--log-format: must be one of text, json, got 'xml'\n"
    )


def test_help_documents_variable_and_default() -> None:
    text = " ".join(_parser().format_help().split())  # undo argparse's line wrapping
    assert "--metrics-port" in text and "RANGEKV_METRICS_PORT" in text
    assert "-1 disables" in text and "default: 0" in text


@dataclass(frozen=True)
class _Component:
    """A component with a required field, a bool and a custom variable name."""

    peers: str = setting(help="comma-separated peer addresses")
    sync: bool = setting(True, help="fsync every commit")
    batch: int = setting(64, help="entries per batch", env="RANGEKV_COMPONENT_BATCH")

    def __post_init__(self) -> None:
        require(self.batch > 0, "batch", f"must be > 0, got {self.batch}")


def test_required_bool_and_custom_env() -> None:
    with pytest.raises(ConfigError, match=r"peers: required: pass --peers or set RANGEKV_PEERS"):
        _load([], {}, _Component)
    env = {"RANGEKV_PEERS": "a:1,b:2", "RANGEKV_SYNC": "no", "RANGEKV_COMPONENT_BATCH": "8"}
    assert _load([], env, _Component) == _Component(peers="a:1,b:2", sync=False, batch=8)
    assert _load(["--sync"], env, _Component) == _Component("a:1,b:2", True, 8)
    assert _load(["--no-sync", "--batch", "3"], {"RANGEKV_PEERS": "x"}, _Component) == (
        _Component("x", False, 3)
    )
    with pytest.raises(ConfigError, match=r"RANGEKV_SYNC: cannot parse 'maybe'"):
        _load([], {**env, "RANGEKV_SYNC": "maybe"}, _Component)
    with pytest.raises(ConfigError, match=r"^batch: RANGEKV_COMPONENT_BATCH: must be > 0, got 0"):
        _load([], {**env, "RANGEKV_COMPONENT_BATCH": "0"}, _Component)


def test_gateway_in_flight_budget_cannot_exceed_a_node_batch() -> None:
    """A gateway may merge every operation in flight into one node batch, and a node
    refuses a batch of more than MAX_BATCH_OPS: a larger budget would turn valid
    operations into INVALID_ARGUMENT under load."""
    from rangekv.domain.limits import MAX_BATCH_OPS
    from rangekv.gateway.main import GatewayConfig
    from rangekv.raftnode.requests import ReplicaLimits

    assert ReplicaLimits().max_ops_per_batch == MAX_BATCH_OPS
    argv = ["--meta-addrs", "127.0.0.1:1"]
    ok = _load([*argv, "--max-inflight-ops", str(MAX_BATCH_OPS)], {}, GatewayConfig)
    assert isinstance(ok, GatewayConfig) and ok.max_inflight_ops == MAX_BATCH_OPS
    with pytest.raises(ConfigError, match=r"--max-inflight-ops: must be in \[1, 10000\]"):
        _load([*argv, "--max-inflight-ops", str(MAX_BATCH_OPS + 1)], {}, GatewayConfig)


def test_a_nodes_kv_api_has_its_own_bounded_budget_and_timeout(telemetry: Telemetry) -> None:
    """`--kv-max-inflight-ops` and `--kv-request-timeout` reach the KV API a raftnode
    serves (rangekv.raftnode.frontend), bounded as a gateway's are."""
    import random

    from rangekv.common.clock import SystemClock
    from rangekv.common.frontend import FrontendContext
    from rangekv.common.tls import PlaintextChannels
    from rangekv.gateway.embedded import EmbeddedGateway
    from rangekv.raftnode.config import RaftnodeConfig

    with pytest.raises(ConfigError, match=r"--kv-max-inflight-ops: must be in \[1, 10000\]"):
        _load(["--kv-max-inflight-ops", "10001"], {}, RaftnodeConfig)
    with pytest.raises(ConfigError, match=r"--kv-request-timeout: must be > 0"):
        _load(["--kv-request-timeout", "0"], {}, RaftnodeConfig)
    cfg = _load(
        ["--kv-max-inflight-ops", "7", "--kv-request-timeout", "3", "--frame-gather-turns", "5"],
        {},
        RaftnodeConfig,
    )
    assert isinstance(cfg, RaftnodeConfig)
    gateway = EmbeddedGateway(
        FrontendContext(
            meta_addrs="127.0.0.1:1",
            channels=PlaintextChannels(),
            telemetry=telemetry,
            max_key_bytes=cfg.max_key_bytes,
            max_value_bytes=cfg.max_value_bytes,
            max_inflight_ops=cfg.kv_max_inflight_ops,
            request_timeout=cfg.kv_request_timeout,
            max_message_bytes=4 << 20,
            frame_gather_turns=cfg.frame_gather_turns,
            clock=SystemClock(),
            rng=random.Random(1),
        )
    )
    assert gateway.config.max_inflight_ops == 7 and gateway.config.request_timeout == 3.0
    assert gateway.config.frame_gather_turns == 5
    assert gateway.kv.admission.limit == 7


def test_lazy_heartbeats_are_refused_with_timings_they_do_not_fit() -> None:
    """With lazy heartbeats a follower may go two heartbeat intervals without one:
    timings where two intervals reach the election timeout or the lease are refused
    with the way out, and accepted without lazy heartbeats."""
    from rangekv.raftnode.config import RaftnodeConfig
    from rangekv.replication.host import HostConfig
    from rangekv.replication.timing import RaftTiming

    with pytest.raises(ConfigError, match=r"--heartbeat-ticks: lazy heartbeats need .*--no-lazy"):
        _load(["--heartbeat-ticks", "5"], {}, RaftnodeConfig)
    assert isinstance(
        _load(["--heartbeat-ticks", "5", "--no-lazy-heartbeat"], {}, RaftnodeConfig),
        RaftnodeConfig,
    )
    assert isinstance(_load(["--heartbeat-ticks", "3"], {}, RaftnodeConfig), RaftnodeConfig)
    with pytest.raises(ValueError, match="lease longer than two heartbeat intervals"):
        RaftTiming(election_ticks=10, heartbeat_ticks=4, max_clock_drift=0.2).check_lazy_heartbeat()
    slow = RaftTiming(heartbeat_ticks=5)
    with pytest.raises(ValueError, match="2 \\* heartbeat_ticks < election_ticks - 1"):
        HostConfig(node_id=1, timing=slow, lazy_heartbeat=True)
    HostConfig(node_id=1, timing=slow)


def test_raft_gather_turns_must_not_be_negative() -> None:
    from rangekv.raftnode.config import RaftnodeConfig

    with pytest.raises(ConfigError, match=r"--raft-gather-turns: must be >= 0"):
        _load(["--raft-gather-turns", "-1"], {}, RaftnodeConfig)
    assert _load(["--raft-gather-turns", "0"], {}, RaftnodeConfig).raft_gather_turns == 0
    assert _load([], {}, RaftnodeConfig).raft_gather_turns == 16


def test_frame_gather_turns_must_not_be_negative() -> None:
    from rangekv.gateway.main import GatewayConfig
    from rangekv.raftnode.config import RaftnodeConfig

    meta = ["--meta-addrs", "127.0.0.1:1"]
    with pytest.raises(ConfigError, match=r"--frame-gather-turns: must be >= 0"):
        _load([*meta, "--frame-gather-turns", "-1"], {}, GatewayConfig)
    with pytest.raises(ConfigError, match=r"--frame-gather-turns: must be >= 0"):
        _load(["--frame-gather-turns", "-1"], {}, RaftnodeConfig)
    assert _load(meta, {}, GatewayConfig).frame_gather_turns == 16
    assert _load([], {}, RaftnodeConfig).frame_gather_turns == 16
    off = {"RANGEKV_FRAME_GATHER_TURNS": "0"}
    assert _load(meta, off, GatewayConfig).frame_gather_turns == 0
