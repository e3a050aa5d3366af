"""``InspectionModel``: PatchCore anomaly model + supervised defect-type head on one backbone.

Design (issue 3, "operating point across sessions"):
  * the supervised head (with ``good`` as a class) carries known defect classes and produces the
    calibrated ``defect_probability``; PatchCore's anomaly score never vetoes it, it only sends
    frames without a confident class to review (see ``decide``);
  * thresholds are calibrated on held-out training-side data and stored as data: the defect
    threshold balances out-of-fold false rejects against out-of-fold escapes (false rejects
    capped at ``oof_frr_factor`` x the target), PatchCore's on good images outside the bank;
  * ``recalibrate`` re-fits them from a few golden good frames of the current session (a
    session good-score model shrunk towards the training side);
  * ``add_class`` appends one head row, old rows fixed, against replayed features;
  * optionally (``finetune_blocks`` > 0) the last tail blocks are fine-tuned with the head
    (``finetune.py``); the trunk, and so PatchCore, stays frozen and shared.

Example:
    >>> model = InspectionModel.create(seed=0)            # doctest: +SKIP
    >>> report = model.fit(images, labels)                # doctest: +SKIP
    >>> model.predict([image])[0].defect_probability      # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from torch import nn

from linesight.vision.components.backbone import BACKBONES, configure_threads, load_backbone
from linesight.vision.components.calibrate import (
    balanced_threshold,
    fit_temperature,
    recalibrated_threshold,
    threshold_at_frr,
)
from linesight.vision.components.features import FeatureNet, extract
from linesight.vision.components.finetune import (
    FinetuneSettings,
    blocks_state,
    final_means,
    finetune_tail,
    load_blocks,
)
from linesight.vision.components.heads import (
    OTHER,
    LinearHead,
    cross_val_logits,
    fit_linear_head,
    fit_new_class_row,
)
from linesight.vision.components.patchcore import PatchCore, PatchCoreConfig
from linesight.vision.components.scoring import (
    GOOD,
    InputError,
    Prediction,
    ScoringState,
    assemble_predictions,
    check_images,
    preprocess,
    softmax,
)
from linesight.vision.data.augment import augment_image
from linesight.vision.taxonomy import Augmentation, Taxonomy

__all__ = [
    "GOOD",
    "CalibrationReport",
    "FitReport",
    "InputError",
    "InspectionModel",
    "ModelConfig",
    "Prediction",
]

FORMAT_VERSION = 1
_TAIL = "tail."  # arrays.npz prefix of the fine-tuned tail weights
_log = logging.getLogger(__name__)
Progress = Callable[[str, float], None]


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "efficientnet-lite0"
    input_size: tuple[int, int] = (192, 192)  # (h, w): 192 meets the 2-core speed target; 224 no better
    min_examples: int = 30  # a class needs this many labels for a supervised head
    min_other_examples: int = 5  # rare-class images train the "defect, type unknown" bucket
    augment_copies: int = 2  # per defect image, class-balanced (exp5 AUROC 0.9953 with 0, 0.9957 with 3)
    good_augment_copies: int = 0
    bank_fraction: float = 0.5  # of good images, for the PatchCore memory bank
    max_bank_images: int = 200
    head_c: float = 0.3  # inverse L2 strength of the head (0.3 best of 0.1-3 on magnetic tile)
    cv_folds: int = 5
    runtime: str = "onnx"  # prediction runtime: "onnx" (onnxruntime) or "torch"
    # operating point: out-of-fold false rejects may reach this multiple of target_frr when that
    # balances escapes (OOF models are weaker and the training side more varied than one session)
    oof_frr_factor: float = 2.0
    # golden-sample recalibration (calibrate.recalibrated_threshold): the defect threshold moves by
    # the shift of this quantile of golden vs out-of-fold good scores, less this many standard
    # deviations of that quantile over as many reference frames (chosen on the training side)
    recalibration_quantile: float = 0.75
    recalibration_deadzone: float = 1.0
    # add_class: the new class must lose old classes' out-of-fold rows by this logit margin
    new_class_margin: float = 0.5
    # fine-tuning (finetune.py): the last N modules of the backbone tail (after the stride-16 tap;
    # 1 = the final 1x1 conv) train with a head, then the linear head is re-fitted on them; 0 =
    # frozen features. 2 (last MBConv block + head conv), 2 epochs: best out-of-fold recall at 2 %
    # false rejects on magnetic tile over 3 seeds (0.873 frozen -> 0.909) for ~2x the fit time
    finetune_blocks: int = 2
    finetune_epochs: float = 2.0  # class-balanced draws per row (4 epochs: no better, 2x the cost)
    finetune_lr: float = 1e-4
    patchcore: PatchCoreConfig = field(default_factory=PatchCoreConfig)


@dataclass
class FitReport:
    """What fit/add_class did and what it cost."""

    n_images: int
    class_counts: dict[str, int]
    classes: list[str]
    anomaly_only_classes: list[str]
    n_bank_images: int
    n_calibration_good: int
    n_head_rows: int
    memory_bank_rows: int
    memory_bank_mb: float
    memory_bank_mb_per_100_images: float
    thresholds: dict[str, float]
    temperature: float
    timings: dict[str, float]
    seconds: float
    version: str
    cv_metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class CalibrationReport:
    """Golden-sample recalibration result (log it as an event at the station)."""

    n_images: int
    old_thresholds: dict[str, float]
    new_thresholds: dict[str, float]
    shift: dict[str, float]
    created_at: str
    model_version: str


def _check_labels(labels: Sequence[str], n: int) -> list[str]:
    if isinstance(labels, str):
        raise InputError("labels: pass a list of labels, not one string")
    labs = list(labels)
    if len(labs) != n:
        raise InputError(f"labels: {len(labs)} labels for {n} images")
    for i, lab in enumerate(labs):
        if not isinstance(lab, str) or not lab.strip():
            raise InputError(f"labels[{i}]: expected a non-empty class name, got {lab!r}")
        if lab.startswith("_"):
            raise InputError(f"labels[{i}]: class names starting with '_' are reserved ({lab!r})")
    return labs


class InspectionModel:
    """Few-shot inspection model; see the module docstring for the design."""

    def __init__(self, config: ModelConfig | None = None, *, seed: int = 0) -> None:
        self.config = config or ModelConfig()
        if self.config.backbone not in BACKBONES:
            raise InputError(f"unknown backbone {self.config.backbone!r}; known: {sorted(BACKBONES)}")
        self.seed = seed
        self.net = FeatureNet(load_backbone(self.config.backbone))
        n_tail = len(self.net.backbone.tail)
        if not 0 <= self.config.finetune_blocks <= n_tail:
            raise InputError(f"finetune_blocks must be in 0..{n_tail} for {self.config.backbone}")
        self.patchcore = PatchCore(self.config.patchcore)
        self.head: LinearHead | None = None
        self.state: ScoringState | None = None
        self.taxonomy: Taxonomy | None = None
        self.anomaly_only_classes: list[str] = []
        self.version = "untrained"
        self.metrics: dict[str, float] = {}
        # replay store: pooled features of every training row (originals + augmented copies)
        self._replay_x = np.zeros((0, self.net.pooled_dim), dtype=np.float32)
        self._replay_y: list[str] = []
        self._replay_group = np.zeros(0, dtype=np.int64)
        self._replay_orig = np.zeros(0, dtype=bool)
        # out-of-fold head logits of the replay rows (what add_class uses for the frozen old classes)
        self._replay_oof = np.zeros((0, 0), dtype=np.float32)
        self._cal_good_anomaly = np.zeros(0, dtype=np.float32)  # raw PatchCore scores, held-out good
        self._cal_good_defect = np.zeros(0, dtype=np.float32)  # OOF defect probabilities, good
        self._cal_defect = np.zeros(0, dtype=np.float32)  # OOF defect probabilities, defect images
        self._target_frr = 0.02
        self._ort: tuple[str, Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles leave out the onnxruntime session (rebuilt on the next predict)."""
        state = dict(self.__dict__)
        state["_ort"] = None
        return state

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def create(
        cls, backbone: str = "efficientnet-lite0", *, seed: int = 0, **overrides: Any
    ) -> InspectionModel:
        """New untrained model; ``overrides`` set ``ModelConfig`` fields (e.g. input_size=(192, 192))."""
        if "input_size" in overrides:
            overrides["input_size"] = tuple(int(v) for v in overrides["input_size"])
        try:
            config = ModelConfig(backbone=backbone, **overrides)
        except TypeError as exc:
            raise InputError(f"unknown model option: {exc}") from exc
        h, w = config.input_size
        if h % 16 or w % 16 or h < 64 or w < 64:
            raise InputError(f"input_size {config.input_size} must be multiples of 16, at least 64")
        return cls(config, seed=seed)

    # -- properties ---------------------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        """Classes the supervised head predicts (``good`` first), as used in ``class_probs``."""
        if self.state is None:
            return []
        return [c for c in self.state.head_classes if c != OTHER] or [GOOD]

    @property
    def thresholds(self) -> dict[str, float]:
        if self.state is None:
            return {}
        return {"anomaly": float(self.state.anomaly_threshold), "defect": float(self.state.defect_threshold)}

    @property
    def temperature(self) -> float:
        return 1.0 if self.state is None else float(self.state.temperature)

    @property
    def reference_good_scores(self) -> np.ndarray:
        """Out-of-fold defect probabilities of the training side's good images: what golden
        frames are compared with when a station recalibrates (exported with the model)."""
        return self._cal_good_defect.copy()

    @property
    def reference_defect_scores(self) -> np.ndarray:
        """Out-of-fold defect probabilities of the training side's defect images (same folds)."""
        return self._cal_defect.copy()

    @property
    def fitted(self) -> bool:
        return self.state is not None

    # -- helpers ------------------------------------------------------------------------------
    def _resize(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        h, w = self.config.input_size
        out = []
        for img in images:
            interp = cv2.INTER_AREA if img.shape[0] > h and img.shape[1] > w else cv2.INTER_LINEAR
            out.append(cv2.resize(img, (w, h), interpolation=interp))
        return out

    def _features(
        self, small: Sequence[np.ndarray], batch_size: int = 16, *, tail_input_blocks: int = 0
    ) -> tuple[np.ndarray, ...]:
        spec = self.net.backbone.spec
        batch = preprocess(small, self.config.input_size, spec.mean, spec.std)
        return extract(self.net, batch, batch_size, tail_input_blocks=tail_input_blocks)

    def _infer(self, small: Sequence[np.ndarray], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Network outputs for prediction: onnxruntime when available (about 3x faster than eager
        torch on 2 cores and the same graph the exported artifact runs), eager torch otherwise."""
        session = self._onnx_session()
        if session is None:
            patches, _, logits = self._features(small, batch_size)
            return patches, logits
        spec = self.net.backbone.spec
        batch = preprocess(small, self.config.input_size, spec.mean, spec.std)
        patches, _, logits = session.run(None, {"image": batch})
        return patches, logits

    def _onnx_session(self) -> Any:
        if self.config.runtime != "onnx":
            return None
        # keyed on the network's own parameters: recalibration changes the version, not the graph
        h = hashlib.sha1(usedforsecurity=False)
        for t in (self.net.feat_mean, self.net.feat_scale, self.net.head.weight, self.net.head.bias):
            h.update(t.detach().numpy().tobytes())
        h.update(self.net.tail_token.encode())
        key = h.hexdigest()
        if self._ort is not None and self._ort[0] == key:
            return self._ort[1]
        try:
            import onnxruntime as ort

            from linesight.vision.components.features import to_onnx

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = configure_threads()
            opts.inter_op_num_threads = 1
            data = to_onnx(self.net, self.config.input_size)
            session = ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # any exporter/runtime failure: eager torch still works
            _log.warning("onnxruntime unavailable for prediction, using torch: %s", exc)
            session = None
        self._ort = (key, session)
        return session

    def _grid(self) -> tuple[int, int]:
        h, w = self.config.input_size
        return (h // 8, w // 8)

    def _augment_rows(
        self, small: list[np.ndarray], labels: list[str], groups: np.ndarray, rng: np.random.Generator
    ) -> tuple[list[np.ndarray], list[str], list[int]]:
        """Class-balanced augmented copies, each class under its taxonomy policy."""
        counts = Counter(labels)
        n_good = counts.get(GOOD, 0)
        imgs: list[np.ndarray] = []
        labs: list[str] = []
        grps: list[int] = []
        for img, lab, grp in zip(small, labels, groups, strict=True):
            if lab == GOOD:
                copies = self.config.good_augment_copies
            else:
                # rarer classes get more copies, up to the configured maximum
                want = max(n_good, max(counts.values())) / max(counts[lab], 1) - 1
                copies = (
                    int(np.clip(round(want), 1, self.config.augment_copies))
                    if self.config.augment_copies
                    else 0
                )
            policy = self.taxonomy.augmentation_for(lab) if self.taxonomy else Augmentation()
            for _ in range(copies):
                imgs.append(augment_image(img, policy, rng))
                labs.append(lab)
                grps.append(int(grp))
        return imgs, labs, grps

    # -- training -----------------------------------------------------------------------------
    def fit(
        self,
        images: Sequence[np.ndarray],
        labels: Sequence[str],
        *,
        taxonomy: Taxonomy | None = None,
        target_frr: float = 0.02,
        progress: Progress | None = None,
        groups: Sequence[str] | None = None,
    ) -> FitReport:
        """Fit PatchCore on good images and the supervised head on all labels.

        ``groups`` (e.g. part_id) keeps photos of one part on one side of the internal
        cross-validation used for calibration.
        """
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        say = progress or (lambda _stage, _frac: None)
        imgs = check_images(images)
        labs = _check_labels(labels, len(imgs))
        if not 0.0 < target_frr < 0.5:
            raise InputError(f"target_frr must be in (0, 0.5), got {target_frr}")
        counts = Counter(labs)
        n_good = counts.get(GOOD, 0)
        if 0 < n_good < 4:
            raise InputError(
                f"fit needs at least 4 '{GOOD}' images (memory bank + calibration), got {n_good}"
            )
        if n_good == 0 and sum(1 for c, n in counts.items() if n >= self.config.min_examples) < 2:
            raise InputError(
                f"without '{GOOD}' images fit trains a defect-type classifier only and needs at least "
                f"two classes with >= {self.config.min_examples} examples; got {dict(counts)}"
            )
        singles = sorted(c for c, n in counts.items() if n == 1 and c != GOOD)
        if singles:
            raise InputError(
                f"classes with a single example cannot be learned or validated: {singles}; "
                "label more examples or leave them out"
            )
        if taxonomy is not None:
            unknown = sorted(c for c in counts if c != GOOD and not taxonomy.has_class(c))
            if unknown:
                raise InputError(
                    f"labels {unknown} are not classes of taxonomy {taxonomy.product} "
                    f"v{taxonomy.version} ({taxonomy.class_names})"
                )
        self.taxonomy = taxonomy or Taxonomy.default_for(sorted(counts))
        self._target_frr = target_frr
        rng = np.random.default_rng(self.seed)
        group_ids = self._group_ids(groups, len(imgs))

        say("features", 0.0)
        t = time.perf_counter()
        small = self._resize(imgs)
        self.net.set_tail(None)  # a re-fit starts from the pretrained tail
        nft = self.config.finetune_blocks
        feats = self._features(small, tail_input_blocks=nft)
        patches, pooled = feats[0], feats[1]
        tail_in = feats[3] if nft else None
        timings["features"] = time.perf_counter() - t

        # PatchCore on a part of the good images; the rest calibrate its threshold
        say("patchcore", 0.3)
        t = time.perf_counter()
        good_idx = np.flatnonzero(np.array(labs) == GOOD)
        bank_idx, cal_idx, anomaly_thr = self._fit_patchcore(patches, good_idx, group_ids, rng, target_frr)
        timings["patchcore"] = time.perf_counter() - t

        supervised = sorted(c for c, n in counts.items() if c != GOOD and n >= self.config.min_examples)
        rare = sorted(c for c, n in counts.items() if c != GOOD and n < self.config.min_examples)
        self.anomaly_only_classes = rare
        # A rare class (< min_examples) still gets a head output so reviewers see a suggested
        # type, but it is provisional: decide() never acts on it automatically (-> review).
        # Classes with fewer than min_other_examples are left to PatchCore alone.
        provisional = {c for c in rare if counts[c] >= self.config.min_other_examples}
        head_labels = list(labs)
        keep = [i for i, lab in enumerate(labs) if lab == GOOD or lab in supervised or lab in provisional]

        say("augment", 0.5)
        t = time.perf_counter()
        keep_small = [small[i] for i in keep]
        keep_labels = [head_labels[i] for i in keep]
        aug_imgs, aug_labels, aug_groups = self._augment_rows(keep_small, keep_labels, group_ids[keep], rng)
        aug_feats = self._features(aug_imgs, tail_input_blocks=nft) if aug_imgs else None
        aug_pooled = aug_feats[1] if aug_feats else np.zeros((0, self.net.pooled_dim), dtype=np.float32)
        if tail_in is not None:  # cached inputs of the fine-tuned blocks, one per head row
            tail_in = np.concatenate([tail_in[keep], *([aug_feats[3]] if aug_feats else [])])
        timings["augment"] = time.perf_counter() - t

        self._replay_x = np.concatenate([pooled[keep], aug_pooled]).astype(np.float32)
        self._replay_y = keep_labels + aug_labels
        self._replay_group = np.concatenate([group_ids[keep], np.array(aug_groups, dtype=np.int64)])
        self._replay_orig = np.concatenate([np.ones(len(keep), bool), np.zeros(len(aug_labels), bool)])

        say("head", 0.8)
        t = time.perf_counter()
        timings["finetune"] = self._fit_head(anomaly_thr, tail_in=tail_in)
        timings["head"] = time.perf_counter() - t
        t = time.perf_counter()
        self._onnx_session()  # export + load the prediction graph now, not on the first frame
        timings["onnx"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        say("done", 1.0)
        return self._report(len(imgs), counts, len(bank_idx), len(cal_idx), timings)

    def _fit_patchcore(
        self,
        patches: np.ndarray,
        good_idx: np.ndarray,
        group_ids: np.ndarray,
        rng: np.random.Generator,
        target_frr: float,
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """Memory bank from part of the good images (by group); the rest calibrate the threshold."""
        if len(good_idx) == 0:  # classification-only model (e.g. NEU-DET): no anomaly scores
            self.patchcore = PatchCore(self.config.patchcore)
            self._cal_good_anomaly = np.zeros(0, dtype=np.float32)
            return np.zeros(0, np.int64), np.zeros(0, np.int64), 1.0
        good_groups = np.unique(group_ids[good_idx])
        rng.shuffle(good_groups)
        n_bank_groups = max(1, min(len(good_groups) - 1, round(len(good_groups) * self.config.bank_fraction)))
        bank_groups = set(good_groups[:n_bank_groups].tolist())
        bank_idx = np.array([i for i in good_idx if group_ids[i] in bank_groups])[
            : self.config.max_bank_images
        ]
        cal_idx = np.array([i for i in good_idx if group_ids[i] not in bank_groups])
        self.patchcore.fit(patches[bank_idx], seed=self.seed)
        _, cal_scores = self.patchcore.score(patches[cal_idx])
        self._cal_good_anomaly = cal_scores.astype(np.float32)
        return bank_idx, cal_idx, threshold_at_frr(cal_scores, target_frr)

    def _group_ids(self, groups: Sequence[str] | None, n: int) -> np.ndarray:
        if groups is None:
            return np.arange(n, dtype=np.int64)
        g = list(groups)
        if len(g) != n:
            raise InputError(f"groups: {len(g)} entries for {n} images")
        index: dict[str, int] = {}
        return np.array([index.setdefault(str(v), len(index)) for v in g], dtype=np.int64)

    def _fit_head(
        self,
        anomaly_thr: float,
        *,
        new_class: str | None = None,
        protect: dict[str, float] | None = None,
        tail_in: np.ndarray | None = None,
    ) -> float:
        """(Re)fit the head from the replay store; calibrate temperature and defect threshold OOF.

        With ``new_class`` and ``protect`` (old classes' out-of-fold recall), the new class's logit
        bias is lowered until the old classes' out-of-fold recall is kept (bias correction in the
        spirit of BiC, Wu et al. 2019: a freshly added class with few examples over-claims).

        With ``tail_in`` (cached inputs of the last ``finetune_blocks`` tail modules, one per replay
        row) the tail is fine-tuned. Out-of-fold logits stay honest by fine-tuning *within each
        fold*: for every cross-validation fold a fresh copy is fine-tuned (from its own
        frozen-feature logistic regression) on the fold's training rows only, the held-out rows
        are described by that copy and scored by a head fitted on the fold's training rows. A tail
        fine-tuned once on all rows would have seen the held-out rows, so its OOF scores would be
        optimistic and the operating point (fitted on them) would sit too low for new images.
        The cost is one fine-tune per fold plus the final one on all rows; it stays affordable
        because only the last blocks run per step, on cached inputs. Returns the seconds spent
        fine-tuning (0 without ``tail_in``).

        Without ``tail_in`` on a fine-tuned model (``add_class`` promoting a provisional class) the
        stored descriptors come from the final tail, which saw every stored row: the head is re-fit
        on them with plain out-of-fold logistic regression, slightly optimistic; a full ``fit``
        restores in-fold fine-tuning.
        """
        labels = self._replay_y
        has_good = GOOD in labels
        head_classes = [GOOD] if has_good else []
        head_classes += sorted({c for c in labels if c not in (GOOD, OTHER)})
        if OTHER in labels:
            head_classes.append(OTHER)
        h, w = self.config.input_size
        if head_classes == [GOOD]:
            self.head = None
            self.net.set_head(
                np.zeros(self.net.pooled_dim),
                np.ones(self.net.pooled_dim),
                np.zeros((1, self.net.pooled_dim)),
                np.zeros(1),
            )
            self.state = ScoringState(
                [GOOD], 1.0, anomaly_thr, 0.5, (h, w), self._grid(), self.config.patchcore.sigma, OTHER
            )
            self._cal_good_defect = np.zeros(0, dtype=np.float32)
            self._cal_defect = np.zeros(0, dtype=np.float32)
            self._set_version()
            return 0.0
        y = np.array([head_classes.index(c) for c in labels], dtype=np.int64)
        x = self._replay_x
        settings = self._finetune_settings()
        finetune_s = 0.0
        refeaturize = None
        if tail_in is not None and settings is not None:
            frozen, ft_in, ft = self._replay_x, tail_in, settings

            def refeaturize(rows: np.ndarray, fold: int) -> np.ndarray:
                return self._finetuned(frozen, y, head_classes, ft_in, rows, ft, self.seed + 1 + fold)[0]

        t_oof = time.perf_counter()
        oof = cross_val_logits(
            x,
            y,
            self._replay_group,
            head_classes,
            folds=self.config.cv_folds,
            c=self.config.head_c,
            seed=self.seed,
            refeaturize=refeaturize,
        )
        if refeaturize is not None and tail_in is not None and settings is not None:
            finetune_s += time.perf_counter() - t_oof
            t_ft = time.perf_counter()
            x, blocks = self._finetuned(x, y, head_classes, tail_in, np.arange(len(y)), settings, self.seed)
            self.net.set_tail(blocks)
            self._replay_x = x  # replay (add_class) must see the descriptor the deployed net computes
            finetune_s += time.perf_counter() - t_ft
        orig = self._replay_orig
        bias_shift = 0.0
        if new_class is not None and protect:
            bias_shift = self._protecting_bias(oof[orig], y[orig], head_classes, new_class, protect)
            oof[:, head_classes.index(new_class)] += bias_shift
        self._replay_oof = oof.astype(np.float32)
        temperature = fit_temperature(oof[orig], y[orig])
        p = softmax(oof[orig], temperature)
        y_o = y[orig]
        defect_p, defect_thr = self._calibrate_operating_point(p, y_o, has_good)
        self.metrics = self._cv_metrics(p, y_o, defect_p, defect_thr, head_classes)
        self.head = fit_linear_head(x, y, head_classes, c=self.config.head_c, seed=self.seed)
        if bias_shift:
            self.head.bias[head_classes.index(new_class or "")] += np.float32(bias_shift)
            self.metrics["new_class_bias_shift"] = float(bias_shift)
        self.net.set_head(self.head.mean, self.head.scale, self.head.weight, self.head.bias)
        self.state = ScoringState(
            head_classes,
            temperature,
            anomaly_thr,
            defect_thr,
            (h, w),
            self._grid(),
            self.config.patchcore.sigma,
            OTHER,
            provisional=[c for c in head_classes if c in set(self.anomaly_only_classes)],
        )
        self._set_version()
        return finetune_s

    def _finetune_settings(self) -> FinetuneSettings | None:
        cfg = self.config
        if cfg.finetune_blocks <= 0:
            return None
        return FinetuneSettings(
            blocks=cfg.finetune_blocks, epochs=cfg.finetune_epochs, lr=cfg.finetune_lr, head_c=cfg.head_c
        )

    def _finetuned(
        self,
        frozen: np.ndarray,
        y: np.ndarray,
        classes: list[str],
        tail_in: np.ndarray,
        rows: np.ndarray,
        settings: FinetuneSettings,
        seed: int,
    ) -> tuple[np.ndarray, nn.Sequential]:
        """Fine-tune on ``rows`` (head initialised from a logistic regression on their frozen
        descriptors: LP-FT); returns every row's descriptor under the fine-tuned blocks, and them."""
        lp = fit_linear_head(frozen[rows], y[rows], classes, c=self.config.head_c, seed=self.seed)
        cf = self.net.backbone.channels_final
        blocks = finetune_tail(
            self.net.backbone.tail, tail_in[rows], frozen[rows, cf:], y[rows], lp, settings, seed=seed
        )
        out = frozen.copy()
        out[:, :cf] = final_means(blocks, tail_in)
        return out, blocks

    def _calibrate_operating_point(
        self, p: np.ndarray, y_o: np.ndarray, has_good: bool
    ) -> tuple[np.ndarray, float]:
        """Defect probability of the out-of-fold rows and the threshold derived from it; keeps
        the good and defect scores that golden-sample recalibration re-derives the threshold from.
        Without a good class (classification only) every image is a defect."""
        if has_good:
            defect_p = 1.0 - p[:, 0]
            good_defect = defect_p[y_o == 0]
            defect_thr = self.defect_operating_point(good_defect, defect_p[y_o != 0])
        else:
            defect_p = np.ones(len(y_o))
            good_defect = np.zeros(0)
            defect_thr = 0.5
        self._cal_good_defect = good_defect.astype(np.float32)
        self._cal_defect = (defect_p[y_o != 0] if len(good_defect) else np.zeros(0)).astype(np.float32)
        return defect_p, float(defect_thr)

    def defect_operating_point(self, good: np.ndarray, defect: np.ndarray) -> float:
        """Defect threshold from out-of-fold scores: balanced false rejects vs escapes, out-of-fold
        false rejects at most ``oof_frr_factor`` x the target (``calibrate.balanced_threshold``)."""
        cap = min(0.49, self.config.oof_frr_factor * self._target_frr)
        return balanced_threshold(good, defect, cap)

    def _can_extend(self, label: str, n_old_rows: int) -> bool:
        st = self.state
        return (
            self.head is not None
            and st is not None
            and label not in st.head_classes
            and self._replay_oof.shape == (n_old_rows, len(st.head_classes))
        )

    def _extend_head(self, label: str, n_old_rows: int, protect: dict[str, float]) -> None:
        """Append one class to the fitted head, keeping every old weight row fixed.

        Only the new row (weight + bias) is fitted, against the replay store with the old head's
        logits as a fixed offset (out-of-fold logits for the stored rows, so the new class learns
        against the old head as it behaves on unseen images). Old classes can then lose images
        only to the new class; its bias is lowered (bounded, BiC-style) until the old classes'
        out-of-fold recall is unchanged. Temperature is kept; the defect threshold is re-derived
        from the out-of-fold scores with the new class included.
        """
        assert self.head is not None and self.state is not None
        head, st = self.head, self.state
        x = self._replay_x
        z = (x - head.mean) / head.scale
        old_logits = np.concatenate([self._replay_oof, head.logits(x[n_old_rows:])]).astype(np.float64)
        is_new = np.zeros(len(x), dtype=bool)
        is_new[n_old_rows:] = True
        labels = self._replay_y
        old_y = np.array(
            [st.head_classes.index(c) if not n else -1 for c, n in zip(labels, is_new, strict=True)]
        )
        c = self.config.head_c
        w, b = fit_new_class_row(z, old_logits, is_new, old_y, c=c)
        # out-of-fold logit of the new class (group folds), for the bias correction and threshold
        new_oof = np.zeros(len(x))
        strat = np.where(is_new, -1, old_y)
        groups = self._replay_group
        n_groups_new = len(np.unique(groups[is_new]))
        folds = max(2, min(self.config.cv_folds, n_groups_new))
        from sklearn.model_selection import StratifiedGroupKFold

        cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=self.seed)
        for tr, te in cv.split(z, strat, groups):
            wf, bf = fit_new_class_row(z[tr], old_logits[tr], is_new[tr], old_y[tr], c=c)
            new_oof[te] = z[te] @ wf + bf
        classes = list(st.head_classes)
        pos = classes.index(OTHER) if OTHER in classes else len(classes)
        classes.insert(pos, label)
        oof = np.insert(old_logits, pos, new_oof, axis=1)
        y = np.array([classes.index(lab) for lab in labels], dtype=np.int64)
        orig = self._replay_orig
        shift = (
            self._protecting_bias(
                oof[orig], y[orig], classes, label, protect, margin=self.config.new_class_margin
            )
            if protect
            else 0.0
        )
        oof[:, pos] += shift
        self._replay_oof = oof.astype(np.float32)
        weight = np.insert(head.weight, pos, w, axis=0)
        bias = np.insert(head.bias, pos, np.float32(b + shift))
        self.head = LinearHead(
            classes, head.mean, head.scale, weight.astype(np.float32), bias.astype(np.float32)
        )
        self.net.set_head(self.head.mean, self.head.scale, self.head.weight, self.head.bias)
        p = softmax(oof[orig], st.temperature)
        y_o = y[orig]
        defect_p, defect_thr = self._calibrate_operating_point(p, y_o, GOOD in classes)
        self.metrics = self._cv_metrics(p, y_o, defect_p, defect_thr, classes)
        self.metrics["new_class_bias_shift"] = float(shift)
        self.state = ScoringState(
            classes,
            st.temperature,
            st.anomaly_threshold,
            defect_thr,
            st.input_size,
            st.grid,
            st.sigma,
            OTHER,
            provisional=[c for c in classes if c in set(self.anomaly_only_classes)],
        )
        self._set_version()

    @staticmethod
    def _protecting_bias(
        logits: np.ndarray,
        y: np.ndarray,
        classes: list[str],
        new_class: str,
        protect: dict[str, float],
        tolerance: float = 0.0,
        margin: float = 0.0,
    ) -> float:
        """Largest non-positive shift of the new class's logit keeping old OOF recall within tolerance.

        ``margin`` (logit units) asks the new class to lose old-class rows by at least that much,
        a guard for images less typical than the out-of-fold rows."""
        k_new = classes.index(new_class)
        old = [c for c in protect if c in classes and (y == classes.index(c)).any()]
        if not old:
            return 0.0
        # reference: the same out-of-fold logits without the new class (what the old classes had)
        ref = logits.copy()
        ref[:, k_new] = -np.inf
        ref_top = np.argmax(ref, axis=1)
        target = float(np.mean([np.mean(ref_top[y == classes.index(c)] == classes.index(c)) for c in old]))
        # bounded: at most a e^3 (20x) cut of the new class's odds; out-of-fold logits from a
        # few dozen examples are noisy and an unbounded search would suppress the new class
        for shift in np.arange(0.0, -3.01, -0.25):
            z = logits.copy()
            z[:, k_new] += shift + margin
            top = np.argmax(z, axis=1)
            rec = float(np.mean([np.mean(top[y == classes.index(c)] == classes.index(c)) for c in old]))
            if rec >= target - tolerance:
                return float(shift)
        return -3.0

    @staticmethod
    def _cv_metrics(
        p: np.ndarray, y: np.ndarray, defect_p: np.ndarray, thr: float, classes: list[str]
    ) -> dict[str, float]:
        good_k = classes.index(GOOD) if GOOD in classes else -1
        is_def = y != good_k
        m: dict[str, float] = {}
        if (~is_def).any():
            m["cv_false_reject_rate"] = float(np.mean(defect_p[~is_def] >= thr))
        if is_def.any():
            m["cv_defect_recall"] = float(np.mean(defect_p[is_def] >= thr))
            other_k = classes.index(OTHER) if OTHER in classes else -2
            typed = is_def & (y != other_k)
            if typed.any():
                masked = p[typed].copy()
                if good_k >= 0:
                    masked[:, good_k] = -1.0  # type accuracy among defect classes only
                m["cv_type_accuracy"] = float(np.mean(np.argmax(masked, axis=1) == y[typed]))
            for k, c in enumerate(classes):
                if (y == k).any():
                    m[f"cv_recall_{c}"] = float(np.mean(np.argmax(p[y == k], axis=1) == k))
        return m

    def _set_version(self) -> None:
        h = hashlib.sha256()
        h.update(self.patchcore.bank.tobytes())
        h.update(self.net.tail_token.encode())
        if self.head is not None:
            h.update(self.head.weight.tobytes())
        if self.state is not None:
            h.update(json.dumps(self.thresholds, sort_keys=True).encode())
        self.version = f"{datetime.now(UTC):%Y%m%d%H%M%S}-{h.hexdigest()[:8]}"

    def _report(
        self, n: int, counts: Counter[str], n_bank: int, n_cal: int, timings: dict[str, float]
    ) -> FitReport:
        mb = self.patchcore.nbytes / 1e6
        return FitReport(
            n_images=n,
            class_counts=dict(sorted(counts.items())),
            classes=self.classes,
            anomaly_only_classes=list(self.anomaly_only_classes),
            n_bank_images=n_bank,
            n_calibration_good=n_cal,
            n_head_rows=len(self._replay_y),
            memory_bank_rows=len(self.patchcore.bank),
            memory_bank_mb=round(mb, 3),
            memory_bank_mb_per_100_images=round(mb / max(n_bank, 1) * 100, 3),
            thresholds=self.thresholds,
            temperature=self.temperature,
            timings={k: round(v, 3) for k, v in timings.items()},
            seconds=round(timings.get("total", 0.0), 3),
            version=self.version,
            cv_metrics=dict(self.metrics),
        )

    # -- inference ----------------------------------------------------------------------------
    def _require_fitted(self) -> ScoringState:
        if self.state is None:
            raise RuntimeError("model is not fitted: call fit() or load() first")
        return self.state

    def predict(self, images: Sequence[np.ndarray], *, batch_size: int = 32) -> list[Prediction]:
        """Predictions for decoded images (uint8 HxW or HxWx3), in order."""
        state = self._require_fitted()
        imgs = check_images(images)
        preds: list[Prediction] = []
        for s in range(0, len(imgs), batch_size):
            chunk = imgs[s : s + batch_size]
            patches, logits = self._infer(self._resize(chunk), batch_size)
            patch_scores, image_scores = self.patchcore.score(patches)
            preds.extend(
                assemble_predictions(state, patch_scores, image_scores, logits, [im.shape for im in chunk])
            )
        return preds

    # -- incremental learning -----------------------------------------------------------------
    def add_class(self, images: Sequence[np.ndarray], label: str) -> FitReport:
        """Add a defect class from a few (20-50) examples by re-fitting only the head on the
        stored features of earlier data (replay) plus the new ones; the backbone and PatchCore
        are untouched, so it takes seconds instead of a full retrain."""
        state = self._require_fitted()
        t0 = time.perf_counter()
        imgs = check_images(images)
        if not isinstance(label, str) or not label.strip() or label.startswith("_") or label == GOOD:
            raise InputError(f"add_class: invalid new class name {label!r}")
        if label in self.classes and label not in self.anomaly_only_classes:
            raise InputError(f"add_class: class {label!r} already has a head; retrain to change it")
        if len(imgs) < 2:
            raise InputError(f"add_class: {label!r} needs at least 2 examples, got {len(imgs)}")
        if self.taxonomy is not None and not self.taxonomy.has_class(label):
            if self.taxonomy.product == "generic":
                self.taxonomy = Taxonomy.default_for(
                    [*self.taxonomy.class_names, label], version=self.taxonomy.version
                )
            else:
                raise InputError(
                    f"add_class: {label!r} is not a class of taxonomy {self.taxonomy.product} "
                    f"v{self.taxonomy.version}; publish a taxonomy version with it first"
                )
        rng = np.random.default_rng(self.seed + len(self._replay_y))
        timings: dict[str, float] = {}
        t = time.perf_counter()
        small = self._resize(imgs)
        base_group = int(self._replay_group.max()) + 1 if len(self._replay_group) else 0
        groups = np.arange(base_group, base_group + len(small), dtype=np.int64)
        _, pooled, _ = self._features(small)
        counts = Counter(self._replay_y[i] for i in np.flatnonzero(self._replay_orig))
        counts[label] = len(small)
        policy = self.taxonomy.augmentation_for(label) if self.taxonomy else Augmentation()
        want = max(counts.values()) / len(small) - 1
        copies = int(np.clip(round(want), 1, self.config.augment_copies)) if self.config.augment_copies else 0
        aug = [augment_image(img, policy, rng) for img in small for _ in range(copies)]
        aug_groups = np.repeat(groups, copies)
        aug_pooled = self._features(aug)[1] if aug else np.zeros((0, self.net.pooled_dim), np.float32)
        timings["features"] = time.perf_counter() - t
        self._replay_x = np.concatenate([self._replay_x, pooled, aug_pooled]).astype(np.float32)
        self._replay_y = self._replay_y + [label] * (len(small) + len(aug))
        self._replay_group = np.concatenate([self._replay_group, groups, aug_groups])
        self._replay_orig = np.concatenate(
            [self._replay_orig, np.ones(len(small), bool), np.zeros(len(aug), bool)]
        )
        n_label = sum(1 for i in np.flatnonzero(self._replay_orig) if self._replay_y[i] == label)
        if label in self.anomaly_only_classes and n_label >= self.config.min_examples:
            self.anomaly_only_classes.remove(label)  # promoted: enough examples for a real head
        elif label not in self.anomaly_only_classes and n_label < self.config.min_examples:
            self.anomaly_only_classes.append(label)  # added, but provisional until min_examples
        # old defect classes; good's share is governed by the re-calibrated defect threshold instead
        protect = {
            c: self.metrics[f"cv_recall_{c}"]
            for c in self.classes
            if c != GOOD and f"cv_recall_{c}" in self.metrics
        }
        t = time.perf_counter()
        n_old_rows = len(self._replay_y) - len(small) - len(aug)
        if self._can_extend(label, n_old_rows):
            self._extend_head(label, n_old_rows, protect)
        else:  # no head yet, or a provisional class promoted: full re-fit from the replay store
            self._fit_head(state.anomaly_threshold, new_class=label, protect=protect)
        timings["head"] = time.perf_counter() - t
        t = time.perf_counter()
        self._onnx_session()
        timings["onnx"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        n_bank = len(self.patchcore.bank)
        return self._report(
            len(imgs),
            counter_of(self._replay_y, self._replay_orig),
            n_bank,
            len(self._cal_good_anomaly),
            timings,
        )

    # -- operating point ----------------------------------------------------------------------
    def recalibrate(
        self, good_images: Sequence[np.ndarray], *, target_frr: float | None = None
    ) -> CalibrationReport:
        """Golden-sample recalibration: re-fit thresholds from known-good frames of this session.

        The anomaly threshold follows the median ratio of golden to training-side held-out good
        scores; the defect threshold moves by the golden frames' shift from the out-of-fold good
        scores beyond sampling noise (``calibrate.recalibrated_threshold``). No retraining.
        """
        state = self._require_fitted()
        imgs = check_images(good_images, what="good_images")
        if len(imgs) < 5:
            raise InputError(f"recalibrate needs at least 5 known-good frames, got {len(imgs)}")
        frr = self._target_frr if target_frr is None else target_frr
        old = self.thresholds
        preds = self.predict(imgs)
        raw_anom = np.array([p.anomaly_score * state.anomaly_threshold for p in preds])
        ref_anom = (
            float(np.median(self._cal_good_anomaly))
            if len(self._cal_good_anomaly)
            else float(np.median(raw_anom))
        )
        ratio = float(np.median(raw_anom)) / max(ref_anom, 1e-12)
        floor_anom = threshold_at_frr(raw_anom, frr) if len(raw_anom) * frr >= 1.0 else 0.0
        new_anom = max(state.anomaly_threshold * ratio, floor_anom)
        shift = {"anomaly_ratio": ratio}
        new_def = state.defect_threshold
        if self.head is not None and GOOD not in self.classes:
            raise InputError("this model has no 'good' class (classification only): nothing to recalibrate")
        if self.head is not None and len(self._cal_good_defect):
            golden = np.array([p.defect_probability for p in preds])
            moved = recalibrated_threshold(
                self._cal_good_defect,
                golden,
                state.defect_threshold,
                quantile=self.config.recalibration_quantile,
                deadzone=self.config.recalibration_deadzone,
                seed=self.seed,
            )
            new_def = moved.threshold
            shift.update(moved.as_dict())
            shift["golden_above_old"] = float(np.mean(golden >= state.defect_threshold))
        state.anomaly_threshold = float(new_anom)
        state.defect_threshold = float(new_def)
        self._set_version()
        return CalibrationReport(
            n_images=len(imgs),
            old_thresholds=old,
            new_thresholds=self.thresholds,
            shift=shift,
            created_at=datetime.now(UTC).isoformat(),
            model_version=self.version,
        )

    # -- persistence --------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write model.json + arrays.npz (no pickles; the backbone comes from its pip package)."""
        state = self._require_fitted()
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        cfg = asdict(self.config)
        meta = {
            "format_version": FORMAT_VERSION,
            "version": self.version,
            "seed": self.seed,
            "config": cfg,
            "state": asdict(state),
            "anomaly_only_classes": self.anomaly_only_classes,
            "metrics": self.metrics,
            "target_frr": self._target_frr,
            "replay_labels": self._replay_y,
            "taxonomy": self.taxonomy.to_dict() if self.taxonomy else None,
            "finetuned_blocks": self.net.finetuned_blocks,
        }
        (out / "model.json").write_text(json.dumps(meta, indent=1))
        arrays: dict[str, np.ndarray] = {
            "bank": self.patchcore.bank,
            "projection": self.patchcore.projection,
            "bank_nn": self.patchcore.bank_nn,
            "replay_x": self._replay_x.astype(np.float16),
            "replay_group": self._replay_group,
            "replay_orig": self._replay_orig,
            "cal_good_anomaly": self._cal_good_anomaly,
            "cal_good_defect": self._cal_good_defect,
            "cal_defect": self._cal_defect,
            "replay_oof": self._replay_oof,
        }
        if self.head is not None:
            arrays.update(
                head_mean=self.head.mean,
                head_scale=self.head.scale,
                head_weight=self.head.weight,
                head_bias=self.head.bias,
            )
        if self.net.finetuned_blocks:  # the fine-tuned tail copies; the rest comes from pip
            arrays.update({_TAIL + k: v for k, v in blocks_state(self.net.trainable_blocks()).items()})
        np.savez(out / "arrays.npz", **arrays)
        return out

    @classmethod
    def load(cls, directory: str | Path) -> InspectionModel:
        src = Path(directory)
        try:
            meta = json.loads((src / "model.json").read_text())
            arrays = dict(np.load(src / "arrays.npz"))
        except (OSError, ValueError) as exc:
            raise InputError(f"{src}: not a saved InspectionModel ({exc})") from exc
        if meta.get("format_version") != FORMAT_VERSION:
            raise InputError(f"{src}: model format {meta.get('format_version')} not supported")
        cfg = dict(meta["config"])
        cfg["input_size"] = tuple(cfg["input_size"])
        cfg["patchcore"] = PatchCoreConfig(**cfg["patchcore"])
        cfg.setdefault("finetune_blocks", 0)  # saved before fine-tuning existed: frozen features
        cfg.pop("recalibration_prior_frames", None)  # the shrinkage rule's knob, replaced
        model = cls(ModelConfig(**cfg), seed=int(meta["seed"]))
        n_ft = int(meta.get("finetuned_blocks", 0))
        if n_ft:
            tail_state = {k[len(_TAIL) :]: v for k, v in arrays.items() if k.startswith(_TAIL)}
            try:
                model.net.set_tail(load_blocks(model.net.backbone.tail, n_ft, tail_state))
            except (RuntimeError, ValueError) as exc:
                raise InputError(f"{src}: fine-tuned tail weights unusable ({exc})") from exc
        model.patchcore.set_bank(arrays["bank"], arrays["projection"], arrays["bank_nn"])
        st = dict(meta["state"])
        st["input_size"] = tuple(st["input_size"])
        st["grid"] = tuple(st["grid"])
        model.state = ScoringState(**st)
        if "head_weight" in arrays:
            model.head = LinearHead(
                list(st["head_classes"]),
                arrays["head_mean"],
                arrays["head_scale"],
                arrays["head_weight"],
                arrays["head_bias"],
            )
            model.net.set_head(model.head.mean, model.head.scale, model.head.weight, model.head.bias)
        model.anomaly_only_classes = list(meta["anomaly_only_classes"])
        model.metrics = dict(meta["metrics"])
        model._target_frr = float(meta["target_frr"])
        model._replay_x = arrays["replay_x"].astype(np.float32)
        model._replay_y = list(meta["replay_labels"])
        model._replay_group = arrays["replay_group"]
        model._replay_orig = arrays["replay_orig"]
        model._cal_good_anomaly = arrays["cal_good_anomaly"]
        model._cal_good_defect = arrays["cal_good_defect"]
        model._cal_defect = arrays.get("cal_defect", np.zeros(0, dtype=np.float32))
        model._replay_oof = arrays.get("replay_oof", np.zeros((0, 0), dtype=np.float32)).astype(np.float32)
        model.taxonomy = Taxonomy.from_dict(meta["taxonomy"]) if meta.get("taxonomy") else None
        model.version = str(meta["version"])
        return model


def counter_of(labels: list[str], mask: np.ndarray) -> Counter[str]:
    return Counter(labels[i] for i in np.flatnonzero(mask))
