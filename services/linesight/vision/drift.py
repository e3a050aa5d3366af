"""Drift statistics: has what a station sends (and what the model says about it) moved away from
what the release was measured on?

Pure functions over numbers, no I/O: the inference service keeps windows per station and publishes
what `assess` finds. Four kinds of evidence:

* input statistics per frame (`input_stats`: brightness, contrast, sharpness) - a lamp, a lens or
  an exposure change shows here first, before the model says anything;
* the model's output distributions (anomaly score, confidence) against the release baseline:
  population stability index (`psi`) and the two-sample Kolmogorov-Smirnov test (scipy); a
  distribution counts as shifted only when both agree (PSI over its threshold and the KS p-value
  under its own), so a clean stream of a few hundred frames stays quiet;
* embedding shift (`embedding_shift`): distance between the window's mean feature and the
  baseline's, in units of the baseline's own spread;
* concept drift: the audit sample's disagreement rate (people overruling automatic calls).

A baseline is a set of reference samples per statistic (`Baseline`); it travels with the model
artifact (`DRIFT_REFERENCE_FILE`) or is taken from a station's first window under a release.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from scipy import stats as sps

__all__ = [
    "DRIFT_REFERENCE_FILE",
    "INPUT_STATS",
    "MODEL_STATS",
    "Baseline",
    "DriftReport",
    "Finding",
    "Thresholds",
    "assess",
    "embedding_shift",
    "input_stats",
    "ks",
    "model_stats",
    "psi",
]

DRIFT_REFERENCE_FILE = "drift_reference.npz"
INPUT_STATS = ("brightness", "contrast", "sharpness")
MODEL_STATS = ("anomaly_score", "confidence")
# kinds whose shift means the model no longer sees what it was trained on (retraining helps);
# an input-only shift (a lamp) is first a camera check
_MODEL_KINDS = frozenset({*MODEL_STATS, "embedding", "audit_disagreement"})
_STAT_SIDE = 256  # input statistics are taken on a copy at most this many pixels a side


def input_stats(image: np.ndarray) -> dict[str, float]:
    """Brightness (mean, 0..1), contrast (s.d., 0..1) and sharpness (variance of the Laplacian of
    the 0..1 grey image) of one frame; uint8/uint16, grey or colour."""
    img = np.asarray(image)
    if img.ndim == 3:
        img = img[..., :3].mean(axis=2) if img.shape[2] > 1 else img[..., 0]
    if img.ndim != 2 or img.size == 0:
        raise ValueError(f"expected a non-empty image, got shape {np.asarray(image).shape}")
    scale = 65535.0 if img.dtype == np.uint16 else 255.0
    h, w = img.shape
    # every step-th pixel for level and spread (no averaging, which would shrink the spread), the
    # central crop at full resolution for focus: a few thousand pixels either way, whatever the camera
    step = max(1, int(np.ceil(max(h, w) / _STAT_SIDE)))
    grey = img[::step, ::step].astype(np.float32) / scale
    y0, x0 = max(0, (h - _STAT_SIDE) // 2), max(0, (w - _STAT_SIDE) // 2)
    crop = img[y0 : y0 + _STAT_SIDE, x0 : x0 + _STAT_SIDE].astype(np.float32) / scale
    lap = cv2.Laplacian(crop, cv2.CV_32F)
    return {
        "brightness": float(grey.mean()),
        "contrast": float(grey.std()),
        "sharpness": float(lap.var()),
    }


def model_stats(prediction: Any) -> dict[str, float]:
    """The model's side of one frame, before any station calibration: its anomaly score and its
    confidence in its own call (max of the defect probability and its complement)."""
    p = float(prediction.defect_probability)
    return {"anomaly_score": float(prediction.anomaly_score), "confidence": max(p, 1.0 - p)}


def psi(
    expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray, bins: int = 10
) -> float:
    """Population stability index of `actual` against `expected`, on the expected's quantile bins.

    Rule of thumb: < 0.1 stable, 0.1-0.25 moving, > 0.25 shifted. Empty bins get a small floor so
    a window with nothing in a bin is a large but finite PSI."""
    e = np.asarray(expected, dtype=np.float64).ravel()
    a = np.asarray(actual, dtype=np.float64).ravel()
    if e.size == 0 or a.size == 0:
        raise ValueError("psi needs non-empty samples")
    edges = np.unique(np.quantile(e, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    e_counts = np.bincount(np.searchsorted(edges, e, side="right"), minlength=edges.size + 1)
    a_counts = np.bincount(np.searchsorted(edges, a, side="right"), minlength=edges.size + 1)
    floor = 0.5
    ep = (e_counts + floor) / (e.size + floor * e_counts.size)
    ap = (a_counts + floor) / (a.size + floor * a_counts.size)
    return float(np.sum((ap - ep) * np.log(ap / ep)))


def ks(expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov (statistic, p-value)."""
    res = sps.ks_2samp(np.asarray(expected, dtype=np.float64), np.asarray(actual, dtype=np.float64))
    return float(res.statistic), float(res.pvalue)


def embedding_shift(reference: np.ndarray, window: np.ndarray) -> float:
    """Distance between the window's mean embedding and the reference's, in units of the
    reference's RMS distance to its own mean (0 = same centre; ~1 = a typical frame's spread)."""
    ref = np.asarray(reference, dtype=np.float64)
    win = np.asarray(window, dtype=np.float64)
    if ref.ndim != 2 or win.ndim != 2 or ref.shape[1] != win.shape[1] or not len(ref) or not len(win):
        raise ValueError(f"embeddings must be [N, D] with the same D, got {ref.shape} and {win.shape}")
    centre = ref.mean(axis=0)
    spread = float(np.sqrt(((ref - centre) ** 2).sum(axis=1).mean())) or 1e-12
    return float(np.linalg.norm(win.mean(axis=0) - centre) / spread)


@dataclass(frozen=True)
class Thresholds:
    """When a window counts as drifted (defaults: quiet on a clean stream of 100+ frames)."""

    psi: float = 0.25
    ks_pvalue: float = 1e-3
    embedding: float = 0.5  # mean shift in units of the reference spread
    disagreement: float = 0.15  # audit disagreement rate over the baseline's
    min_frames: int = 50  # fewer frames in a window say nothing
    min_audits: int = 20


@dataclass
class Baseline:
    """Reference samples per statistic (brightness, ..., anomaly_score, confidence), optionally
    reference embeddings, and the audit disagreement rate the release was accepted with."""

    samples: dict[str, np.ndarray] = field(default_factory=dict)
    embeddings: np.ndarray | None = None
    audit_disagreement: float = 0.0
    source: str = "artifact"  # artifact | first_window

    @classmethod
    def from_predictions(cls, images: Sequence[np.ndarray], predictions: Sequence[Any]) -> Baseline:
        """The release baseline an export carries: input and model statistics of held-out frames
        of the training side (``Baseline.from_predictions(val, model.predict(val)).save(
        export_dir / DRIFT_REFERENCE_FILE)``)."""
        if len(images) != len(predictions):
            raise ValueError(f"{len(images)} images for {len(predictions)} predictions")
        records: dict[str, list[float]] = {k: [] for k in (*INPUT_STATS, *MODEL_STATS)}
        for image, prediction in zip(images, predictions, strict=True):
            for k, v in (input_stats(image) | model_stats(prediction)).items():
                records[k].append(v)
        return cls.from_records(records, source="artifact")

    @classmethod
    def from_records(
        cls,
        records: Mapping[str, Sequence[float]],
        *,
        embeddings: np.ndarray | None = None,
        source: str = "first_window",
    ) -> Baseline:
        return cls(
            {k: np.asarray(v, dtype=np.float64) for k, v in records.items() if len(v)},
            None if embeddings is None else np.asarray(embeddings, dtype=np.float32),
            source=source,
        )

    def save(self, path: str | Path) -> None:
        arrays = {f"s_{k}": v for k, v in self.samples.items()}
        if self.embeddings is not None:
            arrays["embeddings"] = self.embeddings
        arrays["audit_disagreement"] = np.array([self.audit_disagreement])
        with open(path, "wb") as fh:
            np.savez_compressed(fh, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> Baseline:
        with np.load(path) as data:
            samples = {k[2:]: np.asarray(data[k], dtype=np.float64) for k in data.files if k.startswith("s_")}
            emb = np.asarray(data["embeddings"]) if "embeddings" in data.files else None
            audit = float(data["audit_disagreement"][0]) if "audit_disagreement" in data.files else 0.0
        return cls(samples, emb, audit, source="artifact")


@dataclass(frozen=True)
class Finding:
    """One statistic over its threshold: ``value`` (PSI, shift or rate) vs ``threshold``;
    ``baseline`` is the reference median (or rate), ``current`` the window's."""

    kind: str
    value: float
    threshold: float
    baseline: float
    current: float
    message: str


@dataclass
class DriftReport:
    frames: int
    findings: list[Finding] = field(default_factory=list)
    evidence: dict[str, float] = field(default_factory=dict)

    @property
    def drifted(self) -> bool:
        return bool(self.findings)

    @property
    def retrain_recommended(self) -> bool:
        """The model's own view moved (outputs, embeddings) or people overrule it more often."""
        return any(f.kind in _MODEL_KINDS for f in self.findings)


def assess(
    baseline: Baseline,
    window: Mapping[str, Sequence[float]],
    thresholds: Thresholds | None = None,
    *,
    embeddings: np.ndarray | None = None,
    audit_outcomes: Sequence[bool] = (),
) -> DriftReport:
    """Compare one window with the baseline. ``window`` maps a statistic to its values in the
    window; ``audit_outcomes`` is True where a person overruled an audited automatic call."""
    th = thresholds or Thresholds()
    frames = max((len(v) for v in window.values()), default=0)
    report = DriftReport(frames)
    if frames >= th.min_frames:
        for kind, values in window.items():
            ref = baseline.samples.get(kind)
            if ref is None or len(ref) < th.min_frames or len(values) < th.min_frames:
                continue
            cur = np.asarray(values, dtype=np.float64)
            p = psi(ref, cur)
            d, pvalue = ks(ref, cur)
            med_ref, med_cur = float(np.median(ref)), float(np.median(cur))
            report.evidence[f"psi_{kind}"] = p
            report.evidence[f"ks_{kind}"] = d
            report.evidence[f"ks_p_{kind}"] = pvalue
            report.evidence[f"median_{kind}"] = med_cur
            report.evidence[f"baseline_median_{kind}"] = med_ref
            if p > th.psi and pvalue < th.ks_pvalue:
                report.findings.append(
                    Finding(
                        kind,
                        p,
                        th.psi,
                        med_ref,
                        med_cur,
                        f"{kind} shifted: PSI {p:.2f} (> {th.psi:.2f}), KS {d:.2f} (p={pvalue:.1e}), "
                        f"median {med_ref:.3g} -> {med_cur:.3g}",
                    )
                )
        if embeddings is not None and baseline.embeddings is not None and len(embeddings) >= th.min_frames:
            shift = embedding_shift(baseline.embeddings, embeddings)
            report.evidence["embedding_shift"] = shift
            if shift > th.embedding:
                report.findings.append(
                    Finding(
                        "embedding",
                        shift,
                        th.embedding,
                        0.0,
                        shift,
                        f"embeddings moved {shift:.2f} reference spreads from the training distribution",
                    )
                )
    if len(audit_outcomes) >= th.min_audits:
        rate = float(np.mean(np.asarray(audit_outcomes, dtype=bool)))
        report.evidence["audit_disagreement"] = rate
        report.evidence["audits"] = float(len(audit_outcomes))
        limit = baseline.audit_disagreement + th.disagreement
        if rate > limit:
            report.findings.append(
                Finding(
                    "audit_disagreement",
                    rate,
                    limit,
                    baseline.audit_disagreement,
                    rate,
                    f"people overruled {rate:.0%} of {len(audit_outcomes)} audited automatic calls "
                    f"(release: {baseline.audit_disagreement:.0%})",
                )
            )
    return report
