"""Embedded Triton Inference Server, from the `nvidia-pytriton` wheel (Triton 2.51 + python backend).

The wheel is meant to be driven by PyTriton, so running its `tritonserver` directly needs a little
assembly: the python backend must find its stub binary for *our* interpreter
next to `libtriton_python.so`, the stub needs our `libpython` and the wheel's bundled libraries on
`LD_LIBRARY_PATH`, and it starts the `python` found first on `PATH`, which must be the venv's so
models can import numpy, onnxruntime and linesight. The wheel has no onnxruntime backend, which is
why LineSight serves its models as python-backend models (linesight.inference.app.triton_repo).
CUDA/NVML warnings in the log are harmless on CPU-only machines.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import sysconfig
import urllib.error
import urllib.request
from pathlib import Path

from linesight.common.embedded.process import EmbeddedError, ManagedProcess
from linesight.common.settings import Settings


def pytriton_server_dir() -> Path:
    """`pytriton/tritonserver` inside the installed nvidia-pytriton wheel (found without importing it)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedError(
            "nvidia-pytriton is not installed: pip install -e '.[triton]' (it ships tritonserver)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    if not (path / "bin" / "tritonserver").exists():
        raise EmbeddedError(f"tritonserver binary missing under {path}; reinstall nvidia-pytriton==0.7.0")
    return path


def _library_path(server_dir: Path) -> str:
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    wheel_libs = server_dir.parent.parent / "nvidia_pytriton.libs"
    parts = [p for p in (libdir, str(wheel_libs), os.environ.get("LD_LIBRARY_PATH", "")) if p]
    return ":".join(parts)


class TritonServer(ManagedProcess):
    """tritonserver with explicit model control over a model repository under state_dir/triton."""

    name = "triton"
    start_timeout = 120.0
    stop_timeout = 15.0  # the server itself gives in-flight requests --exit-timeout-secs=5

    def __init__(
        self,
        state_dir: Path,
        *,
        http_port: int,
        grpc_port: int,
        metrics_port: int,
        host: str = "127.0.0.1",
        model_repository: Path | None = None,
        load_models: tuple[str, ...] = (),
    ) -> None:
        super().__init__(state_dir, host)
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.metrics_port = metrics_port
        self.model_repository = Path(model_repository or self.data_dir / "models").absolute()
        self.load_models = load_models
        self._server_dir = pytriton_server_dir()

    @classmethod
    def from_settings(cls, settings: Settings, *, model_repository: Path | None = None) -> TritonServer:
        return cls(
            settings.state_dir,
            http_port=settings.triton_http_port,
            grpc_port=settings.triton_grpc_port,
            metrics_port=settings.triton_metrics_port,
            host=settings.host,
            model_repository=model_repository,
        )

    # --- addresses ------------------------------------------------------------------------------
    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def backend_dir(self) -> Path:
        return self.data_dir / "backends"

    def ports(self) -> dict[str, int]:
        return {
            "LINESIGHT_TRITON_HTTP_PORT": self.http_port,
            "LINESIGHT_TRITON_GRPC_PORT": self.grpc_port,
            "LINESIGHT_TRITON_METRICS_PORT": self.metrics_port,
        }

    # --- life cycle -----------------------------------------------------------------------------
    def prepare(self) -> None:
        """Assemble a backend directory whose python backend has the stub for this interpreter."""
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = self._server_dir / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.exists():
            raise EmbeddedError(f"nvidia-pytriton ships no python backend stub for Python {version} ({stub})")
        target = self.backend_dir / "python" / stub.name
        if not target.exists():
            shutil.rmtree(self.backend_dir, ignore_errors=True)
            shutil.copytree(self._server_dir / "backends", self.backend_dir)
            shutil.copy2(stub, target)
            target.chmod(0o755)
        self.model_repository.mkdir(parents=True, exist_ok=True)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = _library_path(self._server_dir)
        # The stub runs `python` from PATH: it must be ours so models see our site-packages.
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        return env

    def command(self) -> list[str]:
        cmd = [
            str(self._server_dir / "bin" / "tritonserver"),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={self.backend_dir}",
            "--model-control-mode=explicit",
            f"--http-address={self.host}", f"--http-port={self.http_port}",
            f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}",
            "--exit-timeout-secs=5",
            "--log-verbose=0",
        ]  # fmt: skip
        cmd += [f"--load-model={m}" for m in self.load_models]
        return cmd

    def is_healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False


def start_triton(
    settings: Settings, *, model_repository: Path | None = None, timeout: float | None = None
) -> TritonServer:
    """Start Triton on the settings' ports and wait until it answers; `.stop()` ends it."""
    server = TritonServer.from_settings(settings, model_repository=model_repository)
    server.start(timeout)
    return server
