"""The cross-domain protocol of ``bench_localisation``: how a candidate is named, what a domain's
figures are and which candidate may be picked (the bench itself needs the datasets)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.bench.bench_localisation import BASELINE, _candidate, _domain_figures, _eligible, _score


def _result(type_acc: float | None, auroc: float | None, ips: float, fit: float | None) -> dict[str, Any]:
    return {
        "classification": {"accuracy": type_acc},
        "detection": {"image_auroc": auroc},
        "localization": {"pixel_auroc": 0.9},
        "images_per_second": ips,
        "train_seconds": fit,
    }


def test_candidates_name_test_time_flips_and_model_settings() -> None:
    assert _candidate(BASELINE) == (False, {})
    assert _candidate("tta") == (True, {})
    assert _candidate("tta+finetune_blocks=0") == (True, {"finetune_blocks": 0})
    assert _candidate("input_size=224x224") == (False, {"input_size": (224, 224)})
    with pytest.raises(SystemExit, match="field=value"):
        _candidate("finetune_blocks")


def test_domain_figures_are_means_with_the_worst_type_accuracy_and_the_slowest_fit() -> None:
    f = _domain_figures([_result(1.0, 0.99, 100, 50), _result(0.9, 0.97, 80, None)])
    assert f["type_accuracy"] == pytest.approx(0.95) and f["type_accuracy_worst"] == pytest.approx(0.9)
    assert f["image_auroc"] == pytest.approx(0.98) and f["images_per_second"] == pytest.approx(90)
    assert f["fit_seconds"] == 50  # a loaded model's n/a fit time is left out
    neu = _domain_figures([_result(0.99, None, 130, 60)])  # no good images: no image AUROC
    assert neu["image_auroc"] is None and _score(neu) == pytest.approx(0.99)


def test_a_pick_must_stay_within_the_baselines_speed() -> None:
    base = _domain_figures([_result(0.97, 0.99, 100, 60)])
    assert _eligible(_domain_figures([_result(0.99, 0.99, 91, 65)]), base)
    assert not _eligible(_domain_figures([_result(0.99, 0.99, 50, 60)]), base)  # halves img/s
    assert not _eligible(_domain_figures([_result(0.99, 0.99, 100, 70)]), base)  # fits slower
