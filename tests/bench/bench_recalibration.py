"""Golden-sample recalibration benchmark (`make bench`): what 20 known-good frames buy, on average.

`linesight eval --recalibrate-good 20` draws one set of golden frames; its figure swings by
several points with that draw. Here the model is fitted once per seed (magnetic tile, exp0-4 →
exp5, 300 good / ≤ 50 per class, as in bench_detection) and the defect threshold is recalibrated
for many random golden draws with the engine's rule (``calibrate.recalibrated_threshold``, the
same call ``InspectionModel.recalibrate`` and the inference service make), without re-running the
network: golden frames' defect probabilities do not depend on the threshold.

Printed per seed, as mean false-reject / escape rate (%) over the draws and the share of draws
over 2 %:
- ``training side``: each training batch in turn plays the new session (its out-of-fold good
  scores give the golden frames and the rates; the other batches are the reference);
- ``exp5``: the held-out session as it is;
- ``exp5 drift ±1.5``: every exp5 score moved by ±1.5 logits, a simulated lighting drift (a
  global shift, which real drift only approximates).
Rows: ``none`` (training-side threshold kept) and ``engine`` (the rule). Never asserts.
Run: ``python -m tests.bench.bench_recalibration [--seeds 0,1,2] [--draws 300] [--golden 20,40]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from linesight.vision.components.calibrate import logit, recalibrated_threshold
from linesight.vision.components.scoring import GOOD
from linesight.vision.data.imageio import read_image
from linesight.vision.data.manifest import load_manifest
from linesight.vision.data.splits import cap_training, split_by_batches
from linesight.vision.model import InspectionModel

DATASET = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "magnetic_tile"
N_GOLDEN = 20  # the golden set; --golden compares larger ones

Rule = Callable[[np.ndarray, np.ndarray, float], float]  # (reference good, golden, threshold) -> new


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def fitted_scores(seed: int) -> dict[str, Any]:
    """Fit the default model; out-of-fold scores (with their batch) and exp5 defect probabilities."""
    split = split_by_batches(load_manifest(DATASET), ["exp5"])
    train = cap_training(split.train, max_good=300, max_per_class=50, seed=seed)
    model = InspectionModel.create(seed=seed)
    t = time.perf_counter()
    model.fit(
        [read_image(s.image) for s in train], [s.label for s in train], groups=[s.part_id for s in train]
    )
    print(f"  seed {seed}: fitted in {time.perf_counter() - t:.0f} s", flush=True)
    good = [s for s in train if s.label == GOOD]
    defect = [s for s in train if s.label != GOOD and s.label in model.classes]
    oof_defect = model.reference_defect_scores  # the defect rows' out-of-fold scores, in order
    assert len(good) == len(model.reference_good_scores) and len(defect) == len(oof_defect)
    test = list(split.test)
    preds = model.predict([read_image(s.image) for s in test], batch_size=32)
    return {
        "oof_good": model.reference_good_scores,
        "oof_good_batch": np.array([s.batch for s in good]),
        "oof_defect": np.asarray(oof_defect),
        "oof_defect_batch": np.array([s.batch for s in defect]),
        "test_p": np.array([p.defect_probability for p in preds]),
        "test_is_defect": np.array([s.label != GOOD for s in test]),
        "threshold": float(model.thresholds["defect"]),
        "quantile": model.config.recalibration_quantile,
        "deadzone": model.config.recalibration_deadzone,
        "operating_point": model.defect_operating_point,
    }


def rules(quantile: float, deadzone: float) -> dict[str, Rule]:
    def engine(ref: np.ndarray, gold: np.ndarray, thr: float) -> float:
        return recalibrated_threshold(ref, gold, thr, quantile=quantile, deadzone=deadzone).threshold

    return {"none": lambda _ref, _gold, thr: thr, "engine": engine}


def draws(
    ref: np.ndarray,
    good: np.ndarray,
    defect: np.ndarray,
    thr: float,
    rs: dict[str, Rule],
    n: int,
    rng: np.random.Generator,
    n_golden: int,
) -> dict[str, np.ndarray]:
    """(FRR, escape rate) per draw and rule: ``n_golden`` frames from ``good``, rates on the rest."""
    out: dict[str, list[tuple[float, float]]] = {k: [] for k in rs}
    for _ in range(n):
        idx = rng.permutation(len(good))
        gold, rest = good[idx[:n_golden]], good[idx[n_golden:]]
        for name, rule in rs.items():
            t = rule(ref, gold, thr)
            out[name].append((float(np.mean(rest >= t)), float(np.mean(defect < t))))
    return {k: np.array(v) for k, v in out.items()}


def scenarios(
    d: dict[str, Any], n: int, rng: np.random.Generator, n_golden: int = N_GOLDEN
) -> dict[str, dict[str, np.ndarray]]:
    rs = rules(float(d["quantile"]), float(d["deadzone"]))
    operating_point = d["operating_point"]
    og, ogb = np.asarray(d["oof_good"]), np.asarray(d["oof_good_batch"])
    od, odb = np.asarray(d["oof_defect"]), np.asarray(d["oof_defect_batch"])
    out: dict[str, dict[str, np.ndarray]] = {}
    side: dict[str, list[np.ndarray]] = {k: [] for k in rs}
    for b in sorted(set(ogb.tolist())):
        good_b, defect_b = og[ogb == b], od[odb == b]
        if len(good_b) < n_golden + 10 or len(defect_b) < 5:
            continue
        ref, ref_d = og[ogb != b], od[odb != b]
        thr = operating_point(ref, ref_d)  # fit()'s rule, without batch b
        for k, v in draws(ref, good_b, defect_b, thr, rs, n, rng, n_golden).items():
            side[k].append(v)
    out["training side"] = {k: np.concatenate(v) for k, v in side.items() if v}
    tp, isd = np.asarray(d["test_p"]), np.asarray(d["test_is_defect"], dtype=bool)
    for label, delta in (("exp5", 0.0), ("exp5 drift +1.5", 1.5), ("exp5 drift -1.5", -1.5)):
        p = _sigmoid(logit(tp) + delta) if delta else tp
        out[label] = draws(og, p[~isd], p[isd], float(d["threshold"]), rs, n, rng, n_golden)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", default="0", help="comma-separated seeds of the capped training sample")
    ap.add_argument("--draws", type=int, default=300, help="golden draws per scenario")
    ap.add_argument("--golden", default=str(N_GOLDEN), help="comma-separated golden set sizes")
    args, _ = ap.parse_known_args(argv)  # run_all passes its own flags through
    if not (DATASET / "manifest.csv").is_file():
        print(f"SKIP: {DATASET} absent; nothing to benchmark")
        return 0
    sizes = [int(g) for g in args.golden.split(",")]
    print(f"golden-sample recalibration, {args.draws} draws per scenario and golden set size")
    print(
        f"{'seed':>4}  {'frames':>6}  {'scenario':16}  {'rule':6}  {'FRR %':>6}  {'>2 %':>5}"
        f"  {'escapes %':>9}  {'>2 %':>5}"
    )
    for seed in (int(s) for s in args.seeds.split(",")):
        d = fitted_scores(seed)
        for n_golden in sizes:
            rng = np.random.default_rng(1000 + seed)
            for scenario, res in scenarios(d, args.draws, rng, n_golden).items():
                for rule, a in res.items():
                    frr, esc = a[:, 0] * 100, a[:, 1] * 100
                    print(
                        f"{seed:>4}  {n_golden:>6}  {scenario:16}  {rule:6}  {frr.mean():6.2f}"
                        f"  {np.mean(frr > 2.0001):5.2f}  {esc.mean():9.2f}  {np.mean(esc > 2.0001):5.2f}",
                        flush=True,
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
