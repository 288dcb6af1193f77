"""deploy/compose.yaml and deploy/k8s: schema validation and the invariants between them.

Compose is validated against the Compose Specification's JSON schema shipped in the
`check-jsonschema` wheel; the kustomize base is rendered with `kubectl kustomize` and
every built-in kind validated by `kubernetes-validate` (which ships the Kubernetes JSON
schemas); the CRDs (ScaledObject, ServiceMonitor, PrometheusRule) are checked field by
field. Outside CI a missing tool skips its tests; with CI=true it fails them.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import typer
import yaml
from pydantic import BaseModel

from schemas.taxonomy import Taxonomy
from worker.cli import topics_app
from worker.config import Settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
# Kubernetes version whose schemas the manifests must satisfy (a widely run minor).
K8S_VERSION = "1.33.0"
# A worker needs this long after SIGTERM beyond its own drain grace (STYLE.md section 2).
KILL_MARGIN_S = 10


def require_tool(name: str, *, install: str) -> str:
    """Path of `name` (PATH, then the venv's bin); skip when missing, fail when CI=true."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    path = shutil.which(name, path=search)
    if path is None:
        message = f"{name} not found: {install}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def require_module(name: str, *, install: str) -> ModuleType:
    """Import `name`; skip when missing, fail when CI=true."""
    try:
        return importlib.import_module(name)
    except ImportError:
        message = f"python module {name} not found: {install}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


# --- the worker's settings as deploy files spell them ----------------------------------


def settings_path(key: str) -> list[str]:
    """ROUTER_ENGINE__MODEL_DIR -> ["engine", "model_dir"], checked against Settings."""
    assert key.startswith("ROUTER_"), key
    parts = key.removeprefix("ROUTER_").lower().split("__")
    model: type[BaseModel] = Settings
    for i, part in enumerate(parts):
        assert part in model.model_fields, f"{key}: no setting {'.'.join(parts[: i + 1])}"
        annotation = model.model_fields[part].annotation
        if i < len(parts) - 1:
            assert isinstance(annotation, type) and issubclass(annotation, BaseModel), key
            model = annotation
    return parts


def settings_from_env(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The Settings a worker would build from `env` (every ROUTER_ key must be known)."""
    for key in list(os.environ):
        if key.startswith("ROUTER_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("ROUTER_"):
            settings_path(key)
            monkeypatch.setenv(key, str(value))
    return Settings()


def parse_topics_create(args: list[str]) -> dict[str, Any]:
    """Parse `topics create ...` with the real CLI; a wrong flag raises click's UsageError."""
    assert args[:2] == ["topics", "create"], args
    group = typer.main.get_command(topics_app)
    command = group.commands["create"]  # type: ignore[attr-defined]
    ctx = command.make_context("create", list(args[2:]))
    return dict(ctx.params)


# --- Compose -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((DEPLOY / "compose.yaml").read_text("utf-8")))


def duration_s(text: str) -> float:
    """Compose durations: '35s', '1m30s', '2m'."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, text
    return sum(float(n) * units[u] for n, u in parts)


@pytest.mark.integration  # runs check-jsonschema
def test_compose_file_matches_the_compose_specification() -> None:
    tool = require_tool("check-jsonschema", install="add check-jsonschema to the lock file")
    result = subprocess.run(
        [tool, "--builtin-schema", "vendor.compose-spec", str(DEPLOY / "compose.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_images_are_pinned(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        image = service["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest", f"{name}: unpinned image {image}"
    assert compose["services"]["kafka"]["image"].startswith("apache/kafka:")


def test_compose_kafka_runs_in_kraft_mode(compose: dict[str, Any]) -> None:
    env = compose["services"]["kafka"]["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "CONTROLLER" in env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert "ZOOKEEPER" not in " ".join(env).upper()


def test_compose_worker_reserves_a_gpu_and_outlasts_its_drain(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = compose["services"]["worker"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    for name in ("worker", "worker-cpu"):
        service = compose["services"][name]
        settings = settings_from_env(service["environment"], monkeypatch)
        grace_s = duration_s(service["stop_grace_period"])
        assert grace_s >= settings.shutdown_grace_s + KILL_MARGIN_S, name
        assert settings.metrics.host == "0.0.0.0", f"{name}: Prometheus could not scrape it"  # noqa: S104
        assert service["depends_on"]["topic-init"]["condition"] == (
            "service_completed_successfully"
        )


def test_compose_gpu_worker_serves_a_lora_adapter(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_from_env(compose["services"]["worker"]["environment"], monkeypatch)
    assert settings.engine.adapter_dir is not None
    assert settings.engine.dtype == "bfloat16"


def test_compose_topic_init_command_is_accepted_by_the_cli(compose: dict[str, Any]) -> None:
    params = parse_topics_create(compose["services"]["topic-init"]["command"])
    assert params["bootstrap"] == "kafka:9092"
    mounted = {v.split(":")[1] for v in compose["services"]["topic-init"]["volumes"]}
    assert str(params["taxonomy"]) in mounted


def test_compose_optional_services_sit_behind_profiles(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["loadgen"]["profiles"] == ["loadgen"]
    assert services["worker-cpu"]["profiles"] == ["cpu"]
    always = {name for name, s in services.items() if "profiles" not in s}
    assert always == {"kafka", "topic-init", "worker", "prometheus", "grafana"}


def test_compose_mounts_exist(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"


# --- Kubernetes: render --------------------------------------------------------------------

RENDERED = ["base", "overlays/example"]


# Rendering runs kustomize (or kubectl): every test of a rendered tree is an integration test.
@pytest.fixture(
    scope="module",
    params=[pytest.param(target, marks=pytest.mark.integration) for target in RENDERED],
)
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    """`kustomize build` of the base and of the example overlay (kubectl's kustomize when
    there is no kustomize binary): every check below holds for both."""
    target = str(DEPLOY / "k8s" / request.param)
    install = "kubectl (with kustomize >= 5) ships in the machine image; see deploy/README.md"
    if shutil.which("kustomize"):
        cmd = ["kustomize", "build", target]
    else:
        cmd = [require_tool("kubectl", install=install), "kustomize", target]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def one(docs: list[dict[str, Any]], kind: str, prefix: str = "ticket-router") -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(prefix)]
    assert len(found) == 1, f"expected one {kind} {prefix}*, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def worker_env(rendered: list[dict[str, Any]]) -> dict[str, str]:
    return dict(one(rendered, "ConfigMap", "ticket-router-env")["data"])


@pytest.fixture(scope="module")
def worker_container(rendered: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = one(rendered, "Deployment")["spec"]["template"]["spec"]["containers"]
    return dict(container)


def k8s_validate(doc: dict[str, Any]) -> None:
    kv = require_module("kubernetes_validate", install="add kubernetes-validate to the lock file")
    kv.validate(doc, K8S_VERSION, strict=True)


CRD_KINDS = {"ScaledObject", "ServiceMonitor", "PrometheusRule"}


def test_kustomize_renders_every_kind_the_base_promises(rendered: list[dict[str, Any]]) -> None:
    kinds = sorted(d["kind"] for d in rendered)
    assert kinds == sorted(
        [
            "ConfigMap",
            "ConfigMap",
            "Deployment",
            "Job",
            "PersistentVolumeClaim",
            "PodDisruptionBudget",
            "PrometheusRule",
            "ScaledObject",
            "Service",
            "ServiceAccount",
            "ServiceMonitor",
        ]
    )


def test_builtin_kinds_match_the_kubernetes_json_schemas(rendered: list[dict[str, Any]]) -> None:
    for doc in rendered:
        if doc["kind"] not in CRD_KINDS:
            k8s_validate(doc)


def test_the_schema_validator_rejects_a_broken_deployment(rendered: list[dict[str, Any]]) -> None:
    kv = require_module("kubernetes_validate", install="add kubernetes-validate to the lock file")
    broken = copy.deepcopy(one(rendered, "Deployment"))
    broken["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 45
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, K8S_VERSION, strict=True)


def test_worker_requests_a_gpu(worker_container: dict[str, Any]) -> None:
    resources = worker_container["resources"]
    assert int(resources["requests"]["nvidia.com/gpu"]) == 1
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"]


def test_probes_use_healthz_and_readyz_on_the_metrics_port(
    worker_container: dict[str, Any], worker_env: dict[str, str]
) -> None:
    ports = {p["name"]: p["containerPort"] for p in worker_container["ports"]}
    assert ports["metrics"] == int(worker_env["ROUTER_METRICS__PORT"])
    assert worker_env["ROUTER_METRICS__HOST"] == "0.0.0.0"  # noqa: S104
    paths = {
        probe: worker_container[probe]["httpGet"]["path"]
        for probe in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert paths == {
        "startupProbe": "/healthz",
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
    }
    for probe in paths:
        assert worker_container[probe]["httpGet"]["port"] == "metrics"


def test_termination_grace_exceeds_the_drain_grace(
    rendered: list[dict[str, Any]], worker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_from_env(worker_env, monkeypatch)
    pod = one(rendered, "Deployment")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= settings.shutdown_grace_s + KILL_MARGIN_S


def test_configmap_env_is_valid_worker_settings(
    worker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_from_env(worker_env, monkeypatch)
    assert settings.engine.adapter_dir is not None
    assert str(settings.taxonomy_path) == "/etc/ticket-router/taxonomy.yaml"


def test_taxonomy_configmap_is_the_packaged_taxonomy_mounted_where_settings_look(
    rendered: list[dict[str, Any]], worker_container: dict[str, Any], worker_env: dict[str, str]
) -> None:
    cm = one(rendered, "ConfigMap", "ticket-router-taxonomy")
    assert cm["data"]["taxonomy.yaml"] == (ROOT / "schemas" / "taxonomy.yaml").read_text("utf-8")
    pod = one(rendered, "Deployment")["spec"]["template"]["spec"]
    volume = next(
        v for v in pod["volumes"] if v.get("configMap", {}).get("name") == cm["metadata"]["name"]
    )
    mount = next(m for m in worker_container["volumeMounts"] if m["name"] == volume["name"])
    taxonomy_path = Path(worker_env["ROUTER_TAXONOMY_PATH"])
    assert Path(mount["mountPath"]) == taxonomy_path.parent
    assert taxonomy_path.name in cm["data"]


def test_base_copies_are_in_sync_with_their_sources() -> None:
    spec = importlib.util.spec_from_file_location("deploy_k8s_sync", DEPLOY / "k8s" / "sync.py")
    assert spec and spec.loader
    sync = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sync)
    stale = [str(p.relative_to(ROOT)) for p in sync.stale_files()]
    assert stale == [], "run: python deploy/k8s/sync.py"


def test_pdb_service_and_servicemonitor_select_the_worker_pods(
    rendered: list[dict[str, Any]],
) -> None:
    deployment = one(rendered, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    pdb = one(rendered, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"].get("maxUnavailable") == 1 or pdb["spec"].get("minAvailable")
    service = one(rendered, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert port["name"] == "metrics" and port["targetPort"] == "metrics"
    monitor = one(rendered, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == port["name"] and endpoint["path"] == "/metrics"
    # alerts.yml's `up{job="ticket-router"}`: the Operator names the job after the Service.
    assert service["metadata"]["name"] == "ticket-router"


def test_prometheus_rule_carries_the_alert_rules(rendered: list[dict[str, Any]]) -> None:
    rule = one(rendered, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text("utf-8"))
    assert rule["spec"] == alerts


def test_keda_scales_on_the_inbound_lag_of_the_workers_group(
    rendered: list[dict[str, Any]], worker_env: dict[str, str]
) -> None:
    scaled = one(rendered, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    deployment = one(rendered, "Deployment")
    assert spec["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert "replicas" not in deployment["spec"], "KEDA owns the replica count"
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert meta["bootstrapServers"] == worker_env["ROUTER_KAFKA__BOOTSTRAP_SERVERS"]
    assert meta["consumerGroup"] == worker_env["ROUTER_KAFKA__GROUP_ID"]
    assert meta["topic"] == Taxonomy.load(ROOT / "schemas" / "taxonomy.yaml").topics.inbound
    assert int(meta["lagThreshold"]) > 0
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]


def test_max_replicas_equal_the_partition_count_everywhere(
    rendered: list[dict[str, Any]], compose: dict[str, Any]
) -> None:
    job = one(rendered, "Job")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    k8s_partitions = parse_topics_create(container["args"])["partitions"]
    compose_partitions = parse_topics_create(compose["services"]["topic-init"]["command"])[
        "partitions"
    ]
    max_replicas = one(rendered, "ScaledObject")["spec"]["maxReplicaCount"]
    assert k8s_partitions == compose_partitions == max_replicas


def test_topics_job_reads_the_same_broker_and_taxonomy(
    rendered: list[dict[str, Any]], worker_env: dict[str, str]
) -> None:
    job = one(rendered, "Job")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    params = parse_topics_create(container["args"])
    assert params["bootstrap"] == "$(ROUTER_KAFKA__BOOTSTRAP_SERVERS)"
    assert any(
        e["configMapRef"]["name"].startswith("ticket-router-env") for e in container["envFrom"]
    )
    assert str(params["taxonomy"]) == worker_env["ROUTER_TAXONOMY_PATH"]
    assert params["replication_factor"] >= 3, "production topics need replicas"


def test_settings_path_rejects_a_misspelled_setting() -> None:
    with pytest.raises(AssertionError, match="no setting engine.max_num_seq"):
        settings_path("ROUTER_ENGINE__MAX_NUM_SEQ")
