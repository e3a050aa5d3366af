"""Learning curves: is more data worth collecting?

Train on growing, class-stratified fractions of the training side, measure the test error, and
fit the empirical power law ``err(n) = a * n**-b + c`` (Hestness et al., "Deep Learning Scaling
is Predictable, Empirically"). ``c`` is the irreducible error; the fitted curve predicts the error
at twice the current data, i.e. what doubling the labelling effort would buy.
"""

from __future__ import annotations

import math
import random
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "LearningCurve",
    "PowerLaw",
    "fit_power_law",
    "learning_curve",
    "per_class_learning_curves",
    "stratified_subset",
]


@dataclass(frozen=True)
class PowerLaw:
    """err(n) = a * n**-b + c."""

    a: float
    b: float
    c: float

    def __call__(self, n: float) -> float:
        return float(self.a * n ** (-self.b) + self.c)


@dataclass
class LearningCurve:
    """Measured points, the fit and its prediction for doubling the data."""

    sizes: list[int]
    errors: list[float]
    fit: PowerLaw | None
    predicted_error_at_double: float | None = None
    predicted_gain_from_doubling: float | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "sizes": self.sizes,
            "errors": self.errors,
            "fit": None if self.fit is None else {"a": self.fit.a, "b": self.fit.b, "c": self.fit.c},
            "predicted_error_at_double": self.predicted_error_at_double,
            "predicted_gain_from_doubling": self.predicted_gain_from_doubling,
            "notes": self.notes,
        }


def fit_power_law(sizes: Sequence[float], errors: Sequence[float]) -> PowerLaw:
    """Least-squares fit of a * n^-b + c with a >= 0, 0 <= b <= 3, 0 <= c <= min(err).

    With fewer than 3 distinct sizes (or if the 3-parameter fit fails) c is fixed at 0 and the
    fit is a straight line in log-log space: an optimistic bound that is said in the notes.
    """
    n = np.asarray(sizes, dtype=np.float64)
    e = np.asarray(errors, dtype=np.float64)
    if n.shape != e.shape or len(n) < 2:
        raise ValueError("need at least two (size, error) points")
    if np.any(n <= 0) or np.any(e < 0):
        raise ValueError("sizes must be positive and errors non-negative")
    if len(np.unique(n)) >= 3:
        from scipy.optimize import curve_fit

        def f(x: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
            return np.asarray(a * x ** (-b) + c)

        c_max = max(float(e.min()), 1e-12)
        p0 = (max(float(e.max() - e.min()), 1e-6) * float(n.min()) ** 0.5, 0.5, c_max / 2)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                (a, b, c), _ = curve_fit(
                    f, n, e, p0=p0, bounds=([0, 0, 0], [np.inf, 3.0, c_max]), maxfev=20000
                )
            return PowerLaw(float(a), float(b), float(c))
        except (RuntimeError, ValueError):
            pass
    eps = 1e-6
    slope, intercept = np.polyfit(np.log(n), np.log(np.maximum(e, eps)), 1)
    return PowerLaw(float(math.exp(intercept)), float(max(0.0, -slope)), 0.0)


def stratified_subset(labels: Sequence[str], fraction: float, *, seed: int = 0) -> list[int]:
    """Indices of a seeded, class-stratified subset (every class keeps at least one example)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    by: dict[str, list[int]] = defaultdict(list)
    for i, lab in enumerate(labels):
        by[lab].append(i)
    rng = random.Random(seed)
    out: list[int] = []
    for lab in sorted(by):
        idx = by[lab][:]
        rng.shuffle(idx)
        out += idx[: max(1, round(fraction * len(idx)))]
    return sorted(out)


def learning_curve(
    labels: Sequence[str],
    fit_error: Callable[[list[int]], float],
    *,
    fractions: Sequence[float] = (0.125, 0.25, 0.5, 1.0),
    seed: int = 0,
    repeats: int = 1,
) -> LearningCurve:
    """Call `fit_error(train_indices) -> test error` on growing subsets; fit and extrapolate.

    Subsets are nested per repeat (each fraction contains the smaller ones) so the curve is not
    noisier than it has to be; repeats average over different seeds.
    """
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    fr = sorted(set(fractions))
    sizes: list[int] = []
    errors: list[float] = []
    for f in fr:
        errs = []
        size = 0
        for r in range(repeats):
            idx = stratified_subset(labels, f, seed=seed + 1000 * r)
            size = len(idx)
            errs.append(float(fit_error(idx)))
        sizes.append(size)
        errors.append(float(np.mean(errs)))
    curve = LearningCurve(sizes, errors, None)
    if len(set(sizes)) < 2:
        curve.notes.append("not enough distinct training sizes to fit a curve")
        return curve
    curve.fit = fit_power_law(sizes, errors)
    if curve.fit.c == 0.0:
        curve.notes.append("irreducible error fixed at 0 (too few points): the gain is optimistic")
    n = sizes[-1]
    curve.predicted_error_at_double = curve.fit(2 * n)
    curve.predicted_gain_from_doubling = max(0.0, curve.fit(n) - curve.predicted_error_at_double)
    return curve


def per_class_learning_curves(
    labels: Sequence[str],
    fit_errors: Callable[[list[int]], dict[str, float]],
    *,
    fractions: Sequence[float] = (0.25, 0.5, 1.0),
    seed: int = 0,
) -> dict[str, LearningCurve]:
    """One fit per fraction, a curve per class: `fit_errors(train_indices)` returns each class's
    test error (a class it cannot measure is left out). A class's curve is indexed by that
    class's own training images, so its prediction answers "what would twice as many examples of
    this class buy?". Subsets are the nested, class-stratified ones of `learning_curve`."""
    fr = sorted(set(fractions))
    points: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for f in fr:
        idx = stratified_subset(labels, f, seed=seed)
        counts: dict[str, int] = defaultdict(int)
        for i in idx:
            counts[labels[i]] += 1
        for cls, err in fit_errors(idx).items():
            points[cls].append((counts.get(cls, 0), float(err)))
    out: dict[str, LearningCurve] = {}
    for cls, pts in sorted(points.items()):
        pts = [(n, e) for n, e in pts if n > 0]
        curve = LearningCurve([n for n, _ in pts], [e for _, e in pts], None)
        out[cls] = curve
        if len(set(curve.sizes)) < 2:
            curve.notes.append("not enough distinct training sizes to fit a curve")
            continue
        curve.fit = fit_power_law(curve.sizes, curve.errors)
        if curve.fit.c == 0.0:
            curve.notes.append("irreducible error fixed at 0 (too few points): the gain is optimistic")
        n = curve.sizes[-1]
        curve.predicted_error_at_double = curve.fit(2 * n)
        curve.predicted_gain_from_doubling = max(0.0, curve.fit(n) - curve.predicted_error_at_double)
    return out
