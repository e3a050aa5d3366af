"""The version stamp and the ``FitReport`` every change of the learned state ends with."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from linesight.vision.model.config import FitReport

if TYPE_CHECKING:
    from linesight.vision.model.inspection import InspectionModel

__all__ = ["fit_report", "stamp_version"]


def stamp_version(model: InspectionModel) -> None:
    """A new version for new weights or thresholds: time-ordered, with a content hash so two
    models fitted in the same second still differ."""
    h = hashlib.sha256()
    h.update(model.patchcore.bank.tobytes())
    h.update(model.net.tail_token.encode())
    if model.head is not None:
        h.update(model.head.weight.tobytes())
    if model.state is not None:
        h.update(json.dumps(model.thresholds, sort_keys=True).encode())
    model.version = f"{datetime.now(UTC):%Y%m%d%H%M%S}-{h.hexdigest()[:8]}"


def fit_report(
    model: InspectionModel,
    n: int,
    counts: Counter[str],
    n_bank: int,
    n_cal: int,
    timings: dict[str, float],
) -> FitReport:
    mb = model.patchcore.nbytes / 1e6
    return FitReport(
        n_images=n,
        class_counts=dict(sorted(counts.items())),
        classes=model.classes,
        anomaly_only_classes=list(model.anomaly_only_classes),
        n_bank_images=n_bank,
        n_calibration_good=n_cal,
        n_head_rows=len(model.replay),
        memory_bank_rows=len(model.patchcore.bank),
        memory_bank_mb=round(mb, 3),
        memory_bank_mb_per_100_images=round(mb / max(n_bank, 1) * 100, 3),
        thresholds=model.thresholds,
        temperature=model.temperature,
        timings={k: round(v, 3) for k, v in timings.items()},
        seconds=round(timings.get("total", 0.0), 3),
        version=model.version,
        cv_metrics=dict(model.metrics),
    )
