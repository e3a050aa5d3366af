"""`linesight eval`: offline evaluation of the detection engine on a manifest dataset.

No running services needed. The split is leakage-safe (parts never straddle), caps are sampled
from the training side only, and the figures are defined as follows:

* detection: score = ``Prediction.defect_probability``; reject when it is >= the model's
  operating point (``defect_threshold``, calibrated on the training side). Defect classes the
  training side lacks still count as defects here. `recall_at_frr_2pct` is defect recall at the
  ROC point where 2 % of the test side's good images are rejected. No good images on either side
  (e.g. NEU-DET) -> every detection figure is null;
* classification: on defect images of the defect classes the training side has, predicted class
  = the most probable defect class (an unclassifiable anomaly counts as wrong);
* ``--recalibrate-good N``: N good test images (seeded) go to ``InspectionModel.recalibrate`` and
  are excluded from all scoring; FRR/escape are reported without and with recalibration;
* ``--loop`` (``--review-budget B``, ``--update-every K``): after the figures above, the scored
  test side is streamed in a seeded order through the fitted model (``evaluation/loop.py``):
  each frame is decided before its label is known; in the first half only, the product's review
  selection picks frames within B (what its reasons leave of B is spent at the end of the first
  half on its least certain frames), answered with their ground truth, and the model learns from
  them (``update_from_reviews``) every K labels; the second half is never labelled. JSON key
  ``loop``: budget, labels used, updates, slowest update, FRR/escapes of the second half under
  the initial (``before``) and the final (``after``) model, and the curve between them.
"""

from __future__ import annotations

import argparse
import inspect
import json
import random
import resource
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from linesight.vision.data.hygiene import balance_report, bias_report, find_duplicates
from linesight.vision.data.imageio import ImageError, read_image
from linesight.vision.data.manifest import GOOD, ManifestError, Sample, load_manifest
from linesight.vision.data.splits import (
    Split,
    SplitError,
    assert_no_leakage,
    cap_training,
    split_by_batches,
    split_by_group,
    split_by_stations,
)
from linesight.vision.evaluation.metrics import (
    classification_metrics,
    detection_metrics,
    expected_calibration_error,
    localization_metrics,
    rates_at_threshold,
    sample_mask,
)
from linesight.vision.model.review_band import review_report

__all__ = ["EvalOptions", "EvalOutcome", "build_split", "register", "run", "run_evaluation"]

UNKNOWN_DEFECT = "unknown_defect"


class PredictionLike(Protocol):
    anomaly_score: float
    class_probs: dict[str, float]
    heatmap: np.ndarray
    defect_probability: float
    defect_threshold: float


class ModelLike(Protocol):
    def fit(
        self, images: Sequence[np.ndarray], labels: Sequence[str], *, groups: Sequence[str] | None = ...
    ) -> Any: ...
    def predict(self, images: Sequence[np.ndarray], *, batch_size: int = 16) -> Sequence[Any]: ...
    def recalibrate(self, good_images: Sequence[np.ndarray]) -> Any: ...


ModelFactory = Callable[[str, int], ModelLike]


def default_model_factory(backbone: str, seed: int) -> ModelLike:
    """The real engine (imported lazily: torch is slow to import and --help should be fast)."""
    from linesight.vision.model import InspectionModel

    return InspectionModel.create(backbone, seed=seed)


@dataclass
class EvalOptions:
    """Everything that changes the figures (recorded in the JSON for reproducibility)."""

    backbone: str = "efficientnet-lite0"
    seed: int = 0
    max_good: int | None = None
    max_per_class: int | None = None
    recalibrate_good: int = 0
    frr_target: float = 0.02
    batch_size: int = 32  # 2 cores: 32 gave ~25 % more img/s than 16 (onnxruntime + one kNN matmul per chunk)
    learning_curve: bool = False
    gallery: int = 12
    checks: bool = True
    loop: bool = False
    review_budget: int = 40
    update_every: int = 10


@dataclass
class EvalOutcome:
    """The JSON result plus the arrays the HTML report needs."""

    result: dict[str, Any]
    is_defect: list[bool] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    gallery: list[Any] = field(default_factory=list)
    curve: Any = None
    warnings: list[str] = field(default_factory=list)


def _peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kb / 1024 if sys.platform != "darwin" else kb / 2**20, 1)


def _load(samples: Sequence[Sample]) -> list[np.ndarray]:
    return [read_image(s.image) for s in samples]


def _predicted_class(probs: dict[str, float], classes: Sequence[str]) -> str:
    """Most probable defect class; mass outside known classes wins -> 'unknown_defect'."""
    defect = {c: p for c, p in probs.items() if c != GOOD}
    best = max(defect, key=lambda c: defect[c]) if defect else UNKNOWN_DEFECT
    unknown_mass = max(0.0, 1.0 - sum(probs.values()))
    if not defect or unknown_mass > defect[best]:
        return UNKNOWN_DEFECT
    return best if best in classes else UNKNOWN_DEFECT


def _fit(model: ModelLike, images: list[np.ndarray], samples: Sequence[Sample], target_frr: float) -> Any:
    labels = [s.label for s in samples]
    kwargs: dict[str, Any] = {}
    params = inspect.signature(model.fit).parameters
    if "groups" in params:
        kwargs["groups"] = [s.part_id for s in samples]
    if "target_frr" in params:
        kwargs["target_frr"] = target_frr
    if "masks" in params:  # labels with geometry (masks, boxes) train the segmentation head
        kwargs["masks"] = [
            None if s.label == GOOD else sample_mask(s, (img.shape[0], img.shape[1]))
            for s, img in zip(samples, images, strict=True)
        ]
    return model.fit(images, labels, **kwargs)


def _review_rate(model: Any, preds: Sequence[Any]) -> float | None:
    """Share of images `decide` sends to a human; None until decide/taxonomy are available."""
    try:
        from linesight.vision.decide import decide
    except ImportError:
        return None
    taxonomy = getattr(model, "taxonomy", None)
    if taxonomy is None or not preds:
        return None
    verdicts = [decide(p, taxonomy).verdict for p in preds]
    return sum(v == "review" for v in verdicts) / len(verdicts)


def _drop_singletons(train: list[Sample]) -> tuple[list[Sample], list[str]]:
    """A class with one example can be neither learned nor validated: leave it out (documented)."""
    counts = Counter(s.label for s in train)
    singles = sorted(c for c, n in counts.items() if n < 2 and c != GOOD)
    return [s for s in train if s.label not in singles], singles


def run_evaluation(
    split: Split,
    opts: EvalOptions,
    *,
    model_factory: ModelFactory = default_model_factory,
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr),
) -> EvalOutcome:
    """Train on split.train (capped), score split.test, return the figures."""
    notes: list[str] = []
    train = cap_training(
        split.train, max_good=opts.max_good, max_per_class=opts.max_per_class, seed=opts.seed
    )
    train, singles = _drop_singletons(train)
    if singles:
        notes.append(f"classes with a single training example left out of training: {singles}")
    if not train:
        raise SplitError("the training side is empty after caps")
    test = list(split.test)
    assert_no_leakage(train, test)

    rng = random.Random(opts.seed)
    test_good = sorted((s for s in test if s.label == GOOD), key=lambda s: str(s.image))
    recal: list[Sample] = []
    if opts.recalibrate_good:
        if opts.recalibrate_good >= len(test_good):
            raise SplitError(
                f"--recalibrate-good {opts.recalibrate_good} needs more good test images "
                f"(have {len(test_good)})"
            )
        recal = rng.sample(test_good, opts.recalibrate_good)
    recal_set = {s.image for s in recal}
    scored = [s for s in test if s.image not in recal_set]

    log(f"loading {len(train)} training and {len(test)} test images")
    t = time.perf_counter()
    train_images = _load(train)
    scored_images = _load(scored)
    load_seconds = time.perf_counter() - t

    model = model_factory(opts.backbone, opts.seed)
    log(f"training ({Counter(s.label for s in train)})")
    t = time.perf_counter()
    fit_report = _fit(model, train_images, train, opts.frr_target)
    train_seconds = time.perf_counter() - t
    del train_images

    log(f"scoring {len(scored)} test images")
    t = time.perf_counter()
    preds = list(model.predict(scored_images, batch_size=opts.batch_size))
    predict_seconds = time.perf_counter() - t

    train_classes = sorted({s.label for s in train if s.label != GOOD})
    is_defect = [s.label != GOOD for s in scored]
    scores = [float(p.defect_probability) for p in preds]
    threshold = float(preds[0].defect_threshold) if preds else None
    has_good = any(s.label == GOOD for s in train) and not all(is_defect)
    detection = detection_metrics(
        is_defect, scores, threshold if has_good else None, frr_target=opts.frr_target
    )
    if not has_good:
        detection = dict.fromkeys(detection)

    # classification: defect images of classes the training side has
    cls_idx = [i for i, s in enumerate(scored) if s.label != GOOD and s.label in train_classes]
    y_true = [scored[i].label for i in cls_idx]
    y_pred = [_predicted_class(preds[i].class_probs, train_classes) for i in cls_idx]
    classification = (
        classification_metrics(y_true, y_pred, train_classes)
        if cls_idx
        else {"accuracy": None, "per_class": {}, "labels": [], "confusion_matrix": [], "top_confusions": []}
    )
    classification["excluded_classes"] = sorted(
        {s.label for s in scored if s.label != GOOD} - set(train_classes)
    )
    classification["anomaly_only_classes"] = list(getattr(fit_report, "anomaly_only_classes", []) or [])
    if cls_idx:
        conf = [preds[i].class_probs.get(p, 0.0) for i, p in zip(cls_idx, y_pred, strict=True)]
        correct = [t == p for t, p in zip(y_true, y_pred, strict=True)]
        classification["ece"] = expected_calibration_error(np.clip(conf, 0, 1), correct)

    calibration: dict[str, float | None] = {"ece_defect_probability": None}
    if has_good:
        conf_d = np.array([max(p, 1 - p) for p in scores])
        ok = [(p >= 0.5) == d for p, d in zip(scores, is_defect, strict=True)]
        calibration["ece_defect_probability"] = expected_calibration_error(conf_d, ok)

    localization = _localization(scored, preds)
    taxonomy = getattr(model, "taxonomy", None)
    review = review_report(preds, [s.label for s in scored], taxonomy) if taxonomy else None

    result: dict[str, Any] = {
        "detection": detection,
        "classification": classification,
        "review_rate": _review_rate(model, preds),
        "train_seconds": round(train_seconds, 2),
        "images_per_second": round(len(scored) / predict_seconds, 2) if predict_seconds > 0 else None,
        "peak_rss_mb": None,
        "localization": localization,
        "review": review,
        "calibration": calibration,
        "load_seconds": round(load_seconds, 2),
        "split": {
            "description": split.description,
            "train_counts": dict(sorted(Counter(s.label for s in train).items())),
            "test_counts": dict(sorted(Counter(s.label for s in scored).items())),
            "dropped_from_train": len(split.dropped),
        },
        "options": dict(opts.__dict__),
        "model": _fit_summary(fit_report),
        "notes": notes,
    }

    if recal:
        log(f"recalibrating on {len(recal)} good test images")
        report = model.recalibrate(_load(recal))
        preds_r = list(model.predict(scored_images, batch_size=opts.batch_size))
        scores_r = [float(p.defect_probability) for p in preds_r]
        thr_r = float(preds_r[0].defect_threshold)
        frr_r, esc_r = rates_at_threshold(is_defect, scores_r, thr_r) if has_good else (None, None)
        result["recalibrated"] = {
            "n_images": len(recal),
            "threshold": thr_r if has_good else None,
            "false_reject_rate": frr_r,
            "escape_rate": esc_r,
            "shift": getattr(report, "shift", None),
        }

    if opts.loop:
        result["loop"], result["loop_details"] = _review_loop(
            model, scored, scored_images, train_classes, opts, log
        )

    if opts.checks:
        result["data_checks"] = _data_checks(train, scored)
        notes.extend(result["data_checks"].pop("_warnings"))

    curve = None
    if opts.learning_curve:
        curve = _learning_curve(train, scored, scored_images, opts, model_factory, log)
        result["learning_curve"] = curve.as_dict()

    result["peak_rss_mb"] = _peak_rss_mb()
    gallery = _worst_misses(
        scored, scored_images, preds, is_defect, scores, threshold, y_true, y_pred, cls_idx, opts
    )
    return EvalOutcome(result, is_defect, scores, gallery, curve, notes)


def _review_loop(
    model: Any,
    scored: Sequence[Sample],
    images: Sequence[np.ndarray],
    classes: Sequence[str],
    opts: EvalOptions,
    log: Callable[[str], None],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The prequential review loop on the scored test side (module docstring); the model learns
    in place, so it runs after every other figure of the evaluation."""
    from linesight.vision.evaluation.loop import LoopOptions, run_loop, summarize

    if not hasattr(model, "update_from_reviews"):
        raise SplitError("--loop needs a model with update_from_reviews")
    truth = [s.label for s in scored]
    lo = LoopOptions(review_budget=opts.review_budget, update_every=opts.update_every, seed=opts.seed)
    log(
        f"review loop: streaming {len(scored)} frames, budget {lo.review_budget}, "
        f"update every {lo.update_every}"
    )
    run = run_loop(model, images, lambda i: truth[i], lo, log=lambda m: log(f"review loop: {m}"))
    return summarize(run, truth, opts.review_budget, classes)


def _fit_summary(report: Any) -> dict[str, Any]:
    keys = (
        "classes",
        "anomaly_only_classes",
        "memory_bank_mb",
        "memory_bank_mb_per_100_images",
        "thresholds",
        "temperature",
        "timings",
        "version",
        "cv_metrics",
    )
    return {k: getattr(report, k) for k in keys if hasattr(report, k)}


def _localization(scored: Sequence[Sample], preds: Sequence[Any]) -> dict[str, Any]:
    """Pixel AUROC / AUPRO / region IoU over test images with masks or boxes (goods add
    defect-free pixels), overall and per class (``metrics.localization_metrics``)."""
    if not any(s.mask is not None or s.boxes for s in scored):
        return {"pixel_auroc": None, "aupro": None}
    masks, maps, labels = [], [], []
    for s, p in zip(scored, preds, strict=True):
        heat = np.asarray(p.heatmap, dtype=np.float32)
        m = sample_mask(s, (heat.shape[0], heat.shape[1]))
        if m is None:
            continue  # a defect without geometry has unknown pixels
        masks.append(m)
        maps.append(heat)
        labels.append(s.label)
    out = localization_metrics(masks, maps, labels)
    out["geometry"] = "masks" if any(s.mask is not None for s in scored) else "boxes"
    return out


def _data_checks(train: Sequence[Sample], test: Sequence[Sample]) -> dict[str, Any]:
    """Duplicates across the split, balance and bias: the figures are only as good as the data."""
    everything = [*train, *test]
    dup = find_duplicates(everything)
    train_set = {s.image for s in train}
    across_exact = sum(
        1 for g in dup.exact if any(p in train_set for p in g) and any(p not in train_set for p in g)
    )
    across_near = sum(1 for n in dup.near if (n.a in train_set) != (n.b in train_set))
    bias = bias_report(everything)
    flagged = [b.attribute for b in bias if b.flagged]
    bal = balance_report(train)
    warn = []
    if across_exact or across_near:
        warn.append(
            f"{across_exact} exact and {across_near} near-duplicate image pair(s) straddle train/test: "
            "likely the same physical part re-photographed; the test figures may be optimistic"
        )
    if flagged:
        warn.append(
            f"attributes that alone separate good from defect images: {flagged} (possible capture bias)"
        )
    if bal.small_classes:
        warn.append(f"training classes below 30 examples: {bal.small_classes}")
    return {
        "exact_duplicate_groups": len(dup.exact),
        "exact_duplicates_across_split": across_exact,
        "near_duplicates_across_split": across_near,
        "bias": {b.attribute: round(b.auroc, 3) for b in bias},
        "bias_flagged": flagged,
        "small_training_classes": bal.small_classes,
        "_warnings": warn,
    }


def _worst_misses(
    scored: Sequence[Sample],
    images: Sequence[np.ndarray],
    preds: Sequence[Any],
    is_defect: Sequence[bool],
    scores: Sequence[float],
    threshold: float | None,
    y_true: Sequence[str],
    y_pred: Sequence[str],
    cls_idx: Sequence[int],
    opts: EvalOptions,
) -> list[Any]:
    """Escapes (lowest-scoring defects), false rejects (highest goods), then wrong classes."""
    from linesight.vision.evaluation.report import GalleryItem

    if opts.gallery <= 0:
        return []
    items: list[tuple[float, int, str]] = []
    if threshold is not None:
        for i, (d, s) in enumerate(zip(is_defect, scores, strict=True)):
            if d and s < threshold:
                items.append((threshold - s, i, f"escape: {scored[i].label}, p={s:.2f}"))
            elif not d and s >= threshold:
                items.append((s - threshold, i, f"false reject: good, p={s:.2f}"))
    for i, t, p in zip(cls_idx, y_true, y_pred, strict=True):
        if t != p:
            items.append((0.0, i, f"{t} classified as {p}"))
    items.sort(key=lambda x: -x[0])
    return [
        GalleryItem(images[i], preds[i].heatmap, f"{cap} — {scored[i].image.name}")
        for _, i, cap in items[: opts.gallery]
    ]


def _learning_curve(
    train: list[Sample],
    scored: list[Sample],
    scored_images: list[np.ndarray],
    opts: EvalOptions,
    model_factory: ModelFactory,
    log: Callable[[str], None],
) -> Any:
    """Error on the test side vs training size (detection error if goods exist, else class error)."""
    from linesight.vision.evaluation.learning_curve import learning_curve

    def fit_error(idx: list[int]) -> float:
        sub, _ = _drop_singletons([train[i] for i in idx])
        log(f"learning curve: training on {len(sub)} images")
        m = model_factory(opts.backbone, opts.seed)
        _fit(m, _load(sub), sub, opts.frr_target)
        preds = m.predict(scored_images, batch_size=opts.batch_size)
        if any(s.label == GOOD for s in sub) and any(s.label == GOOD for s in scored):
            wrong = [
                (p.defect_probability >= p.defect_threshold) != (s.label != GOOD)
                for s, p in zip(scored, preds, strict=True)
            ]
        else:
            classes = sorted({s.label for s in sub if s.label != GOOD})
            wrong = [
                _predicted_class(p.class_probs, classes) != s.label
                for s, p in zip(scored, preds, strict=True)
            ]
        return float(np.mean(wrong))

    return learning_curve([s.label for s in train], fit_error, fractions=(0.25, 0.5, 1.0), seed=opts.seed)


# --- CLI ---------------------------------------------------------------------------------------


def build_split(args: argparse.Namespace) -> Split:
    """The split the flags ask for; every path checks that parts do not straddle."""
    if args.train or args.test:
        if not (args.train and args.test) or args.dataset:
            raise SplitError("use --train DIR together with --test DIR (and without --dataset)")
        return Split(
            load_manifest(args.train), load_manifest(args.test), f"train {args.train} / test {args.test}"
        )
    if not args.dataset:
        raise SplitError(
            "give --dataset DIR (with --test-batches or --test-fraction) or --train DIR --test DIR"
        )
    samples = load_manifest(args.dataset)
    chosen = [bool(args.test_batches), bool(args.test_stations), args.test_fraction is not None]
    if sum(chosen) != 1:
        raise SplitError("choose exactly one of --test-batches, --test-stations, --test-fraction")
    if args.test_batches:
        return split_by_batches(samples, args.test_batches.split(","))
    if args.test_stations:
        return split_by_stations(samples, args.test_stations.split(","))
    return split_by_group(samples, args.test_fraction, group_by=args.group_by, seed=args.seed)


def _non_negative(text: str) -> int:
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def _positive(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def register(subparsers: Any) -> None:
    """Add `linesight eval` to the CLI."""
    p = subparsers.add_parser(
        "eval",
        help="evaluate the detection engine on a manifest dataset (offline)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_argument_group("data")
    src.add_argument("--dataset", type=Path, help="dataset folder with manifest.csv")
    src.add_argument("--test-batches", help="comma-separated batches held out for testing, e.g. exp5")
    src.add_argument("--test-stations", help="comma-separated stations held out for testing")
    src.add_argument("--test-fraction", type=float, help="stratified group split: fraction of groups to test")
    src.add_argument("--group-by", default="part_id", choices=("part_id", "batch", "station"))
    src.add_argument("--train", type=Path, help="training dataset folder (with --test)")
    src.add_argument("--test", type=Path, help="test dataset folder (with --train)")
    caps = p.add_argument_group("training side")
    caps.add_argument("--max-good", type=_non_negative, help="cap on good training images (sampled)")
    caps.add_argument("--max-per-class", type=_non_negative, help="cap per defect class (sampled)")
    caps.add_argument("--seed", type=int, default=0)
    caps.add_argument("--backbone", default="efficientnet-lite0")
    caps.add_argument(
        "--recalibrate-good",
        type=_non_negative,
        default=0,
        metavar="N",
        help="use N good test images for golden-sample recalibration (excluded from scoring)",
    )
    caps.add_argument("--frr", type=float, default=0.02, help="target false-reject rate (default 0.02)")
    caps.add_argument("--batch-size", type=int, default=32)
    lp = p.add_argument_group("review loop")
    lp.add_argument(
        "--loop", action="store_true", help="also stream the test side through the review loop (prequential)"
    )
    lp.add_argument(
        "--review-budget", type=_non_negative, default=40, metavar="B", help="labels the loop may ask"
    )
    lp.add_argument("--update-every", type=_positive, default=10, metavar="K", help="update after K labels")
    out = p.add_argument_group("output")
    out.add_argument("--json", type=Path, help="write the figures as JSON")
    out.add_argument("--html", type=Path, help="write a self-contained HTML report")
    out.add_argument("--learning-curve", action="store_true", help="also train on 25/50 %% (slow)")
    out.add_argument("--gallery", type=_non_negative, default=12, help="worst misses shown in the report")
    out.add_argument("--no-checks", action="store_true", help="skip duplicate/bias checks")
    out.add_argument("--quiet", action="store_true", help="no progress messages")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, *, model_factory: ModelFactory = default_model_factory) -> int:
    """Entry point of `linesight eval`; 0 on success, 2 on bad input."""
    from linesight.vision.evaluation.report import format_table, render_html

    def log(msg: str) -> None:
        if not args.quiet:
            print(f"[eval] {msg}", file=sys.stderr, flush=True)

    opts = EvalOptions(
        backbone=args.backbone,
        seed=args.seed,
        max_good=args.max_good,
        max_per_class=args.max_per_class,
        recalibrate_good=args.recalibrate_good,
        frr_target=args.frr,
        batch_size=args.batch_size,
        learning_curve=args.learning_curve,
        gallery=args.gallery,
        checks=not args.no_checks,
        loop=args.loop,
        review_budget=args.review_budget,
        update_every=args.update_every,
    )
    if not 0.0 < opts.frr_target < 0.5:
        print(f"linesight eval: --frr must be in (0, 0.5), got {opts.frr_target}", file=sys.stderr)
        return 2
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            split = build_split(args)
        for w in caught:
            log(f"warning: {w.message}")
        outcome = run_evaluation(split, opts, model_factory=model_factory, log=log)
    except (ManifestError, SplitError, ImageError) as exc:
        print(f"linesight eval: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # the model's InputError and other bad-input errors
        print(f"linesight eval: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    outcome.warnings[:0] = [str(c.message) for c in caught]
    print(format_table(outcome.result))
    for text in outcome.warnings:
        print(f"warning: {text}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(outcome.result, indent=2, default=_json_default))
        log(f"wrote {args.json}")
    if args.html:
        args.html.parent.mkdir(parents=True, exist_ok=True)
        args.html.write_text(
            render_html(
                outcome.result,
                subtitle=split.description,
                is_defect=outcome.is_defect,
                scores=outcome.scores,
                gallery=outcome.gallery,
                curve=outcome.curve,
                warnings=outcome.warnings,
            )
        )
        log(f"wrote {args.html}")
    return 0


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry (`python -m linesight.cli.cmd_eval ...`), same flags as `linesight eval`."""
    parser = argparse.ArgumentParser(prog="linesight")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["eval", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
