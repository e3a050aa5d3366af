"""Inference-service tuning: backend choice, micro-batching, backpressure alarms, failover.

The shared `Settings` describe where things are (bus, S3, Triton URL); this says how the service
behaves. Values come from `LINESIGHT_INFERENCE_*` variables through `InferenceConfig.from_env`, so
the chart can tune a station group without code changes.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from linesight.common.backoff import Backoff

ENV_PREFIX = "LINESIGHT_INFERENCE_"
_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")


class BackendKind(StrEnum):
    """Which runtime scores frames (ModelInfo.backend names the same values)."""

    IN_PROCESS = "in_process"
    TRITON_GRPC = "triton_grpc"
    TRITON_HTTP = "triton_http"
    TRITON_SHM = "triton_shm"  # gRPC with inputs in system shared memory (Triton on this host)


class TritonDownPolicy(StrEnum):
    """What to do when Triton cannot be reached."""

    FAILOVER = "failover"  # score in-process until Triton answers again
    STOP = "stop"  # leave frames on the bus (nak), raise an alarm; nothing is scored meanwhile


@dataclass(frozen=True)
class InferenceConfig:
    """How the inference service scores frames; defaults suit the embedded stack on 2 cores."""

    backend: BackendKind = BackendKind.IN_PROCESS
    triton_url: str = ""  # host:port of Triton's gRPC endpoint (model control always uses it)
    triton_http_url: str = ""  # host:port of Triton's HTTP endpoint, for backend triton_http
    triton_model_repository: Path | None = None  # the repository Triton serves (same host)
    triton_down_policy: TritonDownPolicy = TritonDownPolicy.FAILOVER
    triton_timeout_s: float = 10.0
    # Micro-batching across stations.
    max_batch: int = 16
    max_wait_ms: float = 5.0
    # Backpressure: frames waiting for the model, and how old the oldest may get before an alarm.
    max_queue: int = 256
    oldest_frame_alarm_s: float = 2.0
    # Consumers: one durable per station group; `consumers` pull loops each hold one frame in flight.
    station_group: str = "all"
    stations: tuple[str, ...] = ()  # "line/station" entries; empty = every station of the plant
    consumers: int = 32  # 16 left the model half idle on a burst: frames in decision/publish
    # A frame held by a replica that died comes back to a live one after this long (a slow but
    # live handler keeps it with in-progress acks). Half the line's 5 s reject window, so a
    # redelivered frame still gets its disposition inside the window; 30 s meant ~60 parts
    # further down a 120 ppm line, past any reject gate. LINESIGHT_INFERENCE_ACK_WAIT_S.
    ack_wait_s: float = 2.5
    # A dependency outage (S3, NATS, Triton under `stop`) must not dead-letter frames: the frame is
    # nak'ed with a delay of retry_base_s x 2^(delivery-1), at most retry_max_s, and redelivered up
    # to max_deliver times (defaults: 1, 2, 4, 8, 16, 30, 30, ... s; 60 deliveries ~ 28 min).
    max_deliver: int = 60
    retry_base_s: float = 1.0
    retry_max_s: float = 30.0
    # A handler failure that is neither an outage nor bad input (a bug) dead-letters the frame
    # after this many deliveries instead of retrying for max_deliver.
    max_failures: int = 5
    # Where the first model comes from before any ModelPublished (optional).
    model_dir: Path | None = None
    work_dir: Path = Path(".linesight/inference")
    shadow: bool = True  # score candidate models too and publish on the shadow subject
    store_heatmaps: bool = True
    # Longer side of the stored heatmap PNG (aspect kept; 0 = the frame's size). The map holds the
    # model's patch grid, so 512 px keeps every detail of it while a 5 MP camera no longer costs a
    # 5 MP PNG per frame. Regions in the result stay in camera pixels either way.
    heatmap_max_side: int = 512
    model_loader: str = "linesight.vision.export:ExportedModel"  # module:attr with .load(dir)
    # The model's intra-op threads (onnxruntime), in-process and inside Triton; 0 = the loader's
    # default (2). On 2 shared cores 1 wins: 2 threads spin-wait against the per-frame work and
    # cost ~10 ms more CPU per image (bench_inference: 42-45 -> 33-35 ms, p99 at 4 stations -40 %).
    threads: int = 1
    cpu_threads: int = 2  # threads for per-frame decode, decision and heatmap PNG (not the model)
    # BLAS (OpenBLAS, numpy) threads of this process, e.g. PatchCore's kNN in the model thread;
    # 0 = keep. Its spinning workers slowed model and decisions by ~25 % when both ran at once.
    # Applied at start and again after each in-process model load (scipy's BLAS comes with it).
    blas_threads: int = 1
    opencv_threads: int = 1  # cv2.setNumThreads for this process (frames already run in parallel); 0 = keep
    golden_margin: float = 1.05  # recalibrated threshold = margin x highest golden-sample score
    # Review routing (routing.py): a seeded audit share of automatic calls per station, and a
    # token bucket per station on routings for learning (audit, novel, ...): `review_rate_per_min`
    # sustained, `review_burst` at once; 0 = no cap. Per-station overrides as JSON '{"st1": 0.1}'.
    # The engine's selection thresholds as JSON ('{"band_logit": 1.0, "anomaly_high": 3.0}'). The
    # audit sample is off by default here because labeling samples 2 % itself (its audit_share):
    # configure one of the two.
    review_selection: dict[str, Any] = field(default_factory=dict)
    review_audit_rate: float = 0.0
    review_audit_rate_by_station: dict[str, float] = field(default_factory=dict)
    review_audit_seed: str = "linesight"
    review_rate_per_min: float = 0.0
    review_rate_by_station: dict[str, float] = field(default_factory=dict)
    review_burst: int = 20
    # Drift monitor (drift.py): frames per station window compared with the release baseline
    # (0 = off), and the PSI above which a distribution counts as shifted.
    drift_window: int = 200
    drift_psi_threshold: float = 0.25

    @classmethod
    def from_env(
        cls, environ: dict[str, str] | None = None, *, validate: bool = True, **overrides: object
    ) -> InferenceConfig:
        """Read `LINESIGHT_INFERENCE_<FIELD>` variables; unknown ones are an error, not ignored.

        ``validate=False`` lets a caller merge shared settings (LINESIGHT_TRITON_URL) first and
        validate once, so `_BACKEND=triton_grpc` with only the shared URL is not refused."""
        env = dict(os.environ if environ is None else environ)
        known = {f.name: f for f in fields(cls)}
        values: dict[str, object] = {}
        for key, raw in env.items():
            if not key.startswith(ENV_PREFIX):
                continue
            name = key[len(ENV_PREFIX) :].lower()
            if name not in known:
                raise ValueError(
                    f"unknown variable {key}; known: {', '.join(ENV_PREFIX + k.upper() for k in known)}"
                )
            values[name] = _parse(name, raw)
        values.update(overrides)
        cfg = replace(cls(), **values)  # type: ignore[arg-type]
        if validate:
            cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.max_batch < 1 or self.max_wait_ms < 0 or self.consumers < 1 or self.max_queue < 1:
            raise ValueError("max_batch, consumers and max_queue must be >= 1 and max_wait_ms >= 0")
        if self.max_deliver < 1 or self.max_failures < 1 or self.cpu_threads < 1:
            raise ValueError("max_deliver, max_failures and cpu_threads must be >= 1")
        if not 0.0 <= self.review_audit_rate <= 1.0 or any(
            not 0.0 <= v <= 1.0 for v in self.review_audit_rate_by_station.values()
        ):
            raise ValueError("review_audit_rate (and per station) must be within 0..1")
        if self.review_rate_per_min < 0 or self.review_burst < 1 or self.drift_window < 0:
            raise ValueError("review_rate_per_min and drift_window must be >= 0, review_burst >= 1")
        if self.drift_psi_threshold <= 0:
            raise ValueError("drift_psi_threshold must be > 0")
        if self.heatmap_max_side < 0:
            raise ValueError("heatmap_max_side must be >= 0 (0 = the frame's size)")
        if self.retry_base_s <= 0 or self.retry_max_s < self.retry_base_s:
            raise ValueError("retry_base_s must be > 0 and retry_max_s >= retry_base_s")
        for entry in self.stations:
            parts = entry.strip("/").split("/")
            if len(parts) > 2 or not all(_TOKEN.match(p) for p in parts):
                raise ValueError(
                    f"invalid station {entry!r} in stations: 'line/station' or 'station' "
                    "(letters, digits, '-' and '_')"
                )
        if self.backend != BackendKind.IN_PROCESS and not self.triton_url:
            raise ValueError(f"backend {self.backend} needs triton_url (LINESIGHT_TRITON_URL)")
        if self.backend == BackendKind.TRITON_SHM and self.triton_model_repository is None:
            raise ValueError("triton_shm needs a Triton on this host and its triton_model_repository")

    @property
    def retry_backoff(self) -> Backoff:
        """The delays after an outage: retry_base_s doubling up to retry_max_s."""
        return Backoff(base_s=self.retry_base_s, cap_s=self.retry_max_s)

    def retry_delay_s(self, num_delivered: int) -> float:
        """How long a frame waits before its next delivery after an outage on delivery `num_delivered`."""
        return self.retry_backoff.delay(num_delivered)

    def outage_budget_s(self) -> float:
        """How long an outage may last before a frame is dead-lettered (sum of its retry delays)."""
        return sum(self.retry_delay_s(n) for n in range(1, self.max_deliver))


def _parse(name: str, raw: str) -> object:
    if name in ("backend",):
        return BackendKind(raw)
    if name == "triton_down_policy":
        return TritonDownPolicy(raw)
    if name in ("triton_model_repository", "model_dir", "work_dir"):
        return Path(raw) if raw else None
    if name == "stations":
        return tuple(s.strip() for s in raw.split(",") if s.strip())
    if name == "review_selection":
        selection = json.loads(raw) if raw.strip() else {}
        if not isinstance(selection, dict):
            raise ValueError(f"{ENV_PREFIX}REVIEW_SELECTION must be a JSON object")
        return selection
    if name in ("review_audit_rate_by_station", "review_rate_by_station"):
        table = json.loads(raw) if raw.strip() else {}
        if not isinstance(table, dict):
            raise ValueError(f"{ENV_PREFIX}{name.upper()} must be a JSON object of station -> number")
        return {str(k): float(v) for k, v in table.items()}
    if name in ("shadow", "store_heatmaps"):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if name in (
        "max_batch",
        "max_queue",
        "consumers",
        "max_deliver",
        "threads",
        "max_failures",
        "cpu_threads",
        "opencv_threads",
        "blas_threads",
        "heatmap_max_side",
        "review_burst",
        "drift_window",
    ):
        return int(raw)
    if name in (
        "max_wait_ms",
        "oldest_frame_alarm_s",
        "ack_wait_s",
        "triton_timeout_s",
        "golden_margin",
        "retry_base_s",
        "retry_max_s",
        "review_audit_rate",
        "review_rate_per_min",
        "drift_psi_threshold",
    ):
        return float(raw)
    return raw


__all__ = ["BackendKind", "InferenceConfig", "TritonDownPolicy"]
