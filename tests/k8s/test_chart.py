"""The Helm chart, rendered by Helm's engine and checked against the Kubernetes API.

Every value set of `chart.VALUE_SETS` renders, and every object is valid for
Kubernetes KUBE_VERSION in strict mode (unknown fields are errors); the
ServiceMonitor (a Prometheus Operator CRD the schemas do not know) is checked
by shape. Bad values are refused by values.schema.json with a message naming
the value. The rest pins down what the chart promises: headless Services that
publish not-ready pods, Parallel StatefulSets with PVCs, probes on the
plaintext health port with one service name each, no hooks but the test pod,
restrictive security contexts, and RBAC that is exactly `get` on the
raftnodes' own StatefulSet.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
from chart import CHART, KUBE_VERSION, NAMESPACE, RELEASE, VALUE_SETS, Rendered, render

from rangekv.common.config import ServerConfig, env_name
from rangekv.gateway.main import GatewayConfig
from rangekv.metarange.main import MetarangeConfig
from rangekv.raftnode.config import RaftnodeConfig

CRD_KINDS = {"ServiceMonitor"}
SERVERS = ("metarange", "raftnode", "gateway")


@pytest.fixture(scope="module")
def defaults() -> Rendered:
    return render()


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"] if obj["kind"] != "Pod" else obj["spec"]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def workload(r: Rendered, component: str) -> dict[str, Any]:
    kind = "Deployment" if component == "gateway" else "StatefulSet"
    return r.component(kind, component)


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_value_set_renders_and_is_valid_kubernetes(name: str) -> None:
    r = render(VALUE_SETS[name])
    assert r.objects
    for obj in r.objects:
        if obj["kind"] in CRD_KINDS:
            continue
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
    for sm in r.of_kind("ServiceMonitor"):
        assert sm["apiVersion"] == "monitoring.coreos.com/v1"
        wanted = sm["spec"]["selector"]["matchLabels"]
        scraped = [
            s
            for s in r.of_kind("Service")
            if wanted.items() <= s["metadata"]["labels"].items()
            and any(p["name"] == "metrics" for p in s["spec"]["ports"])
        ]
        assert {s["metadata"]["labels"]["app.kubernetes.io/component"] for s in scraped} == set(
            SERVERS
        )
    names = Counter((o["kind"], o["metadata"]["name"]) for o in r.objects)
    assert max(names.values()) == 1, names


def test_the_templates_cover_every_object() -> None:
    r = render(
        {
            "networkPolicy": {"enabled": True},
            "metrics": {"serviceMonitor": {"enabled": True}},
            "dashboards": {"enabled": True},
        }
    )
    kinds = Counter(o["kind"] for o in r.objects)
    assert kinds == {
        "StatefulSet": 2,
        "Deployment": 1,
        "Service": 4,
        "PodDisruptionBudget": 3,
        "ServiceAccount": 1,
        "Role": 1,
        "RoleBinding": 1,
        "NetworkPolicy": 3,
        "ServiceMonitor": 1,
        "ConfigMap": 1,
        "Pod": 1,
    }


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"raftnode": {"replicas": 0}}, "at '/raftnode/replicas': minimum: got 0, want 1"),
        ({"metarange": {"replicas": 2}}, "at '/metarange/replicas': value must be one of 1, 3"),
        ({"raftnode": {"settings": {"listen-port": 7}}}, "invalid propertyName 'listen-port'"),
        ({"raftnode": {"settings": {"Bad_Name": 1}}}, "invalid propertyName 'Bad_Name'"),
        ({"gateway": {"service": {"type": "Ingress"}}}, "'ClusterIP', 'NodePort', 'LoadBalancer'"),
        ({"podDisruptionBudget": {"maxUnavailable": 2}}, "maximum: got 2, want 1"),
        ({"raftnode": {"persistence": {"size": "lots"}}}, "at '/raftnode/persistence/size'"),
        ({"tls": {"enabled": "yes"}}, "at '/tls/enabled'"),
        ({"logging": {"level": "LOUD"}}, "at '/logging/level'"),
        ({"otlpEndpoint": "collector:4317"}, "at '/otlpEndpoint'"),
        ({"raftnode": {"terminationGracePeriodSeconds": 10}}, "minimum: got 10, want 40"),
        ({"image": {"repository": ""}}, "at '/image/repository'"),
        ({"typo": True}, "additional properties 'typo' not allowed"),
    ],
)
def test_bad_values_are_refused_with_a_message(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmValuesError) as info:
        render(values)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"raftnode": {"replicas": 2}},
            "raftnode.replicas (2) is below the replication factor (3)",
        ),
        (
            {"raftnode": {"replicas": 3, "bootstrapReplicas": 4}},
            "raftnode.bootstrapReplicas (4) must not exceed raftnode.replicas (3)",
        ),
    ],
)
def test_unsafe_sizes_fail_the_render(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError) as info:
        render(values)
    assert message in str(info.value)


def test_statefulsets_parallel_headless_publishing_not_ready_with_volumes(
    defaults: Rendered,
) -> None:
    for component in ("metarange", "raftnode"):
        sts = workload(defaults, component)
        spec = sts["spec"]
        assert spec["podManagementPolicy"] == "Parallel"
        assert spec["updateStrategy"] == {"type": "RollingUpdate"}
        svc = defaults.get("Service", spec["serviceName"])
        assert svc["spec"]["clusterIP"] == "None"
        assert svc["spec"]["publishNotReadyAddresses"] is True
        (claim,) = spec["volumeClaimTemplates"]
        assert claim["metadata"]["name"] == "data"
        mounts = {m["name"]: m["mountPath"] for m in pod_spec(sts)["containers"][0]["volumeMounts"]}
        assert mounts["data"] == env_of(pod_spec(sts)["containers"][0])["RANGEKV_DATA_DIR"]
        assert spec["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Retain"
    raft = workload(defaults, "raftnode")["spec"]
    assert raft["persistentVolumeClaimRetentionPolicy"]["whenScaled"] == "Delete"
    gw = workload(defaults, "gateway")["spec"]
    assert gw["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    assert defaults.component("Service", "gateway")["spec"]["type"] == "ClusterIP"


def test_peers_are_the_pods_stable_dns_names(defaults: Rendered) -> None:
    domain = f"{NAMESPACE}.svc.cluster.local"
    meta = env_of(pod_spec(workload(defaults, "metarange"))["containers"][0])
    assert meta["RANGEKV_PEERS"] == ",".join(
        f"{i + 1}={RELEASE}-rangekv-metarange-{i}.{RELEASE}-rangekv-metarange.{domain}:7100"
        for i in range(3)
    )
    raft = env_of(pod_spec(workload(defaults, "raftnode"))["containers"][0])
    assert raft["RANGEKV_META_ADDRS"] == ",".join(
        f"{RELEASE}-rangekv-metarange-{i}.{RELEASE}-rangekv-metarange.{domain}:7100"
        for i in range(3)
    )
    assert raft["RANGEKV_BOOTSTRAP_NODES"] == "1,2,3" == meta["RANGEKV_FIRST_RANGE_NODES"]
    assert (
        raft["RANGEKV_ADVERTISE_HOST"] == f"$(RANGEKV_POD_NAME).{RELEASE}-rangekv-raftnode.{domain}"
    )
    assert raft["RANGEKV_POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    # Five raftnodes: the first range still starts on the first three.
    five = render({"raftnode": {"replicas": 5}})
    raft5 = env_of(pod_spec(workload(five, "raftnode"))["containers"][0])
    assert raft5["RANGEKV_BOOTSTRAP_NODES"] == "1,2,3"
    assert workload(five, "raftnode")["spec"]["replicas"] == 5


def test_probes_use_one_service_name_each_on_the_plaintext_health_port() -> None:
    for values in ({}, {"tls": {"enabled": False}}):
        r = render(values)
        for component in SERVERS:
            (c,) = pod_spec(workload(r, component))["containers"]
            ports = {p["name"]: p["containerPort"] for p in c["ports"]}
            assert env_of(c)["RANGEKV_HEALTH_PORT"] == str(ports["health"])
            services = {}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert c[probe]["grpc"]["port"] == ports["health"]
                services[probe] = c[probe]["grpc"]["service"]
            assert services == {
                "startupProbe": "rangekv.startup",
                "readinessProbe": "rangekv.readiness",
                "livenessProbe": "rangekv.liveness",
            }


def test_no_hook_but_the_test_pod_so_install_wait_cannot_deadlock(defaults: Rendered) -> None:
    hooked = [o for o in defaults.objects if "helm.sh/hook" in o["metadata"].get("annotations", {})]
    assert [(o["kind"], o["metadata"]["annotations"]["helm.sh/hook"]) for o in hooked] == [
        ("Pod", "test")
    ]
    test_pod = hooked[0]
    assert env_of(test_pod["spec"]["containers"][0])["RANGEKV_ADDR"] == (
        f"{RELEASE}-rangekv-gateway.{NAMESPACE}.svc.cluster.local:50051"
    )


def test_tls_on_and_off(defaults: Rendered) -> None:
    off = render({"tls": {"enabled": False}})
    for component in SERVERS:
        on_spec, off_spec = (
            pod_spec(workload(defaults, component)),
            pod_spec(workload(off, component)),
        )
        on_env, off_env = env_of(on_spec["containers"][0]), env_of(off_spec["containers"][0])
        assert (
            on_env["RANGEKV_CERTS_DIR"] == "/etc/rangekv/certs" and "RANGEKV_INSECURE" not in on_env
        )
        assert off_env["RANGEKV_INSECURE"] == "true" and "RANGEKV_CERTS_DIR" not in off_env
        certs = [v for v in on_spec["volumes"] if v["name"] == "certs"]
        assert certs == [
            {"name": "certs", "secret": {"secretName": "rangekv-node-certs", "defaultMode": 0o400}}
        ]
        assert not [v for v in off_spec["volumes"] if v["name"] == "certs"]
    test_on = defaults.of_kind("Pod")[0]["spec"]
    assert {
        "name": "certs",
        "secret": {"secretName": "rangekv-client-certs", "defaultMode": 0o400},
    } in test_on["volumes"]
    assert env_of(test_on["containers"][0])["RANGEKV_CLIENT"] == "root"
    assert env_of(off.of_kind("Pod")[0]["spec"]["containers"][0])["RANGEKV_INSECURE"] == "true"
    hosts = f"{RELEASE}-rangekv-raftnode.{NAMESPACE}.svc.cluster.local"
    assert "rangekv cert create-node node --certs-dir ./certs" in defaults.notes
    assert f"--host '*.{RELEASE}-rangekv-metarange" in defaults.notes
    assert "rangekv cert create-client root --role admin" in defaults.notes
    assert f"--host '*.{hosts}'" in defaults.notes
    assert "--certs-dir ./certs" in defaults.notes and "-plaintext" not in defaults.notes
    assert "grpcurl -plaintext" in off.notes and "create-node" not in off.notes
    for notes in (defaults.notes, off.notes):
        assert (
            f"kubectl -n {NAMESPACE} port-forward svc/{RELEASE}-rangekv-gateway 50051:50051"
            in notes
        )
        assert "rangekv put hello world --addr 127.0.0.1:50051" in notes
        assert f"helm test {RELEASE}" in notes


def test_pods_run_restricted(defaults: Rendered) -> None:
    pods = [pod_spec(workload(defaults, c)) for c in SERVERS] + [defaults.of_kind("Pod")[0]["spec"]]
    for spec in pods:
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]


def test_rbac_is_get_on_the_raftnode_statefulset_only(defaults: Rendered) -> None:
    (role,) = defaults.of_kind("Role")
    assert role["rules"] == [
        {
            "apiGroups": ["apps"],
            "resources": ["statefulsets"],
            "resourceNames": [f"{RELEASE}-rangekv-raftnode"],
            "verbs": ["get"],
        }
    ]
    assert not defaults.of_kind("ClusterRole")
    (binding,) = defaults.of_kind("RoleBinding")
    (sa,) = defaults.of_kind("ServiceAccount")
    assert binding["subjects"][0]["name"] == sa["metadata"]["name"]
    assert sa["automountServiceAccountToken"] is False
    tokens = {c: pod_spec(workload(defaults, c))["automountServiceAccountToken"] for c in SERVERS}
    assert tokens == {"metarange": False, "raftnode": True, "gateway": False}


def test_spread_disruption_budgets_and_scrape_annotations(defaults: Rendered) -> None:
    for component in SERVERS:
        spec = pod_spec(workload(defaults, component))
        term = spec["affinity"]["podAntiAffinity"][
            "preferredDuringSchedulingIgnoredDuringExecution"
        ]
        assert term[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
        assert spec["topologySpreadConstraints"][0]["whenUnsatisfiable"] == "ScheduleAnyway"
        pdb = defaults.component("PodDisruptionBudget", component)
        assert pdb["spec"]["maxUnavailable"] == 1
        assert pdb["spec"]["selector"] == workload(defaults, component)["spec"]["selector"]
        annotations = workload(defaults, component)["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == "9090"


def test_the_chart_runs_each_servers_own_fsm_sync_default(defaults: Rendered) -> None:
    """The chart sets the FSM sync mode explicitly, to what each binary defaults to
    (raftnode nosync, metarange sync: pinned in tests/unit/test_sync_mode.py)."""
    for component, config in (("raftnode", RaftnodeConfig), ("metarange", MetarangeConfig)):
        env = env_of(pod_spec(workload(defaults, component))["containers"][0])
        default = next(f.default for f in dataclasses.fields(config) if f.name == "fsm_sync_mode")
        assert env["RANGEKV_FSM_SYNC_MODE"] == default, component


def _flags(cls: type) -> set[str]:
    return {f.name.replace("_", "-") for f in dataclasses.fields(cls)}


def test_every_server_flag_is_reachable_through_values() -> None:
    """Each flag is set by the chart from a value, or settable through `settings`
    (the schema refuses only the keys the chart sets itself). The node id is the
    one exception: it comes from the pod (rangekv.raftnode.ident)."""
    with helm.Chart.load(str(CHART)) as chart:
        schema = chart.schema
    assert schema is not None
    reserved = set(
        schema["properties"]["raftnode"]["properties"]["settings"]["propertyNames"]["not"]["enum"]
    )
    tuned = render(VALUE_SETS["everything-tuned"])
    configs = {
        "metarange": _flags(ServerConfig) | _flags(MetarangeConfig),
        "raftnode": _flags(ServerConfig) | _flags(RaftnodeConfig),
        "gateway": _flags(ServerConfig) | _flags(GatewayConfig),
    }
    for component, flags in configs.items():
        chart_env = set(env_of(pod_spec(workload(tuned, component))["containers"][0]))
        set_by_chart = {f for f in flags if env_name(f.replace("-", "_")) in chart_env}
        unreachable = flags - set_by_chart - (flags - reserved) - {"node-id"}
        if component == "gateway":
            unreachable -= {"pod-name", "data-dir"}  # a stateless Deployment has neither
        assert not unreachable, (component, sorted(unreachable))
    tuned = render(VALUE_SETS["everything-tuned"])
    raft = pod_spec(workload(tuned, "raftnode"))["containers"][0]
    env = env_of(raft)
    assert env["RANGEKV_FSM_SYNC_MODE"] == "nosync" and env["RANGEKV_TICK_INTERVAL"] == "0.05"
    assert env["RANGEKV_GC_TTL"] == "300" and env["RANGEKV_MAX_VALUE_BYTES"] == "1048576"
    assert env["RANGEKV_OTLP_ENDPOINT"] == "http://otel-collector.observability:4317"
    assert raft["args"] == ["raftnode", "--event-loop", "asyncio"]
    claim = workload(tuned, "raftnode")["spec"]["volumeClaimTemplates"][0]["spec"]
    assert claim["storageClassName"] == "fast-ssd"
    assert claim["resources"]["requests"]["storage"] == "50Gi"


def test_the_readme_section_matches_the_chart(defaults: Rendered) -> None:
    """The names and values "Deploy on Kubernetes" uses are the ones the chart has."""
    readme = (CHART.parents[1] / "README.md").read_text()
    section = readme.split("## Deploy on Kubernetes", 1)[1].split("\n## ", 1)[0]
    for text in (
        f"svc/{RELEASE}-rangekv-gateway 50051:50051",
        f"statefulset {RELEASE}-rangekv-raftnode",
        "rangekv-node-certs",
        "rangekv-client-certs",
        "client.root.crt",
        "--set tls.enabled=false",
        "raftnode.replicas=N",
        "whenScaled: Delete",
        "whenDeleted: Retain",
        "rangekv node decommission NODE_ID",
    ):
        assert text in section, text
    with helm.Chart.load(str(CHART)) as chart:
        merged = chart.merge_values({})
    assert merged["tls"]["nodeSecret"] == "rangekv-node-certs"
    assert merged["tls"]["clientSecret"] == "rangekv-client-certs"
    assert merged["tls"]["clientName"] == "root"
    assert merged["raftnode"]["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Retain",
        "whenScaled": "Delete",
    }
    assert defaults.component("Service", "gateway")["spec"]["ports"][0]["port"] == 50051


def test_helm_lint_strict_finds_nothing_to_warn_about() -> None:
    for values in ({}, {"tls": {"enabled": False}}, {"raftnode": {"replicas": 5}}):
        report = helm.lint(str(CHART), values, strict=True, kube_version=f"v{KUBE_VERSION}")
        assert report["errors"] == []
        warnings = [m for m in report["messages"] if m["severity"] >= 2]
        assert warnings == [], warnings
