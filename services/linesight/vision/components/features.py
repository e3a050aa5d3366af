"""The network part of the model: backbone taps -> patch features, pooled vector, head logits.

Everything that needs torch at inference time lives in ``FeatureNet`` so that exactly this module
is exported to ONNX; the rest (kNN, calibration, decisions) is numpy.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from linesight.vision.components.backbone import Backbone, configure_threads

__all__ = ["FeatureNet", "extract", "to_onnx"]


class FeatureNet(nn.Module):
    """Backbone + PatchCore patch embedding + pooled descriptor + linear head.

    Outputs for an input [B, 3, H, W]:
      - ``patches`` [B, H/8 * W/8, C8 + C16]: 3x3-averaged stride-8 and stride-16 features
        (stride-16 upsampled), the PatchCore embedding;
      - ``pooled`` [B, D]: global mean of the final map; mean, max, min and std of the patch
        embedding; max and min of the raw stride-8/16 taps. Mean captures texture and session,
        the extremes and spread capture small local defects (blowholes) that averaging dilutes;
        the raw taps' minima count because block outputs are linear bottlenecks, so signed.
        With ``interior_margin`` > 0 the same extremes (and the embedding's spread) once more
        over the frame less that share of each side: a part's edges (the frame's outer band)
        set the whole-frame extremes, so a small defect inside the part moves them only there
        (figures: ``linesight/vision/README.md``, "Pooled descriptor");
      - ``logits`` [B, K]: the linear head on standardised ``pooled`` (zeros until fitted).

    The final map comes from ``tail`` (the stages after the stride-16 tap): the backbone's shared
    pretrained tail, or, after ``set_tail``, one whose last modules are this model's fine-tuned
    copies (``finetune.py``). Either way it is part of this module, so the ONNX export carries it.
    """

    def __init__(self, backbone: Backbone, n_classes: int = 1, *, interior_margin: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= interior_margin < 0.5:
            raise ValueError(f"interior_margin must be in [0, 0.5), got {interior_margin}")
        self.backbone = backbone
        self.interior_margin = float(interior_margin)
        self.patch_dim = backbone.channels_s8 + backbone.channels_s16
        # 4 embedding stats + raw tap max/min; the interior's embedding max/min/std + tap max/min
        n_stats = 6 + (5 if interior_margin > 0 else 0)
        self.pooled_dim = backbone.channels_final + n_stats * self.patch_dim
        self.register_buffer("feat_mean", torch.zeros(self.pooled_dim))
        self.register_buffer("feat_scale", torch.ones(self.pooled_dim))
        self.feat_mean: torch.Tensor
        self.feat_scale: torch.Tensor
        self.head = nn.Linear(self.pooled_dim, max(1, n_classes))
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        for p in self.head.parameters():
            p.requires_grad_(False)
        # the stride-16 -> final part; the backbone's shared (frozen) tail until ``set_tail``
        self.tail: nn.Sequential = backbone.tail
        self.finetuned_blocks = 0
        self.tail_token = ""  # digest of the fine-tuned weights ("" = pretrained), for cache keys
        self.eval()

    def set_tail(self, trainable: nn.Sequential | None) -> None:
        """Install fine-tuned copies of the last ``len(trainable)`` tail modules (None: pretrained).

        The frozen prefix modules stay shared with the cached backbone; only the copies are owned,
        so fine-tuning one model never moves another model's (or PatchCore's) features.
        """
        shared = list(self.backbone.tail)
        if trainable is None or len(trainable) == 0:
            self.tail, self.finetuned_blocks, self.tail_token = self.backbone.tail, 0, ""
            return
        n = len(trainable)
        if n > len(shared):
            raise ValueError(f"{n} fine-tuned modules for a tail of {len(shared)}")
        trainable.eval()
        for p in trainable.parameters():
            p.requires_grad_(False)
        self.tail = nn.Sequential(*shared[: len(shared) - n], *trainable)
        self.finetuned_blocks = n
        digest = hashlib.sha1(usedforsecurity=False)
        for t in trainable.state_dict().values():
            digest.update(t.detach().contiguous().numpy().tobytes())
        self.tail_token = digest.hexdigest()

    def trainable_blocks(self) -> nn.Sequential:
        """The fine-tuned modules (empty when the tail is the pretrained one)."""
        if not self.finetuned_blocks:
            return nn.Sequential()
        mods = list(self.tail)
        return nn.Sequential(*mods[len(mods) - self.finetuned_blocks :])

    def set_head(self, mean: np.ndarray, scale: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> None:
        """Install a linear head fitted outside torch (logits = ((x - mean) / scale) W^T + b)."""
        k = weight.shape[0]
        self.head = nn.Linear(self.pooled_dim, k)
        with torch.no_grad():
            self.feat_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
            self.feat_scale.copy_(torch.as_tensor(scale, dtype=torch.float32))
            self.head.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
            self.head.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
        for p in self.head.parameters():
            p.requires_grad_(False)

    def describe(
        self, f8: torch.Tensor, f16: torch.Tensor, final: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch embedding and pooled descriptor from the three maps; the final map's mean comes
        first (``pooled[:, :channels_final]``), the only part a fine-tuned tail changes."""
        a8 = F.avg_pool2d(f8, 3, stride=1, padding=1, count_include_pad=False)
        a16 = F.avg_pool2d(f16, 3, stride=1, padding=1, count_include_pad=False)
        a16 = F.interpolate(a16, size=a8.shape[-2:], mode="bilinear", align_corners=False)
        emb = torch.cat([a8, a16], dim=1)  # [B, C, h, w]
        patches = emb.flatten(2).transpose(1, 2)  # [B, h*w, C]
        stats = [final.mean(dim=(2, 3)), emb.mean(dim=(2, 3)), *_extremes(emb, f8, f16)]
        if self.interior_margin > 0:
            stats += _extremes(*(self._interior(t) for t in (emb, f8, f16)))
        return patches, torch.cat(stats, dim=1)

    def _interior(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` [B, C, h, w] less ``interior_margin`` of each side (at least one cell kept).
        The sizes are fixed per input size, so the ONNX export bakes them in as constants."""
        h, w = int(t.shape[-2]), int(t.shape[-1])
        bh = min(round(self.interior_margin * h), (h - 1) // 2)
        bw = min(round(self.interior_margin * w), (w - 1) // 2)
        return t[:, :, bh : h - bh, bw : w - bw]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f8, f16 = self.backbone.trunk(x)
        patches, pooled = self.describe(f8, f16, self.tail(f16))
        logits = self.head((pooled - self.feat_mean) / self.feat_scale)
        return patches, pooled, logits

    def forward_with_tail_input(
        self, x: torch.Tensor, blocks: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``forward`` plus the input of the last ``blocks`` tail modules (what fine-tuning caches:
        the frozen trunk and tail prefix then run once per image, not once per epoch)."""
        f8, f16 = self.backbone.trunk(x)
        mods = list(self.tail)
        h = f16
        for m in mods[: len(mods) - blocks]:
            h = m(h)
        tail_in = h
        for m in mods[len(mods) - blocks :]:
            h = m(h)
        patches, pooled = self.describe(f8, f16, h)
        logits = self.head((pooled - self.feat_mean) / self.feat_scale)
        return patches, pooled, logits, tail_in


def _extremes(emb: torch.Tensor, f8: torch.Tensor, f16: torch.Tensor) -> list[torch.Tensor]:
    """The embedding's max, min and std and the raw taps' max and min, each [B, C]."""
    dims = (2, 3)
    return [
        emb.amax(dim=dims),
        emb.amin(dim=dims),
        emb.std(dim=dims),
        f8.amax(dim=dims),
        f16.amax(dim=dims),
        f8.amin(dim=dims),
        f16.amin(dim=dims),
    ]


def extract(
    net: FeatureNet, batch: np.ndarray, batch_size: int = 16, *, tail_input_blocks: int = 0
) -> tuple[np.ndarray, ...]:
    """Run the network on a preprocessed float32 NCHW batch; returns numpy (patches, pooled, logits),
    plus the input of the last ``tail_input_blocks`` tail modules when that is > 0."""
    configure_threads()
    outs: list[list[np.ndarray]] = [[], [], [], []] if tail_input_blocks else [[], [], []]
    with torch.inference_mode():
        for i in range(0, len(batch), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(batch[i : i + batch_size]))
            res = net.forward_with_tail_input(x, tail_input_blocks) if tail_input_blocks else net(x)
            for lst, t in zip(outs, res, strict=True):
                lst.append(t.numpy())
    return tuple(np.concatenate(o, axis=0) for o in outs)


class _WithTailInput(nn.Module):
    """``FeatureNet.forward_with_tail_input`` as a graph of its own (what a fit extracts)."""

    def __init__(self, net: FeatureNet, blocks: int) -> None:
        super().__init__()
        self.net = net
        self.blocks = blocks

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.net.forward_with_tail_input(x, self.blocks)


def to_onnx(
    net: FeatureNet,
    input_size: tuple[int, int],
    target: str | Path | None = None,
    opset: int = 17,
    *,
    tail_input_blocks: int = 0,
) -> bytes:
    """Export ``net`` (dynamic batch) to ONNX; writes ``target`` if given, returns the bytes.
    With ``tail_input_blocks`` the graph also outputs the input of that many last tail modules
    (``tail_input``: what fine-tuning caches); the prediction graph has none."""
    h, w = input_size
    buf = io.BytesIO()
    module: nn.Module = _WithTailInput(net, tail_input_blocks) if tail_input_blocks else net
    # the exporter restores the exported module's mode afterwards, recursively: a wrapper left in
    # its default training mode would put every BatchNorm of ``net`` into training mode
    module.eval()
    outputs = ["patches", "pooled", "logits"] + (["tail_input"] if tail_input_blocks else [])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is chatty about deprecations
        torch.onnx.export(
            module,
            (torch.zeros(1, 3, h, w),),
            buf,  # type: ignore[arg-type]  # file-like objects are accepted
            input_names=["image"],
            output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in ("image", *outputs)},
            opset_version=opset,
            dynamo=False,
        )
    data = buf.getvalue()
    if target is not None:
        Path(target).write_bytes(data)
    return data
