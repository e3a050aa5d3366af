"""A tiny stand-in for the engine's ExportedModel, for tests of the service plumbing only.

Scores a frame by its brightness: mean/128 x `gain` (so a bright frame is an anomaly), heatmap =
pixel brightness / 128 x gain. `fail_load` makes loading raise. The module is copied into each
export directory so Triton's python backend can import it too (loader `standin:StandInModel`).
With `reference_good` the export carries the engine's recalibration reference (reference_good.npy,
thresholds.npy, the rule in metadata) and the head turns smooth: defect probability =
sigmoid(6 x (score - 1.5)), against `defect_threshold`.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

from linesight.vision.components.scoring import Prediction

LOADER = "standin:StandInModel"


class StandInModel:
    def __init__(
        self,
        gain: float,
        version: str,
        delay_s: float = 0.0,
        *,
        smooth: bool = False,
        defect_threshold: float = 0.5,
    ) -> None:
        self.gain = gain
        self.version = version
        self.delay_s = delay_s
        self.smooth = smooth
        self.defect_threshold = defect_threshold

    @classmethod
    def load(cls, directory: Path) -> StandInModel:
        cfg = json.loads((Path(directory) / "standin.json").read_text())
        if cfg.get("fail_load"):
            raise RuntimeError("stand-in told to fail loading")
        return cls(
            float(cfg.get("gain", 1.0)),
            str(cfg["version"]),
            float(cfg.get("delay_s", 0.0)),
            smooth=bool(cfg.get("smooth", False)),
            defect_threshold=float(cfg.get("defect_threshold", 0.5)),
        )

    def predict(self, images: list[np.ndarray]) -> list[Prediction]:
        if self.delay_s:
            time.sleep(self.delay_s)
        out = []
        for img in images:
            gray = img.mean(axis=2) if img.ndim == 3 else img.astype(np.float32)
            heat = (gray.astype(np.float32) / 128.0) * self.gain
            score = float(heat.mean())
            if self.smooth:
                p = float(1.0 / (1.0 + np.exp(-6.0 * (score - 1.5))))
            else:
                p = float(min(1.0, max(0.0, (score - 1.5) * 4.0)))  # supervised head: only very bright
            out.append(
                Prediction(
                    anomaly_score=score,
                    class_probs={"good": 1.0 - p, "scratch": p},
                    heatmap=heat,
                    defect_probability=p,
                    defect_threshold=self.defect_threshold,
                    top_class="scratch" if p >= self.defect_threshold else "good",
                )
            )
        return out


def make_export(
    directory: Path,
    version: str,
    *,
    gain: float = 1.0,
    fail_load: bool = False,
    delay_s: float = 0.0,
    product: str = "default",
    size: int = 64,
    reference_good: np.ndarray | None = None,
    defect_threshold: float = 0.5,
) -> Path:
    """An export directory the service can load in-process or on Triton; with `reference_good`
    (out-of-fold good defect probabilities) it has what golden-sample recalibration of the defect
    threshold reads, as the engine's export writes it."""
    directory.mkdir(parents=True, exist_ok=True)
    meta: dict[str, object] = {
        "model_version": version,
        "product": product,
        "classes": ["good", "scratch"],
        "input_size": [size, size],
        "taxonomy_version": "tx-1",
    }
    smooth = reference_good is not None
    if reference_good is not None:
        np.save(directory / "reference_good.npy", np.asarray(reference_good, dtype=np.float32))
        np.save(directory / "thresholds.npy", np.array([1.0, defect_threshold], dtype=np.float64))
        meta["thresholds"] = {"anomaly": 1.0, "defect": defect_threshold}
        meta["recalibration"] = {"quantile": 0.75, "deadzone": 1.0, "reference_file": "reference_good.npy"}
    (directory / "metadata.json").write_text(json.dumps(meta))
    (directory / "standin.json").write_text(
        json.dumps(
            {
                "version": version,
                "gain": gain,
                "fail_load": fail_load,
                "delay_s": delay_s,
                "smooth": smooth,
                "defect_threshold": defect_threshold,
            }
        )
    )
    shutil.copy2(Path(__file__), directory / "standin.py")
    return directory
