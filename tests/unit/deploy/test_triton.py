"""Triton in Kubernetes: a sidecar of the inference pod, wired the way the inference service
writes and loads models (services/linesight/inference/app/triton_repo.py, backends/triton.py), running the
linesight-triton image (services/linesight/inference/triton.Dockerfile), which installs what the
python-backend model and the export loader import.

The chart half renders with helm-python-sdk (skipped like tests/unit/deploy/test_charts.py when it
is unusable); the image half reads the Dockerfile and the Python sources, no Docker needed.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import os
import re
import shlex
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from linesight.common.settings import Settings, check_environment
from linesight.inference.app import triton_repo
from linesight.inference.app.config import BackendKind, InferenceConfig, TritonDownPolicy
from tests.unit.deploy.test_charts import (
    CHART,
    HELM_PROBLEM,
    ROOT,
    TRITON_ON,
    _by_kind,
    _env,
    _pod_spec,
    _skip,
    _values,
    render,
)

DOCKERFILE = ROOT / "services" / "linesight" / "inference" / "triton.Dockerfile"
TRITON_SHAPES = ("default+triton", "dev+triton", "edge+triton", "central")
INFERENCE = "ls-linesight-inference"
# Put on sys.path by Triton's python backend itself.
PROVIDED_BY_TRITON = {"triton_python_backend_utils"}

Doc = dict[str, Any]


@pytest.fixture
def helm_ok() -> None:
    if HELM_PROBLEM:
        _skip(HELM_PROBLEM)


@pytest.fixture(scope="module", params=TRITON_SHAPES)
def triton_shape(request: pytest.FixtureRequest) -> tuple[str, list[Doc]]:
    if HELM_PROBLEM:
        _skip(HELM_PROBLEM)
    return request.param, render(_values(request.param))


def _inference_pod(docs: list[Doc]) -> Doc:
    return _pod_spec(_by_kind(docs, "Deployment")[INFERENCE])


def _named(pod: Doc) -> dict[str, Doc]:
    return {c["name"]: c for c in pod["containers"]}


def _mounts(container: Doc) -> dict[str, str]:
    return {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}


def _arg(container: Doc, flag: str) -> str:
    values = [a.split("=", 1)[1] for a in container["args"] if a.startswith(f"--{flag}=")]
    assert len(values) == 1, f"--{flag} given {len(values)} times: {container['args']}"
    return values[0]


def _pod_environment(docs: list[Doc], container: Doc) -> dict[str, str]:
    """The LINESIGHT_* environment the container starts with: settings ConfigMap, Secret, env."""
    env: dict[str, str] = dict(_by_kind(docs, "ConfigMap")["ls-linesight-settings"]["data"])
    for secret in _by_kind(docs, "Secret").values():
        env.update(secret.get("stringData", {}))
    env.update({k: v for k, v in _env(container).items() if isinstance(v, str)})
    return {k: v for k, v in env.items() if k.startswith("LINESIGHT_")}


# --- the chart ---------------------------------------------------------------------------------


def test_triton_is_a_sidecar_sharing_the_repository_and_shm(triton_shape: tuple[str, list[Doc]]) -> None:
    name, docs = triton_shape
    assert not [d for d in docs if "triton" in d["metadata"]["name"]], f"{name}: a standalone Triton object"
    pod = _inference_pod(docs)
    containers = _named(pod)
    assert list(containers) == ["inference", "triton"], name
    inference, triton = containers["inference"], containers["triton"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory", "/dev/shm must be memory-backed"
    assert volumes["dshm"]["emptyDir"]["sizeLimit"]
    assert "emptyDir" in volumes["triton-models"] and volumes["triton-models"]["emptyDir"]["sizeLimit"]
    assert _mounts(inference)["dshm"] == _mounts(triton)["dshm"] == "/dev/shm"
    repository = _mounts(triton)["triton-models"]
    assert _mounts(inference)["triton-models"] == repository
    writable = [m for m in inference["volumeMounts"] if m["name"] == "triton-models"]
    assert not writable[0].get("readOnly"), "the inference service writes the repository"
    # Triton serves exactly that directory, loads only what it is told to, and keeps inference and
    # model control on the pod's loopback.
    assert triton["command"] == ["tritonserver"]
    assert _arg(triton, "model-repository") == repository
    assert _arg(triton, "model-control-mode") == "explicit"
    assert _arg(triton, "http-address") == _arg(triton, "grpc-address") == "127.0.0.1"
    assert {p["name"] for p in triton["ports"]} == {"triton-metrics"}, "only metrics leave the pod"
    # One uid for both: the repository is inference's, the shared-memory regions are 0600.
    uid = pod["securityContext"]["runAsUser"]
    uids = {c["securityContext"].get("runAsUser", uid) for c in (inference, triton)}
    assert uids == {uid}, uids
    assert "/linesight-triton:" in triton["image"], "the stock NGC image cannot run LineSight models"


@pytest.mark.parametrize(
    ("backend", "policy"),
    [("triton_grpc", "failover"), ("triton_http", "stop"), ("triton_shm", "failover")],
)
def test_inference_reads_the_triton_settings_the_chart_sets(
    helm_ok: None, backend: str, policy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Names and values go through the inference service's own code (services/linesight/common/settings.py,
    services/linesight/inference/app/config.py, services/linesight/inference/service.py config_for),
    so a renamed setting fails here."""
    from linesight.inference.service import config_for

    values = {"triton": {"enabled": True, "backend": backend, "downPolicy": policy}}
    values["triton"] |= {"httpPort": 9100, "grpcPort": 9101, "metricsPort": 9102}
    docs = render(values)
    containers = _named(_inference_pod(docs))
    for key in [k for k in os.environ if k.startswith("LINESIGHT_")]:
        monkeypatch.delenv(key)
    for key, value in _pod_environment(docs, containers["inference"]).items():
        monkeypatch.setenv(key, value)
    check_environment()  # no LINESIGHT_* name that the settings do not know
    cfg = config_for(SimpleNamespace(settings=Settings()))
    triton = containers["triton"]
    assert cfg.backend == BackendKind(backend) and cfg.triton_down_policy == TritonDownPolicy(policy)
    assert cfg.triton_url == f"127.0.0.1:{_arg(triton, 'grpc-port')}" == "127.0.0.1:9101"
    assert cfg.triton_http_url == f"127.0.0.1:{_arg(triton, 'http-port')}" == "127.0.0.1:9100"
    assert cfg.triton_model_repository == Path(_arg(triton, "model-repository"))
    assert str(cfg.triton_model_repository) == _mounts(containers["inference"])["triton-models"]


def test_without_triton_inference_scores_in_process(helm_ok: None) -> None:
    docs = render()
    pod = _inference_pod(docs)
    assert list(_named(pod)) == ["inference"]
    assert {v["name"] for v in pod["volumes"]} == {"tmp", "state", "auth-keys"}  # no Triton repository
    env = _pod_environment(docs, pod["containers"][0])
    assert not {k for k in env if "TRITON" in k or k == "LINESIGHT_INFERENCE_BACKEND"}
    assert InferenceConfig.from_env(env).backend == BackendKind.IN_PROCESS


def test_triton_probes_use_its_health_endpoints_on_loopback(triton_shape: tuple[str, list[Doc]]) -> None:
    _, docs = triton_shape
    triton = _named(_inference_pod(docs))["triton"]
    port = _arg(triton, "http-port")
    expected = {"startupProbe": "live", "livenessProbe": "live", "readinessProbe": "ready"}
    for probe, endpoint in expected.items():
        command = triton[probe]["exec"]["command"]
        assert command[0] == "curl" and "-fsS" in command, command  # -f: non-2xx fails the probe
        assert command[-1] == f"http://127.0.0.1:{port}/v2/health/{endpoint}", command
        assert triton[probe]["periodSeconds"] > 0
    # A model that failed to load must not take the pod out of its Service.
    assert _arg(triton, "strict-readiness") == "false"
    assert "curl" in _run_commands_text(), "the probes run curl: the image must install it"


def test_triton_gpu_limit_and_scheduling_on_gpu_nodes(helm_ok: None) -> None:
    gpu_taint = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    line_taint = {"key": "line", "operator": "Equal", "value": "1", "effect": "NoSchedule"}
    docs = render(
        {
            "inference": {"nodeSelector": {"zone": "hall-a"}, "tolerations": [line_taint]},
            "triton": {
                "enabled": True,
                "gpus": 2,
                "nodeSelector": {"nvidia.com/gpu.present": "true"},
                "tolerations": [gpu_taint],
            },
        }
    )
    pod = _inference_pod(docs)
    containers = _named(pod)
    assert containers["triton"]["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert containers["triton"]["resources"]["limits"]["memory"]
    assert "nvidia.com/gpu" not in containers["inference"]["resources"].get("limits", {})
    assert "NVIDIA_VISIBLE_DEVICES" not in _env(containers["triton"]), "the device plugin sets it"
    assert pod["nodeSelector"] == {"zone": "hall-a", "nvidia.com/gpu.present": "true"}
    assert pod["tolerations"] == [line_taint, gpu_taint]

    cpu_only = _named(_inference_pod(render(TRITON_ON)))["triton"]
    assert "nvidia.com/gpu" not in cpu_only["resources"].get("limits", {})
    assert _env(cpu_only)["NVIDIA_VISIBLE_DEVICES"] == "void"


def test_triton_metrics_are_published_for_prometheus(helm_ok: None) -> None:
    docs = render(TRITON_ON | {"networkPolicy": {"enabled": True}})
    triton = _named(_inference_pod(docs))["triton"]
    assert _arg(triton, "metrics-address") == "0.0.0.0"
    port = int(_arg(triton, "metrics-port"))
    assert {"name": "triton-metrics", "containerPort": port, "protocol": "TCP"} in triton["ports"]
    service_ports = {p["name"]: p for p in _by_kind(docs, "Service")[INFERENCE]["spec"]["ports"]}
    assert service_ports["triton-metrics"]["port"] == port
    assert service_ports["triton-metrics"]["targetPort"] == "triton-metrics"
    policy = _by_kind(docs, "NetworkPolicy")["ls-linesight"]["spec"]
    http_rule = next(rule for rule in policy["ingress"] if "ports" in rule)
    assert {"protocol": "TCP", "port": port} in http_rule["ports"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"inference": {"enabled": False}}, r"triton\.enabled needs inference\.enabled"),
        ({"triton": {"backend": "in_process"}}, r"triton\.backend must be triton_grpc, triton_http or"),
        ({"triton": {"downPolicy": "retry"}}, r"triton\.downPolicy must be failover or stop"),
        ({"triton": {"modelRepository": "s3://minio:9000/models/triton"}}, r"triton\.modelRepository is no"),
        ({"triton": {"grpcPort": 17011}}, r"must all differ"),
    ],
)
def test_triton_values_that_cannot_work_fail_with_the_reason(
    helm_ok: None, values: dict[str, Any], message: str
) -> None:
    import helm_python as helm

    merged = {"triton": {"enabled": True, **values.get("triton", {})}}
    merged |= {k: v for k, v in values.items() if k != "triton"}
    with pytest.raises(helm.HelmError, match=message):
        render(merged)


# --- the image ---------------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending = f"{pending} {line}" if pending else line
        if pending.endswith("\\"):
            pending = pending[:-1]
            continue
        word, _, rest = pending.partition(" ")
        out.append((word.upper(), rest.strip()))
        pending = ""
    return out


def _build_args() -> dict[str, str]:
    args = {}
    for word, rest in _instructions():
        if word == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            args[key] = value
    return args


def _run_commands_text() -> str:
    return "\n".join(rest for word, rest in _instructions() if word == "RUN")


def _pip_commands() -> list[list[str]]:
    """Every `pip ...` command of the RUN instructions, ARG defaults substituted, as arguments."""
    args = _build_args()
    commands: list[list[str]] = []
    for word, rest in _instructions():
        if word != "RUN":
            continue
        text = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), rest)
        current: list[str] = []
        for token in [*shlex.split(text), "&&"]:
            if token in {"&&", "||", ";", "|"}:
                while current and current[0].startswith("--"):  # RUN --mount=...
                    current.pop(0)
                if current[:1] == ["pip"]:
                    commands.append(current)
                current = []
            else:
                current.append(token)
    return commands


def _image_requirements() -> dict[str, Requirement]:
    """Distributions the image keeps (installed, not uninstalled again) by canonical name."""
    kept: dict[str, Requirement] = {}
    for command in _pip_commands():
        names = [t for t in command[2:] if not t.startswith("-") and t != "."]
        if command[1] == "install":
            for spec in names:
                req = Requirement(spec)
                kept[str(canonicalize_name(req.name))] = req
        elif command[1] == "uninstall":
            for spec in names:
                kept.pop(str(canonicalize_name(spec)), None)
    return kept


def _covered(import_names: set[str]) -> dict[str, list[str]]:
    """Third-party import names -> installed distributions providing them, for names the image
    does not install (empty: everything is covered)."""
    image = set(_image_requirements())
    providers = importlib.metadata.packages_distributions()
    missing = {}
    for name in sorted(import_names):
        dists = [str(canonicalize_name(d)) for d in providers.get(name, [])]
        if not image & set(dists):
            missing[name] = dists
    return missing


class _Imports(ast.NodeVisitor):
    """Absolute module names a module imports, at module level and in functions, except under
    `if TYPE_CHECKING:` and in the functions named in `skip`."""

    def __init__(self, package: str, skip: set[str]) -> None:
        self.package = package
        self.skip = skip
        self.names: set[str] = set()

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        ):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        if node.name not in self.skip:
            self.generic_visit(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        if node.name not in self.skip:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.names.update(alias.name for alias in node.names)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            base = importlib.util.resolve_name("." * node.level + base, self.package)
        self.names.add(base)
        self.names.update(f"{base}.{alias.name}" for alias in node.names)  # maybe submodules


def _third_party(names: set[str]) -> set[str]:
    tops = {n.split(".")[0] for n in names}
    return {t for t in tops if t not in sys.stdlib_module_names and t != "__future__"}


def _find(module: str) -> Any:
    try:
        return importlib.util.find_spec(module)
    except (ImportError, ValueError):  # "pkg.module.CONSTANT": not a module
        return None


def _loader_imports(loader_spec: str) -> tuple[set[str], set[str]]:
    """(linesight modules run, third-party top-level names they import) for a loader spec."""
    start = loader_spec.partition(":")[0]
    parts = start.split(".")
    todo = [".".join(parts[: i + 1]) for i in range(len(parts))]  # packages' __init__ run too
    seen: set[str] = set()
    third_party: set[str] = set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        spec = _find(module)
        if spec is None or spec.origin is None:
            continue
        seen.add(module)
        package = module if spec.submodule_search_locations is not None else module.rpartition(".")[0]
        visitor = _Imports(package, set())
        visitor.visit(ast.parse(Path(spec.origin).read_text(), spec.origin))
        third_party |= _third_party({n for n in visitor.names if not n.startswith("linesight")})
        todo += [n for n in visitor.names if n == "linesight" or n.startswith("linesight.")]
    return seen, third_party


def test_triton_image_installs_what_model_py_imports() -> None:
    """triton_model/model.py runs inside Triton's python backend: every module it imports must be
    in the image, whether at the top of the file or inside a function."""
    tree = ast.parse(triton_repo.MODEL_PY.read_text(), str(triton_repo.MODEL_PY))
    visitor = _Imports("", set())
    visitor.visit(tree)
    imported = _third_party(visitor.names) - PROVIDED_BY_TRITON
    assert "numpy" in imported, "parsing model.py found no numpy import: the test is broken"
    assert _covered(imported) == {}, f"{DOCKERFILE.name} misses what model.py imports"
    numpy = _image_requirements()["numpy"]
    assert not numpy.specifier.contains("2.0.0"), "Triton 2.51's python backend needs numpy<2"


def test_triton_image_installs_what_the_export_loader_imports() -> None:
    """model.py imports the loader named in loader.txt (InferenceConfig.model_loader) from the
    installed linesight package: that module and what it imports must run on the image's
    packages, without torch."""
    loader = InferenceConfig().model_loader
    modules, imported = _loader_imports(loader)
    assert loader.partition(":")[0] in modules
    assert "onnxruntime" in imported, f"{loader} no longer imports onnxruntime? the test is broken"
    assert "torch" not in imported, f"{loader} pulls in torch: {sorted(modules)}"
    assert _covered(imported) == {}, f"{DOCKERFILE.name} misses what {sorted(modules)} import"
    commands = _pip_commands()
    assert ["pip", "install", "--no-deps", "."] in commands, "the linesight package must be installed"
    assert ("COPY", "services ./services") in _instructions()


def test_triton_image_pins_match_pyproject_and_python() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {str(canonicalize_name(r.name)): r for r in map(Requirement, project["dependencies"])}
    for name, req in _image_requirements().items():
        if name in declared:
            assert req.specifier == declared[name].specifier, (
                f"{name}: image {req}, pyproject {declared[name]}"
            )
    # The python-backend stub and the interpreter are the one Python LineSight supports.
    stubs = re.findall(r"python_backend_stubs/(\d+\.\d+)/triton_python_backend_stub", _run_commands_text())
    pythons = set(re.findall(r"\bpython(\d+\.\d+)\b", _run_commands_text()))
    assert len(stubs) == 1 and pythons == {stubs[0]}, (stubs, pythons)
    supported = Requirement(f"python{project['requires-python']}").specifier
    assert supported.contains(f"{stubs[0]}.0"), f"stub for Python {stubs[0]}, project needs {supported}"


def test_triton_image_is_nvidia_triton_run_as_the_pods_uid() -> None:
    instructions = _instructions()
    args = _build_args()
    base = next(rest for word, rest in instructions if word == "FROM")
    assert re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base).startswith("nvcr.io/nvidia/tritonserver:")
    users = [rest for word, rest in instructions if word == "USER"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    pod_uid = values["podSecurityContext"]["runAsUser"]
    assert users[-1] == f"{pod_uid}:{values['podSecurityContext']['runAsGroup']}", users
    assert values["securityContext"]["runAsUser"] == pod_uid
    assert ("ENTRYPOINT", '["tritonserver"]') in instructions


def test_skaffold_builds_the_triton_image_where_the_chart_runs_it() -> None:
    config = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
    assert "linesight-triton" not in {a["image"] for a in config["build"]["artifacts"]}, (
        "dev/edge builds must not pull the multi-GB NGC image"
    )
    central = next(p for p in config["profiles"] if p["name"] == "central")
    added = [p["value"] for p in central["patches"] if p["op"] == "add" and p["path"] == "/build/artifacts/-"]
    triton = next(a for a in added if a["image"] == "linesight-triton")
    assert ROOT / triton["context"] / triton["docker"]["dockerfile"] == DOCKERFILE
    for release in central["deploy"]["helm"]["releases"]:
        templates = release["setValueTemplates"]
        assert templates["triton.image"] == "{{.IMAGE_FULLY_QUALIFIED_linesight_triton}}"
        assert templates["inference.image"] == "{{.IMAGE_FULLY_QUALIFIED_linesight_inference}}"
    assert _values("central")["triton"]["enabled"] is True


def test_explicit_triton_backend_takes_the_shared_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """`LINESIGHT_INFERENCE_BACKEND=triton_http` with only the shared LINESIGHT_TRITON_URL used to
    fail validation before the URL was merged in; the service must start with it."""
    from linesight.inference.service import config_for

    for key in [k for k in os.environ if k.startswith("LINESIGHT_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("LINESIGHT_INFERENCE_BACKEND", "triton_http")
    monkeypatch.setenv("LINESIGHT_TRITON_URL", "10.0.0.7:8001")
    with pytest.raises(ValueError, match="needs triton_url"):
        InferenceConfig.from_env()  # alone, the inference config lacks the URL
    cfg = config_for(SimpleNamespace(settings=Settings()))
    assert cfg.backend == BackendKind.TRITON_HTTP and cfg.triton_url == "10.0.0.7:8001"
    monkeypatch.delenv("LINESIGHT_TRITON_URL")
    with pytest.raises(ValueError, match="needs triton_url"):
        config_for(SimpleNamespace(settings=Settings()))  # still validated once, after merging
