"""Training proper (synchronous, CPU-bound; no service I/O): dataset -> fitted, evaluated,
exported and packaged model. A job's worker process (worker.py) and `linesight train` run it;
the job layer does the storage, registry and bus parts."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from linesight.training.app.gates import HoldoutCase, ReleaseGate, evaluate_holdout, thumbnail
from linesight.vision.taxonomy import Taxonomy

if TYPE_CHECKING:
    from linesight.vision.data.manifest import Sample
    from linesight.vision.model import InspectionModel

__all__ = ["ReleaseGate", "TrainedModel", "TrainingOptions", "code_version", "train"]

log = logging.getLogger(__name__)

Progress = Callable[[str, float, str], None]  # (stage, fraction 0..1, message)


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
    # the holdout evaluation (gates.evaluate_holdout) and what made the model (code version,
    # parameters); both also travel in the artifact as evaluation.json and lineage.json
    evaluation: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what the job should tell (merged parts, ...)


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


def code_version() -> str:
    """The package version, plus the git commit when the code runs from a checkout (lineage)."""
    import subprocess
    from importlib.metadata import PackageNotFoundError, version

    try:
        out = version("linesight")
    except PackageNotFoundError:
        out = "0+unknown"
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
            text=True, timeout=5, check=False,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{out}+g{sha}" if sha else out


def _severity(sample: Sample, taxonomy: Taxonomy | None) -> str:
    """The sample's severity: its manifest column, else its class's default in the taxonomy."""
    if sample.label == "good":
        return ""
    given = dict(sample.extra).get("severity", "").strip().lower()
    if given:
        return given
    if taxonomy is not None and taxonomy.has_class(sample.label):
        return taxonomy.get(sample.label).default_severity
    return "major"


SEEDED_TRUE = ("1", "true", "yes", "y", "x")


def is_seeded(sample: Sample) -> bool:
    """A known-defect part seeded into the holdout (manifest column `seeded`)."""
    return dict(sample.extra).get("seeded", "").strip().lower() in SEEDED_TRUE


def evaluate_model(
    model: InspectionModel, holdout: Sequence[Sample], taxonomy: Taxonomy | None
) -> dict[str, Any]:
    """The model's predictions on `holdout` as a gate evaluation (gates.evaluate_holdout).

    A frame counts as flagged when the model would not pass it (defect probability at the
    operating point, or an anomaly score at threshold); whether it goes to review is what the
    line would do: the plant's decision (`vision.decide`, with the bands fitted for the model,
    else the taxonomy's) says review.
    """
    from linesight.vision.data.imageio import read_image
    from linesight.vision.decide import decide

    images = [read_image(s.image) for s in holdout]
    preds = model.predict(images)
    rules = taxonomy or model.taxonomy or Taxonomy.default_for([c for c in model.classes if c != "good"])
    cases: list[HoldoutCase] = []
    for s, p in zip(holdout, preds, strict=True):
        flagged = bool(p.is_defect or p.anomaly_score >= 1.0)
        if not flagged:
            predicted = "good"
        elif p.top_class != "good":
            predicted = p.top_class
        else:
            predicted = "anomaly"
        confidence = p.defect_probability if flagged else 1.0 - p.defect_probability
        try:
            review = decide(p, rules).verdict == "review"
        except (KeyError, ValueError):  # a class the taxonomy does not know escalates: a human looks
            review = True
        cases.append(HoldoutCase(
            name=s.image.name, label=s.label, severity=_severity(s, taxonomy), flagged=flagged,
            predicted=predicted, defect_probability=float(p.defect_probability),
            confidence=float(confidence), review=bool(review),
        ))  # fmt: skip
    evaluation = evaluate_holdout(cases)
    seeded = [(s, c) for s, c in zip(holdout, cases, strict=True) if is_seeded(s)]
    if seeded:  # known-defect parts seeded into the holdout: their catch rate, reported apart
        caught = sum(1 for _, c in seeded if c.flagged)
        evaluation["seeded"] = {
            "images": len(seeded), "parts": len({s.part_id for s, _ in seeded}), "caught": caught,
            "recall": caught / len(seeded), "missed": [c.name for _, c in seeded if not c.flagged][:20],
        }  # fmt: skip
        evaluation["metrics"]["seeded_recall"] = caught / len(seeded)
    # Thumbnails (image with heatmap) only for the few worst misses the report shows.
    index = {c.name: i for i, c in enumerate(cases)}
    for miss in evaluation["worst_misses"]:
        i = index[miss["image"]]
        miss["thumbnail"] = thumbnail(images[i], preds[i].heatmap)
    return evaluation


def train(
    dataset_dir: Path,
    options: TrainingOptions,
    work_dir: Path,
    progress: Progress | None = None,
    *,
    taxonomy: Taxonomy | None = None,
    holdout: Sequence[Sample] | None = None,
    engine_dir: Path | None = None,
    merge_near_duplicates: bool = True,
) -> TrainedModel:
    """Fit on the dataset's training side, measure on a part-disjoint holdout, export and tar.

    `taxonomy` (the product's published one) sets the classes and augmentation policy, travels in
    the export and names the model's taxonomy version; labels outside it fail the job (ValueError),
    because a model must not decide classes the QA owner has not defined. None: the engine's
    generic taxonomy for the labels found.

    `holdout`: the protected holdout of a dataset version (read by the caller through the logged
    holdout reader; the dataset then holds train and val only): the model is fitted on the whole
    dataset and evaluated on it. None: a part-disjoint holdout is split off the dataset, after
    near-duplicate photos (exact, perceptual-hash or embedding links:
    `splits.group_near_duplicates`) have merged their parts into one group, so a re-shot part
    never scores itself (`merge_near_duplicates=False` splits by the manifest's part ids only).

    `engine_dir`: where to save the engine state (`InspectionModel.save`) that an incremental job
    extends later; None: not kept.

    The holdout evaluation (per class and severity, calibration, review rate, worst misses) is
    in `evaluation` and its flat figures in `metrics`; it and the lineage (code version,
    parameters) are packaged in the artifact as evaluation.json and lineage.json.

    Raises linesight.vision.data.manifest.ManifestError / ValueError for unusable datasets; nothing is
    written outside `work_dir`.
    """
    from linesight.vision.data.imageio import read_image
    from linesight.vision.data.manifest import load_manifest
    from linesight.vision.data.splits import (
        SplitError,
        assert_no_leakage,
        cap_training,
        group_near_duplicates,
        split_by_group,
    )
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
    protected = holdout is not None
    notes: list[str] = []
    if holdout is not None:
        train_set, holdout = list(samples), list(holdout)
        # Enforced, not assumed: a training set holding a part of the protected holdout is refused
        # before anything is fitted (LeakageError names the parts).
        assert_no_leakage(train_set, holdout)
    else:
        if merge_near_duplicates:
            say("dataset", 0.07, "grouping near-duplicate photos into parts")
            samples, links = group_near_duplicates(samples)
            if links:
                notes.append(f"{links} near-duplicate links merged parts into one split group")
        try:
            split = split_by_group(samples, options.holdout_fraction, seed=options.seed)
            train_set, holdout = split.train, split.test
        except (SplitError, ValueError) as exc:  # too small to hold anything out: CV metrics only
            log.warning("no holdout for %s: %s", dataset_dir, exc)
            notes.append(f"no holdout: {exc}")
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
    evaluation: dict[str, Any] = {}
    if holdout:
        say("evaluate", 0.82, f"holdout of {len(holdout)} images")
        evaluation = evaluate_model(model, holdout, model.taxonomy or taxonomy)
        metrics.update(evaluation["metrics"])
    else:  # fall back to the model's own out-of-fold estimates
        if "cv_defect_recall" in metrics:
            metrics["defect_recall"] = metrics["cv_defect_recall"]
        if "cv_false_reject_rate" in metrics:
            metrics["false_reject_rate"] = metrics["cv_false_reject_rate"]
    say("export", 0.9, "onnx export")
    export_dir = export_model(model, work_dir / "export", metrics=metrics)
    _save_drift_reference(model, [s for s in holdout if s.label == "good"], export_dir)
    if engine_dir is not None:
        model.save(engine_dir)
    lineage = {
        "code_version": code_version(),
        "parameters": {
            "backbone": options.backbone, "input_size": list(options.input_size or ()),
            "holdout_fraction": options.holdout_fraction, "target_frr": options.target_frr,
            "seed": options.seed, "max_good": options.max_good, "max_per_class": options.max_per_class,
            "model_overrides": {k: repr(v) for k, v in options.model_overrides.items()},
        },
        "holdout": "protected" if protected and evaluation else ("split" if evaluation else "none"),
        "train_images": len(train_set),
        "holdout_images": len(holdout),
    }  # fmt: skip
    (export_dir / "evaluation.json").write_text(json.dumps(evaluation), encoding="utf-8")
    (export_dir / "lineage.json").write_text(json.dumps(lineage), encoding="utf-8")
    buf = io.BytesIO()
    # level 1: ONNX weights and float arrays hardly compress; level 9 costs seconds for ~1 %
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        tar.add(export_dir, arcname=model.version)
    taxonomy_version = model.taxonomy.version if model.taxonomy else ""
    return TrainedModel(
        model_version=model.version, metrics=metrics, taxonomy_version=taxonomy_version,
        dataset_version=dataset_version_of(Path(dataset_dir), caps), artifact=buf.getvalue(),
        class_counts=dict(report.class_counts), evaluation=evaluation, lineage=lineage, notes=notes,
    )  # fmt: skip


DRIFT_SAMPLE = 200  # held-out good frames the release baseline is measured on


def _save_drift_reference(model: InspectionModel, good: Sequence[Sample], export_dir: Path) -> None:
    """The release baseline the inference service's drift monitor compares each station's window
    with (`vision.drift.Baseline`, in the export as drift_reference.npz): input and model
    statistics of held-out good frames, what a healthy line shows. Without held-out good frames
    the monitor takes a station's first window instead."""
    from linesight.vision.data.imageio import read_image
    from linesight.vision.drift import DRIFT_REFERENCE_FILE, Baseline

    if not good:
        return
    images = [read_image(s.image) for s in good[:DRIFT_SAMPLE]]
    Baseline.from_predictions(images, model.predict(images)).save(export_dir / DRIFT_REFERENCE_FILE)
