"""Saving and loading an ``InspectionModel``: ``model.json`` + ``arrays.npz``, no pickles (the
backbone comes from its pip package; only fine-tuned tail modules are stored).

Format 2 stores each typed part under its own name (``replay.*``, ``calibration.*``,
``patchcore.*``, ``head.*``, ``tail.*`` arrays; ``scoring``, ``replay`` sections in the JSON).
Format 1, the flat layout written before the state was typed, still loads: stations keep models
saved by earlier releases.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from linesight.vision.components.finetune import blocks_state, load_blocks
from linesight.vision.components.heads import LinearHead
from linesight.vision.components.patchcore import PatchCoreConfig
from linesight.vision.components.scoring import InputError, ScoringState
from linesight.vision.components.segmentation import SegmentationHead
from linesight.vision.model.config import ModelConfig
from linesight.vision.model.state import CalibrationSet, ReplayStore
from linesight.vision.taxonomy import Taxonomy

if TYPE_CHECKING:
    from linesight.vision.model.inspection import InspectionModel

__all__ = ["FORMAT_VERSION", "load", "save"]

FORMAT_VERSION = 2
_TAIL = "tail."  # arrays.npz prefix of the fine-tuned tail weights (both formats)
_SEG = "segmentation."  # arrays.npz prefix of the segmentation head (absent in older saves)


def save(model: InspectionModel, directory: str | Path) -> Path:
    state = model.require_fitted()
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    replay, cal = model.replay, model.calibration
    meta = {
        "format_version": FORMAT_VERSION,
        "version": model.version,
        "seed": model.seed,
        "config": asdict(model.config),
        "scoring": _scoring_dict(state),
        "segmentation": state.segmentation.meta() if state.segmentation is not None else None,
        "anomaly_only_classes": model.anomaly_only_classes,
        "metrics": model.metrics,
        "target_frr": model.target_frr,
        "replay": {"labels": list(replay.labels)},
        "taxonomy": model.taxonomy.to_dict() if model.taxonomy else None,
        "finetuned_blocks": model.net.finetuned_blocks,
    }
    (out / "model.json").write_text(json.dumps(meta, indent=1))
    arrays: dict[str, np.ndarray] = {
        "patchcore.bank": model.patchcore.bank,
        "patchcore.projection": model.patchcore.projection,
        "patchcore.bank_nn": model.patchcore.bank_nn,
        "replay.x": replay.x.astype(np.float16),  # half the size; add_class never needed more
        "replay.groups": replay.groups,
        "replay.original": replay.original,
        "replay.oof": replay.oof,
        "calibration.good_anomaly": cal.good_anomaly,
        "calibration.good_defect": cal.good_defect,
        "calibration.defect": cal.defect,
    }
    if model.head is not None:
        arrays.update(
            {
                "head.mean": model.head.mean,
                "head.scale": model.head.scale,
                "head.weight": model.head.weight,
                "head.bias": model.head.bias,
            }
        )
    if state.segmentation is not None:
        arrays.update(state.segmentation.arrays(_SEG))
    if model.net.finetuned_blocks:  # the fine-tuned tail copies; the rest comes from pip
        arrays.update({_TAIL + k: v for k, v in blocks_state(model.net.trainable_blocks()).items()})
    np.savez(out / "arrays.npz", **arrays)
    return out


def load(cls: type[InspectionModel], directory: str | Path) -> InspectionModel:
    src = Path(directory)
    try:
        meta = json.loads((src / "model.json").read_text())
        arrays = dict(np.load(src / "arrays.npz"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{src}: not a saved InspectionModel ({exc})") from exc
    fmt = meta.get("format_version")
    if fmt == 1:
        meta, arrays = _from_v1(meta, arrays)
    elif fmt != FORMAT_VERSION:
        raise InputError(
            f"{src}: model format {fmt!r} is not one this engine reads (1 or {FORMAT_VERSION}); "
            "a newer release wrote it, so load it with that release or retrain"
        )
    model = cls(_config(meta["config"]), seed=int(meta["seed"]))
    n_ft = int(meta.get("finetuned_blocks", 0))
    if n_ft:
        tail_state = {k[len(_TAIL) :]: v for k, v in arrays.items() if k.startswith(_TAIL)}
        try:
            model.net.set_tail(load_blocks(model.net.backbone.tail, n_ft, tail_state))
        except (RuntimeError, ValueError) as exc:
            raise InputError(f"{src}: fine-tuned tail weights unusable ({exc})") from exc
    model.patchcore.set_bank(
        arrays["patchcore.bank"], arrays["patchcore.projection"], arrays["patchcore.bank_nn"]
    )
    st = dict(meta["scoring"])
    st["input_size"] = tuple(st["input_size"])
    st["grid"] = tuple(st["grid"])
    if st.get("review_band") is not None:
        st["review_band"] = (float(st["review_band"][0]), float(st["review_band"][1]))
    if meta.get("segmentation"):  # models saved before the segmentation head have none
        try:
            st["segmentation"] = SegmentationHead.from_arrays(meta["segmentation"], arrays, _SEG)
        except (KeyError, ValueError) as exc:
            raise InputError(f"{src}: segmentation head unusable ({exc})") from exc
    model.state = ScoringState(**st)
    if "head.weight" in arrays:
        model.head = LinearHead(
            list(st["head_classes"]),
            arrays["head.mean"],
            arrays["head.scale"],
            arrays["head.weight"],
            arrays["head.bias"],
        )
        model.net.set_head(model.head.mean, model.head.scale, model.head.weight, model.head.bias)
    model.anomaly_only_classes = list(meta["anomaly_only_classes"])
    model.metrics = dict(meta["metrics"])
    model.target_frr = float(meta["target_frr"])
    model.replay = ReplayStore(
        arrays["replay.x"].astype(np.float32),
        tuple(meta["replay"]["labels"]),
        arrays["replay.groups"],
        arrays["replay.original"],
        arrays["replay.oof"].astype(np.float32),
    )
    model.calibration = CalibrationSet(
        arrays["calibration.good_anomaly"], arrays["calibration.good_defect"], arrays["calibration.defect"]
    )
    model.taxonomy = Taxonomy.from_dict(meta["taxonomy"]) if meta.get("taxonomy") else None
    model.version = str(meta["version"])
    return model


def _scoring_dict(state: ScoringState) -> dict[str, Any]:
    """The scoring state as JSON-able data; the segmentation head goes to the arrays."""
    out = {f.name: getattr(state, f.name) for f in fields(state) if f.name != "segmentation"}
    data: dict[str, Any] = json.loads(json.dumps(asdict(ScoringState(**out))))
    return data


def _config(saved: dict[str, Any]) -> ModelConfig:
    cfg = dict(saved)
    cfg["input_size"] = tuple(cfg["input_size"])
    cfg["patchcore"] = PatchCoreConfig(**cfg["patchcore"])
    cfg.setdefault("interior_margin", 0.0)  # saved before it: their heads read no interior extremes
    return ModelConfig(**cfg)


_V1_ARRAYS = {
    "bank": "patchcore.bank",
    "projection": "patchcore.projection",
    "bank_nn": "patchcore.bank_nn",
    "replay_x": "replay.x",
    "replay_group": "replay.groups",
    "replay_orig": "replay.original",
    "replay_oof": "replay.oof",
    "cal_good_anomaly": "calibration.good_anomaly",
    "cal_good_defect": "calibration.good_defect",
    "cal_defect": "calibration.defect",
    "head_mean": "head.mean",
    "head_scale": "head.scale",
    "head_weight": "head.weight",
    "head_bias": "head.bias",
}


def _from_v1(
    meta: dict[str, Any], arrays: dict[str, np.ndarray]
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A format-1 artifact in format-2 terms. Format 1 kept the replay and calibration rows as
    flat arrays; its early saves predate fine-tuning, the out-of-fold logits and the defect
    calibration scores, so those default to frozen features and empty rows."""
    cfg = dict(meta["config"])
    cfg.setdefault("finetune_blocks", 0)
    cfg.pop("recalibration_prior_frames", None)  # the knob of a recalibration rule since replaced
    # the provisional classes' training counts were not recorded: the stored rows still tell them
    scoring = dict(meta["state"])
    original = np.asarray(arrays["replay_orig"], dtype=bool)
    counts = Counter(lab for lab, orig in zip(meta["replay_labels"], original, strict=True) if orig)
    scoring["provisional_examples"] = {c: counts[c] for c in scoring.get("provisional", [])}
    scoring["min_examples"] = int(cfg["min_examples"])
    out_meta = {k: v for k, v in meta.items() if k not in ("state", "replay_labels", "config")}
    out_meta.update(
        format_version=FORMAT_VERSION,
        config=cfg,
        scoring=scoring,
        replay={"labels": meta["replay_labels"]},
    )
    out_arrays = {_V1_ARRAYS.get(k, k): v for k, v in arrays.items()}
    out_arrays.setdefault("calibration.defect", np.zeros(0, dtype=np.float32))
    out_arrays.setdefault("replay.oof", np.zeros((0, 0), dtype=np.float32))
    return out_meta, out_arrays
