"""Frame sources behind one interface: GenICam (harvesters), OpenCV VideoCapture, and Replay.

A source only acquires: it hands back pixels (cameras) or file bytes (replay) with when and why
the frame was taken. Auditing, storage and publishing are the station's job, so every source gets
the same capture standards. Blocking driver calls run in a worker thread.
"""

from __future__ import annotations

import asyncio
import csv
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from linesight.capture.app.imaging import pixel_format_name
from linesight.capture.app.profile import StationProfile

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MAX_FILE_BYTES = 512 * 1024 * 1024


class SourceError(RuntimeError):
    """The source cannot be opened or configured; the message names the device/path and the fix."""


class AcquisitionTimeout(SourceError):  # noqa: N818 - a normal outcome, not a bug
    """No frame within the fetch timeout: normal under a hardware trigger when no part passes."""


@dataclass
class RawFrame:
    """One acquisition: either pixels from a camera or the encoded bytes of a replayed file."""

    trigger_source: str
    triggered_at: datetime
    acquired_at: datetime
    image: np.ndarray | None = None
    data: bytes | None = None
    pixel_format: str = ""
    part_id: str = ""
    batch: str = ""
    origin: str = ""  # file path or device id, for logs and the frame's metadata
    extra: dict[str, str] = field(default_factory=dict)
    read_error: str = ""  # set when the replayed file could not be read at all


class FrameSource(Protocol):
    """What the station needs from any camera or simulator."""

    name: str

    async def open(self) -> None: ...

    async def acquire(self, trigger_source: str) -> RawFrame | None:
        """Next frame; None when a finite source (file, folder) is exhausted."""
        ...

    def settings(self) -> dict[str, Any]:
        """Current camera settings as read back from the device (for drift checks)."""
        ...

    def expected_settings(self) -> dict[str, Any]:
        """Settings the profile asked for (what `settings()` should keep returning)."""
        ...

    async def close(self) -> None: ...


def _now() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------- replay


@dataclass(frozen=True)
class ReplayItem:
    path: Path
    part_id: str = ""
    batch: str = ""
    station: str = ""
    label: str = ""


def load_replay_items(root: str | Path) -> list[ReplayItem]:
    """Items of a dataset manifest (manifest.csv) or, without one, the images of a folder by name."""
    base = Path(root)
    if not base.exists():
        raise SourceError(f"replay source {base} does not exist")
    if base.is_file():
        if base.name == "manifest.csv":
            base = base.parent
        else:
            return [ReplayItem(base, part_id=base.stem)]
    manifest = base / "manifest.csv"
    if manifest.exists():
        return _manifest_items(base)
    files = sorted(p for p in base.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SourceError(
            f"replay folder {base} has no manifest.csv and no images ({', '.join(IMAGE_SUFFIXES)})"
        )
    return [ReplayItem(p, part_id=p.stem) for p in files]


def _manifest_items(base: Path) -> list[ReplayItem]:
    try:  # the shared manifest reader validates columns the same way every service does
        from linesight.vision.data.manifest import ManifestError, load_manifest
    except ImportError:  # pragma: no cover - only while linesight.vision is being written
        pass
    else:
        try:
            samples = load_manifest(base, unknown_columns="ignore")
        except ManifestError as exc:
            raise SourceError(f"cannot replay {base}: {exc}") from exc
        return [
            ReplayItem(
                s.image if s.image.is_absolute() else base / s.image, s.part_id, s.batch, s.station, s.label
            )
            for s in samples
        ]
    items: list[ReplayItem] = []
    with (base / "manifest.csv").open(newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or "image" not in reader.fieldnames:
            raise SourceError(f"{base / 'manifest.csv'} has no 'image' column")
        for row in reader:
            path = base / row["image"]
            items.append(
                ReplayItem(
                    path,
                    row.get("part_id") or path.stem,
                    row.get("batch") or "",
                    row.get("station") or "",
                    row.get("label") or "",
                )
            )
    return items


class ReplaySource:
    """Plays a folder or dataset manifest as a line: part id, batch and station come from the manifest.

    Pacing (parts per minute, jitter) belongs to the station's free-run loop; this source hands out
    the next file. Unreadable files still produce a frame (with `read_error`), so the audit records
    them instead of the line silently skipping a part.
    """

    def __init__(self, root: str | Path, *, loop: bool = False, limit: int | None = None) -> None:
        self.root = Path(root)
        self.name = f"replay:{self.root}"
        self.loop = loop
        self.limit = limit
        self._items: list[ReplayItem] = []
        self._iter: Iterator[ReplayItem] | None = None
        self._served = 0

    async def open(self) -> None:
        self._items = await asyncio.to_thread(load_replay_items, self.root)
        self._iter = self._cycle()

    def _cycle(self) -> Iterator[ReplayItem]:
        while True:
            yield from self._items
            if not self.loop:
                return

    async def acquire(self, trigger_source: str) -> RawFrame | None:
        if self._iter is None:
            raise SourceError("replay source not opened")
        if self.limit is not None and self._served >= self.limit:
            return None
        item = next(self._iter, None)
        if item is None:
            return None
        self._served += 1
        triggered = _now()
        data, error = await asyncio.to_thread(_read_file, item.path)
        extra = {"source_file": str(item.path)}
        if item.station:
            extra["source_station"] = item.station
        return RawFrame(
            trigger_source=trigger_source,
            triggered_at=triggered,
            acquired_at=_now(),
            data=data,
            part_id=item.part_id,
            batch=item.batch,
            origin=str(item.path),
            extra=extra,
            read_error=error,
        )

    def settings(self) -> dict[str, Any]:
        return {}

    def expected_settings(self) -> dict[str, Any]:
        return {}

    async def close(self) -> None:
        self._iter = None


def _read_file(path: Path) -> tuple[bytes, str]:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            return b"", f"file is {size} bytes, above the {MAX_FILE_BYTES} limit"
        return path.read_bytes(), ""
    except OSError as exc:
        return b"", f"cannot read {path}: {exc.strerror or exc}"


# --------------------------------------------------------------------------- OpenCV


class OpenCVSource:
    """USB camera index, RTSP/HTTP URL or video file through cv2.VideoCapture."""

    def __init__(self, uri: str, profile: StationProfile | None = None) -> None:
        self.uri = uri
        self.name = f"opencv:{uri}"
        self.profile = profile
        self._cap: Any = None
        self._expected: dict[str, Any] = {}

    async def open(self) -> None:
        await asyncio.to_thread(self._open)

    def _open(self) -> None:
        import cv2

        target: int | str = int(self.uri) if self.uri.isdigit() else self.uri
        cap = cv2.VideoCapture(target)
        if not cap.isOpened():
            raise SourceError(f"OpenCV cannot open {self.uri!r} (USB index, RTSP/HTTP URL or video file)")
        p = self.profile
        if p is not None:
            if p.roi_width and p.roi_height:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, p.roi_width)
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, p.roi_height)
            if p.exposure_us:
                cap.set(cv2.CAP_PROP_EXPOSURE, p.exposure_us)
                self._expected["exposure"] = p.exposure_us
            if p.gain_managed:
                cap.set(cv2.CAP_PROP_GAIN, p.gain_db)
                self._expected["gain"] = p.gain_db
        self._cap = cap

    async def acquire(self, trigger_source: str) -> RawFrame | None:
        if self._cap is None:
            raise SourceError("OpenCV source not opened")
        triggered = _now()
        ok, frame = await asyncio.to_thread(self._cap.read)
        if not ok or frame is None:
            return None
        import cv2

        image = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        channels = 1 if image.ndim == 2 else image.shape[2]
        return RawFrame(
            trigger_source=trigger_source,
            triggered_at=triggered,
            acquired_at=_now(),
            image=image,
            pixel_format=pixel_format_name(channels, 8 * image.dtype.itemsize),
            origin=self.uri,
        )

    def settings(self) -> dict[str, Any]:
        import cv2

        if self._cap is None:
            return {}
        out: dict[str, Any] = {}
        if "exposure" in self._expected:
            out["exposure"] = float(self._cap.get(cv2.CAP_PROP_EXPOSURE))
        if "gain" in self._expected:
            out["gain"] = float(self._cap.get(cv2.CAP_PROP_GAIN))
        return out

    def expected_settings(self) -> dict[str, Any]:
        return dict(self._expected)

    async def close(self) -> None:
        if self._cap is not None:
            await asyncio.to_thread(self._cap.release)
            self._cap = None


# --------------------------------------------------------------------------- GenICam

_EXPOSURE_NODES = ("ExposureTime", "ExposureTimeAbs", "ExposureTimeRaw")
_GAIN_NODES = ("Gain", "GainAbs", "GainRaw")
_CHANNELS = {"Mono": 1, "RGB": 3, "BGR": 3, "RGBa": 4, "BGRa": 4}


def default_cti() -> str:
    """The simulated GenTL producer shipped in the `genicam` wheel (for tests and demos)."""
    import genicam

    return os.path.join(os.path.dirname(genicam.__file__), "viky.cti")


def trigger_nodes(profile: StationProfile) -> list[tuple[str, Any]]:
    """Node writes that put the camera in the profile's trigger mode (hardware settings pass through)."""
    g = profile.genicam
    if profile.trigger_mode == "hardware":
        return [
            ("TriggerSelector", "FrameStart"),
            ("TriggerMode", "On"),
            ("TriggerSource", g.trigger_source),
            ("TriggerActivation", g.trigger_activation),
        ]
    if profile.trigger_mode == "software":
        return [("TriggerSelector", "FrameStart"), ("TriggerMode", "On"), ("TriggerSource", "Software")]
    return [("TriggerMode", "Off")]


class NodeMap(Protocol):
    def has_node(self, name: str) -> bool: ...


def plan_node_writes(profile: StationProfile, node_map: Any) -> tuple[list[tuple[str, Any]], list[str]]:
    """(writes, notes): what to set on this camera, and which profile items it cannot take.

    Hardware-trigger nodes are required (a line wired to a trigger input must not free-run
    silently); a software trigger falls back to grabbing the next streamed frame when the camera
    has no trigger nodes; exposure/gain are required only when the profile manages them.
    """
    has = node_map.has_node
    writes: list[tuple[str, Any]] = []
    notes: list[str] = []
    if profile.pixel_format:
        writes.append(("PixelFormat", profile.pixel_format))
    if profile.roi_width and profile.roi_height:
        writes += [("Width", profile.roi_width), ("Height", profile.roi_height)]
        if profile.roi_x or profile.roi_y:
            writes += [("OffsetX", profile.roi_x), ("OffsetY", profile.roi_y)]
    if profile.exposure_us:
        node = next((n for n in _EXPOSURE_NODES if has(n)), None)
        if node is None:
            raise SourceError(
                f"camera has none of {', '.join(_EXPOSURE_NODES)}; set exposure_us: 0 to leave exposure alone"
            )
        writes.append((node, profile.exposure_us))
    if profile.gain_managed:
        node = next((n for n in _GAIN_NODES if has(n)), None)
        if node is None:
            raise SourceError(f"camera has none of {', '.join(_GAIN_NODES)}; set gain_managed: false")
        writes.append((node, profile.gain_db))
    for name, value in trigger_nodes(profile):
        if has(name):
            writes.append((name, value))
        elif profile.trigger_mode == "hardware" and name != "TriggerSelector":
            raise SourceError(f"trigger_mode hardware needs node {name}, which this camera does not have")
        elif name == "TriggerMode" and profile.trigger_mode == "software":
            notes.append("camera has no TriggerMode node: software trigger grabs the next streamed frame")
    writes += list(profile.genicam.nodes.items())
    return writes, notes


class GenICamSource:
    """A GenICam camera through harvesters and a GenTL producer (.cti from the profile)."""

    def __init__(self, profile: StationProfile) -> None:
        self.profile = profile
        self.cti = profile.genicam.cti or profile.source_uri or default_cti()
        self.name = f"genicam:{Path(self.cti).name}"
        self.notes: list[str] = []
        self.device_info: dict[str, str] = {}
        self._h: Any = None
        self._ia: Any = None
        self._expected: dict[str, Any] = {}
        self._soft_trigger = False

    @staticmethod
    def enumerate(cti: str) -> list[dict[str, str]]:
        """Devices a GenTL producer offers (model, serial, vendor, id)."""
        from harvesters.core import Harvester

        h = Harvester()
        try:
            h.add_file(cti, check_existence=True)
            h.update()
            return [
                {
                    "id": str(d.id_),
                    "model": str(d.model),
                    "serial": str(d.serial_number),
                    "vendor": str(d.vendor),
                }
                for d in h.device_info_list
            ]
        finally:
            h.reset()

    async def open(self) -> None:
        await asyncio.to_thread(self._open)

    def _open(self) -> None:
        from harvesters.core import Harvester

        if not os.path.exists(self.cti):
            raise SourceError(
                f"GenTL producer {self.cti} does not exist (set genicam.cti in the station profile)"
            )
        h = Harvester()
        try:
            h.add_file(self.cti, check_existence=True)
            h.update()
            devices = h.device_info_list
            if not devices:
                raise SourceError(f"GenTL producer {self.cti} reports no devices")
            serial = self.profile.genicam.device_serial or self.profile.camera_serial
            if serial:
                matches = [i for i, d in enumerate(devices) if str(d.serial_number) == serial]
                if not matches:
                    found = ", ".join(str(d.serial_number) for d in devices)
                    raise SourceError(f"no camera with serial {serial!r} on {self.cti} (found: {found})")
                index = matches[0]
            else:
                index = max(0, self.profile.genicam.device_index)
                if index >= len(devices):
                    raise SourceError(
                        f"device_index {index} out of range: {len(devices)} device(s) on {self.cti}"
                    )
            d = devices[index]
            self.device_info = {
                "model": str(d.model),
                "serial": str(d.serial_number),
                "vendor": str(d.vendor),
            }
            ia = h.create(index)
        except SourceError:
            h.reset()
            raise
        except Exception as exc:
            h.reset()
            raise SourceError(f"cannot open GenICam camera via {self.cti}: {exc}") from exc
        self._h, self._ia = h, ia
        try:
            self._configure()
            ia.start()
        except Exception:
            self._close()
            raise

    def _configure(self) -> None:
        nm = self._ia.remote_device.node_map
        writes, self.notes = plan_node_writes(self.profile, nm)
        for name, value in writes:
            self.write_node(name, value)
            self._expected[name] = value
        self._soft_trigger = (
            self.profile.trigger_mode == "software"
            and nm.has_node("TriggerSoftware")
            and nm.has_node("TriggerMode")
        )

    def write_node(self, name: str, value: Any) -> None:
        """Set one node; the error names the node, the value and what the camera allows."""
        nm = self._ia.remote_device.node_map
        if not nm.has_node(name):
            raise SourceError(f"camera has no node {name!r} (check genicam.nodes in the station profile)")
        node = getattr(nm, name)
        try:
            node.value = value
        except Exception as exc:
            allowed = ""
            if hasattr(node, "symbolics"):
                allowed = f"; allowed: {', '.join(node.symbolics)}"
            elif hasattr(node, "min"):
                allowed = f"; range {node.min}..{node.max}"
            raise SourceError(f"cannot set camera node {name}={value!r}: {exc}{allowed}") from exc

    def read_node(self, name: str) -> Any:
        return getattr(self._ia.remote_device.node_map, name).value

    async def acquire(self, trigger_source: str) -> RawFrame | None:
        if self._ia is None:
            raise SourceError("GenICam source not opened")
        return await asyncio.to_thread(self._acquire, trigger_source)

    def _acquire(self, trigger_source: str) -> RawFrame:
        triggered = _now()
        if self._soft_trigger and trigger_source == "software":
            self._ia.remote_device.node_map.TriggerSoftware.execute()
        timeout = self.profile.genicam.fetch_timeout_s
        try:
            with self._ia.fetch(timeout=timeout) as buffer:
                component = buffer.payload.components[0]
                fmt = str(component.data_format)
                width, height = int(component.width), int(component.height)
                image = _component_to_image(component.data, width, height, fmt)
        except Exception as exc:
            if "timeout" in type(exc).__name__.lower():
                raise AcquisitionTimeout(f"no frame from the camera within {timeout}s") from exc
            raise SourceError(f"GenICam fetch failed: {exc}") from exc
        return RawFrame(
            trigger_source=trigger_source,
            triggered_at=triggered,
            acquired_at=_now(),
            image=image,
            pixel_format=fmt,
            origin=self.device_info.get("serial", ""),
            extra={"camera_model": self.device_info.get("model", "")},
        )

    def settings(self) -> dict[str, Any]:
        if self._ia is None:
            return {}
        return {name: self.read_node(name) for name in self._expected}

    def expected_settings(self) -> dict[str, Any]:
        return dict(self._expected)

    async def close(self) -> None:
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        if self._ia is not None:
            try:
                self._ia.stop()
            finally:
                self._ia.destroy()
                self._ia = None
        if self._h is not None:
            self._h.reset()
            self._h = None


def _component_to_image(data: np.ndarray, width: int, height: int, fmt: str) -> np.ndarray:
    """Copy a GenTL buffer component out (the buffer is requeued on exit) as HxW or HxWxC."""
    base = fmt.rstrip("0123456789")
    channels = _CHANNELS.get(base)
    if channels is None:
        raise SourceError(f"unsupported camera pixel format {fmt} (use Mono8/Mono16/RGB8/BGR8/RGBa8)")
    arr = np.array(data, copy=True)
    image = arr.reshape(height, width) if channels == 1 else arr.reshape(height, width, channels)
    if base.startswith("BGR"):
        image = image[:, :, [2, 1, 0, 3][:channels]]
    if channels == 4:
        image = np.ascontiguousarray(image[:, :, :3])
    return image


def make_source(profile: StationProfile) -> FrameSource:
    """The source the profile names."""
    if profile.source == "genicam":
        return GenICamSource(profile)
    if profile.source == "opencv":
        if not profile.source_uri:
            raise SourceError("source opencv needs source_uri (USB index, RTSP/HTTP URL or video file)")
        return OpenCVSource(profile.source_uri, profile)
    if not profile.source_uri:
        raise SourceError("source replay needs source_uri (a folder or a dataset with manifest.csv)")
    return ReplaySource(profile.source_uri, loop=True)
