"""S3 access of the inference service, one small repository per kind of object.

Model artifact format (agreed with training): a gzip'ed tar of the export directory, in bucket
`models` under `<product>/<model_version>.tar.gz`. The archive may hold the files at its root or
inside one top-level folder. Extraction refuses absolute paths, `..` and links.
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import tarfile
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from linesight.common.pb import common_pb2
from linesight.common.storage import BUCKET_HEATMAPS, BUCKET_MODELS, ObjectNotFound, ObjectStore


class ArtifactError(RuntimeError):
    """A model artifact is missing or not a usable archive."""


class FrameImages:
    def __init__(self, store: ObjectStore) -> None:
        self._store = store

    async def fetch(self, ref: common_pb2.ObjectRef) -> bytes:
        """Image bytes; ObjectNotFound when missing, StorageUnavailable when S3 is down."""
        if not ref.bucket or not ref.key:
            raise ObjectNotFound(ref.bucket or "?", ref.key or "?")
        return await self._store.aget_bytes(ref.bucket, ref.key)


class HeatmapStore:
    """Heatmaps as people read them: the frame with the colour-mapped anomaly map, a scale bar
    and the decision's regions labelled with class and size (``linesight.vision.render``)."""

    def __init__(self, store: ObjectStore) -> None:
        self._store = store

    @staticmethod
    def render(frame: np.ndarray, heatmap: np.ndarray, regions: Sequence[Any], max_side: int = 0) -> bytes:
        """PNG of the overlay at the frame's resolution (shrunk to ``max_side`` when set)."""
        from linesight.vision.render import overlay_png

        return overlay_png(frame, heatmap, regions, max_side=max_side)

    @staticmethod
    async def regions_of(decision: Awaitable[Any]) -> list[Any]:
        """The decision's regions to draw; none when the decision failed (its error is reported
        by the result, the heatmap still shows the map)."""
        try:
            decided = await asyncio.shield(decision)
        except Exception:
            return []
        return list(getattr(decided, "regions", None) or [])

    async def put(self, png: bytes, *, frame_id: str, model_version: str) -> common_pb2.ObjectRef:
        return await self._store.aput_content_addressed(
            BUCKET_HEATMAPS,
            png,
            suffix=".png",
            content_type="image/png",
            metadata={"frame-id": frame_id, "model-version": model_version},
        )


def artifact_key(product: str, model_version: str) -> str:
    return f"{product}/{model_version}.tar.gz"


def pack_export(export_dir: Path) -> bytes:
    """The artifact bytes for an export directory (files at the archive root)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in sorted(Path(export_dir).rglob("*")):
            tar.add(path, arcname=str(path.relative_to(export_dir)), recursive=False)
    return buf.getvalue()


def _safe_extract(data: bytes, target: Path) -> None:
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            members = tar.getmembers()
            for m in members:
                name = Path(m.name)
                if name.is_absolute() or ".." in name.parts or not (m.isfile() or m.isdir()):
                    raise ArtifactError(f"artifact member {m.name!r} is not a plain relative file")
            tar.extractall(target, members=members, filter="data")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ArtifactError(f"artifact is not a readable .tar.gz: {exc}") from exc


class ModelArtifacts:
    """Downloads and unpacks model versions into a local cache directory."""

    def __init__(self, store: ObjectStore, cache_dir: Path) -> None:
        self._store = store
        self.cache_dir = Path(cache_dir)

    async def fetch(self, ref: common_pb2.ObjectRef, *, product: str, model_version: str) -> Path:
        """Local export directory of `model_version` (downloaded once)."""
        target = self.cache_dir / product / model_version
        if (target / ".complete").exists():
            return self._root(target)
        bucket = ref.bucket or BUCKET_MODELS
        key = ref.key or artifact_key(product, model_version)
        try:
            data = await self._store.aget_bytes(bucket, key)
        except ObjectNotFound as exc:
            raise ArtifactError(f"model artifact s3://{bucket}/{key} not found") from exc
        staging = target.with_name(target.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            _safe_extract(data, staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        (staging / ".complete").write_text(key + "\n")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        return self._root(target)

    @staticmethod
    def _root(target: Path) -> Path:
        """The export directory inside the unpacked archive (root, or its single top folder)."""
        entries = [p for p in target.iterdir() if p.name != ".complete"]
        if len(entries) == 1 and entries[0].is_dir():
            return entries[0]
        return target


@dataclass(frozen=True)
class StationCalibration:
    """What golden-sample recalibration set for one station of one model version.

    ``anomaly_scale`` divides the station's anomaly scores (1.0 = the model's own threshold);
    ``defect_threshold`` replaces the model's operating point on defect_probability for the
    station's frames (None = the model's own: never recalibrated, or an artifact without
    reference scores).
    """

    anomaly_scale: float = 1.0
    defect_threshold: float | None = None


class CalibrationStore:
    """Golden-sample calibrations per (model version, station), so a restart keeps them.

    JSON ``{"model_version", "stations": {station: anomaly scale}, "defect_thresholds": {station:
    threshold}}``: the anomaly scales stay where the first format had them (a float per station),
    so a replica of the previous release still reads the file; the defect thresholds sit beside.
    """

    def __init__(self, store: ObjectStore, product: str) -> None:
        self._store = store
        self._product = product

    def _key(self, model_version: str) -> str:
        return f"{self._product}/calibration/{model_version}.json"

    async def load(self, model_version: str) -> dict[str, StationCalibration]:
        try:
            raw = await self._store.aget_bytes(BUCKET_MODELS, self._key(model_version))
        except ObjectNotFound:
            return {}
        return parse_calibrations(json.loads(raw))

    async def save(self, model_version: str, calibrations: dict[str, StationCalibration]) -> None:
        body = json.dumps(dump_calibrations(model_version, calibrations), indent=1).encode()
        await self._store.aput_bytes(BUCKET_MODELS, self._key(model_version), body, "application/json")


def parse_calibrations(data: dict[str, Any]) -> dict[str, StationCalibration]:
    """Both formats: ``stations`` alone (station -> anomaly scale) or with ``defect_thresholds``."""
    defect = {str(k): float(v) for k, v in (data.get("defect_thresholds") or {}).items()}
    out = {
        str(k): StationCalibration(float(v), defect.get(str(k)))
        for k, v in (data.get("stations") or {}).items()
    }
    for k, t in defect.items():  # a defect threshold alone: anomaly scale at the model's own
        out.setdefault(k, StationCalibration(1.0, t))
    return out


def dump_calibrations(model_version: str, calibrations: dict[str, StationCalibration]) -> dict[str, Any]:
    return {
        "model_version": model_version,
        "stations": {k: c.anomaly_scale for k, c in sorted(calibrations.items())},
        "defect_thresholds": {
            k: c.defect_threshold for k, c in sorted(calibrations.items()) if c.defect_threshold is not None
        },
    }
