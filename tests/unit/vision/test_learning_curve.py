"""learning_curve: the power law is recovered and doubling is predicted."""

from __future__ import annotations

import numpy as np
import pytest

from linesight.vision.evaluation.learning_curve import (
    PowerLaw,
    fit_power_law,
    learning_curve,
    stratified_subset,
)


def test_fit_recovers_known_power_law() -> None:
    true = PowerLaw(2.0, 0.5, 0.05)
    n = np.array([25, 50, 100, 200, 400])
    fit = fit_power_law(n, [true(x) for x in n])
    assert fit.b == pytest.approx(0.5, abs=0.02) and fit.c == pytest.approx(0.05, abs=0.005)
    assert fit(800) == pytest.approx(true(800), rel=0.02)


def test_two_points_fall_back_to_loglog() -> None:
    fit = fit_power_law([10, 40], [0.4, 0.2])
    assert fit.c == 0.0 and fit.b == pytest.approx(0.5)
    with pytest.raises(ValueError):
        fit_power_law([10], [0.1])


def test_stratified_subset() -> None:
    labels = ["a"] * 40 + ["b"] * 4
    idx = stratified_subset(labels, 0.25, seed=1)
    assert sum(labels[i] == "a" for i in idx) == 10 and sum(labels[i] == "b" for i in idx) == 1
    assert idx == stratified_subset(labels, 0.25, seed=1)
    with pytest.raises(ValueError):
        stratified_subset(labels, 0.0)


def test_learning_curve_predicts_gain_from_doubling() -> None:
    labels = ["a"] * 160 + ["b"] * 160
    law = PowerLaw(1.5, 0.6, 0.02)
    seen: list[int] = []

    def fit_error(idx: list[int]) -> float:
        seen.append(len(idx))
        return law(len(idx))

    curve = learning_curve(labels, fit_error, fractions=(0.1, 0.25, 0.5, 1.0))
    assert seen == [32, 80, 160, 320]
    assert curve.predicted_error_at_double == pytest.approx(law(640), rel=0.05)
    assert curve.predicted_gain_from_doubling == pytest.approx(law(320) - law(640), rel=0.1)
    assert curve.as_dict()["fit"] is not None
