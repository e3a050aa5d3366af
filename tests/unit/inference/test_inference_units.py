"""Unit tests: configuration, Triton repository layout, artifact safety, preprocessing."""

from __future__ import annotations

import io
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
