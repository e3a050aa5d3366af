"""Image-quality audit: every frame gets measurements and reason codes before anything downstream.

A flagged frame is kept and published with `audit.passed = false` (inference routes it to review,
never to an automatic decision). Measurements run on the gray image, downscaled to at most
`ANALYSIS_MAX_SIDE` so the cost per frame stays flat on high-resolution cameras.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import cv2
import numpy as np

from linesight.capture.app.imaging import gray
from linesight.capture.app.profile import AuditThresholds
from linesight.common.pb import common_pb2

ANALYSIS_MAX_SIDE = 1024

# Reason codes (QualityAudit.reason_codes).
EMPTY = "EMPTY"
TRUNCATED = "TRUNCATED"
DECODE_ERROR = "DECODE_ERROR"
TOO_LARGE = "TOO_LARGE"
TOO_SMALL = "TOO_SMALL"
SIZE_MISMATCH = "SIZE_MISMATCH"
PIXEL_FORMAT = "PIXEL_FORMAT"
BLUR = "BLUR"
OVEREXPOSED = "OVEREXPOSED"
UNDEREXPOSED = "UNDEREXPOSED"
LOW_CONTRAST = "LOW_CONTRAST"
DUPLICATE = "DUPLICATE"
# Same bytes as the station's previous capture: a stuck camera buffer or a replay looping over.
REPEATED_FRAME = "REPEATED_FRAME"
NEAR_DUPLICATE = "NEAR_DUPLICATE"
READ_ERROR = "READ_ERROR"


@dataclass(frozen=True)
class Measurements:
    blur_variance: float
    clipped_high_fraction: float
    clipped_low_fraction: float
    contrast: float
    perceptual_hash: int


def measure(image: np.ndarray, th: AuditThresholds) -> Measurements:
    """Blur (variance of Laplacian), clipping shares, contrast (gray std-dev) and a 64-bit dHash."""
    g = gray(image)
    h, w = g.shape
    side = max(h, w)
    if side > ANALYSIS_MAX_SIDE:
        scale = ANALYSIS_MAX_SIDE / side
        g = cv2.resize(g, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    lap = cv2.Laplacian(g, cv2.CV_64F)
    blur = float(lap.var())
    hist = cv2.calcHist([g], [0], None, [256], [0, 256]).ravel()
    total = float(g.size)
    high = float(hist[th.clip_high_level :].sum()) / total
    low = float(hist[: th.clip_low_level + 1].sum()) / total
    _mean, std = cv2.meanStdDev(g)
    return Measurements(blur, high, low, float(std[0][0]), dhash(g))


def dhash(g: np.ndarray) -> int:
    """Difference hash: robust to re-encoding and small brightness changes, cheap to compare."""
    small = cv2.resize(g, (9, 8), interpolation=cv2.INTER_AREA).astype(np.int16)
    bits = (small[:, 1:] > small[:, :-1]).ravel()
    return int(np.packbits(bits).view(">u8")[0])


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


@dataclass
class AuditResult:
    """Outcome of one frame's audit; `to_proto` is what travels on FrameCaptured."""

    reasons: list[str] = field(default_factory=list)
    measurements: Measurements | None = None
    duplicate_of: str = ""
    error: str = ""

    @property
    def passed(self) -> bool:
        return not self.reasons

    def to_proto(self) -> common_pb2.QualityAudit:
        audit = common_pb2.QualityAudit(
            passed=self.passed, reason_codes=self.reasons, duplicate_of=self.duplicate_of
        )
        m = self.measurements
        if m is not None:
            audit.blur_variance = m.blur_variance
            audit.clipped_high_fraction = m.clipped_high_fraction
            audit.clipped_low_fraction = m.clipped_low_fraction
            audit.contrast = m.contrast
            audit.perceptual_hash = f"{m.perceptual_hash:016x}"
        return audit


class FrameAuditor:
    """Applies one station's thresholds and remembers recent frames for duplicate checks."""

    def __init__(
        self,
        thresholds: AuditThresholds,
        *,
        expected_size: tuple[int, int] = (0, 0),
        expected_pixel_format: str = "",
    ) -> None:
        self.thresholds = thresholds
        self.expected_size = expected_size
        self.expected_pixel_format = expected_pixel_format
        self._recent_sha: OrderedDict[str, str] = OrderedDict()  # sha256 -> frame id
        self._recent_phash: OrderedDict[str, int] = OrderedDict()  # frame id -> dHash
        self._last_sha = ""  # content hash of the previous frame, for REPEATED_FRAME

    def audit(self, image: np.ndarray, *, pixel_format: str, sha256: str, frame_id: str) -> AuditResult:
        th = self.thresholds
        result = AuditResult()
        h, w = image.shape[:2]
        ew, eh = self.expected_size
        if (ew and w != ew) or (eh and h != eh):
            result.reasons.append(SIZE_MISMATCH)
        if not self._pixel_format_ok(pixel_format):
            result.reasons.append(PIXEL_FORMAT)
        m = measure(image, th)
        result.measurements = m
        if m.blur_variance < th.blur_min:
            result.reasons.append(BLUR)
        if m.clipped_high_fraction > th.clip_high_max:
            result.reasons.append(OVEREXPOSED)
        if m.clipped_low_fraction > th.clip_low_max:
            result.reasons.append(UNDEREXPOSED)
        if m.contrast < th.contrast_min:
            result.reasons.append(LOW_CONTRAST)
        earlier = self._recent_sha.get(sha256)
        repeated = self._repeated(sha256)
        if earlier is not None or repeated:
            result.reasons.append(REPEATED_FRAME if repeated else DUPLICATE)
            result.duplicate_of = earlier or ""
        else:
            near = self._nearest(m.perceptual_hash)
            if near:
                result.reasons.append(NEAR_DUPLICATE)
                result.duplicate_of = near
            self._remember(sha256, frame_id, m.perceptual_hash)
        return result

    def remember_undecodable(self, sha256: str, frame_id: str) -> tuple[str, bool]:
        """Duplicate check for frames without pixels: (earlier frame id or '', same as previous frame)."""
        earlier = self._recent_sha.get(sha256, "")
        repeated = self._repeated(sha256)
        if not earlier:
            self._recent_sha[sha256] = frame_id
            self._trim()
        return earlier, repeated

    def _repeated(self, sha256: str) -> bool:
        """True when `sha256` equals the previous frame's (and remember it for the next one)."""
        repeated = sha256 == self._last_sha
        self._last_sha = sha256
        return repeated

    def _pixel_format_ok(self, pixel_format: str) -> bool:
        if self.expected_pixel_format:
            return pixel_format.lower() == self.expected_pixel_format.lower()
        return pixel_format.endswith("8")

    def _nearest(self, phash: int) -> str:
        limit = self.thresholds.near_duplicate_distance
        if limit < 0:
            return ""
        for fid, other in reversed(self._recent_phash.items()):
            if hamming(phash, other) <= limit:
                return fid
        return ""

    def _remember(self, sha256: str, frame_id: str, phash: int) -> None:
        self._recent_sha[sha256] = frame_id
        self._recent_phash[frame_id] = phash
        self._trim()

    def _trim(self) -> None:
        window = max(1, self.thresholds.duplicate_window)
        while len(self._recent_sha) > window:
            self._recent_sha.popitem(last=False)
        while len(self._recent_phash) > window:
            self._recent_phash.popitem(last=False)


@dataclass(frozen=True)
class CalibrationReport:
    frames: int
    thresholds: AuditThresholds
    stats: dict[str, dict[str, float]]


def calibrate(
    images: Iterable[np.ndarray], base: AuditThresholds, *, margin: float = 0.5, min_frames: int = 10
) -> CalibrationReport:
    """Fit thresholds so known-good frames pass with room to spare.

    Lower limits (blur, contrast) sit at `margin` x the 1st percentile of the good frames; upper
    limits (clipping) at the 99th percentile / margin, never tighter than 1%. The near-duplicate
    distance is kept below the closest pair of good frames, so parts that merely look alike on a
    steady line are not flagged (-1, check off, when two good frames share a hash).
    """
    if not 0 < margin <= 1:
        raise ValueError(f"margin must be in (0, 1], got {margin}")
    ms = [measure(img, base) for img in images]
    if len(ms) < min_frames:
        raise ValueError(f"calibration needs at least {min_frames} known-good frames, got {len(ms)}")
    blur = np.array([m.blur_variance for m in ms])
    contrast = np.array([m.contrast for m in ms])
    high = np.array([m.clipped_high_fraction for m in ms])
    low = np.array([m.clipped_low_fraction for m in ms])
    hashes = [m.perceptual_hash for m in ms]
    min_dist = _min_pairwise_distance(hashes)
    th = AuditThresholds(**base.__dict__)
    th.blur_min = round(float(np.percentile(blur, 1)) * margin, 4)
    th.contrast_min = round(float(np.percentile(contrast, 1)) * margin, 4)
    th.clip_high_max = round(max(0.01, float(np.percentile(high, 99)) / margin), 6)
    th.clip_low_max = round(max(0.01, float(np.percentile(low, 99)) / margin), 6)
    th.near_duplicate_distance = max(-1, min(base.near_duplicate_distance, min_dist - 1))
    th.calibrated_from = len(ms)
    th.calibrated_at = datetime.now(UTC).isoformat(timespec="seconds")
    stats = {
        name: {
            "min": float(a.min()),
            "p1": float(np.percentile(a, 1)),
            "median": float(np.median(a)),
            "p99": float(np.percentile(a, 99)),
            "max": float(a.max()),
        }
        for name, a in (
            ("blur_variance", blur),
            ("contrast", contrast),
            ("clipped_high", high),
            ("clipped_low", low),
        )
    }
    stats["perceptual_hash"] = {"min_pairwise_distance": float(min_dist)}
    return CalibrationReport(len(ms), th, stats)


def _min_pairwise_distance(hashes: Sequence[int]) -> int:
    if len(hashes) < 2:
        return 64
    # identical hashes of different known-good frames count as distance 0: the check is then off
    arr = np.array(sorted(hashes), dtype=np.uint64)
    best = 64
    for i in range(len(arr) - 1):
        x = np.bitwise_xor(arr[i + 1 :], arr[i])
        counts = np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)
        best = min(best, int(counts.min()))
    return best


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
