"""Station profile: the versioned capture standard of one camera station (YAML on disk).

The profile is what every frame is measured against: camera settings that drift from it raise a
DriftAlert, and its audit thresholds (calibrated from known-good frames) decide which frames are
flagged. Unknown keys are rejected so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from linesight.common.pb import common_pb2

SOURCES = ("genicam", "opencv", "replay")
TRIGGER_MODES = ("free_run", "software", "hardware")
SPOOL_POLICIES = ("stop_line", "drop_oldest")


class ProfileError(ValueError):
    """The station profile is missing, unreadable or inconsistent; the message names the key."""


@dataclass
class AuditThresholds:
    """Per-station image-quality limits; `linesight capture calibrate` fits them from good frames."""

    blur_min: float = 10.0  # variance of Laplacian below this -> BLUR
    clip_high_max: float = 0.25  # share of pixels >= clip_high_level above this -> OVEREXPOSED
    clip_low_max: float = 0.25  # share of pixels <= clip_low_level above this -> UNDEREXPOSED
    clip_high_level: int = 250
    clip_low_level: int = 5
    contrast_min: float = 5.0  # std-dev of gray levels below this -> LOW_CONTRAST
    near_duplicate_distance: int = 2  # perceptual-hash Hamming distance at or below -> NEAR_DUPLICATE
    duplicate_window: int = 256  # how many recent frames the duplicate checks remember
    max_pixels: int = 50_000_000  # decompression-bomb guard
    min_side: int = 16
    calibrated_from: int = 0  # number of known-good frames the values came from (0 = defaults)
    calibrated_at: str = ""


@dataclass
class GenICamSettings:
    """How to reach a GenICam camera through a GenTL producer and which extra nodes to set."""

    cti: str = ""  # path to the GenTL producer (.cti)
    device_serial: str = ""  # empty = first device (or the profile's camera_serial)
    device_index: int = -1  # used when no serial is given; -1 = 0
    trigger_source: str = "Line1"  # hardware trigger input
    trigger_activation: str = "RisingEdge"
    fetch_timeout_s: float = 3.0
    nodes: dict[str, Any] = field(default_factory=dict)  # any other node values, written in order


@dataclass
class StationProfile:
    """Capture standard for one station; `version` travels on every frame."""

    plant: str
    line: str
    station: str
    version: str = "1"
    camera_model: str = ""
    camera_serial: str = ""
    lens: str = ""
    exposure_us: float = 0.0  # 0 = leave the camera's value (not managed)
    gain_db: float = 0.0  # with gain_managed false, the camera's value is left alone
    gain_managed: bool = False
    lighting_profile: str = ""
    working_distance_mm: float = 0.0
    px_per_mm: float = 0.0
    roi_x: int = 0
    roi_y: int = 0
    roi_width: int = 0  # 0 = any size accepted
    roi_height: int = 0
    pixel_format: str = ""  # Mono8, RGB8, ...; empty = any 8-bit format accepted
    source: str = "replay"
    source_uri: str = ""  # replay: folder/manifest dir; opencv: index, URL or file
    trigger_mode: str = "free_run"
    shift: str = ""
    genicam: GenICamSettings = field(default_factory=GenICamSettings)
    audit: AuditThresholds = field(default_factory=AuditThresholds)
    spool_dir: str = ""  # empty = <state_dir>/capture/<station>/spool
    spool_max_bytes: int = 2 * 1024**3
    spool_max_frames: int = 100_000
    spool_policy: str = "stop_line"
    drift_check_every: int = 50  # frames between camera-setting read-backs

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("source", self.source, SOURCES),
            ("trigger_mode", self.trigger_mode, TRIGGER_MODES),
            ("spool_policy", self.spool_policy, SPOOL_POLICIES),
        ):
            if value not in allowed:
                raise ProfileError(f"profile {name}={value!r}: expected one of {', '.join(allowed)}")
        for name in ("plant", "line", "station", "version"):
            if not str(getattr(self, name)).strip():
                raise ProfileError(f"profile {name} must not be empty")
        if self.spool_max_bytes <= 0 or self.spool_max_frames <= 0:
            raise ProfileError("profile spool_max_bytes and spool_max_frames must be positive")

    @property
    def camera_id(self) -> str:
        return " ".join(p for p in (self.camera_model, self.camera_serial) if p) or self.source

    def station_ref(self) -> common_pb2.StationRef:
        return common_pb2.StationRef(plant=self.plant, line=self.line, station=self.station)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        """Write atomically (temp file + rename) so a crash never leaves half a profile."""
        target = Path(path)
        tmp = target.with_suffix(target.suffix + ".tmp")
        tmp.write_text(self.to_yaml())
        tmp.replace(target)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StationProfile:
        if not isinstance(data, dict):
            raise ProfileError("station profile must be a YAML mapping")
        data = dict(data)
        _reject_unknown("profile", data, cls)
        genicam = data.pop("genicam", None) or {}
        audit = data.pop("audit", None) or {}
        if not isinstance(genicam, dict) or not isinstance(audit, dict):
            raise ProfileError("profile 'genicam' and 'audit' must be mappings")
        _reject_unknown("profile genicam", genicam, GenICamSettings)
        _reject_unknown("profile audit", audit, AuditThresholds)
        missing = [k for k in ("plant", "line", "station") if k not in data]
        if missing:
            raise ProfileError(f"profile is missing {', '.join(missing)}")
        data["version"] = str(data.get("version", "1"))
        try:
            return cls(**data, genicam=GenICamSettings(**genicam), audit=AuditThresholds(**audit))
        except TypeError as exc:
            raise ProfileError(f"invalid station profile: {exc}") from exc

    @classmethod
    def load(cls, path: str | Path) -> StationProfile:
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as exc:
            raise ProfileError(f"cannot read station profile {p}: {exc.strerror or exc}") from exc
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ProfileError(f"station profile {p} is not valid YAML: {exc}") from exc
        return cls.from_dict(data)

    def with_version(self, version: str) -> StationProfile:
        return dataclasses.replace(self, version=version)


def _reject_unknown(what: str, data: dict[str, Any], cls: type) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ProfileError(f"{what}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")


def bump_version(version: str) -> str:
    """'3' -> '4', '1.2' -> '1.3', 'v7-a' -> 'v7-a.1': a recalibration is a new standard."""
    head, _, tail = version.rpartition(".")
    if tail.isdigit():
        return f"{head}.{int(tail) + 1}" if head else str(int(tail) + 1)
    return f"{version}.1"
