"""The exported artifact set runs without torch and reproduces the torch model's predictions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from linesight.vision.export import ExportedModel, ExportError
from linesight.vision.export.writer import export_model
from linesight.vision.taxonomy import Taxonomy
from tests.unit.vision.engine_helpers import small_model


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, _, _ = small_model()
    return export_model(model, tmp_path_factory.mktemp("export") / "v1", metrics={"image_auroc": 1.0})


def test_artifact_set_layout_and_metadata(artifact: Path) -> None:
    model, _, _ = small_model()
    names = {p.name for p in artifact.iterdir()}
    assert {
        "network.onnx",
        "bank.npy",
        "bank_nn.npy",
        "projection.npy",
        "thresholds.npy",
        "temperature.npy",
        "metadata.json",
        "taxonomy.yaml",
    } <= names
    meta = json.loads((artifact / "metadata.json").read_text())
    assert meta["model_version"] == model.version
    assert meta["classes"] == model.classes
    assert meta["backbone"] == "efficientnet-lite0"
    assert meta["preprocess"]["input_size"] == list(model.config.input_size)
    assert meta["metrics"]["image_auroc"] == 1.0
    assert meta["taxonomy_version"] == model.taxonomy.version
    assert meta["taxonomy_file"] == "taxonomy.yaml"
    exported_tax = Taxonomy.load(artifact / "taxonomy.yaml")
    assert exported_tax.to_dict() == model.taxonomy.to_dict()
    assert ExportedModel.load(artifact).taxonomy.to_dict() == model.taxonomy.to_dict()
    np.testing.assert_allclose(
        np.load(artifact / "thresholds.npy"), [model.thresholds["anomaly"], model.thresholds["defect"]]
    )


def test_onnx_predictions_match_torch(artifact: Path) -> None:
    model, imgs, _ = small_model()
    exported = ExportedModel.load(artifact)
    a, b = model.predict(imgs[:12]), exported.predict(imgs[:12], batch_size=5)
    for pa, pb in zip(a, b, strict=True):
        assert abs(pa.defect_probability - pb.defect_probability) < 1e-4
        assert abs(pa.anomaly_score - pb.anomaly_score) < 1e-3
        assert float(np.abs(pa.heatmap - pb.heatmap).max()) < 1e-2
        assert pa.class_probs.keys() == pb.class_probs.keys()


def test_exported_model_does_not_import_torch(artifact: Path) -> None:
    code = (
        "import sys, numpy as np\n"
        "from linesight.vision.export import ExportedModel\n"
        f"m = ExportedModel.load({str(artifact)!r})\n"
        "p = m.predict([np.full((80, 90), 120, np.uint8)])[0]\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print(p.defect_probability)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert 0.0 <= float(res.stdout.strip().splitlines()[-1]) <= 1.0


def test_broken_artifacts_fail_clearly(artifact: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="metadata"):
        ExportedModel.load(tmp_path)
    (tmp_path / "metadata.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ExportError, match="format"):
        ExportedModel.load(tmp_path)


def test_inference_bundle_reads_the_exported_taxonomy(artifact: Path) -> None:
    from linesight.inference.app.bundle import load_bundle

    model, _, _ = small_model()
    bundle = load_bundle(artifact)
    assert bundle.taxonomy.to_dict() == model.taxonomy.to_dict()
    assert bundle.taxonomy_version == model.taxonomy.version


def test_legacy_artifact_without_taxonomy_gets_the_default(artifact: Path, tmp_path: Path) -> None:
    import shutil

    legacy = tmp_path / "legacy"
    shutil.copytree(artifact, legacy)
    (legacy / "taxonomy.yaml").unlink()
    loaded = ExportedModel.load(legacy)
    assert loaded.taxonomy.class_names == [c for c in loaded.classes if c != "good"]


def test_execution_providers_prefer_cuda_only_where_the_build_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime as ort

    from linesight.vision.export import execution_providers

    assert "CUDAExecutionProvider" not in execution_providers()  # the CPU wheel installed here
    monkeypatch.setattr(
        ort,
        "get_available_providers",
        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
    )
    assert execution_providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["AzureExecutionProvider"])
    assert execution_providers() == ["CPUExecutionProvider"]


def test_exported_recalibration_matches_the_engine(artifact: Path, tmp_path: Path) -> None:
    """A station recalibrating the exported model moves the defect threshold exactly as
    ``InspectionModel.recalibrate`` would; an artifact without reference scores cannot."""
    import copy
    import shutil

    base, imgs, labels = small_model()
    model = copy.deepcopy(base)
    good = [im for im, lab in zip(imgs, labels, strict=True) if lab == "good"][:10]
    exported = ExportedModel.load(artifact)
    np.testing.assert_array_equal(np.load(artifact / "reference_good.npy"), base.reference_good_scores)
    assert json.loads((artifact / "metadata.json").read_text())["recalibration"]["quantile"] == 0.75
    golden = [p.defect_probability for p in exported.predict(good)]
    moved = exported.recalibrated_defect_threshold(golden)
    assert moved is not None and moved.n_frames == 10
    report = model.recalibrate(good)
    assert moved.threshold == pytest.approx(report.new_thresholds["defect"], abs=1e-6)
    assert moved.shift_logit == pytest.approx(report.shift["defect_logit"], abs=1e-6)

    legacy = tmp_path / "legacy"
    shutil.copytree(artifact, legacy)
    (legacy / "reference_good.npy").unlink()
    assert ExportedModel.load(legacy).recalibrated_defect_threshold(golden) is None


def test_provisional_classes_training_counts_travel_with_the_export(tmp_path: Path) -> None:
    """The review reason of a provisional class quotes its training count: the exported model
    must give the same ``Prediction`` fields as the torch one."""
    from linesight.vision.decide import decide
    from linesight.vision.model import InspectionModel
    from tests.unit.vision.engine_helpers import synthetic_set

    imgs, labels = synthetic_set({"good": 12, "spot": 6, "scratch": 5}, seed=4)
    model = InspectionModel.create(seed=0, input_size=(64, 64), min_examples=7, augment_copies=1, cv_folds=3)
    model.fit(imgs, labels)
    exported = ExportedModel.load(export_model(model, tmp_path / "e"))
    torch_pred, onnx_pred = model.predict(imgs[-1:])[0], exported.predict(imgs[-1:])[0]
    for pred in (torch_pred, onnx_pred):
        assert pred.provisional_classes == ("scratch", "spot")
        assert pred.provisional_examples == {"scratch": 5, "spot": 6} and pred.min_examples == 7
    pred = onnx_pred
    pred.class_probs = {"good": 0.01, "scratch": 0.99}  # a confident provisional class: still review
    pred.defect_probability = 0.99
    d = decide(pred, exported.taxonomy)
    assert d.verdict == "review" and d.defect_class == "scratch"
    assert (
        d.review_reason
        == "scratch: only 5 training examples (7 needed for automatic decisions); sent to review"
    )
