"""Unit tests: configuration, Triton repository layout, artifact safety, preprocessing."""

from __future__ import annotations

import io
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from linesight.inference.app import preprocess
from linesight.inference.app.bundle import load_bundle
from linesight.inference.app.config import BackendKind, InferenceConfig
from linesight.inference.app.triton_repo import add_version, model_name, remove_version, versions
from linesight.inference.store.objects import ArtifactError, _safe_extract, pack_export
from tests.unit.inference.standin import LOADER, make_export


def test_config_from_env_parses_and_rejects_unknown() -> None:
    cfg = InferenceConfig.from_env(
        {
            "LINESIGHT_INFERENCE_MAX_BATCH": "8",
            "LINESIGHT_INFERENCE_STATIONS": "l1/s1, l1/s2",
            "LINESIGHT_INFERENCE_BACKEND": "triton_grpc",
            "LINESIGHT_INFERENCE_TRITON_URL": "h:1",
        }
    )
    assert (
        cfg.max_batch == 8 and cfg.stations == ("l1/s1", "l1/s2") and cfg.backend == BackendKind.TRITON_GRPC
    )
    with pytest.raises(ValueError, match="unknown variable"):
        InferenceConfig.from_env({"LINESIGHT_INFERENCE_MAX_BACH": "8"})
    with pytest.raises(ValueError, match="triton_url"):
        InferenceConfig.from_env({"LINESIGHT_INFERENCE_BACKEND": "triton_http"})


def test_triton_repository_versions(tmp_path: Path) -> None:
    bundle = load_bundle(make_export(tmp_path / "e1", "v1", product="my-part"))
    name, n1 = add_version(tmp_path / "repo", bundle, loader_spec=LOADER, max_batch=8)
    assert name == model_name("my-part") == "linesight_my_part"
    bundle2 = load_bundle(make_export(tmp_path / "e2", "v2", product="my-part"))
    _, n2 = add_version(tmp_path / "repo", bundle2, loader_spec=LOADER)
    assert (n1, n2) == (1, 2) and versions(tmp_path / "repo", name) == {1: "v1", 2: "v2"}
    config = (tmp_path / "repo" / name / "config.pbtxt").read_text()
    assert 'backend: "python"' in config and "dynamic_batching" in config and "version_policy" in config
    assert (tmp_path / "repo" / name / "2" / "export" / "metadata.json").exists()
    remove_version(tmp_path / "repo", name, 1)
    assert versions(tmp_path / "repo", name) == {2: "v2"}


def test_artifact_round_trip_and_unsafe_members(tmp_path: Path) -> None:
    export = make_export(tmp_path / "e", "v1")
    data = pack_export(export)
    _safe_extract(data, tmp_path / "out")
    assert (tmp_path / "out" / "metadata.json").exists()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ArtifactError):
        _safe_extract(buf.getvalue(), tmp_path / "bad")
    with pytest.raises(ArtifactError):
        _safe_extract(b"not a tar", tmp_path / "bad2")


def test_preprocess_gray_to_rgb_and_heatmap_back_to_frame() -> None:
    gray = np.full((100, 50), 7, dtype=np.uint8)
    x = preprocess.to_model_input(gray, (64, 64))
    assert x.shape == (64, 64, 3) and x.dtype == np.uint8 and int(x[0, 0, 0]) == 7
    hm = preprocess.heatmap_to_frame(np.ones((64, 64), np.float32), (100, 50))
    assert hm.shape == (100, 50)
    assert preprocess.heatmap_png(hm)[:8] == b"\x89PNG\r\n\x1a\n"


def test_model_input_of_a_gray_frame_equals_that_of_its_rgb_copy() -> None:
    """Gray frames are resized before they get three channels: the same pixels, less work."""
    import cv2

    rng = np.random.default_rng(0)
    for shape in [(300, 313), (120, 97), (192, 192), (41, 700), (50, 60, 1)]:
        gray = rng.integers(0, 256, shape, dtype=np.uint8)
        rgb = cv2.cvtColor(gray.reshape(shape[:2]), cv2.COLOR_GRAY2RGB)
        for size in [(192, 192), (256, 320), (64, 48)]:
            expected = preprocess.to_model_input(rgb, size)
            got = preprocess.to_model_input(gray, size)
            assert got.shape == (*size, 3) and got.dtype == np.uint8 and got.flags.c_contiguous
            assert np.array_equal(got, expected), (shape, size)


def test_heatmap_png_levels_nonfinite_values_and_size_cap() -> None:
    import cv2

    hm = np.array([[0.0, 0.5, 1.0, 2.0], [3.0, -1.0, np.nan, np.inf], [-np.inf, 1.5, 0.01, 1.99]], np.float32)
    img = cv2.imdecode(np.frombuffer(preprocess.heatmap_png(hm), np.uint8), cv2.IMREAD_UNCHANGED)
    assert img.dtype == np.uint8 and img.tolist() == [[0, 63, 127, 255], [255, 0, 0, 255], [0, 191, 1, 253]]
    big = np.full((1000, 600), 1.0, np.float32)
    capped = cv2.imdecode(np.frombuffer(preprocess.heatmap_png(big, max_side=512), np.uint8), -1)
    assert capped.shape == (512, 307) and int(capped.min()) == int(capped.max()) == 127
    full = cv2.imdecode(np.frombuffer(preprocess.heatmap_png(big, max_side=0), np.uint8), -1)
    assert full.shape == (1000, 600)
    small = cv2.imdecode(np.frombuffer(preprocess.heatmap_png(hm, max_side=512), np.uint8), -1)
    assert np.array_equal(small, img)  # smaller than the cap: stored at the frame's size


def test_config_heatmap_max_side() -> None:
    assert InferenceConfig().heatmap_max_side == 512
    assert InferenceConfig.from_env({"LINESIGHT_INFERENCE_HEATMAP_MAX_SIDE": "0"}).heatmap_max_side == 0
    with pytest.raises(ValueError, match="heatmap_max_side"):
        InferenceConfig.from_env({"LINESIGHT_INFERENCE_HEATMAP_MAX_SIDE": "-1"})


def test_find_regions_boxes_are_in_frame_pixels_wherever_the_regions_lie() -> None:
    """Regions are labelled inside the box around the hot pixels only; boxes, areas, peaks and
    their order must be those of labelling the whole map."""
    import cv2

    from linesight.vision.decide import find_regions

    rng = np.random.default_rng(3)
    for trial in range(200):
        h, w = (int(v) for v in rng.integers(8, 300, 2))
        heat = np.zeros((h, w), np.float32)
        for _ in range(int(rng.integers(0, 6))):
            y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
            heat[y : y + int(rng.integers(1, 9)), x : x + int(rng.integers(1, 9))] = rng.uniform(1.0, 3.0)
        mask = (heat >= 1.0).astype(np.uint8)
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        expected = sorted(
            [(int(s[0]), int(s[1]), int(s[0] + s[2]), int(s[1] + s[3]), int(s[4])) for s in stats[1:n]],
            key=lambda r: r[4],
            reverse=True,
        )
        regions = find_regions(heat, 1.0, min_area_frac=0.0)
        assert [(*r.box, r.area_px) for r in regions] == expected, trial
        assert all(r.peak >= 1.0 for r in regions)
    assert find_regions(np.zeros((50, 40), np.float32), 1.0) == []


def test_thread_limits_reach_the_libraries_the_model_loader_brings() -> None:
    """The loader's module is imported before the BLAS limit, so scipy's OpenBLAS (PatchCore's kNN)
    is limited too, not left with spinning workers because it arrived with the first model."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from linesight.inference.app.threads import limit_threads

    limit_threads(InferenceConfig(blas_threads=1, opencv_threads=0))  # the default loader
    assert "scipy.linalg.blas" in sys.modules
    assert all(i["num_threads"] <= 1 for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas")
    limit_threads(InferenceConfig(model_loader=LOADER, blas_threads=1, opencv_threads=0))  # in the export
