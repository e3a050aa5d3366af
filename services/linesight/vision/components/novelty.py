"""How far a frame's pooled descriptor is from everything the model was trained on (numpy only).

Review selection sends *novel* frames to a human: frames unlike any training image are where
the head's probabilities mean least (a new session's lighting, a new defect type). The score is
the distance to the nearest training image (standardised pooled descriptor, originals only),
divided by the distance that a training-side good image, held out by its part group, has to its
nearest other-group neighbour at the ``quantile`` (0.99): 1.0 is that threshold. Shared by
``InspectionModel.predict`` and the exported model (``novelty.npz``), so both give the same
``Prediction.novelty``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["NOVELTY_FILE", "NoveltyReference"]

NOVELTY_FILE = "novelty.npz"
_CHUNK = 256


def _nearest(a: np.ndarray, b: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
    """Squared distance of each row of ``a`` to its nearest row of ``b``."""
    out = np.empty(len(a))
    for s in range(0, len(a), _CHUNK):
        q = a[s : s + _CHUNK]
        d = b_sq[None, :] - 2.0 * (q @ b.T)
        out[s : s + _CHUNK] = d.min(axis=1) + np.einsum("ij,ij->i", q, q)
    return np.maximum(out, 0.0)


@dataclass(frozen=True)
class NoveltyReference:
    """Standardised reference descriptors and the distance that maps to novelty 1.0."""

    rows: np.ndarray  # [n, d] float32, standardised
    mean: np.ndarray  # [d]
    scale: np.ndarray  # [d]
    threshold: float  # nearest-neighbour distance of held-out good at ``quantile``

    @classmethod
    def fit(
        cls, x: np.ndarray, groups: np.ndarray, is_good: np.ndarray, *, quantile: float = 0.99
    ) -> NoveltyReference | None:
        """From training descriptors (originals, not augmented copies); None with fewer than 3
        good part groups (nothing to hold out)."""
        x = np.asarray(x, dtype=np.float32)
        groups = np.asarray(groups)
        is_good = np.asarray(is_good, dtype=bool)
        if len(x) == 0 or len(np.unique(groups[is_good])) < 3:
            return None
        mean = x.mean(axis=0)
        scale = np.maximum(x.std(axis=0), 1e-3 * max(float(x.std()), 1e-6)).astype(np.float32)
        # rounded as the export stores them, so the checkpoint and the export score alike
        z = ((x - mean) / scale).astype(np.float16).astype(np.float32)
        z_sq = np.einsum("ij,ij->i", z, z)
        held = np.flatnonzero(is_good)
        dist = np.empty(len(held))
        for s in range(0, len(held), _CHUNK):
            idx = held[s : s + _CHUNK]
            d = z_sq[None, :] - 2.0 * (z[idx] @ z.T) + z_sq[idx, None]
            d[groups[idx][:, None] == groups[None, :]] = np.inf  # its own part does not count
            dist[s : s + _CHUNK] = np.sqrt(np.maximum(d.min(axis=1), 0.0))
        dist = dist[np.isfinite(dist)]
        if len(dist) == 0:
            return None
        return cls(z, mean.astype(np.float32), scale, float(max(np.quantile(dist, quantile), 1e-6)))

    def score(self, pooled: np.ndarray) -> np.ndarray:
        """Novelty per row of ``pooled`` (1.0 = the held-out good threshold)."""
        q = ((np.asarray(pooled, dtype=np.float32) - self.mean) / self.scale).astype(np.float32)
        rows_sq = np.einsum("ij,ij->i", self.rows, self.rows)
        return np.sqrt(_nearest(q, self.rows, rows_sq)) / self.threshold

    def save(self, path: str | Path) -> None:
        np.savez(
            path,
            rows=self.rows.astype(np.float16),
            mean=self.mean,
            scale=self.scale,
            threshold=np.array([self.threshold]),
        )

    @classmethod
    def load(cls, path: str | Path) -> NoveltyReference:
        with np.load(path, allow_pickle=False) as f:
            return cls(
                f["rows"].astype(np.float32),
                f["mean"].astype(np.float32),
                f["scale"].astype(np.float32),
                float(f["threshold"][0]),
            )
