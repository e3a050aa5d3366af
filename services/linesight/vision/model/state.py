"""The learned state ``add_class`` and ``recalibrate`` work from, as typed objects.

Each object owns rows that belong together, so they are appended, selected and saved together
and cannot drift out of step.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["CalibrationSet", "ReplayStore"]


def _f32(n: int = 0) -> np.ndarray:
    return np.zeros(n, dtype=np.float32)


@dataclass(frozen=True)
class ReplayStore:
    """Pooled descriptor of every head-training row (originals and augmented copies).

    ``add_class`` re-fits only the head, so it needs the rows the head was fitted on; storing
    descriptors instead of images keeps that to seconds. ``oof`` holds the head's out-of-fold
    logits of the leading ``len(oof)`` rows: the frozen old classes' behaviour on unseen images,
    which a new class row is fitted against. Rows appended later have none until the head is
    cross-validated again, which is how ``add_class`` tells whether it may extend the head.
    """

    x: np.ndarray  # [n, d] float32
    labels: tuple[str, ...] = ()
    groups: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # part groups
    original: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # False: augmented
    oof: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))

    def __post_init__(self) -> None:
        n = len(self.x)
        if not len(self.labels) == len(self.groups) == len(self.original) == n:
            raise ValueError(
                f"replay rows out of step: {n} descriptors, {len(self.labels)} labels, "
                f"{len(self.groups)} groups, {len(self.original)} original flags"
            )
        if len(self.oof) > n:
            raise ValueError(f"{len(self.oof)} out-of-fold rows for {n} replay rows")

    @classmethod
    def empty(cls, dim: int) -> ReplayStore:
        return cls(np.zeros((0, dim), dtype=np.float32))

    @classmethod
    def of(
        cls, x: np.ndarray, labels: Sequence[str], groups: np.ndarray, original: np.ndarray
    ) -> ReplayStore:
        """A store without out-of-fold logits yet (set them with ``with_oof``)."""
        return cls(
            np.asarray(x).astype(np.float32),
            tuple(labels),
            np.asarray(groups, dtype=np.int64),
            np.asarray(original, dtype=bool),
        )

    def __len__(self) -> int:
        return len(self.labels)

    def append(
        self, x: np.ndarray, labels: Sequence[str], groups: np.ndarray, original: np.ndarray
    ) -> ReplayStore:
        """These rows added at the end; the out-of-fold logits still cover only the old rows."""
        return ReplayStore(
            np.concatenate([self.x, x]).astype(np.float32),
            self.labels + tuple(labels),
            np.concatenate([self.groups, np.asarray(groups, dtype=np.int64)]),
            np.concatenate([self.original, np.asarray(original, dtype=bool)]),
            self.oof,
        )

    def with_x(self, x: np.ndarray) -> ReplayStore:
        """Same rows described anew (by a fine-tuned tail)."""
        return ReplayStore(x, self.labels, self.groups, self.original, self.oof)

    def with_oof(self, oof: np.ndarray) -> ReplayStore:
        return ReplayStore(self.x, self.labels, self.groups, self.original, oof.astype(np.float32))

    def original_counts(self) -> Counter[str]:
        """Labelled images per class, augmented copies not counted."""
        return Counter(self.labels[i] for i in np.flatnonzero(self.original))

    def examples_of(self, classes: Sequence[str]) -> dict[str, int]:
        """Labelled training images of each of ``classes`` (what a review reason quotes)."""
        counts = self.original_counts()
        return {c: counts[c] for c in classes}

    def next_group(self) -> int:
        """A group id no stored row has (new images are parts of their own)."""
        return int(self.groups.max()) + 1 if len(self.groups) else 0


@dataclass(frozen=True)
class CalibrationSet:
    """Training-side scores the operating point is set from and recalibration compares with.

    ``good_anomaly``: raw PatchCore scores of good images outside the memory bank;
    ``good_defect`` / ``defect``: out-of-fold defect probabilities of the good and the defect
    images, from the same folds.
    """

    good_anomaly: np.ndarray = field(default_factory=_f32)
    good_defect: np.ndarray = field(default_factory=_f32)
    defect: np.ndarray = field(default_factory=_f32)

    def with_anomaly(self, good_anomaly: np.ndarray) -> CalibrationSet:
        return CalibrationSet(good_anomaly.astype(np.float32), self.good_defect, self.defect)

    def with_defect_scores(self, defect_p: np.ndarray, is_good: np.ndarray) -> CalibrationSet:
        """Out-of-fold defect probabilities split by the rows' truth; without good rows
        (classification only) there is nothing to recalibrate against, so both stay empty."""
        good = defect_p[is_good]
        defect = defect_p[~is_good] if len(good) else np.zeros(0)
        return CalibrationSet(self.good_anomaly, good.astype(np.float32), defect.astype(np.float32))
