"""Glue between images and the network: resizing, feature extraction and the prediction runtime."""

from __future__ import annotations

import hashlib
import logging
import weakref
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from linesight.vision.components.backbone import configure_threads
from linesight.vision.components.features import FeatureNet, extract
from linesight.vision.components.scoring import preprocess

__all__ = ["OnnxRuntime", "features", "grid", "resize", "runtime_for"]

_log = logging.getLogger(__name__)


def resize(images: Sequence[np.ndarray], input_size: tuple[int, int]) -> list[np.ndarray]:
    """Images at the network's input size (area interpolation when shrinking both sides)."""
    h, w = input_size
    out = []
    for img in images:
        interp = cv2.INTER_AREA if img.shape[0] > h and img.shape[1] > w else cv2.INTER_LINEAR
        out.append(cv2.resize(img, (w, h), interpolation=interp))
    return out


def features(
    net: FeatureNet,
    small: Sequence[np.ndarray],
    input_size: tuple[int, int],
    batch_size: int = 16,
    *,
    tail_input_blocks: int = 0,
) -> tuple[np.ndarray, ...]:
    """The network's outputs for resized images (patches, pooled, logits[, fine-tuning inputs]).

    Through onnxruntime, as prediction runs (about 3x eager torch on 2 cores: fits, updates and
    added classes describe their images in a third of the time), the graph exported once per
    network state; eager torch when the export or the runtime fails."""
    spec = net.backbone.spec
    batch = preprocess(small, input_size, spec.mean, spec.std)
    runtime = runtime_for(net)
    session = runtime.session(net, input_size, tail_input_blocks=tail_input_blocks) if len(batch) else None
    if session is None:
        return extract(net, batch, batch_size, tail_input_blocks=tail_input_blocks)
    step = max(batch_size, 32)
    parts = [session.run(None, {"image": batch[i : i + step]}) for i in range(0, len(batch), step)]
    return tuple(np.concatenate([p[k] for p in parts], axis=0) for k in range(len(parts[0])))


def _state_key(net: FeatureNet, *extra: object) -> str:
    """Digest of what the graph bakes in: head, standardisation, fine-tuned tail (and ``extra``)."""
    h = hashlib.sha1(usedforsecurity=False)
    for t in (net.feat_mean, net.feat_scale, net.head.weight, net.head.bias):
        h.update(t.detach().numpy().tobytes())
    h.update(net.tail_token.encode())
    h.update(repr(extra).encode())
    return h.hexdigest()


def _session_for(data: bytes) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = configure_threads()
    opts.inter_op_num_threads = 1
    # as the exported artifact runs (``ExportedModel.load``), so offline figures are the
    # service's: idle workers do not busy-wait against PatchCore and the segmentation head
    # that run next (2 cores, five alternating runs: median img/s 133 -> 137, within noise)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])


def grid(input_size: tuple[int, int]) -> tuple[int, int]:
    """PatchCore's patch grid: the stride-8 feature map."""
    h, w = input_size
    return (h // 8, w // 8)


class OnnxRuntime:
    """A network's graph in onnxruntime, rebuilt only when its weights or outputs change.

    onnxruntime is about 3x faster than eager torch on 2 cores and runs the same graph the
    exported artifact does; any exporter or runtime failure falls back to eager torch. One per
    network (``runtime_for``), shared by prediction and training-time extraction, so an update
    describing its frames reuses the prediction graph of the same weights.
    """

    def __init__(self) -> None:
        self._cached: tuple[str, Any] | None = None

    def clear(self) -> None:
        self._cached = None

    def session(self, net: FeatureNet, input_size: tuple[int, int], *, tail_input_blocks: int = 0) -> Any:
        # keyed on the network's own parameters: recalibration changes the version, not the graph
        key = _state_key(net, tuple(input_size), tail_input_blocks)
        if self._cached is not None and self._cached[0] == key:
            return self._cached[1]
        try:
            from linesight.vision.components.features import to_onnx

            session = _session_for(to_onnx(net, input_size, tail_input_blocks=tail_input_blocks))
        except Exception as exc:  # any exporter/runtime failure: eager torch still works
            _log.warning("onnxruntime unavailable, using eager torch: %s", exc)
            session = None
        self._cached = (key, session)
        return session

    def infer(
        self,
        net: FeatureNet,
        small: Sequence[np.ndarray],
        input_size: tuple[int, int],
        batch_size: int,
        *,
        use_onnx: bool,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Patch embeddings, pooled descriptors and head logits for prediction."""
        session = self.session(net, input_size) if use_onnx else None
        spec = net.backbone.spec
        batch = preprocess(small, input_size, spec.mean, spec.std)
        if session is None:  # the torch runtime, or onnxruntime failed: eager torch
            patches, pooled, logits = extract(net, batch, batch_size)
            return patches, pooled, logits
        patches, pooled, logits = session.run(None, {"image": batch})
        return patches, pooled, logits


# one runtime per network; weak keys, so a dropped model takes its session along
_RUNTIMES: weakref.WeakKeyDictionary[FeatureNet, OnnxRuntime] = weakref.WeakKeyDictionary()


def runtime_for(net: FeatureNet) -> OnnxRuntime:
    """The onnxruntime graph cache of ``net`` (prediction and training-time extraction)."""
    runtime = _RUNTIMES.get(net)
    if runtime is None:
        runtime = _RUNTIMES[net] = OnnxRuntime()
    return runtime
