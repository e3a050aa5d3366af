"""Fine-tuning the last backbone blocks plus a head for the defect-type classes.

What trains: copies of the last ``blocks`` modules of the backbone tail (the stages after the
stride-16 tap, ending in the final 1x1 conv) and a linear head on the whole pooled descriptor
(``FeatureNet.describe``: final-map mean + frozen patch statistics). The trunk (PatchCore's
features) and the tail prefix stay frozen and shared, so their outputs are computed once per
(augmented) image and cached; a training step only runs the trainable modules on cached maps.

Choices, and why:
  * LP-FT: the head starts from the logistic regression fitted on the frozen descriptor (Kumar et
    al. 2022: fine-tuning under a random head distorts pretrained features and costs accuracy out
    of distribution, and a new production session is out of distribution);
  * L2-SP (Li et al. 2018): the trainable weights are pulled towards the pretrained ones; a few
    dozen examples per class cannot support free fine-tuning;
  * BatchNorm stays in inference mode: its running statistics remain the pretrained ones (class-
    balanced batches of 32 are not the line's distribution); its affine parameters train;
  * class-balanced sampling: ``WeightedRandomSampler`` with weights 1/n_class and a
    ``torch.Generator`` seeded by the caller, so every class is seen equally often and a run is
    reproducible; one epoch = as many draws as there are rows;
  * the head's L2 is 1/(2 C n), the same objective as the logistic-regression head (C = head_c);
  * augmentation: the rows are the training images plus their copies augmented under each class's
    taxonomy policy (``model/fit.py``, ``_augment_rows``: rotation full / limited / none, flips,
    elastic, mild brightness/contrast, never hue or saturation). Fresh copies every epoch would need
    a trunk pass each, about 50x the cost of a training step on cached maps.

The trained head is only the means of moving the features: the model then re-fits its convex
logistic-regression head on the fine-tuned descriptor, so out-of-fold calibration, replay and
``add_class`` work unchanged (see ``model.fit.fit_head`` for how out-of-fold logits stay
honest).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import WeightedRandomSampler

from linesight.vision.components.backbone import configure_threads
from linesight.vision.components.heads import LinearHead

__all__ = [
    "FinetuneSettings",
    "balanced_order",
    "blocks_state",
    "final_means",
    "finetune_tail",
    "load_blocks",
    "trainable_copy",
]


@dataclass(frozen=True)
class FinetuneSettings:
    """How to fine-tune (``ModelConfig.finetune_*`` fill it)."""

    blocks: int  # last modules of the tail to train (1 = the final 1x1 conv head)
    epochs: float = 2.0
    lr: float = 1e-4  # backbone blocks; the head uses lr * head_lr_factor
    batch_size: int = 32
    head_lr_factor: float = 10.0
    anchor: float = 1e-2  # L2-SP strength towards the pretrained weights
    head_c: float = 0.3  # inverse L2 strength of the head, as in fit_linear_head


def trainable_copy(tail: nn.Sequential, blocks: int) -> nn.Sequential:
    """Deep copy of the last ``blocks`` modules of a (shared, frozen) tail; the original is untouched."""
    mods = list(tail)
    if not 1 <= blocks <= len(mods):
        raise ValueError(f"blocks must be in 1..{len(mods)}, got {blocks}")
    out = copy.deepcopy(nn.Sequential(*mods[len(mods) - blocks :]))
    out.eval()
    return out


def final_means(blocks: nn.Sequential, tail_in: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Global mean of the final map for cached tail inputs (the first part of the descriptor)."""
    configure_threads()
    out = []
    blocks.eval()
    with torch.inference_mode():
        for i in range(0, len(tail_in), batch_size):
            out.append(blocks(torch.from_numpy(tail_in[i : i + batch_size])).mean(dim=(2, 3)).numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)


def balanced_order(y: np.ndarray, *, steps: int, batch_size: int, seed: int) -> torch.Tensor:
    """Row indices [steps, batch_size] drawn with replacement, each class equally likely
    (weights 1 / n_class), from a ``torch.Generator`` seeded with ``seed``."""
    counts = np.bincount(y).astype(np.float64)
    weights = (1.0 / counts[y]).tolist()
    gen = torch.Generator().manual_seed(int(seed))
    sampler = WeightedRandomSampler(weights, steps * batch_size, replacement=True, generator=gen)
    return torch.tensor(list(sampler), dtype=torch.int64).view(steps, batch_size)


def finetune_tail(
    tail: nn.Sequential,
    tail_in: np.ndarray,
    rest: np.ndarray,
    y: np.ndarray,
    head: LinearHead,
    settings: FinetuneSettings,
    *,
    seed: int,
) -> nn.Sequential:
    """Fine-tuned copies of the last ``settings.blocks`` modules of ``tail`` (left untouched).

    ``tail_in`` [N, C, h, w]: cached inputs of those modules; ``rest`` [N, D - C_final]: the frozen
    part of each row's descriptor; ``y`` class indices into ``head``'s classes; ``head``: the
    logistic regression on the frozen descriptor (initial head and standardisation).
    """
    configure_threads()
    blocks = trainable_copy(tail, settings.blocks)
    anchors = [p.detach().clone() for p in blocks.parameters()]
    for p in blocks.parameters():
        p.requires_grad_(True)
    lin = nn.Linear(head.weight.shape[1], head.weight.shape[0])
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(np.asarray(head.weight, np.float32)))
        lin.bias.copy_(torch.from_numpy(np.asarray(head.bias, np.float32)))
    mean = torch.from_numpy(np.asarray(head.mean, np.float32))
    scale = torch.from_numpy(np.asarray(head.scale, np.float32))
    x_in = torch.from_numpy(np.ascontiguousarray(tail_in, dtype=np.float32))
    x_rest = torch.from_numpy(np.ascontiguousarray(rest, dtype=np.float32))
    target = torch.from_numpy(np.asarray(y, dtype=np.int64))
    n = len(target)
    steps = max(1, math.ceil(settings.epochs * n / settings.batch_size))
    order = balanced_order(np.asarray(y), steps=steps, batch_size=settings.batch_size, seed=seed)
    opt = torch.optim.AdamW(
        [
            {"params": list(blocks.parameters()), "lr": settings.lr},
            {"params": list(lin.parameters()), "lr": settings.lr * settings.head_lr_factor},
        ],
        weight_decay=0.0,  # explicit L2-SP / head L2 below instead of decay towards zero
    )
    head_l2 = 1.0 / (2.0 * settings.head_c * n)
    blocks.eval()  # BatchNorm keeps its pretrained running statistics (see the module docstring)
    for idx in order:
        final = blocks(x_in[idx]).mean(dim=(2, 3))
        z = (torch.cat([final, x_rest[idx]], dim=1) - mean) / scale
        loss = F.cross_entropy(lin(z), target[idx])
        drift = sum(((p - p0) ** 2).sum() for p, p0 in zip(blocks.parameters(), anchors, strict=True))
        loss = loss + settings.anchor * drift + head_l2 * (lin.weight**2).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    for p in blocks.parameters():
        p.requires_grad_(False)
    return blocks


def blocks_state(blocks: nn.Sequential) -> dict[str, np.ndarray]:
    """Fine-tuned weights and buffers as numpy arrays (what ``InspectionModel.save`` stores)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in blocks.state_dict().items()}


def load_blocks(tail: nn.Sequential, blocks: int, state: dict[str, np.ndarray]) -> nn.Sequential:
    """Rebuild fine-tuned blocks: a copy of the pretrained ones with ``state`` loaded strictly."""
    out = trainable_copy(tail, blocks)
    out.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}, strict=True)
    out.eval()
    return out
