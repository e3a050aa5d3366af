"""The Helm chart renders, lints and validates offline for every deployment shape, and every pod it
renders is hardened and probed; settings it sets are ones services/linesight/common/settings.py accepts.

Rendering uses helm-python-sdk (Helm's Go SDK through a shared library: no helm binary, no
network); validation uses kubernetes-validate's bundled OpenAPI schemas.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml

from linesight.common.embedded.nats_auth import permissions_document
from linesight.common.identity.config import AuthSettings
from linesight.common.settings import SERVICE_PORTS, Settings
from linesight.inference.app.config import ENV_PREFIX as INFERENCE_PREFIX
from linesight.inference.app.config import InferenceConfig

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "charts" / "linesight"
KUBE_VERSIONS = ("1.27.0", "1.34.0")  # the chart's minimum (Chart.yaml kubeVersion) and a recent one
SERVICES = ("capture", "inference", "labeling", "training", "taxonomy", "mes")
WORKLOADS = {"Deployment", "DaemonSet", "StatefulSet", "Job", "CronJob"}
# Every values file, and each with the Triton sidecar on (central has it on already).
SHAPES = ("default", "dev", "edge", "central", "default+triton", "dev+triton", "edge+triton")
TRITON_ON = {"triton": {"enabled": True}}


def _skip(reason: str) -> None:
    """Skip loudly: the reason goes to stderr and to pytest's -ra summary."""
    print(f"SKIP tests/unit/deploy/test_charts.py: {reason}", file=sys.stderr)
    pytest.skip(reason)


try:
    import helm_python as helm

    helm.helm_c_version()  # loads libhelm_c; fails here, not in every test, when it cannot
    HELM_PROBLEM = ""
except Exception as exc:  # ImportError, OSError from ctypes, HelmLibraryError (version mismatch)
    HELM_PROBLEM = f"helm-python-sdk unusable here ({type(exc).__name__}: {exc}); pip install '.[deploy]'"

try:
    import kubernetes_validate

    KV_PROBLEM = ""
except ImportError as exc:
    KV_PROBLEM = f"kubernetes-validate not installed ({exc}); pip install '.[deploy]'"


@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    if HELM_PROBLEM:
        _skip(HELM_PROBLEM)


def _values(name: str) -> dict[str, Any]:
    """Values of a shape: "default", a values-<name>.yaml, or either + "+triton"."""
    base, _, extra = name.partition("+")
    loaded: dict[str, Any] = {}
    if base != "default":
        loaded = yaml.safe_load((CHART / f"values-{base}.yaml").read_text())
    return _deep_merge(loaded, TRITON_ON) if extra == "triton" else loaded


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = (
            _deep_merge(out[key], value)
            if isinstance(value, dict) and isinstance(out.get(key), dict)
            else value
        )
    return out


def render(values: dict[str, Any] | None = None, revision: int = 1) -> list[dict[str, Any]]:
    with helm.Chart.load(CHART) as chart:
        files = chart.render(
            values=values or {}, name="ls", namespace="linesight", revision=revision, is_install=True
        )
    return [
        doc
        for path, text in sorted(files.items())
        if path.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


@pytest.fixture(scope="module", params=SHAPES)
def shape(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(_values(request.param))


def _by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec = doc["spec"]
    if doc["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    pod: dict[str, Any] = spec["template"]["spec"]
    return pod


Doc = dict[str, Any]


def _containers(docs: list[Doc]) -> Iterator[tuple[Doc, Doc, Doc]]:
    for doc in docs:
        if doc["kind"] in WORKLOADS:
            pod = _pod_spec(doc)
            for container in pod["containers"] + pod.get("initContainers", []):
                yield doc, pod, container


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SHAPES)
def test_chart_lints_clean(name: str) -> None:
    report = helm.lint(CHART, _values(name), strict=True, kube_version="v1.34.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


@pytest.mark.parametrize("kube", KUBE_VERSIONS)
def test_every_manifest_validates_against_kubernetes_schema(
    shape: tuple[str, list[dict[str, Any]]], kube: str
) -> None:
    if KV_PROBLEM:
        _skip(KV_PROBLEM)
    _, docs = shape
    assert docs
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, kube, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} invalid for {kube}: {exc.message}")


def test_every_pod_is_hardened(shape: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = shape
    seen = 0
    for doc, pod, container in _containers(docs):
        seen += 1
        where = f"{name}: {doc['kind']}/{doc['metadata']['name']}/{container['name']}"
        pod_sc, sc = pod.get("securityContext", {}), container.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True, where
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, where
        assert sc.get("runAsUser", pod_sc.get("runAsUser", 0)) != 0, where
        assert sc.get("readOnlyRootFilesystem") is True, where
        assert sc.get("allowPrivilegeEscalation") is False, where
        assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
        assert not sc.get("capabilities", {}).get("add"), where
        assert sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        assert container["resources"].get("requests"), f"{where}: no resource requests"
        assert "memory" in container["resources"].get("limits", {}), f"{where}: no memory limit"
        assert pod.get("automountServiceAccountToken") is False, where
        # A read-only root needs somewhere to write: /tmp must be a volume.
        if doc["kind"] != "StatefulSet":
            assert any(m["mountPath"] == "/tmp" for m in container.get("volumeMounts", [])), where
    assert seen >= 2


def test_every_long_running_pod_is_probed(shape: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = shape
    for doc, _, container in _containers(docs):
        if doc["kind"] in {"Job", "CronJob"}:
            continue
        where = f"{name}: {doc['kind']}/{doc['metadata']['name']}/{container['name']}"
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            # HTTP probes; exec only for Triton, whose HTTP port is on the pod's loopback.
            kinds = {"httpGet", "exec"} if container["name"] == "triton" else {"httpGet"}
            assert kinds & set(container.get(probe, {})), f"{where}: no {probe}"
        component = doc["metadata"]["labels"]["app.kubernetes.io/component"]
        if component in SERVICES and container["name"] == component:
            assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}, where
            assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}, where
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            assert ports == dict(zip(("grpc", "http"), SERVICE_PORTS[component], strict=True)), where
            assert container["command"] == ["python", "-m", f"linesight.{component}"]


def test_settings_are_ones_the_services_accept(
    shape: tuple[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A LINESIGHT_ variable settings.py does not know is ignored by pydantic-settings, so a typo
    in the chart would silently fall back to an embedded-stack default: check every name."""
    _, docs = shape
    known = {f"LINESIGHT_{field.upper()}" for field in Settings.model_fields}
    known |= {f"LINESIGHT_AUTH_{field.upper()}" for field in AuthSettings.model_fields}
    known.add("LINESIGHT_CAPTURE_PROFILE")  # read by capture/app/config.py itself
    # The inference service's own tuning (InferenceConfig.from_env rejects unknown ones).
    known |= {INFERENCE_PREFIX + field.name.upper() for field in fields(InferenceConfig)}
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-settings"))
    names = set(config["data"])
    for secret in _by_kind(docs, "Secret").values():
        names |= set(secret.get("stringData", {}))
    for _, _, container in _containers(docs):
        names |= set(_env(container))
    linesight_vars = {n for n in names if n.startswith("LINESIGHT_")}
    assert linesight_vars <= known, linesight_vars - known
    # And the values parse: build Settings from exactly the environment a pod would see.
    for key in [k for k in os.environ if k.startswith("LINESIGHT_")]:
        monkeypatch.delenv(key)
    for key, value in config["data"].items():
        monkeypatch.setenv(key, value)
    parsed = Settings()
    assert parsed.plant == "plant1" and parsed.state_dir == Path("/var/lib/linesight")
    assert parsed.grpc_ports == {s: p[0] for s, p in SERVICE_PORTS.items()}
    assert parsed.http_ports == {s: p[1] for s, p in SERVICE_PORTS.items()}


def test_default_shape_runs_every_service_with_external_infrastructure() -> None:
    docs = render()
    deployments = _by_kind(docs, "Deployment")
    assert set(deployments) == {
        "ls-linesight-capture-station1",
        "ls-linesight-inference",
        "ls-linesight-labeling",
        "ls-linesight-training",
        "ls-linesight-taxonomy",
        "ls-linesight-mes",
    }
    assert not _by_kind(docs, "StatefulSet"), "no in-release NATS by default"
    config = _by_kind(docs, "ConfigMap")["ls-linesight-settings"]["data"]
    assert config["LINESIGHT_NATS_URL"] == "nats://nats.nats.svc:4222"
    assert "LINESIGHT_TRITON_URL" not in config
    assert set(_by_kind(docs, "HorizontalPodAutoscaler")) == {"ls-linesight-inference"}
    assert "replicas" not in deployments["ls-linesight-inference"]["spec"], "the HPA owns replicas"
    # PDBs only where two or more replicas run: a PDB on one replica would block node drains.
    assert set(_by_kind(docs, "PodDisruptionBudget")) == {
        "ls-linesight-inference",
        "ls-linesight-labeling",
        "ls-linesight-taxonomy",
        "ls-linesight-mes",
    }
    capture = deployments["ls-linesight-capture-station1"]
    assert capture["spec"]["replicas"] == 1 and capture["spec"]["strategy"]["type"] == "Recreate"
    assert _pod_spec(capture)["nodeSelector"] == {"linesight.io/camera-host": "station1"}
    services = _by_kind(docs, "Service")
    ports = {p["name"]: p["port"] for p in services["ls-linesight-labeling"]["spec"]["ports"]}
    assert ports == {"grpc": 17012, "http": 17112}


def test_edge_shape_is_capture_inference_and_a_leaf_node() -> None:
    docs = render(_values("edge"))
    deployments = _by_kind(docs, "Deployment")
    assert set(deployments) == {"ls-linesight-capture-station1", "ls-linesight-inference"}
    assert deployments["ls-linesight-inference"]["spec"]["replicas"] == 1
    assert not _by_kind(docs, "HorizontalPodAutoscaler") and not _by_kind(docs, "PodDisruptionBudget")
    nats = _by_kind(docs, "StatefulSet")["ls-linesight-nats"]
    assert nats["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] == "local-path"
    conf = _by_kind(docs, "ConfigMap")["ls-linesight-nats"]["data"]["nats.conf"]
    assert "leafnodes" in conf and "nats-leaf://nats-leaf.linesight-central.svc:7422" in conf
    assert 'domain: "plant1-line1"' in conf
    config = _by_kind(docs, "ConfigMap")["ls-linesight-settings"]["data"]
    assert config["LINESIGHT_NATS_URL"] == "tls://ls-linesight-nats:4222"  # the leaf serves TLS
    inference = deployments["ls-linesight-inference"]["spec"]["template"]["spec"]["containers"][0]
    assert inference["resources"]["limits"]["memory"] == "2Gi"
    # The leaf admits only the service users, with the permissions of the embedded stack.
    assert "authorization" in conf and "tls {" in conf and "no_auth_user" not in conf
    for user, perms in permissions_document().items():
        head = f'{{user: "{user}", password: $NATS_PASSWORD_{user.upper()}, permissions: '
        line = next(x for x in conf.splitlines() if head in x)
        for direction, rules in perms.items():
            for kind, patterns in rules.items():
                listed = ", ".join(json.dumps(p) for p in patterns)
                assert f"{kind}: [{listed}]" in line.split(f"{direction}: ", 1)[1], (user, direction, kind)
    leaf_env = _env(nats["spec"]["template"]["spec"]["containers"][0])
    assert leaf_env["NATS_PASSWORD_INFERENCE"] == {
        "secretKeyRef": {"name": "ls-linesight-nats-users", "key": "inference"}
    }


def test_each_pod_is_its_own_nats_user_and_only_labeling_holds_the_signing_key() -> None:
    docs = render()
    users = _by_kind(docs, "Secret")["ls-linesight-nats-users"]
    assert set(users["data"]) == set(permissions_document())
    assert len(set(users["data"].values())) == len(users["data"])  # generated, one each
    seen = set()
    for doc, pod, container in _containers(docs):
        component = doc["metadata"]["labels"]["app.kubernetes.io/component"]
        env = _env(container)
        assert env["LINESIGHT_NATS_USER"] == component, doc["metadata"]["name"]
        assert env["LINESIGHT_NATS_PASSWORD"] == {
            "secretKeyRef": {"name": "ls-linesight-nats-users", "key": component}
        }
        if component == "provisioner":  # the streams Job: no token key of any kind
            assert container["command"] == ["python", "-m", "linesight.common.provision"]
            assert not [v for v in pod["volumes"] if v["name"] == "auth-keys"]
            assert doc["kind"] == "Job" and doc["metadata"]["name"] == "ls-linesight-nats-provision-1"
            seen.add(component)
            continue
        keys = next(v for v in pod["volumes"] if v["name"] == "auth-keys")["secret"]
        if component == "labeling":
            assert "items" not in keys and env["LINESIGHT_AUTH_SIGNING_KEY_FILE"].endswith("signing-key.pem")
        else:
            assert keys["items"] == [{"key": "signing-key.pub.pem", "path": "signing-key.pub.pem"}]
            assert "LINESIGHT_AUTH_SIGNING_KEY_FILE" not in env
        seen.add(component)
    assert seen == {*SERVICES, "provisioner"}


def test_chart_permissions_file_is_the_embedded_stacks_table() -> None:
    """charts/linesight/files/nats-permissions.json = nats_auth.permissions_document(); regenerate
    it with json.dumps(permissions_document(), indent=2, sort_keys=True) when the table changes."""
    assert json.loads((CHART / "files" / "nats-permissions.json").read_text()) == permissions_document()


def test_central_shape_adds_triton_jobs_policies_and_stations() -> None:
    docs = render(_values("central"))
    deployments = _by_kind(docs, "Deployment")
    for station in ("station1", "station2"):
        capture = deployments[f"ls-linesight-capture-{station}"]
        pod = _pod_spec(capture)
        assert pod["nodeSelector"] == {"linesight.io/camera-host": station}
        assert _env(pod["containers"][0])["LINESIGHT_STATION"] == station
        assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    # Triton is a sidecar of inference (tests/unit/deploy/test_triton.py has the details).
    assert "ls-linesight-triton" not in deployments and "ls-linesight-triton" not in _by_kind(docs, "Service")
    inference = _pod_spec(deployments["ls-linesight-inference"])
    containers = {c["name"]: c for c in inference["containers"]}
    assert set(containers) == {"inference", "triton"}
    assert containers["triton"]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert inference["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert _env(containers["inference"])["LINESIGHT_TRITON_URL"] == "127.0.0.1:8001"
    config = _by_kind(docs, "ConfigMap")["ls-linesight-settings"]["data"]
    assert "LINESIGHT_TRITON_URL" not in config, "only the inference pods talk to Triton"
    assert config["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability.svc:4317"
    assert config["LINESIGHT_MES_ENDPOINT"] == "https://mes.plant.example/api/dispositions"
    assert not _by_kind(docs, "Secret"), "central uses the plant-managed secret"
    env_from = _pod_spec(deployments["ls-linesight-mes"])["containers"][0]["envFrom"]
    assert {"secretRef": {"name": "linesight-secrets"}} in env_from
    assert _by_kind(docs, "CronJob")["ls-linesight-retrain"]["spec"]["schedule"] == "30 2 * * *"
    assert _by_kind(docs, "NetworkPolicy") and _by_kind(docs, "Ingress")
    hpa = _by_kind(docs, "HorizontalPodAutoscaler")["ls-linesight-inference"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 12)


def test_capture_as_daemonset_takes_station_from_node() -> None:
    docs = render({"capture": {"mode": "daemonset"}})
    ds = _by_kind(docs, "DaemonSet")["ls-linesight-capture"]
    pod = _pod_spec(ds)
    assert pod["nodeSelector"] == {"linesight.io/camera": "true"}
    env = _env(pod["containers"][0])
    assert env["LINESIGHT_STATION"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    # Kubernetes expands $(LINESIGHT_STATION): each pod reads the profile named after its node.
    assert env["LINESIGHT_CAPTURE_PROFILE"] == "/etc/linesight/$(LINESIGHT_STATION).yaml"
    profiles = _by_kind(docs, "ConfigMap")["ls-linesight-capture-profile"]["data"]
    assert yaml.safe_load(profiles["station1.yaml"])["station"] == "station1"
    spool = {"path": "/var/lib/linesight-capture", "type": "DirectoryOrCreate"}
    assert {"name": "state", "hostPath": spool} in pod["volumes"]
    assert not any(n.startswith("ls-linesight-capture") for n in _by_kind(docs, "Deployment"))


def test_unknown_capture_mode_fails_with_its_name() -> None:
    with pytest.raises(helm.HelmError, match=r"capture\.mode must be deployment or daemonset"):
        render({"capture": {"mode": "sidecar"}})


def test_training_job_is_renamed_per_revision() -> None:
    """Job specs are immutable: an upgrade must create a new Job, not patch the old one."""
    values = {"training": {"run": {"job": {"enabled": True}, "args": ["--product", "default"]}}}
    first = _by_kind(render(values, revision=1), "Job")
    second = _by_kind(render(values, revision=2), "Job")
    assert set(first) == {"ls-linesight-train-1", "ls-linesight-nats-provision-1"}
    assert set(second) == {"ls-linesight-train-2", "ls-linesight-nats-provision-2"}
    container = _pod_spec(first["ls-linesight-train-1"])["containers"][0]
    assert container["command"] == ["linesight", "train"] and container["args"] == ["--product", "default"]
    assert "livenessProbe" not in container and "ports" not in container


def test_settings_change_rolls_the_pods() -> None:
    def checksum(docs: list[dict[str, Any]]) -> str:
        dep = _by_kind(docs, "Deployment")["ls-linesight-mes"]
        return str(dep["spec"]["template"]["metadata"]["annotations"]["checksum/settings"])

    assert checksum(render()) != checksum(render({"settings": {"logLevel": "DEBUG"}}))


def test_skaffold_builds_every_service_and_deploys_the_values_files() -> None:
    config = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
    artifacts = {a["image"]: a for a in config["build"]["artifacts"]}
    assert set(artifacts) == {"linesight-base"} | {f"linesight-{s}" for s in SERVICES}
    base = ROOT / artifacts["linesight-base"]["context"] / artifacts["linesight-base"]["docker"]["dockerfile"]
    base_text = base.read_text()
    assert "tools/gen_proto.py" in base_text, "the base image must generate the proto code"
    user = [line.split()[1] for line in base_text.splitlines() if line.startswith("USER ")]
    assert user and user[-1] not in {"root", "0", "0:0"}, f"{base} runs as root"
    for service in SERVICES:
        artifact = artifacts[f"linesight-{service}"]
        dockerfile = ROOT / artifact["context"] / artifact["docker"]["dockerfile"]
        assert dockerfile.is_file(), dockerfile
        text = dockerfile.read_text()
        assert f'"linesight.{service}"' in text, f"{dockerfile} does not run linesight.{service}"
        assert "FROM ${BASE}" in text and {"image": "linesight-base", "alias": "BASE"} in artifact["requires"]
        assert not [line for line in text.splitlines() if line.startswith("USER ")], (
            f"{dockerfile} resets USER"
        )
    profiles = {p["name"]: p for p in config["profiles"]}
    assert set(profiles) >= {"dev", "edge", "central"}
    for name in ("dev", "edge", "central"):
        releases = profiles[name]["deploy"]["helm"]["releases"]
        for release in releases:
            for values_file in release["valuesFiles"]:
                assert (ROOT / values_file).is_file(), values_file
            assert (ROOT / release["chartPath"] / "Chart.yaml").is_file()


def test_capture_station_gets_its_profile_and_a_persistent_spool() -> None:
    docs = render(
        {
            "capture": {
                "stations": [
                    {
                        "name": "station1",
                        "nodeSelector": {"h": "a"},
                        "profile": {"exposure_us": 900, "camera_serial": "S1"},
                    },
                    {"name": "station2", "nodeSelector": {"h": "b"}},
                ]
            }
        }
    )
    configs = _by_kind(docs, "ConfigMap")
    one = yaml.safe_load(configs["ls-linesight-capture-station1-profile"]["data"]["station.yaml"])
    two = yaml.safe_load(configs["ls-linesight-capture-station2-profile"]["data"]["station.yaml"])
    assert one["station"] == "station1" and one["exposure_us"] == 900 and one["camera_serial"] == "S1"
    assert two["station"] == "station2" and "exposure_us" not in two
    assert one["plant"] == "plant1" and one["genicam"]["cti"] == "/opt/gentl/producer.cti"
    assert set(_by_kind(docs, "PersistentVolumeClaim")) == {
        "ls-linesight-capture-station1-spool",
        "ls-linesight-capture-station2-spool",
    }
    pod = _pod_spec(_by_kind(docs, "Deployment")["ls-linesight-capture-station1"])
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["state"]["persistentVolumeClaim"] == {"claimName": "ls-linesight-capture-station1-spool"}
    assert volumes["gentl"]["hostPath"]["path"] == "/opt/gentl"
    container = pod["containers"][0]
    assert _env(container)["LINESIGHT_CAPTURE_PROFILE"] == "/etc/linesight/station.yaml"
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["profile"]["mountPath"] == "/etc/linesight" and mounts["gentl"]["readOnly"] is True


def test_dev_shape_replays_without_camera_hardware() -> None:
    docs = render(_values("dev"))
    capture = _pod_spec(_by_kind(docs, "Deployment")["ls-linesight-capture-station1"])
    assert "nodeSelector" not in capture and "gentl" not in {v["name"] for v in capture["volumes"]}
    profile = yaml.safe_load(
        _by_kind(docs, "ConfigMap")["ls-linesight-capture-station1-profile"]["data"]["station.yaml"]
    )
    assert profile["source"] == "replay" and "genicam" not in profile
    assert not _by_kind(docs, "HorizontalPodAutoscaler") and not _by_kind(docs, "PersistentVolumeClaim")
