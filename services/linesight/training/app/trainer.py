"""Training proper (synchronous, CPU-bound; no service I/O): dataset -> fitted, evaluated,
exported and packaged model. The job layer (jobs.py) runs this in a worker thread and does the
storage, registry and bus parts."""

from __future__ import annotations

import hashlib
import io
import logging
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from linesight.vision.taxonomy import Taxonomy

log = logging.getLogger(__name__)

Progress = Callable[[str, float, str], None]  # (stage, fraction 0..1, message)


@dataclass(frozen=True)
class ReleaseGate:
    """Metric thresholds a model must meet to go to production; otherwise it stays a candidate
    (shadow mode). Metrics a dataset cannot produce (no defects in the holdout) fail the gate."""

    min_defect_recall: float = 0.8
    max_false_reject_rate: float = 0.1

    def evaluate(self, metrics: dict[str, float]) -> tuple[str, list[str]]:
        """(stage, reasons it is not production)."""
        failures = []
        recall = metrics.get("defect_recall")
        frr = metrics.get("false_reject_rate")
        if recall is None or recall < self.min_defect_recall:
            failures.append(f"defect_recall {recall} < {self.min_defect_recall}")
        if frr is None or frr > self.max_false_reject_rate:
            failures.append(f"false_reject_rate {frr} > {self.max_false_reject_rate}")
        return ("candidate" if failures else "production"), failures

    @classmethod
    def from_env_dict(cls, values: dict[str, Any]) -> ReleaseGate:
        return cls(**{k: float(v) for k, v in values.items() if k in cls.__dataclass_fields__})

    @classmethod
    def load(cls, path: Path) -> ReleaseGate:
        """Thresholds from a YAML file (`min_defect_recall: 0.9` ...); defaults when it is absent.

        A file that exists but cannot be read is an error: silently falling back to defaults
        could promote a model the plant's QA owner meant to hold back.
        """
        if not path.is_file():
            return cls()
        import yaml

        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: release gate must be a mapping of threshold names to numbers")
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"{path}: unknown release gate keys {sorted(unknown)}")
        return cls.from_env_dict(values)


@dataclass(frozen=True)
class TrainingOptions:
    """What to train; small input sizes keep CPU training quick (tests, demo).

    `max_good` / `max_per_class` cap the dataset before the holdout split (seeded sample per
    class, `linesight.vision.data.splits.cap_training`), like a first deployment's few hundred
    images; None = use every image.
    """

    product: str = "default"
    backbone: str = "efficientnet-lite0"
    input_size: tuple[int, int] | None = None
    holdout_fraction: float = 0.25
    target_frr: float = 0.02
    seed: int = 0
    model_overrides: dict[str, Any] = field(default_factory=dict)
    max_good: int | None = None
    max_per_class: int | None = None

    @property
    def capped(self) -> bool:
        return self.max_good is not None or self.max_per_class is not None


@dataclass
class TrainedModel:
    model_version: str
    metrics: dict[str, float]
    taxonomy_version: str
    dataset_version: str
    artifact: bytes  # .tar.gz of the export directory
    class_counts: dict[str, int]


def dataset_version_of(root: Path, caps: str = "") -> str:
    """Content hash of the manifest: the same manifest is the same dataset version.

    `caps` describes a capped sample of it (see TrainingOptions); the same manifest with the same
    caps and seed is the same version, a different sample a different one.
    """
    manifest = root / "manifest.csv" if root.is_dir() else root
    digest = hashlib.sha256(manifest.read_bytes())
    if caps:
        digest.update(b"\0" + caps.encode())
    return "ds-" + digest.hexdigest()[:12]


def _holdout_metrics(flagged: list[bool], truth: list[bool]) -> dict[str, float]:
    t = np.array(truth, dtype=bool)
    f = np.array(flagged, dtype=bool)
    out = {"holdout_images": float(len(t))}
    if t.any():
        out["defect_recall"] = float(np.mean(f[t]))
    if (~t).any():
        out["false_reject_rate"] = float(np.mean(f[~t]))
    return out


def train(
    dataset_dir: Path,
    options: TrainingOptions,
    work_dir: Path,
    progress: Progress | None = None,
    *,
    taxonomy: Taxonomy | None = None,
) -> TrainedModel:
    """Fit on the dataset's training side, measure on a part-disjoint holdout, export and tar.

    `taxonomy` (the product's published one) sets the classes and augmentation policy, travels in
    the export and names the model's taxonomy version; labels outside it fail the job (ValueError),
    because a model must not decide classes the QA owner has not defined. None: the engine's
    generic taxonomy for the labels found.

    Raises linesight.vision.data.manifest.ManifestError / ValueError for unusable datasets; nothing is
    written outside `work_dir`.
    """
    from linesight.vision.data.imageio import read_image
    from linesight.vision.data.manifest import load_manifest
    from linesight.vision.data.splits import SplitError, cap_training, split_by_group
    from linesight.vision.evaluation.metrics import sample_mask
    from linesight.vision.export.writer import export_model
    from linesight.vision.model import InspectionModel

    say = progress or (lambda _s, _f, _m: None)
    samples = load_manifest(dataset_dir, unknown_columns="ignore")
    if not samples:
        raise ValueError(f"{dataset_dir}: the manifest lists no images")
    caps = ""
    if options.capped:
        listed = len(samples)
        samples = cap_training(
            samples, max_good=options.max_good, max_per_class=options.max_per_class, seed=options.seed
        )
        caps = f"max_good={options.max_good},max_per_class={options.max_per_class},seed={options.seed}"
        say("dataset", 0.05, f"{len(samples)} of {listed} images ({caps})")
    else:
        say("dataset", 0.05, f"{len(samples)} images")
    try:
        split = split_by_group(samples, options.holdout_fraction, seed=options.seed)
        train_set, holdout = split.train, split.test
    except (SplitError, ValueError) as exc:  # too small to hold anything out: CV metrics only
        log.warning("no holdout for %s: %s", dataset_dir, exc)
        train_set, holdout = list(samples), []
    overrides = dict(options.model_overrides)
    if options.input_size:
        overrides["input_size"] = options.input_size
    model = InspectionModel.create(options.backbone, seed=options.seed, **overrides)
    images = [read_image(s.image) for s in train_set]
    labels = [s.label for s in train_set]
    # Confirmed labels' boxes (and polygons, which enter the manifest as their boxes) and any
    # manifest masks train the segmentation head that localises defects; None: no geometry.
    masks = [
        None if s.label == "good" else sample_mask(s, (img.shape[0], img.shape[1]))
        for s, img in zip(train_set, images, strict=True)
    ]
    say("features", 0.1, f"training on {len(images)} images")
    report = model.fit(
        images, labels, taxonomy=taxonomy, target_frr=options.target_frr,
        groups=[s.part_id for s in train_set], masks=masks,
        progress=lambda stage, frac: say(stage, 0.1 + 0.7 * frac, ""),
    )  # fmt: skip
    metrics = {k: float(v) for k, v in model.metrics.items()}
    if holdout:
        say("evaluate", 0.82, f"holdout of {len(holdout)} images")
        preds = model.predict([read_image(s.image) for s in holdout])
        flagged = [bool(p.is_defect or p.anomaly_score >= 1.0) for p in preds]
        metrics.update(_holdout_metrics(flagged, [s.label != "good" for s in holdout]))
    else:  # fall back to the model's own out-of-fold estimates
        if "cv_defect_recall" in metrics:
            metrics["defect_recall"] = metrics["cv_defect_recall"]
        if "cv_false_reject_rate" in metrics:
            metrics["false_reject_rate"] = metrics["cv_false_reject_rate"]
    say("export", 0.9, "onnx export")
    export_dir = export_model(model, work_dir / "export", metrics=metrics)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(export_dir, arcname=model.version)
    taxonomy_version = model.taxonomy.version if model.taxonomy else ""
    return TrainedModel(
        model_version=model.version, metrics=metrics, taxonomy_version=taxonomy_version,
        dataset_version=dataset_version_of(Path(dataset_dir), caps), artifact=buf.getvalue(),
        class_counts=dict(report.class_counts),
    )  # fmt: skip
