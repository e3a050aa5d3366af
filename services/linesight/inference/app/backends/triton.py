"""Scoring on a Triton server through tritonclient: gRPC, HTTP, or gRPC with shared-memory inputs.

The model repository is written on this host (linesight.inference.app.triton_repo) and the server
is told to load it with explicit model control, so a new version loads beside the serving one and
is addressed by its integer version. Every response carries the LineSight model version it was
produced by, and a mismatch is an error, never a silently mislabelled result.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from linesight.inference.app import triton_repo
from linesight.inference.app.backends.base import BackendUnavailable, InferenceFailed
from linesight.inference.app.bundle import ModelBundle, ModelLoadError
from linesight.inference.app.config import BackendKind

log = logging.getLogger(__name__)

_UNREACHABLE_MARKERS = (
    "connection refused",
    "failed to connect",
    "socket closed",
    "connect failed",
    "deadline exceeded",
    "connection reset",
    "broken pipe",
    "timed out",
)


# tritonclient ships no type information; the alias says what travels where mypy cannot.
TritonGrpcClient: TypeAlias = Any

# Triton answers, but no longer has the model (it was restarted: explicit model control loads
# nothing by itself) or no longer knows our shared-memory region: load / register again, retry.
_LOST_MODEL_MARKERS = ("unknown model", "is not found", "not ready", "unavailable model")
_LOST_SHM_MARKERS = ("shared memory region", "shared_memory_region")


def _is_unreachable(exc: BaseException) -> bool:
    """Server gone (retry / fail over) as opposed to a request the server rejected."""
    if isinstance(exc, ConnectionError | OSError | TimeoutError):
        return True
    if isinstance(exc, InferenceServerException):
        status = str(exc.status() or "")
        if status in ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED"):
            return True
        if status.startswith("StatusCode."):
            return False
    return any(m in str(exc).lower() for m in _UNREACHABLE_MARKERS)


def _prediction(**kw: Any) -> Any:
    from linesight.vision.components.scoring import Prediction

    return Prediction(**kw)


class _ShmPool:
    """One system shared-memory input region per thread, grown on demand and registered once."""

    def __init__(self, client: TritonGrpcClient) -> None:
        self._client = client
        self._handle: Any = None
        self._name = ""
        self._size = 0
        self._seq = 0
        self._registered = False

    def place(self, batch: np.ndarray) -> tuple[str, int]:
        need = int(batch.nbytes)
        if need > self._size:
            self.close()
            self._seq += 1
            self._name = f"linesight_in_{os.getpid()}_{id(self)}_{self._seq}"
            size = max(need, 1 << 20)
            self._handle = shm.create_shared_memory_region(self._name, "/" + self._name, size)
            self._size = size
        if not self._registered:
            self._client.register_system_shared_memory(self._name, "/" + self._name, self._size)
            self._registered = True
        shm.set_shared_memory_region(self._handle, [np.ascontiguousarray(batch)])
        return self._name, need

    def forget_registration(self) -> None:
        """The server no longer knows the region (it restarted): register it again on next use."""
        try:
            self._client.unregister_system_shared_memory(self._name)
        except Exception as exc:  # expected: the server does not know it
            log.debug("unregister %s: %s", self._name, exc)
        self._registered = False

    def close(self) -> None:
        if self._handle is None:
            return
        try:
            self._client.unregister_system_shared_memory(self._name)
        except Exception as exc:  # server gone: the region is ours to free regardless
            log.debug("unregister %s: %s", self._name, exc)
        shm.destroy_shared_memory_region(self._handle)
        self._handle, self._size, self._registered = None, 0, False


class TritonSession:
    """One integer version of the product's Triton model."""

    def __init__(self, backend: TritonBackend, bundle: ModelBundle, name: str, number: int) -> None:
        self.bundle = bundle
        self.version = bundle.version
        self.model_name = name
        self.number = number
        self._backend = backend

    @property
    def backend_name(self) -> str:
        return str(self._backend.kind)

    def predict(self, batch: np.ndarray) -> list[Any]:
        return self._backend.infer(self, batch)

    def close(self) -> None:
        self._backend.retire(self)


class TritonBackend:
    """Talks to one Triton server; clients are per thread (the HTTP client is gevent-based)."""

    def __init__(
        self,
        kind: BackendKind,
        url: str,
        repository: Path,
        *,
        loader_spec: str,
        max_batch: int = 16,
        max_queue_delay_us: int = 2000,
        timeout_s: float = 10.0,
        http_url: str | None = None,
        threads: int = 0,
    ) -> None:
        if kind == BackendKind.IN_PROCESS:
            raise ValueError("TritonBackend needs a triton_* backend kind")
        self.kind = kind
        self.name = str(kind)
        self.url = url  # gRPC host:port; model control always goes over gRPC
        if kind == BackendKind.TRITON_HTTP and not http_url:
            raise ValueError("triton_http needs http_url (Triton's HTTP host:port)")
        self.http_url = http_url or ""
        self.repository = Path(repository)
        self.loader_spec = loader_spec
        self.max_batch = max_batch
        self.max_queue_delay_us = max_queue_delay_us
        self.timeout_s = timeout_s
        self.threads = threads  # intra-op threads of the model inside Triton; 0 = the loader's default
        self._local = threading.local()
        self._pools: list[_ShmPool] = []
        self._control_lock = threading.Lock()

    # --- clients -------------------------------------------------------------------------------
    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            if self.kind == BackendKind.TRITON_HTTP:
                client = httpclient.InferenceServerClient(
                    self.http_url, connection_timeout=self.timeout_s, network_timeout=self.timeout_s
                )
            else:
                client = grpcclient.InferenceServerClient(self.url)
            self._local.client = client
        return client

    def _control(self) -> TritonGrpcClient:
        # Model control always over gRPC on the control thread's own client.
        client = getattr(self._local, "control", None)
        if client is None:
            client = grpcclient.InferenceServerClient(self.url)
            self._local.control = client
        return client

    def is_live(self) -> bool:
        try:
            return bool(self._control().is_server_live(client_timeout=2.0))
        except Exception:
            return False

    # --- model lifecycle -----------------------------------------------------------------------
    def load(self, bundle: ModelBundle) -> TritonSession:
        """Add the export as the next version and load it beside the serving ones."""
        with self._control_lock:
            if not self.is_live():
                raise BackendUnavailable(f"Triton at {self.url} is not reachable")
            name, number = triton_repo.add_version(
                self.repository,
                bundle,
                loader_spec=self.loader_spec,
                max_batch=self.max_batch,
                max_queue_delay_us=self.max_queue_delay_us,
                threads=self.threads,
            )
            client = self._control()
            try:
                client.load_model(name, client_timeout=120.0)
                ready = client.is_model_ready(name, str(number))
            except InferenceServerException as exc:
                if _is_unreachable(exc):
                    raise BackendUnavailable(f"Triton at {self.url}: {exc}") from exc
                ready, error = False, str(exc)
            else:
                error = "" if ready else "not ready after load"
            if not ready:
                # Take the broken version out again so the versions already serving stay loaded.
                triton_repo.remove_version(self.repository, name, number)
                try:
                    client.load_model(name, client_timeout=120.0)
                except InferenceServerException as exc:
                    log.warning("reloading %s without version %d failed: %s", name, number, exc)
                raise ModelLoadError(f"Triton could not load {bundle.version} as {name}/{number}: {error}")
            log.info("Triton loaded %s version %d (%s)", name, number, bundle.version)
            return TritonSession(self, bundle, name, number)

    def retire(self, session: TritonSession) -> None:
        """Remove a version that no longer serves (in-flight requests on it finish first)."""
        with self._control_lock:
            triton_repo.remove_version(self.repository, session.model_name, session.number)
            try:
                if triton_repo.versions(self.repository, session.model_name):
                    self._control().load_model(session.model_name, client_timeout=120.0)
                else:  # the last version: Triton refuses a model with none, so unload it
                    self._control().unload_model(session.model_name, client_timeout=60.0)
            except InferenceServerException as exc:
                log.warning("retiring %s/%d: %s", session.model_name, session.number, exc)

    # --- scoring -------------------------------------------------------------------------------
    def infer(self, session: TritonSession, batch: np.ndarray) -> list[Any]:
        batch = np.ascontiguousarray(batch, dtype=np.uint8)
        recovered: set[str] = set()  # each recovery at most once per batch
        while True:
            try:
                result = self._infer(session, batch)
                break
            except InferenceServerException as exc:
                if _is_unreachable(exc):
                    raise BackendUnavailable(f"Triton at {self.url}: {exc}") from exc
                text = str(exc).lower()
                if (
                    "shm" not in recovered
                    and self.kind == BackendKind.TRITON_SHM
                    and any(m in text for m in _LOST_SHM_MARKERS)
                ):
                    recovered.add("shm")
                    self._local.pool.forget_registration()
                    continue
                if "model" not in recovered and any(m in text for m in _LOST_MODEL_MARKERS):
                    recovered.add("model")
                    self._reload(session)
                    continue
                raise InferenceFailed(
                    f"Triton {session.model_name}/{session.number}: {exc.message()}"
                ) from exc
            except (ConnectionError, OSError, TimeoutError) as exc:
                raise BackendUnavailable(f"Triton at {self.url}: {type(exc).__name__}: {exc}") from exc
        return self._predictions(session, result, len(batch))

    def _reload(self, session: TritonSession) -> None:
        """Triton answers without our model (restarted): load the version again from the repository.

        BackendUnavailable when that fails: the frames wait (policy stop) or fail over, and the
        next batch tries again; a frame is never failed for Triton's restart.
        """
        name, number = session.model_name, session.number
        with self._control_lock:
            if number not in triton_repo.versions(self.repository, name):
                raise InferenceFailed(f"Triton version {name}/{number} of {session.version} is gone")
            client = self._control()
            try:
                client.load_model(name, client_timeout=120.0)
                ready = client.is_model_ready(name, str(number))
            except InferenceServerException as exc:
                raise BackendUnavailable(f"Triton at {self.url} cannot load {name}/{number}: {exc}") from exc
            if not ready:
                raise BackendUnavailable(f"Triton at {self.url} has not loaded {name}/{number} again")
        log.warning("Triton had lost %s/%d (%s; restarted?): loaded it again", name, number, session.version)

    def _infer(self, session: TritonSession, batch: np.ndarray) -> Any:
        client = self._client()
        version = str(session.number)
        if self.kind == BackendKind.TRITON_HTTP:
            hin = httpclient.InferInput(triton_repo.INPUT, list(batch.shape), "UINT8")
            hin.set_data_from_numpy(batch, binary_data=True)
            houts = [httpclient.InferRequestedOutput(n, binary_data=True) for n in triton_repo.OUTPUTS]
            return client.infer(session.model_name, [hin], model_version=version, outputs=houts)
        gin = grpcclient.InferInput(triton_repo.INPUT, list(batch.shape), "UINT8")
        if self.kind == BackendKind.TRITON_SHM:
            pool = getattr(self._local, "pool", None)
            if pool is None:
                pool = self._local.pool = _ShmPool(client)
                self._pools.append(pool)
            region, size = pool.place(batch)
            gin.set_shared_memory(region, size)
        else:
            gin.set_data_from_numpy(batch)
        gouts = [grpcclient.InferRequestedOutput(n) for n in triton_repo.OUTPUTS]
        return client.infer(
            session.model_name, [gin], model_version=version, outputs=gouts, client_timeout=self.timeout_s
        )

    def _predictions(self, session: TritonSession, result: Any, n: int) -> list[Any]:
        scores = result.as_numpy("SCORES").reshape(n, 3)
        heat = result.as_numpy("HEATMAP")
        infos = [
            json.loads(v.decode() if isinstance(v, bytes) else str(v))
            for v in result.as_numpy("INFO").ravel()
        ]
        served = {str(i.get("model_version")) for i in infos}
        if served != {session.version}:
            raise InferenceFailed(
                f"Triton {session.model_name}/{session.number} answered as {sorted(served)}, "
                f"expected {session.version}"
            )
        return [
            _prediction(
                anomaly_score=float(scores[i, 0]),
                class_probs={str(k): float(v) for k, v in infos[i].get("class_probs", {}).items()},
                heatmap=heat[i],
                defect_probability=float(scores[i, 1]),
                defect_threshold=float(scores[i, 2]),
                top_class=str(infos[i].get("top_class", "good")),
                provisional_classes=tuple(str(c) for c in infos[i].get("provisional_classes", ())),
                provisional_examples={
                    str(k): int(v) for k, v in infos[i].get("provisional_examples", {}).items()
                },
                min_examples=int(infos[i].get("min_examples", 0)),
            )
            for i in range(n)
        ]

    def close(self) -> None:
        for pool in self._pools:
            pool.close()
        self._pools.clear()


def wait_until_live(backend: TritonBackend, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if backend.is_live():
            return True
        time.sleep(0.2)
    return False
